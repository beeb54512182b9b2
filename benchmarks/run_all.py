"""Run every benchmark (each compares hepray with its peer side by side) and write one table.

    python benchmarks/run_all.py [--quick]

Each script writes benchmarks/results/<name>.json; this collects them into
benchmarks/results/table.md (the table in docs/performance.md comes from it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
# script, full-size arguments, quick arguments
BENCHES = [
    ("bench_infer.py", [], ["--events", "400000"]),
    ("bench_bdt.py", [], ["--events", "200000"]),
    ("bench_read.py", [], ["--events", "200000"]),
    ("bench_classifier.py", [], []),
    ("bench_gnn.py", [], []),
    ("bench_flashsim.py", [], []),
    ("bench_anomaly.py", [], []),
    ("bench_anomaly_dqm.py", [], ["--good-lumis", "50", "--per-strength", "4"]),
    ("bench_fpga.py", [], []),
    ("bench_dask.py", [], []),
    ("bench_scale.py", [], ["--files", "1000"]),
    ("bench_analysis.py", [], ["--events", "400000"]),
    ("bench_templates.py", [], ["--events", "400000"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller inputs (minutes, not tens of minutes)")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    status = {}
    for script, full, quick in BENCHES:
        name = script.removeprefix("bench_").removesuffix(".py")
        if args.only and name not in args.only:
            continue
        if not (HERE / script).exists():
            status[name] = "not present"
            continue
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, str(HERE / script), *(quick if args.quick else full)], cwd=HERE.parent,
                           capture_output=True, text=True)
        status[name] = "ok" if r.returncode == 0 else f"failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"
        print(f"{name:12s} {time.perf_counter() - t0:7.1f}s  {status[name]}", flush=True)
        print("\n".join("    " + line for line in r.stdout.strip().splitlines()[-3:]), flush=True)
    lines = ["| benchmark | result (hepray vs peer) |", "| --- | --- |"]
    for f in sorted((HERE / "results").glob("*.json")):
        res = json.loads(f.read_text())
        brief = res if isinstance(res, list) else {k: v for k, v in res.items() if not isinstance(v, (dict, list))}
        lines.append(f"| {f.stem} | `{json.dumps(brief)[:600]}` |")
    (HERE / "results" / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
