"""Scale: shard planning cost per file (in the driver and in parallel Ray tasks) and driver
memory per shard, at 10^3-10^4 files. The files are names (symlinks) of one small ROOT file:
planning still opens and reads the metadata of each one.

    python benchmarks/bench_scale.py [--files 10000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import PeakRSS, rss_mb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    args = ap.parse_args()
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
