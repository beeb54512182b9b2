"""What durable, checkable commits cost (issue 20): the fsync of each part and its folder around
the rename plus the part's sha256, per part of the inference benchmark's shape, against the same
commit without them (os.fsync and the checksum switched off in this process only); that cost as a
share of the time an actor spends on such a shard at bench_infer's measured rate; and
`hepray verify RUN_DIR` over 10,000 committed parts, timed as a whole process.

    python benchmarks/bench_durability.py [--rows 250000] [--parts 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def commit_ms(parts_dir: Path, rows: int, n: int, durable: bool) -> float:
    from hepray.data.shard import Shard
    from hepray.io import parts

    rng = np.random.default_rng(1)
    cols = {"run": np.ones(rows, np.int32), "luminosityBlock": np.ones(rows, np.int32),
            "event": np.arange(rows, dtype=np.int64), "score": rng.random(rows, dtype=np.float32)}
    saved = os.fsync, parts.sha256_file
    if not durable:
        os.fsync = lambda fd: None
        parts.sha256_file = lambda p: ""
    try:
        times = []
        for i in range(n):
            shard = Shard("f.root", "Events", i * rows, (i + 1) * rows, file_id="bench", index=i)
            t0 = time.perf_counter()
            parts.write_part(parts_dir, shard, cols, fmt="root", tree="hepray", compression="zstd",
                             result={"status": "ok", "n_in": rows})
            times.append(time.perf_counter() - t0)
    finally:
        os.fsync, parts.sha256_file = saved
    return statistics.median(times) * 1e3


def verify_folder(d: Path, n: int) -> Path:
    """A run folder of ``n`` committed parts (100 events each) and its manifest."""
    from hepray.data.shard import Shard
    from hepray.io.parts import write_json_atomic, write_part

    run = d / "verify_run"
    cols = {"event": np.arange(100, dtype=np.int64), "score": np.linspace(0, 1, 100, dtype=np.float32)}
    shards = [Shard("f.root", "Events", i * 100, (i + 1) * 100, file_id="v", index=i) for i in range(n)]
    recs = [write_part(run / "parts", s, cols, fmt="parquet", tree="hepray", compression="zstd",
                       result={"status": "ok", "index": s.index, "shard_id": s.shard_id}) for s in shards]
    write_json_atomic(run / "parts" / "_manifest.json",
                      {"parts": [{k: r[k] for k in ("index", "shard_id", "part", "bytes_written", "sha256")}
                                 for r in recs]})
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=250_000, help="events per part (bench_infer: 2M events in 8 shards)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--parts", type=int, default=10_000)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="hepray_bench_durability_"))
    res = {"rows_per_part": args.rows}
    commit_ms(d / "warm", args.rows, 2, True)  # imports, page cache
    res["commit_ms_durable"] = round(commit_ms(d / "a", args.rows, args.repeats, True), 2)
    res["commit_ms_without_fsync_checksum"] = round(commit_ms(d / "b", args.rows, args.repeats, False), 2)
    extra = res["commit_ms_durable"] - res["commit_ms_without_fsync_checksum"]
    res["fsync_checksum_ms_per_part"] = round(extra, 2)
    infer = ROOT / "benchmarks" / "results" / "infer.json"
    if infer.exists():  # an actor's time on such a shard at bench_infer's rate (events/s over its workers)
        r = json.loads(infer.read_text())
        shard_s = args.rows / (r["hepray_events_per_s"] / r["workers"])
        res["shard_seconds_at_bench_infer_rate"] = round(shard_s, 3)
        res["share_of_events_per_s_pct"] = round(100 * extra / 1e3 / (shard_s + extra / 1e3), 2)
    t0 = time.perf_counter()
    run = verify_folder(d, args.parts)
    res["made_parts_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    r = subprocess.run(["hepray", "verify", str(run)], capture_output=True, text=True)
    res["verify_parts"] = args.parts
    res["verify_wall_s"] = round(time.perf_counter() - t0, 2)
    res["verify_rc"] = r.returncode
    res["verify_says"] = (r.stdout + r.stderr).strip().splitlines()[-1:]
    assert r.returncode == 0, r.stdout + r.stderr
    print(json.dumps(res, indent=1))
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "durability.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
