"""Predictive uncertainty (docs/uncertainty.md), measured on the committed top/QCD jet sample:

1. bagging: wall time of N = 8 bootstrap MLP replicas trained in parallel Ray tasks
   (``bagging.models: 8``) vs the same 8 trainings one after another in one process and one
   thread (``bagging.parallel: false``): the parallel efficiency on this machine's cores;
2. inference throughput (events/s, one thread, the predictor ``kind: infer`` runs) of one MLP,
   the 8-member ensemble, MC dropout with N = 20 passes and the Bayesian MLP with 20 samples;
   training throughput of the bnn vs the deterministic MLP;
3. calibration and coverage: ECE and Brier before and after temperature scaling (test events),
   the coverage of the ensemble's ±1σ probability band vs the observed frequency per bin, and of
   the efficiency band vs the nominal model.

    python benchmarks/bench_uncertainty.py [--models 8] [--epochs 10]

Writes benchmarks/results/uncertainty.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import write_flat

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "generated" / "sample" / "parts"
JET = ["reco_pt", "reco_eta", "reco_mass", "reco_tau1", "reco_tau2", "reco_tau3", "reco_tau21", "reco_tau32",
       "reco_nconst"]


def job(out: Path, epochs: int, **extra) -> dict:
    return {"kind": "train_classifier", "name": "unc", "output": {"dir": str(out)},
            "dataset": {"tree": "jets", "cut": "reco_ok == 1",
                        "samples": [{"name": "qcd", "files": str(SAMPLE / "qcd_*.root"), "label": 0},
                                    {"name": "ttbar", "files": str(SAMPLE / "ttbar_*.root"), "label": 1}]},
            "features": JET, "mode": "direct", "seed": 1, "model": {"hidden": [32, 32], "dropout": 0.1},
            "training": {"epochs": epochs, "batch_size": 128, "patience": None},
            "attribution": {"events": 0}, "export": {"torchscript": False, "onnx": False}, **extra}


def bagging_timing(hepray, root: Path, base: dict, models: int, variable: str, what: str) -> dict:
    """Wall seconds of the replicas stage, in parallel Ray tasks vs one after another in the
    driver (``bagging.parallel: false``), same job otherwise."""
    from hepray.engine.runtime import cluster_cpus

    seconds = {}
    for parallel in (True, False):
        out = root / ("parallel" if parallel else "serial")
        hepray.run({**base, "output": {"dir": str(out)}, "bagging": {"models": models, "parallel": parallel, "save": False,
                                                                      "variables": [variable], "bins": 6}},
                   quiet=True, overwrite=True)
        m = json.loads((out / "metrics.json").read_text())
        seconds[parallel] = m["bagging"]["seconds"]
        nominal = m["seconds"]["train"]
    cpus = cluster_cpus()
    return {"data": what, "models": models, "ray_cpus": cpus, "replicas_parallel_s": seconds[True],
            "replicas_serial_s": seconds[False], "nominal_training_s": nominal,
            "speedup": round(seconds[False] / seconds[True], 2),
            "parallel_efficiency": round(seconds[False] / seconds[True] / min(cpus, models), 2),
            "loadavg_1min": round(os.getloadavg()[0], 2)}


def events_per_s(predict, X: np.ndarray, repeats: int = 3) -> float:
    predict(X[:1000])  # warm
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(X)
        best = min(best, time.perf_counter() - t0)
    return len(X) / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--flat-events", type=int, default=300_000)
    ap.add_argument("--flat-epochs", type=int, default=3)
    a = ap.parse_args()

    import hepray
    from hepray.models.predict import ModelBundle

    out: dict = {"cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = tmp / "bag"
        t0 = time.perf_counter()
        s = hepray.run(job(run, a.epochs, calibration="temperature",
                           bagging={"models": a.models, "variables": ["reco_pt", "reco_mass"], "bins": 6}), quiet=True)
        wall = time.perf_counter() - t0
        m = json.loads((run / "metrics.json").read_text())
        out["bagging_small"] = bagging_timing(hepray, tmp / "small", job(tmp / "x", a.epochs), a.models, "reco_pt",
                                              "committed sample (3000 jets)")
        out["bagging_small"]["job_wall_s"] = round(wall, 1)
        flat = tmp / "flat.root"
        write_flat(flat, a.flat_events, n_branches=16)
        big = {"kind": "train_classifier", "name": "flat", "dataset": {"files": str(flat), "tree": "Events"},
               "label": "label", "features": [f"x{i}" for i in range(16)], "mode": "direct", "seed": 1,
               "model": {"hidden": [32, 32]}, "training": {"epochs": a.flat_epochs, "batch_size": 512, "patience": None},
               "attribution": {"events": 0}, "export": {"torchscript": False, "onnx": False}}
        out["bagging"] = bagging_timing(hepray, tmp / "big", big, a.models, "x0",
                                        f"{a.flat_events} flat events x 16 features, {a.flat_epochs} epochs")
        cal = m["calibration"]
        out["calibration"] = {"temperature": cal["temperature"], "ece_before": cal["uncalibrated"]["ece"],
                              "ece_after": cal["ece"], "brier_before": cal["uncalibrated"]["brier"],
                              "brier_after": cal["brier"], "auc": m["auc"], "ensemble_auc": m["bagging"]["auc"],
                              "ensemble_ece": m["bagging"]["calibration"]["ece"]}
        out["coverage"] = {
            "probability_band_vs_observed": {v: e["coverage"] for v, e in m["bagging"]["probability"].items()},
            "efficiency_band_vs_nominal": {v: e["signal_efficiency"]["nominal_coverage"]
                                           for v, e in m["bagging"]["variables"].items()},
            "relative_efficiency_spread": {v: float(np.nanmean(e["signal_efficiency"]["relative_std"]))
                                           for v, e in m["bagging"]["variables"].items()}}

        bnn_run = tmp / "bnn"
        sb = hepray.run(job(bnn_run, a.epochs, model={"hidden": [32, 32]},
                            architecture={"name": "bnn", "samples": a.passes}), quiet=True)
        out["bnn"] = {"auc": sb["auc"], "mlp_auc": s["auc"], "train_events_per_s": sb["events_per_s"],
                      "mlp_train_events_per_s": s["events_per_s"],
                      "train_cost_vs_mlp": round(s["events_per_s"] / sb["events_per_s"], 2)}

        X = np.random.default_rng(0).normal(size=(a.rows, len(JET))).astype(np.float32)
        plain = ModelBundle.read(run / "model")
        rates = {"one_model": events_per_s(plain.load(1), X),
                 f"ensemble_{a.models}": events_per_s(ModelBundle.read(run / "ensemble").load(1), X),
                 "one_pass_dropout_on": events_per_s(plain.with_uncertainty(mc_dropout=1).load(1), X),
                 f"mc_dropout_{a.passes}": events_per_s(plain.with_uncertainty(mc_dropout=a.passes).load(1), X),
                 f"bnn_{a.passes}": events_per_s(ModelBundle.read(bnn_run / "model").load(1), X)}
        out["inference_events_per_s"] = {k: round(v) for k, v in rates.items()}
        out["inference_cost_vs_one_model"] = {k: round(rates["one_model"] / v, 2) for k, v in rates.items()}

    print(json.dumps(out, indent=1))
    res = ROOT / "benchmarks" / "results"
    res.mkdir(exist_ok=True)
    (res / "uncertainty.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
