"""Anomaly scans on generated data with injected faults: what they find, and what they cost.

1. ``train_anomaly`` on the committed reference run (tests/data/anomaly/reference, QCD, no faults);
2. data quality: ``anomaly_scan`` of the faulty run (110 lumisections, 24 with injected faults) ->
   lumisection-level ROC AUC, fraction of faulty lumisections flagged at the false-alarm rate
   (per fault type), false alarms measured on the good ones;
3. event-level search: QCD (fault-free jets of both runs) with ttbar and X(150) -> qq jets the
   model never saw -> signal efficiency at background rates 1e-2, 1e-3, 1e-4 with the
   statistical precision the sample allows;
4. throughput: the faulty run replicated ``--copies`` times (each copy its own run number) and
   scored by plain ``kind: infer`` (same model, same data, one output column) and by
   ``kind: anomaly_scan`` (score, tail probability, per-feature errors, then the per-lumisection
   aggregation): events/s of both and their ratio.

Models: ``vae`` (reconstruction-error score: the data-quality choice), ``vae_kl`` (the same
weights scored in the latent space: the search choice), ``autoencoder``.

    python benchmarks/bench_anomaly.py [--copies 100] [--workers 2] [--models vae vae_kl autoencoder]
"""

from __future__ import annotations

import argparse
import glob
import json
import tempfile
from pathlib import Path

import numpy as np
from common import timed

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "anomaly"
SAMPLE = ROOT / "tests" / "data" / "generated" / "sample" / "parts"
FAULTS = {1: "dead region", 2: "miscalibration", 3: "noisy"}
FEATURES = ["reco_pt", "reco_eta", "reco_phi", "reco_mass", "reco_tau1", "reco_tau2", "reco_tau3", "reco_nconst"]


def replicate(src: list[str], out: Path, copies: int, files: int = 4) -> list[str]:
    """``copies`` of the faulty run spread over ``files`` files, copy k as run 1000 + k (so the
    lumisection count grows with the data, as in a longer data-taking period)."""
    import uproot

    from hepray.io.parts import _compression

    cols = uproot.concatenate(src, FEATURES + ["run", "luminosityBlock", "event", "fault"], library="np")
    paths = []
    for i in range(files):
        p = out / f"scan_{i}.root"
        paths.append(str(p))
        if p.exists():
            continue
        with uproot.recreate(p, compression=_compression("zstd:1")) as f:
            for k in range(i, copies, files):
                chunk = {**cols, "run": np.full(len(cols["run"]), 1000 + k, np.int32)}
                if "jets" not in f:
                    f.mktree("jets", {n: v.dtype for n, v in chunk.items()})
                f["jets"].extend(chunk)
    return paths


MODELS = {"vae": {"type": "vae"}, "vae_kl": {"type": "vae", "score": "kl"}, "autoencoder": {"type": "autoencoder"}}


def quality_figures(hepray, d: Path, model_type: str, engine: dict) -> dict:
    """Train one model on the reference run (seeded: the same weights every run); scan the faulty
    run (lumisections) and the search mixture (events). Returns the figures of both."""
    train = hepray.run({
        "kind": "train_anomaly", "name": f"bench_train_{model_type}", "seed": 1,
        "dataset": {"files": str(DATA / "reference" / "parts" / "*.root"), "tree": "jets"},
        "features": FEATURES, "model": MODELS[model_type], "training": {"batch_size": 64, "epochs": 100},
        "output": {"dir": str(d / "train")}, "engine": engine,
    }, overwrite=True, quiet=True)
    model = train["model"]
    hepray.run({
        "kind": "anomaly_scan", "name": "bench_dq",
        "dataset": {"files": str(DATA / "faulty" / "parts" / "*.root"), "tree": "jets"},
        "model": {"path": model}, "truth": "fault", "output": {"dir": str(d / "dq")}, "engine": engine,
    }, overwrite=True, quiet=True)
    perf = json.loads((d / "dq" / "scan.json").read_text())["lumi"]["performance"]
    hepray.run({
        "kind": "anomaly_scan", "name": "bench_search",
        "dataset": {"tree": "jets", "cut": "fault == 0", "samples": [
            {"name": "qcd", "label": 0, "files": [str(DATA / "faulty" / "parts" / "*.root"), str(SAMPLE / "qcd_*.root")]},
            {"name": "ttbar", "label": 1, "files": str(SAMPLE / "ttbar_*.root")},
            {"name": "xqq", "label": 2, "files": str(SAMPLE / "xqq_*.root")}]},
        "model": {"path": model}, "lumi": {"enabled": False}, "output": {"dir": str(d / "search")}, "engine": engine,
    }, overwrite=True, quiet=True)
    sr = json.loads((d / "search" / "scan.json").read_text())["search"]
    keys = ("background_rate", "signal_efficiency", "signal_interval_68", "threshold_band", "background_events_above", "reliable")
    return {
        "reference_heldout_events": train["n_reference_heldout"], "epochs": train["epochs"],
        "lumi": {k: perf[k] for k in ("lumisections", "faulty", "statistic", "false_alarm", "auc", "found",
                                     "found_per_truth", "false_alarm_measured")},
        "search_background_events": sr["background_events"],
        "search": {name: {"auc": s["auc"], "events": s["events"],
                          "at_background_rate": [{k: w[k] for k in keys} for w in s["at_background_rate"]]}
                   for name, s in sr["signals"].items()},
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    import hepray

    d = Path(args.dir or tempfile.mkdtemp(prefix="hepray_bench_anomaly_"))
    engine = {"workers": args.workers, "progress_every_s": 60}
    quality = {m: quality_figures(hepray, d / m, m, engine) for m in args.models}
    if "autoencoder" not in quality:  # the throughput comparison needs a model plain infer can run
        quality_figures(hepray, d / "autoencoder", "autoencoder", engine)
    model = str(d / "autoencoder" / "train" / "model")

    files = replicate(sorted(glob.glob(str(DATA / "faulty" / "parts" / "*.root"))), d, args.copies)
    ds = {"files": files, "tree": "jets", "shard_events": 100_000}
    hepray.run({"kind": "infer", "name": "warm", "dataset": {**ds, "files": files[:1]}, "model": {"path": model},
                "output": {"dir": str(d / "warm")}, "engine": engine}, overwrite=True, quiet=True)  # Ray start-up
    inf, t_inf = timed(hepray.run, {"kind": "infer", "name": "bench_infer", "dataset": ds, "model": {"path": model},
                                    "output": {"dir": str(d / "infer")}, "engine": engine}, overwrite=True, quiet=True)
    scan, t_scan = timed(hepray.run, {"kind": "anomaly_scan", "name": "bench_scan", "dataset": ds, "model": {"path": model},
                                      "truth": "fault", "plots": False, "output": {"dir": str(d / "scan")},
                                      "engine": engine}, overwrite=True, quiet=True)
    n = inf["events_in"]
    assert scan["events_in"] == scan["events_out"] == n

    res = {
        "features": FEATURES, "quality": quality,
        "throughput": {
            "model": "autoencoder (plain infer cannot run a VAE, whose forward returns a tuple)",
            "events": n, "workers": args.workers,
            "infer_events_per_s": round(n / t_inf), "scan_events_per_s": round(n / t_scan),
            "scan_over_infer": round((n / t_scan) / (n / t_inf), 3),
            "scan_seconds_score": scan["seconds_score"], "scan_seconds_aggregate": scan["seconds_aggregate"],
            "infer_seconds": round(t_inf, 2), "scan_seconds": round(t_scan, 2), "lumisections": scan["lumisections"],
            "note": "end-to-end hepray.run wall time (planning, actors, writing parts; the scan also aggregates)",
        },
    }
    print(json.dumps(res, indent=1))
    for m, q in quality.items():
        perf, f = q["lumi"], q["lumi"]["found"]
        per = ", ".join(f"{FAULTS.get(int(k), k)} {v['k']}/{v['n']}" for k, v in perf["found_per_truth"].items())
        print(f"\n[{m}] lumisections: AUC {perf['auc'][perf['statistic']]:.3f} ({perf['statistic']}); found {f['k']}/{f['n']} "
              f"faulty ({f['value']:.0%}, 68% CL {f['lo']:.0%}-{f['hi']:.0%}: {per}) at false-alarm {perf['false_alarm']:g}; "
              f"measured false alarms {perf['false_alarm_measured']['k']}/{perf['false_alarm_measured']['n']}")
        for name, s in q["search"].items():
            print(f"[{m}] search {name} ({s['events']} vs {q['search_background_events']} bkg): AUC {s['auc']:.3f}; " + "; ".join(
                f"eff@{x['background_rate']:g} = {x['signal_efficiency']:.3f} [{x['signal_interval_68'][0]:.3f}, "
                f"{x['signal_interval_68'][1]:.3f}] ({x['background_events_above']:.1f} bkg above"
                f"{'' if x['reliable'] else ', unreliable'})" for x in s["at_background_rate"]))
    tp = res["throughput"]
    print(f"throughput ({n:,} events, {args.workers} workers): infer {tp['infer_events_per_s']:,} ev/s | anomaly_scan "
          f"{tp['scan_events_per_s']:,} ev/s | scan/infer {tp['scan_over_infer']:.2f}")
    Path(ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "anomaly.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
