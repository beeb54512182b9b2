"""Inference throughput: `hepray run` (kind: infer) vs a plain single-process uproot.iterate +
xgboost loop on the same files, side by side, and vs the limit computed from each stage's
measured per-event cost (2 cores: 2 / (read + predict)). Also the driver's peak memory at 1x and
10x the input (the 10x dataset repeats the files under other names).

    python benchmarks/bench_infer.py [--events 2000000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from common import PeakRSS, timed, write_flat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--no-coffea", dest="coffea", action="store_false", help="skip the coffea + Dask peer")
    args = ap.parse_args()
    import uproot
    import xgboost as xgb

    import hepray
    from hepray.models.artifact import save_metadata

    d = Path(args.dir or tempfile.mkdtemp(prefix="hepray_bench_infer_"))
    per_file = args.events // args.files
    files = []
    for i in range(args.files):
        p = d / f"flat_{i}.root"
        if not p.exists():
            write_flat(p, per_file, seed=i)
        files.append(str(p))
    feats = [f"x{i}" for i in range(16)]
    # model: 100 trees, depth 6, on 16 features (the reference shape)
    a = uproot.open(files[0])["Events"].arrays(feats + ["label"], entry_stop=200_000, library="np")
    X = np.column_stack([a[f] for f in feats])
    bst = xgb.train({"max_depth": 6, "eta": 0.1, "objective": "binary:logistic", "tree_method": "hist", "nthread": 2},
                    xgb.DMatrix(X, a["label"]), 100)
    mdir = d / "model"
    mdir.mkdir(exist_ok=True)
    bst.save_model(mdir / "model.ubj")
    save_metadata(mdir, {"type": "xgboost", "file": "model.ubj", "features": feats, "classes": ["s"], "task": "binary"})
    n = per_file * args.files

    # stage costs, one thread each
    def read_only():
        for _arrs in uproot.iterate([f"{f}:Events" for f in files], feats, step_size=500_000, library="np"):
            pass
    _, t_read = timed(read_only)
    bst1 = xgb.Booster(model_file=str(mdir / "model.ubj"))
    bst1.set_param({"nthread": 1})
    # real rows: tree traversal cost depends on the data (identical columns made predict look
    # 1.8x cheaper through branch prediction)
    a = uproot.open(files[0])["Events"].arrays(feats, entry_stop=500_000, library="np")
    Xb = np.column_stack([a[f] for f in feats]).astype(np.float32)
    _, t_pred = timed(bst1.inplace_predict, Xb)
    read_us, pred_us = t_read / n * 1e6, t_pred / len(Xb) * 1e6
    limit = args.workers / ((read_us + pred_us) * 1e-6)

    # the peer: a plain single-process loop (its predict uses all cores)
    bst2 = xgb.Booster(model_file=str(mdir / "model.ubj"))

    def plain():
        tot = 0
        for arrs in uproot.iterate([f"{f}:Events" for f in files], feats, step_size=500_000, library="np"):
            s = bst2.inplace_predict(np.column_stack([arrs[f] for f in feats]))
            tot += len(s)
        return tot
    n_plain, t_plain = timed(plain)

    # the other peer: coffea's processor on a Dask LocalCluster (2 single-thread workers), the
    # same model and chunk size; it returns counts, hepray also writes a part per shard
    t_coffea = coffea_run(files, str(mdir / "model.ubj"), feats, args.workers) if args.coffea else None

    def job(fs, out):
        return {"kind": "infer", "name": "bench", "dataset": {"files": fs, "shard_events": 250_000},
                "model": {"path": str(mdir)}, "output": {"dir": str(out)},
                "engine": {"workers": args.workers, "progress_every_s": 30}}

    hepray.run(job(files[:1], d / "warm"), overwrite=True, quiet=True)  # Ray start-up, not measured
    with PeakRSS() as mem1:
        s1, t_hep = timed(hepray.run, job(files, d / "run1x"), overwrite=True, quiet=True)
    links = []
    for k in range(10):
        for f in files:
            link = d / f"rep{k}_{Path(f).name}"
            if not link.exists():
                os.symlink(f, link)
            links.append(str(link))
    with PeakRSS() as mem10:
        s10, t_hep10 = timed(hepray.run, job(links, d / "run10x"), overwrite=True, quiet=True)
    assert s1["events_out"] == n and s10["events_out"] == 10 * n and n_plain == n

    res = {
        "events": n, "workers": args.workers,
        "read_us_per_event": round(read_us, 3), "predict_us_per_event_1thread": round(pred_us, 3),
        "limit_events_per_s": round(limit), "plain_loop_events_per_s": round(n / t_plain),
        "hepray_events_per_s": round(n / t_hep), "hepray_10x_events_per_s": round(10 * n / t_hep10),
        # the rate once actors are up: the 9n extra events over the extra time (start-up cancels)
        "hepray_marginal_events_per_s": round(9 * n / (t_hep10 - t_hep)),
        "hepray_marginal_over_limit": round(9 * n / (t_hep10 - t_hep) / limit, 3),
        "hepray_fixed_seconds_per_run": round(t_hep - n / (9 * n / (t_hep10 - t_hep)), 2),
        "coffea_dask_events_per_s": round(n / t_coffea) if t_coffea else None,
        "hepray_over_coffea": round(t_coffea / t_hep, 3) if t_coffea else None,
        "hepray_over_plain": round(t_plain / t_hep, 3), "hepray_over_limit": round(limit and (n / t_hep) / limit, 3),
        "driver_peak_rss_mb_1x": round(mem1.peak, 1), "driver_peak_rss_mb_10x": round(mem10.peak, 1),
    }
    print(json.dumps(res, indent=1))
    print(f"\nhepray {res['hepray_events_per_s']:,} ev/s | plain loop {res['plain_loop_events_per_s']:,} ev/s | "
          f"ratio {res['hepray_over_plain']:.2f}x | coffea+Dask {res['coffea_dask_events_per_s'] or 0:,} ev/s "
          f"(hepray/coffea {res['hepray_over_coffea'] or 0:.2f}x) | {res['hepray_over_limit']:.0%} of the 2-core limit "
          f"{res['limit_events_per_s']:,} ev/s | once started {res['hepray_marginal_events_per_s']:,} ev/s = "
          f"{res['hepray_marginal_over_limit']:.0%} of the limit, start-up {res['hepray_fixed_seconds_per_run']} s | driver peak RSS {res['driver_peak_rss_mb_1x']:.0f} MB (1x) vs "
          f"{res['driver_peak_rss_mb_10x']:.0f} MB (10x)")
    Path("benchmarks/results").mkdir(exist_ok=True)
    Path("benchmarks/results/infer.json").write_text(json.dumps(res, indent=1))


def coffea_run(files: list[str], model: str, feats: list[str], workers: int) -> float:
    """Seconds for coffea's Runner + DaskExecutor to score every event (cluster start not timed;
    one warm-up pass over the first file so workers have imported everything)."""
    import awkward as ak
    import xgboost as xgb
    from coffea import processor
    from coffea.nanoevents import BaseSchema
    from distributed import Client, LocalCluster

    class Score(processor.ProcessorABC):
        def __init__(self):
            self.booster = None

        def process(self, events):
            if self.booster is None:  # once per worker process
                self.booster = xgb.Booster(model_file=model)
                self.booster.set_param({"nthread": 1})
            X = np.column_stack([ak.to_numpy(events[f]) for f in feats]).astype(np.float32)
            return {"n": len(self.booster.inplace_predict(X))}

        def postprocess(self, acc):
            return acc

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        run = processor.Runner(executor=processor.DaskExecutor(client=client, status=False), schema=BaseSchema,
                               chunksize=250_000)
        fileset = {"flat": {"files": {f: "Events" for f in files}}}
        run({"flat": {"files": {files[0]: "Events"}}}, processor_instance=Score(), treename="Events")
        out, t = timed(run, fileset, processor_instance=Score(), treename="Events")
    assert out["n"] == sum(uproot_entries(f) for f in files)
    return t


def uproot_entries(f: str) -> int:
    import uproot

    with uproot.open(f) as fh:
        return fh["Events"].num_entries


if __name__ == "__main__":
    main()
