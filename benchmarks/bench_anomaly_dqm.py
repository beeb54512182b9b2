"""Data-quality monitoring at realistic statistics: which faulty lumisections each method finds at a
1% false-alarm rate, down to which fault strength, and what it costs.

1. Sample: a Pythia 8 QCD pool (``--pool`` jets, made once and cached in ``--dir``) replayed
   through the default detector (hepray/generate/replay.py: whole events turned in azimuth and
   mirrored in eta, fresh detector response, the faults of ``kind: generate``), ``--events``
   events (~1.45 jets each) per lumisection:
   run 1, ``--ref-lumis`` good lumisections (the reference); run 2, ``--good-lumis`` good ones and,
   per fault type, ``--per-strength`` lumisections at each of five strengths (the last one is the
   strength of the committed faulty run, tests/data/anomaly/), shuffled through the run.
2. ``train_anomaly`` (event autoencoder + the per-lumisection models, calibrated on held-out good
   pseudo-lumisections of run 1) and ``anomaly_scan`` of run 2 with the truth column.
3. Per fault type, strength and method (``events``, ``classical``, ``autoencoder``, ``combined``):
   fraction of faulty lumisections flagged at ``false_alarm`` 0.01 with its 68% Clopper-Pearson
   interval; the false alarms measured on run 2's good lumisections and on the model's 1000
   held-out check pseudo-lumisections; the strength range where each method crosses 50%.
4. Cost: ms per lumisection of each method (the scan's own timing), and events/s of the whole
   ``anomaly_scan`` vs plain ``kind: infer`` of the same autoencoder on the same files.

    python benchmarks/bench_anomaly_dqm.py [--workers 2] [--events 400] [--dir /tmp/dqm]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["reco_pt", "reco_eta", "reco_phi", "reco_mass", "reco_tau1", "reco_tau2", "reco_tau3", "reco_nconst"]
FAULT_NAMES = {1: "dead_region", 2: "miscalibration", 3: "noisy"}
# five strengths per fault type, weakest first; the last is the committed faulty run's
STRENGTHS = {
    "dead_region": {"what": "dead phi width at eta [-1, 1]", "values": [0.1, 0.2, 0.4, 0.8, 1.5]},
    "miscalibration": {"what": "photon + neutral-hadron energy scale", "values": [1.01, 1.02, 1.04, 1.08, 1.15]},
    "noisy": {"what": "mean spurious energy [GeV] at eta 0.2, phi 2.0", "values": [5, 10, 20, 40, 60]},
}
METHODS = ("events", "classical", "autoencoder", "combined")


def fault_spec(kind: str, value: float, lumis: list[int]) -> dict:
    if kind == "dead_region":
        return {"type": kind, "lumis": lumis, "eta": [-1.0, 1.0], "phi": [-1.0, -1.0 + value]}
    if kind == "miscalibration":
        return {"type": kind, "lumis": lumis, "scale": value, "classes": ["photon", "neutral_hadron"]}
    return {"type": kind, "lumis": lumis, "eta": 0.2, "phi": 2.0, "energy": value}


def _job(faults: list[dict], events_per_lumi: int, run: int, n_jets: int = 100):
    from hepray.generate.config import GenerateConfig

    return GenerateConfig.model_validate({
        "kind": "generate", "processes": [{"name": "qcd", "kind": "qcd", "n_jets": n_jets}],
        "generator": {"events_per_lumi": events_per_lumi, "run": run, "events_stride": 10**9},
        "jets": {"max_constituents": 1}, "faults": faults})


def make_pool(n_jets: int, seed: int) -> dict:
    from hepray.generate.producer import ShardTask, generate_jets

    job = _job([], 100, 1, n_jets)
    g = generate_jets(job, ShardTask(job.processes[0], seed, seed, n_jets, seed * 10**7))
    return {**{f"c_{k}": v for k, v in g.const.items()}, "offsets": g.offsets, "event": g.event, "rank": g.rank,
            "truth_dr": g.truth_dr}


def _load_pool(path: Path):
    from hepray.generate.producer import GenJets

    d = np.load(path)
    return GenJets({k[2:]: d[k] for k in d.files if k.startswith("c_")}, d["offsets"], d["event"], d["rank"],
                   d["truth_dr"], len(np.unique(d["event"])), 0.0)


def make_chunk(pool_path: str, out: str, run: int, lumis: list[int], faults: list[dict], events_per_lumi: int,
               seed: int) -> dict:
    """One file: the lumisections ``lumis`` of ``run``, replayed from the pool (events numbered so
    that lumisection = event // events_per_lumi)."""
    import uproot

    from hepray.generate.detector import load_detector
    from hepray.generate.producer import ShardTask, detector_level
    from hepray.generate.replay import pool_features, replay

    t0 = time.perf_counter()
    if Path(out).exists() and Path(out + ".done").exists():  # the same chunk of an earlier run (same --seed)
        return json.loads(Path(out + ".done").read_text())
    pool = _load_pool(Path(pool_path))
    feats = pool_features(pool, 0.8)
    job = _job(faults, events_per_lumi, run)
    det = load_detector("default")
    rng = np.random.default_rng(seed)
    cols_all = []
    for lu in lumis:
        g, f = replay(pool, feats, rng, events_per_lumi, lu * events_per_lumi)
        cols = detector_level(job, det, ShardTask(job.processes[0], 0, int(rng.integers(2**31)), g.n_jets, 0), g, f)
        cols_all.append({k: v for k, v in cols.items() if not k.startswith("const_")})
    cols = {k: np.concatenate([c[k] for c in cols_all]) for k in cols_all[0]}
    with uproot.recreate(out) as f:
        f.mktree("jets", {k: v.dtype for k, v in cols.items()})
        f["jets"].extend(cols)
    made = {"file": out, "jets": len(cols["event"]), "seconds": time.perf_counter() - t0}
    Path(out + ".done").write_text(json.dumps(made))
    return made


def make_sample(d: Path, args) -> dict:
    """The pool, then both runs, chunks of 10 lumisections on ``args.workers`` processes."""
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    pool_path = d / f"pool_{args.pool}.npz"
    with ProcessPoolExecutor(args.workers) as ex:
        if not pool_path.exists():
            parts = list(ex.map(make_pool, [args.pool // args.workers] * args.workers, range(1, args.workers + 1)))
            np.savez(pool_path, **{k: (np.concatenate([p[k] for p in parts]) if k != "offsets" else
                                       np.concatenate([[0]] + [p["offsets"][1:] + sum(len(q["c_px"]) for q in parts[:i])
                                                               for i, p in enumerate(parts)]))
                                   for k in parts[0]})
        t_pool = time.perf_counter() - t0
        # run 2: good and faulty lumisections shuffled; truth of each lumisection kept here too
        labels = [("good", 0.0)] * args.good_lumis + [(k, v) for k, s in STRENGTHS.items() for v in s["values"]
                                                      for _ in range(args.per_strength)]
        order = rng.permutation(len(labels))
        lumi_of = {}
        for lu, i in enumerate(order):
            lumi_of.setdefault(labels[i], []).append(lu)
        faults = [fault_spec(k, v, lumis) for (k, v), lumis in lumi_of.items() if k != "good"]
        tasks = []
        for run, n_lumis, fl in ((1, args.ref_lumis, []), (2, len(labels), faults)):
            (d / f"run{run}").mkdir(exist_ok=True)  # chunk files named *.root, markers *.root.done
            for c in range(0, n_lumis, 10):
                lumis = list(range(c, min(c + 10, n_lumis)))
                tasks.append((str(pool_path), str(d / f"run{run}" / f"chunk_{c:04d}.root"), run, lumis, fl, args.events,
                              int(rng.integers(2**31))))
        t1 = time.perf_counter()
        made = list(ex.map(make_chunk, *zip(*tasks)))
    t_replay = time.perf_counter() - t1
    jets = sum(m["jets"] for m in made)
    strength_of = {lu: (k, v) for (k, v), lumis in lumi_of.items() for lu in lumis}
    return {"pool_jets": args.pool, "pool_seconds": round(t_pool, 1), "jets": jets, "replay_seconds": round(t_replay, 1),
            "jets_per_s": round(jets / t_replay), "jets_per_core_s": round(jets / sum(m["seconds"] for m in made)),
            "workers": args.workers, "events_per_lumi": args.events, "strength_of": strength_of,
            "lumis": {"run1": args.ref_lumis, "run2": len(labels), "run2_good": args.good_lumis}}


def strength_crossing(values: list[float], found: list[float]) -> str:
    """Where a method crosses 50% (strengths ascending)."""
    above = [f >= 0.5 for f in found]
    if all(above):
        return f"<= {values[0]:g} (>= 50% at every strength)"
    if not any(above):
        return f"> {values[-1]:g} (< 50% at every strength)"
    last_below = max(i for i, a in enumerate(above) if not a)
    if last_below == len(values) - 1:
        return f"> {values[-1]:g}"
    return f"between {values[last_below]:g} and {values[last_below + 1]:g}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pool", type=int, default=2000, help="Pythia jets in the replay pool")
    ap.add_argument("--events", type=int, default=400, help="events per lumisection (~1.3 jets each)")
    ap.add_argument("--ref-lumis", type=int, default=100)
    ap.add_argument("--good-lumis", type=int, default=100)
    ap.add_argument("--per-strength", type=int, default=8)
    ap.add_argument("--test", choices=["chi2", "ks"], default="chi2")
    ap.add_argument("--seed", type=int, default=25)
    ap.add_argument("--maps", type=int, default=1, help="1: the classical method also tests a pT-per-eta-phi-cell map")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    import hepray
    from hepray.anomaly.stats import fraction

    d = Path(args.dir or tempfile.mkdtemp(prefix="hepray_bench_dqm_"))
    d.mkdir(parents=True, exist_ok=True)
    sample = make_sample(d, args)
    print(f"sample: {sample['jets']:,} jets in {sample['replay_seconds']} s ({sample['jets_per_s']:,} jets/s on "
          f"{args.workers} processes, {sample['jets_per_core_s']:,} per core-s; Pythia pool {args.pool} jets "
          f"{sample['pool_seconds']} s)", flush=True)
    engine = {"workers": args.workers, "progress_every_s": 120}
    jpl = 1.3 * args.events  # jets per lumisection (measured: ~1.3 selected jets per event)
    t0 = time.perf_counter()
    train = hepray.run({
        "kind": "train_anomaly", "name": "dqm_train", "seed": 1,
        "dataset": {"files": str(d / "run1" / "*.root"), "tree": "jets"}, "features": FEATURES,
        "model": {"type": "autoencoder"}, "training": {"batch_size": 256, "epochs": 30, "patience": 5},
        "lumi": {"events": [int(0.7 * jpl), int(1.4 * jpl)], "bins": 20, "test": args.test, "train_lumis": 2000,
                 "maps": [{"x": "reco_eta", "y": "reco_phi", "w": "reco_pt", "bins": [6, 8]}] if args.maps else []},
        "output": {"dir": str(d / "train")}, "engine": engine}, overwrite=True, quiet=True)
    t_train = time.perf_counter() - t0
    model = train["model"]
    ds = {"files": str(d / "run2" / "*.root"), "tree": "jets"}
    scan = hepray.run({"kind": "anomaly_scan", "name": "dqm_scan", "dataset": ds, "model": {"path": model},
                       "truth": "fault", "output": {"dir": str(d / "scan")}, "engine": engine}, overwrite=True, quiet=True)
    res = json.loads((d / "scan" / "scan.json").read_text())["lumi"]
    with open(d / "scan" / "lumis.csv") as f:
        rows = list(csv.DictReader(f))
    strength_of = sample.pop("strength_of")
    per = {}
    for kind, s in STRENGTHS.items():
        per[kind] = {"what": s["what"], "strengths": s["values"], "methods": {}}
        for m in METHODS:
            fr = []
            for v in s["values"]:
                sel = [r for r in rows if strength_of.get(int(r["lumi"])) == (kind, v) and r["judged"] == "True"]
                fr.append(fraction(sum(r[f"flag_{m}"] == "True" for r in sel), len(sel)))
            per[kind]["methods"][m] = {"found": fr, "crosses_50pct": strength_crossing(s["values"], [f["value"] for f in fr])}
    good = [r for r in rows if strength_of[int(r["lumi"])][0] == "good" and r["judged"] == "True"]
    false_alarms = {m: {"measured_run2": fraction(sum(r[f"flag_{m}"] == "True" for r in good), len(good)),
                        "held_out_check": res["methods"][m].get("false_alarm_held_out"),
                        "threshold_p": res["methods"][m]["threshold_p"]} for m in METHODS}

    # throughput: plain inference of the same model on the same files, vs the whole scan
    hepray.run({"kind": "infer", "name": "warm", "dataset": {**ds, "files": str(d / "run2" / "chunk_0000.root")},
                "model": {"path": model}, "output": {"dir": str(d / "warm")}, "engine": engine}, overwrite=True, quiet=True)
    t0 = time.perf_counter()
    inf = hepray.run({"kind": "infer", "name": "dqm_infer", "dataset": ds, "model": {"path": model},
                      "output": {"dir": str(d / "infer")}, "engine": engine}, overwrite=True, quiet=True)
    t_inf = time.perf_counter() - t0
    t0 = time.perf_counter()
    scan2 = hepray.run({"kind": "anomaly_scan", "name": "dqm_scan_timed", "dataset": ds, "model": {"path": model},
                        "truth": "fault", "plots": False, "output": {"dir": str(d / "scan_timed")}, "engine": engine},
                       overwrite=True, quiet=True)
    t_scan = time.perf_counter() - t0
    n = inf["events_in"]
    assert scan2["events_in"] == n
    out = {
        "sample": sample, "train_seconds": round(t_train, 1), "lumi_model": train.get("lumi_model"),
        "scan": {k: res[k] for k in ("lumisections", "judged", "median_events", "calibrated_sizes", "decision")},
        "classical": {"test": res["methods"]["classical"].get("test"), "combine": res["methods"]["classical"].get("combine")},
        "per_fault": per, "false_alarms": false_alarms,
        "cost_ms_per_lumisection": res["cost_ms_per_lumisection"],
        "throughput": {"events": n, "workers": args.workers, "infer_events_per_s": round(n / t_inf),
                       "scan_events_per_s": round(n / t_scan), "scan_over_infer": round(t_inf / t_scan, 3),
                       "scan_seconds_score": scan2["seconds_score"], "scan_seconds_aggregate": scan2["seconds_aggregate"],
                       "note": "end-to-end hepray.run wall time, warm actors; the scan also builds the per-shard "
                               "summaries and judges every lumisection by the three methods"},
    }
    print(json.dumps(out, indent=1))
    print(f"\nrun 2: {res['judged']} lumisections, median {res['median_events']:.0f} jets; false_alarm 0.01; "
          f"classical = {out['classical']['test']} per variable, {out['classical']['combine']} over variables")
    for kind, p in per.items():
        print(f"\n{kind} ({p['what']}): found [68% CL] at strengths {p['strengths']}")
        for m, r in p["methods"].items():
            cells = "  ".join(f"{f['k']}/{f['n']} [{f['lo']:.2f},{f['hi']:.2f}]" for f in r["found"])
            print(f"  {m:12s} {cells}   50% crossed {r['crosses_50pct']}")
    print("\nfalse alarms: " + "; ".join(
        f"{m} {v['measured_run2']['k']}/{v['measured_run2']['n']} on run 2"
        + (f", {v['held_out_check']['k']}/{v['held_out_check']['n']} held-out" if v["held_out_check"] else "")
        for m, v in false_alarms.items()))
    print("ms per lumisection: " + ", ".join(f"{k} {v:.3f}" for k, v in out["cost_ms_per_lumisection"].items()))
    tp = out["throughput"]
    print(f"throughput ({n:,} events, {args.workers} workers): infer {tp['infer_events_per_s']:,} ev/s | anomaly_scan "
          f"{tp['scan_events_per_s']:,} ev/s | scan/infer {tp['scan_over_infer']:.2f}")
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    out["classical"]["maps"] = bool(args.maps)
    name = f"anomaly_dqm_{args.test}{'' if args.maps else '_nomaps'}.json"
    (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
