"""Reading: events/s and MB/s (compressed) for flat and jagged branches, per codec, through
hepray's shard reader on the engine (`kind: skim` with no output columns beyond identity) vs
`uproot.iterate` alone in one process, side by side.

    python benchmarks/bench_read.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def write(path: Path, n: int, codec: str):
    import awkward as ak
    import uproot

    from hepray.io.parts import _compression

    rng = np.random.default_rng(1)
    with uproot.recreate(path, compression=_compression(codec)) as f:
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            k = rng.poisson(8, m)
            cols = {f"x{i}": rng.normal(size=m).astype(np.float32) for i in range(8)}
            cols["event"] = np.arange(start, start + m, dtype=np.int64)
            cols["c_pt"] = ak.unflatten(rng.exponential(20, k.sum()).astype(np.float32), k)
            cols["c_eta"] = ak.unflatten(rng.normal(size=k.sum()).astype(np.float32), k)
            if start == 0:
                f.mktree("Events", {c: (v.dtype if isinstance(v, np.ndarray) else v.type.content) for c, v in cols.items()})
            f["Events"].extend(cols)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    import uproot

    import hepray

    d = Path(tempfile.mkdtemp(prefix="hepray_bench_read_"))
    rows = []
    for codec in ("zstd", "lz4", "zlib", "none"):
        f = d / f"{codec}.root"
        write(f, args.events, codec)
        tree = uproot.open(f)["Events"]
        for kind, branches in (("flat", [f"x{i}" for i in range(8)]), ("jagged", ["c_pt", "c_eta"])):
            nbytes = sum(tree[b].compressed_bytes for b in branches)
            t0 = time.perf_counter()
            for _ in uproot.iterate(f"{f}:Events", branches, step_size=250_000):
                pass
            t_up = time.perf_counter() - t0
            job = {"kind": "skim", "name": "read", "dataset": {"files": str(f), "branches": branches, "shard_events": 250_000},
                   "output": {"dir": str(d / f"run_{codec}_{kind}"), "format": "parquet", "compression": "none"},
                   "engine": {"workers": args.workers, "progress_every_s": 60}}
            hepray.run(job, overwrite=True, quiet=True)  # warm the actors' imports once
            t0 = time.perf_counter()
            s = hepray.run(job, overwrite=True, quiet=True)
            t_hr = time.perf_counter() - t0
            assert s["events_out"] == args.events
            rows.append({"codec": codec, "branches": kind, "uproot_iterate_ev_s": round(args.events / t_up),
                         "hepray_ev_s": round(args.events / t_hr), "uproot_MB_s": round(nbytes / t_up / 1e6, 1),
                         "hepray_MB_s": round(nbytes / t_hr / 1e6, 1), "ratio": round(t_up / t_hr, 2)})
            print(rows[-1], flush=True)
    print("\nhepray's skim reads, then writes each shard again as Parquet, so it does more than iterate alone.")
    Path("benchmarks/results").mkdir(exist_ok=True)
    Path("benchmarks/results/read.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
