"""``hepray demo``: every workload, small and fast, chained on locally generated data.

Each step is an ordinary job run through :func:`hepray.run`; later steps read earlier outputs.
Every workload added to hepray adds its step here, so one command shows all of it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .api import run


def _sample(out: Path, workers):
    """A toy ROOT sample (2 files x 100k events) written with uproot."""
    from .testing import write_toy_root

    d = out / "toy"
    for i in range(2):
        write_toy_root(d / f"toy_{i}.root", 100_000, seed=i, basket=25_000)
    return {"files": 2, "events": 200_000, "dir": str(d)}


def _fit(out: Path, workers):
    from .testing import fit_toy_xgboost

    fit_toy_xgboost(out / "toy_model", sorted(str(p) for p in (out / "toy").glob("*.root")), rounds=50, depth=4)
    return {"model": str(out / "toy_model")}


def _infer(out: Path, workers):
    return run({"kind": "infer", "name": "infer_bdt",
                "dataset": {"files": str(out / "toy" / "*.root"), "shard_events": 50_000},
                "model": {"path": str(out / "toy_model")}, "output": {"dir": str(out / "infer_bdt")}},
               overwrite=True, workers=workers)


STEPS = [("sample", _sample), ("fit", _fit), ("infer_bdt", _infer)]


def run_demo(out: str | Path = "runs/demo", workers: int | None = None, steps: list[str] | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, fn in STEPS:
        if steps and name not in steps:
            continue
        print(f"\n=== hepray demo: {name} ===", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        res = fn(out, workers)
        results[name] = {"seconds": round(time.perf_counter() - t0, 2),
                         **{k: v for k, v in (res or {}).items() if k != "results"}}
    (out / "demo_summary.json").write_text(json.dumps(results, indent=1, default=str))
    print("\n=== hepray demo: summary ===", file=sys.stderr)
    for name, r in results.items():
        brief = {k: r[k] for k in ("events_in", "events_out", "auc", "shards") if k in r}
        print(f"  {name:14s} {r['seconds']:7.1f}s  {brief}", file=sys.stderr)
    print(f"outputs and plots under {out}/", file=sys.stderr)
    return results
