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

import numpy as np

from .api import run
from .errors import ConfigError

# (step, job file, overrides). Order matters: later jobs read earlier outputs.
STEPS: list[tuple[str, str, dict]] = [
    ("generate", "jobs/generate.yaml", {"output.dir": "runs/demo/generate"}),
    ("train_bdt", "jobs/train_bdt.yaml", {}),
    ("infer_bdt", "jobs/infer_bdt.yaml", {}),
    # weighted score templates for combine/pyhf and the pyhf fit on them (docs/templates.md)
    ("templates", "jobs/templates.yaml", {}),
    ("train_classifier", "jobs/train_classifier.yaml", {}),
    ("train_adnn", "jobs/train_adnn.yaml", {}),
    ("train_systematic", "jobs/train_systematic.yaml", {}),
    ("train_mlp", "jobs/train_mlp.yaml", {}),
    ("train_gnn", "jobs/train_gnn.yaml", {}),
    ("infer_gnn", "jobs/infer_gnn.yaml", {}),
    ("train_jetgraph", "jobs/train_jetgraph.yaml", {}),
    # predictive uncertainty (docs/uncertainty.md): bagging bands, calibration, ensemble inference
    ("uncertainty_jetgraph", "jobs/uncertainty_jetgraph.yaml", {}),
    ("uncertainty_classifier", "jobs/uncertainty_classifier.yaml", {}),
    ("infer_ensemble", "jobs/infer_ensemble.yaml", {}),
    ("train_flashsim", "jobs/train_flashsim.yaml", {}),
    ("flashsim", "jobs/flashsim.yaml", {}),
    ("generate_dq", "jobs/generate_dq.yaml", {}),
    ("train_anomaly", "jobs/train_anomaly.yaml", {}),
    ("anomaly_scan", "jobs/anomaly_scan.yaml", {}),
    ("fpga_bdt", "jobs/fpga_bdt.yaml", {}),
    ("fpga_mlp", "jobs/fpga_mlp.yaml", {}),
    # the column language on the committed CMS open-data files (docs/analysis.md)
    ("dimuon", "jobs/dimuon.yaml", {}),
    ("nanoaod_train_bdt", "jobs/nanoaod_train_bdt.yaml", {}),
    ("nanoaod_infer_bdt", "jobs/nanoaod_infer_bdt.yaml", {}),
]
DIMUON_PEAKS = {"$\\eta$": 0.548, "$\\rho,\\omega$": 0.78, "$\\phi$": 1.019, "J/$\\psi$": 3.097,
                "$\\psi'$": 3.686, "$\\Upsilon$": 9.46, "Z": 91.19}

def plot_dimuon(run_dir) -> Path:
    """The dimuon mass spectrum of the ``dimuon`` step's parts, log-log, resonances marked."""
    import awkward as ak
    import uproot

    from .report.plots import mass_spectrum

    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "parts" / "_manifest.json").read_text())
    masses = [uproot.open(run_dir / "parts" / p["part"])["hepray"]["dimuon_mass"].array(library="np")
              for p in manifest["parts"] if p["n_out"]]
    values = np.concatenate(masses) if masses else np.zeros(0)
    return mass_spectrum(values, run_dir / "plots" / "dimuon_mass.png", marks=DIMUON_PEAKS,
                         title=f"CMS 2012 DoubleMuParked: {len(values)} opposite-charge dimuon events")


# summary keys worth a glance, printed when a step returns them
SHOW = ("events_in", "events_out", "shards", "plot", "auc", "rejection_at_30", "accuracy", "mode", "two_sample_auc",
        "lumi_auc", "flagged", "lumi_found", "lumi_good_flagged", "decision_agreement", "chosen_precision", "auc_drop",
        "significance_expected", "mu_up_expected", "ece", "ensemble_auc", "bagging_coverage")


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
        if name == "dimuon":
            summary["plot"] = str(plot_dimuon(summary["run_dir"]))
            from .report.html import write_report

            write_report(summary["run_dir"])  # again: with the plot made after the run
        results[name] = {"seconds": round(time.perf_counter() - t0, 1), "run_dir": summary.get("run_dir"),
                         **{k: summary[k] for k in SHOW if k in summary}}
    out = Path("runs/demo")
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_summary.json").write_text(json.dumps(results, indent=1, default=str))
    from .report.html import write_index

    index = write_index(out, results)
    print(f"\n=== hepray demo: {len(results)} steps in {time.perf_counter() - t_all:.0f}s ===", file=sys.stderr)
    for name, r in results.items():
        brief = ", ".join(f"{k}={r[k]:.4g}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in SHOW if k in r)
        print(f"  {name:16s} {r['seconds']:6.1f}s  {brief}  -> {r['run_dir']}", file=sys.stderr)
    print(f"plots: runs/demo/*/plots/*.png; every step's report.html linked from {index}", file=sys.stderr)
    return results
