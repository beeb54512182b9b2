"""Object stores (issue 21): `hepray run` of an infer job (xgboost, 100 trees of depth 6 on 16
features) writing its parts to `s3://` on a local S3 API (moto's server, a separate process)
and to local disk, side by side, each a whole `hepray run` process, median of --rounds.

    python benchmarks/bench_store.py [--events 2000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from common import write_flat

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import fsspec
    import uproot
    import xgboost as xgb

    from hepray.models.artifact import save_metadata

    d = Path(tempfile.mkdtemp(prefix="hepray_bench_store_"))
    files = []
    for i in range(4):
        write_flat(d / f"flat_{i}.root", args.events // 4, seed=i)
        files.append(str(d / f"flat_{i}.root"))
    feats = [f"x{i}" for i in range(16)]
    a = uproot.open(files[0])["Events"].arrays([*feats, "label"], library="np", entry_stop=100_000)
    X = np.column_stack([a[f] for f in feats])
    booster = xgb.train({"max_depth": 6, "objective": "binary:logistic", "nthread": 2},
                        xgb.DMatrix(X, a["label"]), 100)
    (d / "model").mkdir()
    booster.save_model(d / "model" / "model.json")
    save_metadata(d / "model", {"type": "xgboost", "file": "model.json", "features": feats, "classes": ["s"],
                                "task": "binary"})
    port = 5555 + os.getpid() % 1000
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    try:
        time.sleep(3)
        fs = fsspec.filesystem("s3", key="testing", secret="testing", endpoint_url=env["AWS_ENDPOINT_URL"])
        fs.mkdir("bench")
        walls = {"local": [], "s3": []}
        for r in range(args.rounds):
            for where in ("local", "s3"):
                out = str(d / f"out_{r}") if where == "local" else f"s3://bench/out_{r}"
                job = {"kind": "infer", "name": "store", "dataset": {"files": files, "tree": "Events",
                                                                     "shard_events": args.events // 8},
                       "model": {"path": str(d / "model")}, "output": {"dir": out, "format": "parquet"},
                       "engine": {"workers": 2, "progress_every_s": 60}}
                (d / "job.yaml").write_text(yaml.safe_dump(job))
                t0 = time.perf_counter()
                p = subprocess.run(["hepray", "run", str(d / "job.yaml")], env=env, capture_output=True, text=True)
                walls[where].append(time.perf_counter() - t0)
                assert p.returncode == 0, p.stderr[-3000:]
        n = len(fs.glob("bench/out_0/parts/*.parquet"))
        assert n == 8, n
    finally:
        server.terminate()
    res = {"events": args.events, "rounds": args.rounds,
           **{f"{k}_wall_s": round(statistics.median(v), 2) for k, v in walls.items()},
           **{f"{k}_events_per_s": round(args.events / statistics.median(v)) for k, v in walls.items()}}
    res["s3_over_local"] = round(res["s3_events_per_s"] / res["local_events_per_s"], 3)
    print(json.dumps(res, indent=1))
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "store.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
