"""Scoring a Dask dataframe: `hepray.dask.score` vs the same xgboost model called directly in a
hand-written `map_partitions` (the peers: the booster inside the function, as users write it, and the booster
loaded once per worker and kept on it), side by side in one run on one `LocalCluster` (2 worker
processes, 1 thread each). The dataframe is persisted on the workers first and only a
sum of the scores comes back, so both sides time scoring, not transfers. Rounds alternate
between the three; the median of each is reported, and hepray's overhead in % of the peer's time.

    python benchmarks/bench_dask.py [--events 1000000] [--partitions 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

FEATURES = [f"x{i}" for i in range(16)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import dask.dataframe as dd
    import pandas as pd
    import xgboost as xgb
    from distributed import Client, LocalCluster, wait

    import hepray.dask
    from hepray.models.artifact import save_metadata

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, args.events)
    df = pd.DataFrame({f: (rng.normal(size=args.events) + 0.3 * y * (i % 3)).astype(np.float32)
                       for i, f in enumerate(FEATURES)})
    df["label"] = y.astype(np.int32)
    # the model of bench_infer: 100 trees of depth 6 on 16 features
    n_fit = min(200_000, args.events)
    booster = xgb.train({"max_depth": 6, "eta": 0.1, "objective": "binary:logistic", "tree_method": "hist",
                         "nthread": 2}, xgb.DMatrix(df[FEATURES].to_numpy()[:n_fit], y[:n_fit]), 100)
    mdir = Path(tempfile.mkdtemp(prefix="hepray_bench_dask_")) / "model"
    mdir.mkdir()
    booster.save_model(mdir / "model.ubj")
    save_metadata(mdir, {"type": "xgboost", "file": "model.ubj", "features": FEATURES, "classes": ["s"],
                         "task": "binary"})
    booster.set_param({"nthread": 1})

    def direct(part):  # what a user writes by hand: the booster travels with the function
        return pd.Series(booster.inplace_predict(part[FEATURES].to_numpy()), index=part.index, name="score",
                         dtype=np.float32)

    raw = bytes(booster.save_raw("ubj"))

    def cached(part):  # by hand, done well: the booster loaded once per worker and kept on it
        from distributed import get_worker

        w = get_worker()
        b = getattr(w, "_bench_booster", None)
        if b is None:
            b = w._bench_booster = xgb.Booster(params={"nthread": 1})
            b.load_model(bytearray(raw))
        return pd.Series(b.inplace_predict(part[FEATURES].to_numpy()), index=part.index, name="score",
                         dtype=np.float32)

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster):
        ddf = dd.from_pandas(df, npartitions=args.partitions).persist()
        wait(ddf)
        graphs = {
            "hepray": lambda: hepray.dask.score(ddf, str(mdir), append=False)["score"].sum(),
            "direct": lambda: ddf.map_partitions(direct, meta=("score", np.float32)).sum(),
            "cached": lambda: ddf.map_partitions(cached, meta=("score", np.float32)).sum(),
        }
        sums = {k: float(g().compute()) for k, g in graphs.items()}  # warm-up: models loaded, code imported
        assert max(sums.values()) - min(sums.values()) <= 1e-3 * abs(sums["direct"]), sums  # same scores
        times: dict[str, list[float]] = {k: [] for k in graphs}
        for r in range(args.rounds):
            for k in np.roll(list(graphs), r):  # each side first in turn
                t0 = time.perf_counter()
                graphs[k]().compute()
                times[k].append(time.perf_counter() - t0)

    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: args.events / t for k, t in med.items()}
    overhead = {k: 100 * (med["hepray"] / med[k] - 1) for k in ("direct", "cached")}
    load = os.getloadavg()
    print(f"{args.events} events, {args.partitions} partitions, {args.workers} workers x 1 thread, "
          f"{args.rounds} rounds (median); load average {load[0]:.2f}")
    for k in graphs:
        print(f"  {k:7s} {med[k]:7.3f} s  {rate[k] / 1e6:6.2f} M events/s   rounds: "
              + " ".join(f"{t:.3f}" for t in times[k]))
    print(f"  hepray.dask overhead vs direct map_partitions: {overhead['direct']:+.1f}%, vs the cached "
          f"booster: {overhead['cached']:+.1f}%  (goal <= 10%)")
    out = Path(__file__).parent / "results" / "dask.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "events": args.events, "partitions": args.partitions, "workers": args.workers, "threads_per_worker": 1,
        "rounds": args.rounds, "seconds": times, "median_s": med, "events_per_s": rate,
        "overhead_pct": overhead, "goal_overhead_pct": 10, "loadavg": load,
    }, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
