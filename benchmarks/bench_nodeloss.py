"""Node loss: a 2-node Ray cluster on loopback (head and one worker node, 1 CPU each, token auth),
`hepray run` of an infer job as a whole process joining it; once with no fault, once with the
worker node's whole process tree SIGKILLed after a few committed parts. Prints both wall times,
their ratio, and whether every event came out once (by event id).

    python benchmarks/bench_nodeloss.py [--events 2000000] [--kill-after 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import uproot
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.raycluster import Node, cluster_env, wait_nodes  # noqa: E402

FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
               "RAY_health_check_timeout_ms": "1000"}


def committed(run: Path) -> int:
    d = run / "parts" / "_committed"
    return len(list(d.rglob("*.json"))) if d.exists() else 0


def one_run(d: Path, job: dict, name: str, kill_after: int | None) -> dict:
    client = cluster_env()
    env = {**client, **FAST_HEALTH}
    head = Node(env, d / f"{name}-head.log", head=True, num_cpus=1)
    nodes = [head]
    try:
        wait_nodes(head.address, env, 1)
        nodes.append(Node(env, d / f"{name}-worker.log", gcs=head.address, num_cpus=1))
        wait_nodes(head.address, env, 2)
        run = d / name
        job = {**job, "output": {**job["output"], "dir": str(run)}}
        (d / f"{name}.yaml").write_text(yaml.safe_dump(job))
        log = open(d / f"{name}.log", "w")
        t0 = time.perf_counter()
        p = subprocess.Popen(["hepray", "run", str(d / f"{name}.yaml")], env={**client, "RAY_ADDRESS": head.address},
                             stdout=log, stderr=subprocess.STDOUT)
        at_kill = None
        if kill_after is not None:
            while committed(run) < kill_after and p.poll() is None:
                time.sleep(0.1)
            at_kill = committed(run)
            nodes[1].kill()
        rc = p.wait()
        wall = time.perf_counter() - t0
        log.close()
    finally:
        for n in reversed(nodes):
            n.stop()
    man = json.loads((run / "parts" / "_manifest.json").read_text())
    ev = np.concatenate([uproot.open(run / "parts" / q["part"])["hepray"]["event"].array(library="np")
                         for q in man["parts"]])
    return {"rc": rc, "wall_s": round(wall, 2), "parts": man["shards"], "parts_at_kill": at_kill,
            "workers_lost": man.get("workers_lost"), "events_out": int(len(ev)), "unique_events": int(len(np.unique(ev)))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--kill-after", type=int, default=3)
    args = ap.parse_args()
    from hepray.testing import fit_toy_xgboost, write_toy_root

    d = Path(tempfile.mkdtemp(prefix="hepray_bench_nodeloss_"))
    per_file = args.events // 4
    files = [str(write_toy_root(d / f"in_{i}.root", per_file, seed=i, basket=per_file // 4)) for i in range(4)]
    model = fit_toy_xgboost(d / "model", files[:1])
    job = {"kind": "infer", "name": "nodeloss", "dataset": {"files": files, "tree": "Events",
                                                            "shard_events": per_file // 4},
           "model": {"path": str(model)}, "output": {"dir": "", "format": "root"},
           "engine": {"workers": 2, "keep_warm_s": 0, "progress_every_s": 30}}
    res = {"events": per_file * 4, "shards": 16, "nodes": "head 1 CPU + worker 1 CPU on 127.0.0.1"}
    res["no_fault"] = one_run(d, job, "clean", None)
    res["worker_node_killed"] = one_run(d, job, "killed", args.kill_after)
    res["wall_ratio_killed_vs_clean"] = round(res["worker_node_killed"]["wall_s"] / res["no_fault"]["wall_s"], 2)
    for k in ("no_fault", "worker_node_killed"):
        r = res[k]
        assert r["rc"] == 0 and r["unique_events"] == r["events_out"] == res["events"], (k, r)
    print(json.dumps(res, indent=1))
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "nodeloss.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
