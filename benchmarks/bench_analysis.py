"""A dimuon-mass skim of NanoAOD-like data: hepray (`dataset.steps` on Ray) vs coffea
(NanoEvents + vector behaviours, its Runner with the futures executor) vs ROOT's RDataFrame
(implicit multithreading), side by side on the same files and the same number of cores:
events/s and peak memory (RSS of each peer's whole process tree, Ray's processes included).
Each peer runs in its own process. The results must agree: the same events (by event number)
and the same masses to float32 precision.

The data: the committed CMS 2012 DoubleMuParked events (tests/data/real), replicated into
``--files`` TTrees of ``--events`` in all (event numbers made unique), as NanoAOD writes them
(nMuon + Muon_pt/eta/phi/mass/charge, run/luminosityBlock/event).

    python benchmarks/bench_analysis.py [--events 2000000] [--cores 2]

What each peer produces: hepray writes ROOT parts (mass + event identity), RDataFrame a
Snapshot of the same columns, coffea returns the columns to the driver in accumulators (it has
no skim writer of its own; writing them would only add to its time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "tests" / "data" / "real" / "Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root"
STEPS = [{"filter": "nMuon == 2"}, {"filter": "Muon.charge[:, 0] != Muon.charge[:, 1]"},
         {"define": {"dimuon_mass": "(Muon[:, 0] + Muon[:, 1]).mass"}}]


def make_data(d: Path, events: int, files: int, basket: int = 100_000) -> list[str]:
    import awkward as ak
    import uproot

    fields = ["Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge"]
    src = uproot.open(SOURCE)["Events"].arrays(fields)
    mu = ak.zip({f[5:]: src[f] for f in fields})
    per = events // files
    paths = []
    for i in range(files):
        p = d / f"dimuon_{i}.root"
        paths.append(str(p))
        if p.exists():
            continue
        with uproot.recreate(p, compression=uproot.ZSTD(5)) as f:
            for start in range(0, per, basket):
                m = min(basket, per - start)
                first = i * per + start
                idx = (first + np.arange(m)) % len(mu)
                cols = {"run": np.ones(m, np.uint32), "luminosityBlock": ((first + np.arange(m)) // 1000).astype(np.uint32),
                        "event": (first + np.arange(m)).astype(np.uint64), "Muon": mu[idx]}
                if start == 0:
                    f.mktree("Events", {k: (v.dtype if isinstance(v, np.ndarray) else v.type) for k, v in cols.items()})
                f["Events"].extend(cols)
    return paths


# -- one peer per process -------------------------------------------------------------------------
def run_hepray(paths, out: Path, cores: int) -> dict:
    import hepray
    from hepray.engine.runtime import ensure_ray

    t0 = time.perf_counter()
    ensure_ray()
    t_ray = time.perf_counter() - t0
    job = {"kind": "skim", "name": "bench_analysis", "dataset": {"files": paths, "steps": STEPS, "shard_events": 200_000},
           "keep": ["dimuon_mass"], "output": {"dir": str(out)}, "engine": {"workers": cores, "progress_every_s": 600}}
    t0 = time.perf_counter()
    s = hepray.run(job, overwrite=True, quiet=True)
    wall = time.perf_counter() - t0
    import awkward as ak
    import uproot

    man = json.loads((out / "parts" / "_manifest.json").read_text())
    arr = ak.concatenate([uproot.open(out / "parts" / p["part"])["hepray"].arrays(["event", "dimuon_mass"])
                          for p in man["parts"] if p["n_out"]])
    return {"seconds": wall, "ray_start_s": t_ray, "events_in": s["events_in"], "events_out": s["events_out"],
            "event": ak.to_numpy(arr.event), "mass": ak.to_numpy(arr.dimuon_mass)}


def run_coffea(paths, out: Path, cores: int) -> dict:
    import awkward as ak
    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    class Dimuon(processor.ProcessorABC):
        def process(self, events):
            mu = events.Muon
            events = events[ak.num(mu) == 2]
            mu = events.Muon
            events, mu = events[mu.charge[:, 0] != mu.charge[:, 1]], mu[mu.charge[:, 0] != mu.charge[:, 1]]
            mass = (mu[:, 0] + mu[:, 1]).mass
            return {"n": len(events), "event": processor.column_accumulator(ak.to_numpy(events.event)),
                    "mass": processor.column_accumulator(ak.to_numpy(mass))}

        def postprocess(self, accumulator):
            return accumulator

    NanoAODSchema.warn_missing_crossrefs = False
    runner = processor.Runner(executor=processor.FuturesExecutor(workers=cores, status=False),
                              pre_executor=processor.FuturesExecutor(workers=cores, status=False), schema=NanoAODSchema,
                              chunksize=200_000, savemetrics=True)
    t0 = time.perf_counter()
    res, metrics = runner({"data": {"files": {p: "Events" for p in paths}}}, Dimuon(), treename="Events")
    wall = time.perf_counter() - t0
    return {"seconds": wall, "events_in": int(metrics["entries"]), "events_out": int(res["n"]),
            "event": res["event"].value, "mass": res["mass"].value}


def run_rdataframe(paths, out: Path, cores: int) -> dict:
    import ROOT

    ROOT.gROOT.SetBatch(True)
    ROOT.EnableImplicitMT(cores)
    t0 = time.perf_counter()
    df = ROOT.RDataFrame("Events", paths)
    n_in = df.Count()
    sel = (df.Filter("nMuon == 2").Filter("Muon_charge[0] != Muon_charge[1]")
           .Define("dimuon_mass", "ROOT::VecOps::InvariantMass(ROOT::RVecD(Muon_pt), ROOT::RVecD(Muon_eta), "
                                 "ROOT::RVecD(Muon_phi), ROOT::RVecD(Muon_mass))"))
    snap = str(out / "rdf.root")
    sel.Snapshot("Events", snap, ["event", "dimuon_mass"])
    wall = time.perf_counter() - t0
    import uproot

    t = uproot.open(snap)["Events"].arrays(["event", "dimuon_mass"], library="np")
    return {"seconds": wall, "events_in": int(n_in.GetValue()), "events_out": len(t["event"]),
            "event": t["event"], "mass": t["dimuon_mass"]}


PEERS = {"hepray": run_hepray, "coffea": run_coffea, "rdataframe": run_rdataframe}


# -- the driver ------------------------------------------------------------------------------------
def _tree_rss_mb(root: int) -> float:
    """RSS of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(pid))
            except OSError:
                pass
    total, todo = 0.0, [root]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0) / 1024
        except OSError:
            pass
    return total


def measure(peer: str, paths, d: Path, cores: int) -> dict:
    out = d / f"out_{peer}"
    out.mkdir(exist_ok=True)
    result = out / "result.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": f"{HERE.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, __file__, "--peer", peer, "--cores", str(cores), "--out", str(out),
                             *paths], env=env)
    peak, stop = [0.0], [False]

    def sample():
        while not stop[0]:
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    rc = proc.wait()
    stop[0] = True
    t.join()
    if rc != 0:
        return {"peer": peer, "error": f"exit {rc}"}
    r = dict(np.load(result, allow_pickle=False))
    info = json.loads((out / "result.json").read_text())
    return {"peer": peer, **info, "peak_rss_mb": round(peak[0]), "event": r["event"], "mass": r["mass"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--peers", default="hepray,coffea,rdataframe")
    ap.add_argument("--dir", default=None, help="keep the replicated files here (default: a temporary folder)")
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.peer:  # a child: one peer, results to --out
        out = Path(args.out)
        r = PEERS[args.peer](args.paths, out, args.cores)
        np.savez(out / "result.npz", event=np.asarray(r.pop("event"), np.uint64), mass=np.asarray(r.pop("mass"), np.float64))
        (out / "result.json").write_text(json.dumps(r))
        return

    d = Path(args.dir or tempfile.mkdtemp(prefix="hepray_bench_analysis_"))
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = make_data(d, args.events, args.files)
    print(f"data: {args.events} events in {args.files} files ({sum(os.path.getsize(p) for p in paths) / 1e6:.0f} MB) "
          f"made in {time.perf_counter() - t0:.0f}s", flush=True)
    rows = []
    for peer in args.peers.split(","):
        if peer == "rdataframe":
            try:
                import ROOT  # noqa: F401
            except ImportError:
                print("rdataframe: skipped (pip install root)")
                continue
        if peer == "coffea":
            try:
                import coffea  # noqa: F401
            except ImportError:
                print("coffea: skipped (pip install coffea)")
                continue
        r = measure(peer, paths, d, args.cores)
        rows.append(r)
        if "error" not in r:
            print(f"{peer:11s} {r['seconds']:7.2f} s  {r['events_in'] / r['seconds'] / 1e6:6.2f} M events/s  "
                  f"peak {r['peak_rss_mb']:6d} MB  out {r['events_out']}", flush=True)
        else:
            print(f"{peer}: {r['error']}")
    ok = [r for r in rows if "error" not in r]
    by = {r["peer"]: r for r in ok}
    summary = {"events": args.events, "files": args.files, "cores": args.cores, "load_average": os.getloadavg()[0],
               "timed": "hepray: hepray.run (Ray started before); coffea: Runner call (pool start, preprocessing); "
                        "rdataframe: graph, JIT and Snapshot", "peers": {}}
    ref = by.get("rdataframe")
    for r in ok:
        row = {k: r[k] for k in ("seconds", "events_in", "events_out", "peak_rss_mb")}
        row["events_per_s"] = round(r["events_in"] / r["seconds"])
        if "ray_start_s" in r:  # a fresh local Ray instance; a cluster or a second run has it already
            row["ray_start_s"] = round(r["ray_start_s"], 2)
            row["events_per_s_with_ray_start"] = round(r["events_in"] / (r["seconds"] + r["ray_start_s"]))
        if ref is not None and r is not ref:
            a, b = np.argsort(r["event"]), np.argsort(ref["event"])
            same = np.array_equal(r["event"][a], ref["event"][b])
            row["same_events_as_rdataframe"] = bool(same)
            if same:
                diff = np.abs(r["mass"][a].astype(np.float64) - ref["mass"][b])
                rel = diff / np.maximum(np.abs(ref["mass"][b]), 1e-6)
                row["max_rel_diff_vs_rdataframe"] = float(rel.max())
                row["max_abs_diff_vs_rdataframe_gev"] = float(diff.max())
                row["rel_diff_above_2gev"] = float(rel[ref["mass"][b] > 2].max())
        summary["peers"][r["peer"]] = row
    h = by.get("hepray")
    for peer in ("coffea", "rdataframe"):
        if h and peer in by:
            summary[f"hepray_over_{peer}_events_per_s"] = round(by[peer]["seconds"] / h["seconds"], 3)
            summary[f"hepray_with_ray_start_over_{peer}"] = round(by[peer]["seconds"] / (h["seconds"] + h["ray_start_s"]), 3)
            summary[f"hepray_over_{peer}_peak_memory"] = round(h["peak_rss_mb"] / by[peer]["peak_rss_mb"], 3)
            print(f"hepray / {peer}: {by[peer]['seconds'] / h['seconds']:.2f}x events/s, "
                  f"{h['peak_rss_mb'] / by[peer]['peak_rss_mb']:.2f}x peak memory")
    for r, row in summary["peers"].items():
        if "same_events_as_rdataframe" in row:
            print(f"{r} vs rdataframe: same events {row['same_events_as_rdataframe']}, "
                  f"max rel diff {row.get('max_rel_diff_vs_rdataframe', float('nan')):.2e} "
                  f"(above 2 GeV {row.get('rel_diff_above_2gev', float('nan')):.2e})")
    res = HERE / "results" / "analysis.json"
    res.write_text(json.dumps(summary, indent=1))
    print(f"-> {res}")


if __name__ == "__main__":
    main()
