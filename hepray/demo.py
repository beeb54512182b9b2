"""``hepray demo``: every workload, small and fast, chained on locally generated data.

Each step is an ordinary job file from ``jobs/`` run through :func:`hepray.run`, so the demo
shows exactly what a user would run by hand; later steps read earlier outputs under
``runs/demo/``. Every workload added to hepray adds its step here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .api import run
from .errors import ConfigError

# (step, job file, overrides). Order matters: later jobs read earlier outputs.
STEPS: list[tuple[str, str, dict]] = [
    ("generate", "jobs/generate.yaml", {"output.dir": "runs/demo/generate"}),
    ("train_bdt", "jobs/train_bdt.yaml", {}),
    ("infer_bdt", "jobs/infer_bdt.yaml", {}),
    ("train_classifier", "jobs/train_classifier.yaml", {}),
    ("train_adnn", "jobs/train_adnn.yaml", {}),
    ("train_systematic", "jobs/train_systematic.yaml", {}),
    ("train_mlp", "jobs/train_mlp.yaml", {}),
    ("train_gnn", "jobs/train_gnn.yaml", {}),
    ("infer_gnn", "jobs/infer_gnn.yaml", {}),
    ("train_jetgraph", "jobs/train_jetgraph.yaml", {}),
    ("train_flashsim", "jobs/train_flashsim.yaml", {}),
    ("flashsim", "jobs/flashsim.yaml", {}),
    ("train_anomaly", "jobs/train_anomaly.yaml", {}),
    ("anomaly_scan", "jobs/anomaly_scan.yaml", {}),
    ("fpga_bdt", "jobs/fpga_bdt.yaml", {}),
    ("fpga_mlp", "jobs/fpga_mlp.yaml", {}),
]

# summary keys worth a glance, printed when a step returns them
SHOW = ("events_in", "events_out", "shards", "auc", "rejection_at_30", "accuracy", "mode", "two_sample_auc",
        "lumi_auc", "flagged", "decision_agreement", "chosen_precision", "auc_drop")


def run_demo(workers: int | None = None, steps: list[str] | None = None, root: str | Path = ".") -> dict:
    root = Path(root)
    if not (root / "jobs").is_dir():
        raise ConfigError("", "", "run `hepray demo` from the repository root (its jobs/ folder holds the demo's job files)")
    results = {}
    t_all = time.perf_counter()
    for name, job, overrides in STEPS:
        if steps and name not in steps:
            continue
        print(f"\n=== hepray demo: {name} ({job}) ===", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        summary = run(str(root / job), overwrite=True, workers=workers, overrides=overrides)
        results[name] = {"seconds": round(time.perf_counter() - t0, 1), "run_dir": summary.get("run_dir"),
                         **{k: summary[k] for k in SHOW if k in summary}}
    out = Path("runs/demo")
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_summary.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\n=== hepray demo: {len(results)} steps in {time.perf_counter() - t_all:.0f}s ===", file=sys.stderr)
    for name, r in results.items():
        brief = ", ".join(f"{k}={r[k]:.4g}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in SHOW if k in r)
        print(f"  {name:16s} {r['seconds']:6.1f}s  {brief}  -> {r['run_dir']}", file=sys.stderr)
    print("plots: runs/demo/*/plots/*.png", file=sys.stderr)
    return results
