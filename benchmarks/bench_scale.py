"""Scale: shard planning cost per file (in the driver and in parallel Ray tasks) and driver
memory per shard, at 10^3-10^4 files. The files are names (symlinks) of one small ROOT file:
planning still opens and reads the metadata of each one.

    python benchmarks/bench_scale.py [--files 10000]

Bookkeeping (issue 21): ``--shards 10000,100000`` runs, each in its own process, a skim of that
many 10-event shards (symlinks of one file of 100 clusters) and its ``--resume``, and prints the
driver's peak RSS, shards/s and the resume's whole time, side by side, with the growth of the
peak from the smallest to the largest count.

    python benchmarks/bench_scale.py --shards 10000,100000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import PeakRSS, rss_mb


def bookkeeping(n_shards: int) -> dict:
    import hepray
    from hepray.engine.runtime import ensure_ray
    from hepray.testing import write_toy_root

    d = Path(tempfile.mkdtemp(prefix="hepray_bench_scale_shards_"))
    src = write_toy_root(d / "src.root", 1000, basket=10)  # 100 clusters of 10 events: 100 shards a file
    for i in range(n_shards // 100):
        (d / f"f{i:06d}.root").symlink_to(src)
    ensure_ray()
    job = {"kind": "skim", "name": "scale", "dataset": {"files": str(d / "f*.root"), "branches": ["f0"],
                                                        "shard_events": 10},
           "output": {"dir": str(d / "run"), "format": "parquet"}, "engine": {"progress_every_s": 60}}
    res = {"shards": n_shards, "driver_rss_before_mb": round(rss_mb(), 1)}
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        s = hepray.run(job, quiet=True)
    res["run_seconds"] = round(time.perf_counter() - t0, 1)
    assert s["shards_ok"] == n_shards and s["events_out"] == 10 * n_shards, s
    res["shards_per_s"] = round(n_shards / res["run_seconds"], 1)
    res["driver_peak_rss_mb"] = round(mem.peak, 1)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        s = hepray.run(job, resume=True, quiet=True)
    res["resume_seconds"] = round(time.perf_counter() - t0, 1)
    res["resume_peak_rss_mb"] = round(mem.peak, 1)
    assert s["shards_resumed"] == n_shards
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--shards", default="", help="comma-separated shard counts for the bookkeeping runs")
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(bookkeeping(args.one)))
        return
    if args.shards:
        import subprocess
        import sys

        rows = []
        for n in [int(x) for x in args.shards.split(",")]:
            r = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr[-3000:]
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
        res = {"runs": rows, "peak_rss_growth_mb": round(rows[-1]["driver_peak_rss_mb"] - rows[0]["driver_peak_rss_mb"], 1)}
        print(json.dumps(res, indent=1))
        Path("benchmarks/results").mkdir(exist_ok=True)
        Path("benchmarks/results/scale_shards.json").write_text(json.dumps(res, indent=1))
        return
    import hepray
    from hepray.config import DatasetSpec
    from hepray.data.planning import iter_plan
    from hepray.engine.runtime import ensure_ray
    from hepray.testing import write_toy_root

    d = Path(tempfile.mkdtemp(prefix="hepray_bench_scale_"))
    src = write_toy_root(d / "src.root", 1000, basket=1000)
    for i in range(args.files):
        (d / f"f{i:06d}.root").symlink_to(src)
    spec = DatasetSpec(files=str(d / "f*.root"), branches=["f0"], shard_events=1000)
    ensure_ray()
    res = {"files": args.files}
    n_seq = min(args.files, 1000)
    spec_seq = DatasetSpec(files=[str(d / f"f{i:06d}.root") for i in range(n_seq)], branches=["f0"], shard_events=1000)
    t0 = time.perf_counter()
    list(iter_plan(spec_seq, use_ray=False))
    res["plan_ms_per_file_driver"] = round((time.perf_counter() - t0) / n_seq * 1e3, 3)
    t0 = time.perf_counter()
    shards = sum(1 for _ in iter_plan(spec, use_ray=True))
    res["plan_ms_per_file_ray_tasks"] = round((time.perf_counter() - t0) / args.files * 1e3, 3)
    res["shards"] = shards
    job = {"kind": "skim", "name": "scale", "dataset": {"files": str(d / "f*.root"), "branches": ["f0"], "shard_events": 1000},
           "output": {"dir": str(d / "run"), "format": "parquet"}, "engine": {"progress_every_s": 30}}
    before = rss_mb()
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        s = hepray.run(job, overwrite=True, quiet=True)
    res["run_seconds"] = round(time.perf_counter() - t0, 1)
    res["shards_per_s"] = round(shards / res["run_seconds"], 1)
    res["driver_rss_before_mb"] = round(before, 1)
    res["driver_peak_rss_mb"] = round(mem.peak, 1)
    res["driver_kb_per_shard"] = round((mem.peak - before) * 1024 / shards, 2)
    assert s["events_out"] == 1000 * args.files
    print(json.dumps(res, indent=1))
    Path("benchmarks/results").mkdir(exist_ok=True)
    Path("benchmarks/results/scale.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
