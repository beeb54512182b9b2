"""Predictive uncertainty (docs/uncertainty.md): calibration metrics and temperature scaling,
ensembles from bagging, MC dropout, the Bayesian MLP, and coverage on a toy whose truth
probabilities are known."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pytest
import uproot

import hepray
from hepray.errors import ConfigError, ModelLoadError
from hepray.models.predict import ModelBundle
from hepray.report import metrics
from hepray.training.bagging import poisson_counts, probability_bands
from tests.test_classifier import SAMPLE, clf_job


# -- metrics, checked against independent computations --------------------------------------------
def test_brier_ece_against_independent_computations():
    from sklearn.metrics import brier_score_loss

    r = np.random.default_rng(0)
    p = r.random(5000)
    y = (r.random(5000) < p**1.5).astype(int)  # miscalibrated on purpose
    w = r.random(5000) + 0.5
    assert metrics.brier(y, p, w) == pytest.approx(brier_score_loss(y, p, sample_weight=w))
    rel = metrics.reliability(y, p, w, bins=10)
    ece = 0.0
    for b in range(10):  # by hand: weighted |frequency - confidence| per bin
        m = (p >= b / 10) & ((p < (b + 1) / 10) | (b == 9))
        ece += w[m].sum() / w.sum() * abs(np.average(y[m], weights=w[m]) - np.average(p[m], weights=w[m]))
    assert rel["ece"] == pytest.approx(ece) and rel["ece"] > 0.05
    # multi-class: Brier summed over classes; a constant 1/K scores 1 - 1/K
    assert metrics.brier(np.array([0, 1, 2]), np.full((3, 3), 1 / 3)) == pytest.approx(2 / 3)


def test_temperature_fit_recovers_the_temperature_and_lowers_ece():
    r = np.random.default_rng(1)
    z = r.normal(0, 2, 20000)
    y = (r.random(len(z)) < 1 / (1 + np.exp(-z))).astype(int)
    over = 1 / (1 + np.exp(-2.5 * z))  # over-confident by a factor 2.5 in the logit
    T = metrics.fit_temperature(y, over)
    assert T == pytest.approx(2.5, rel=0.06)
    after = metrics.apply_temperature(over, T)[:, 0]
    assert metrics.reliability(y, after)["ece"] < 0.3 * metrics.reliability(y, over)["ece"]
    # softmax version: three classes, logits scaled by 3
    Z = r.normal(0, 1.5, (20000, 3))
    P = np.exp(Z) / np.exp(Z).sum(1, keepdims=True)
    yk = np.array([r.choice(3, p=q) for q in P])
    P3 = np.exp(3 * Z) / np.exp(3 * Z).sum(1, keepdims=True)
    assert metrics.fit_temperature(yk, P3) == pytest.approx(3.0, rel=0.06)


def test_poisson_bootstrap_is_a_pure_function_of_seed_and_shard():
    a, b = poisson_counts(10000, 5, "shard-a"), poisson_counts(10000, 5, "shard-a")
    assert (a == b).all() and not (a == poisson_counts(10000, 6, "shard-a")).all()
    assert a.mean() == pytest.approx(1.0, abs=0.03) and a.var() == pytest.approx(1.0, abs=0.05)


# -- bagged, calibrated classifier with dropout: ensemble, MC dropout, infer ------------------------
@pytest.fixture(scope="module")
def bagged(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("unc") / "bagged"
    job = clf_job(out, model={"hidden": [32, 32], "dropout": 0.2}, calibration="temperature",
                  bagging={"models": 3, "variables": ["reco_mass"], "bins": 4},
                  training={"epochs": 6, "batch_size": 128, "patience": None})
    return out, hepray.run(job, quiet=True)


def _infer(out, model, **uncertainty):
    job = {"kind": "infer", "name": "i", "output": {"dir": str(out)},
           "dataset": {"files": str(SAMPLE / "qcd_*.root"), "tree": "jets"}, "model": {"path": str(model)}}
    if uncertainty:
        job["model"]["uncertainty"] = uncertainty
    hepray.run(job, quiet=True, overwrite=True)
    return uproot.concatenate(glob.glob(str(Path(out) / "parts" / "*.root")), library="np")


def test_calibration_and_bagging_outputs(bagged):
    out, s = bagged
    m = json.loads((out / "metrics.json").read_text())
    cal = m["calibration"]
    assert cal["method"] == "temperature" and 0.2 < cal["temperature"] < 5
    assert 0 <= cal["ece"] < 0.1 and cal["brier"] < 0.15 and set(cal["uncalibrated"]) == {"ece", "brier"}
    meta = json.loads((out / "model" / "hepray_model.json").read_text())
    assert meta["calibration"] == {"method": "temperature", "temperature": cal["temperature"]}
    b = m["bagging"]
    assert b["models"] == 3 and b["auc"] > 0.9 and len(b["member_auc"]) == 3 and len(set(b["member_auc"])) == 3
    band = b["variables"]["reco_mass"]["signal_efficiency"]
    assert len(band["mean"]) == 4 and any(v > 0 for v in band["std"])
    assert 0 <= b["probability"]["reco_mass"]["coverage"] <= 1
    for plot in ("reliability.png", "bagging_signal_efficiency_reco_mass.png", "ensemble/reliability.png"):
        assert (out / "plots" / plot).stat().st_size > 5000
    emeta = json.loads((out / "ensemble" / "hepray_model.json").read_text())
    assert emeta["type"] == "ensemble" and len(emeta["members"]) == 3 and s["ensemble"].endswith("ensemble")


def test_infer_on_ensemble_writes_mean_std_and_members(bagged, tmp_path):
    out, _ = bagged
    t = _infer(tmp_path / "ens", out / "ensemble", members=True)
    members = np.stack([t[f"score_m{i}"] for i in range(3)])
    assert np.allclose(t["score_mean"], members.mean(0), atol=1e-6)
    assert np.allclose(t["score_std"], members.std(0), atol=1e-6) and t["score_std"].mean() > 1e-4
    # each member checked independently: its own folder scored as an ordinary model
    one = _infer(tmp_path / "m1", out / "ensemble" / "member_001")
    assert np.allclose(one["score"], t["score_m1"], atol=1e-6)
    # the stored temperature is applied by infer: scores agree with the evaluation's formula
    bundle = ModelBundle.read(out / "ensemble" / "member_001")
    T = bundle.meta["calibration"]["temperature"]
    raw = ModelBundle(bundle.path, {**bundle.meta, "calibration": None}, bundle.raw).load(1)
    X = np.random.default_rng(0).normal(size=(50, 9)).astype(np.float32) * 0.1 + 1
    assert np.allclose(bundle.load(1)(X), metrics.apply_temperature(raw(X), T), atol=1e-5)


def test_mc_dropout_and_refusals(bagged, tmp_path):
    out, _ = bagged
    plain = _infer(tmp_path / "plain", out / "model")
    t = _infer(tmp_path / "mc", out / "model", mc_dropout=20)
    assert set(t) >= {"score_mean", "score_std"} and "score" not in t
    assert t["score_std"].mean() > 1e-3  # dropout on: the passes differ
    assert np.mean(np.abs(t["score_mean"] - plain["score"])) < 0.05  # and average near the plain score
    with pytest.raises(ConfigError, match="model.uncertainty: .*spread is its members"):
        _infer(tmp_path / "x", out / "ensemble", mc_dropout=5)
    from hepray.fpga.artifacts import Artifact

    with pytest.raises(ModelLoadError, match="FPGA stage compiles one model"):
        Artifact.read(out / "ensemble")
    fpga = {"kind": "fpga", "name": "f", "output": {"dir": str(tmp_path / "f")}, "model": {"path": str(out / "ensemble")},
            "dataset": {"files": str(SAMPLE / "qcd_*.root"), "tree": "jets"}}
    with pytest.raises(ConfigError, match="model.path: .*ensemble .*give one member folder"):
        hepray.run(fpga, quiet=True)
    from hepray.dask import Model

    assert Model.of(out / "ensemble").names == ("score_mean", "score_std")


def test_mc_dropout_needs_dropout_layers(ray_session, tmp_path):
    from hepray.models.mlp import MLP
    import torch

    from hepray.models.artifact import save_metadata

    net = MLP(2, [4], 1)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    save_metadata(tmp_path, {"type": "torch", "file": "model.pt", "features": ["a", "b"], "classes": [], "task": "binary",
                             "architecture": net.arch})
    with pytest.raises(ModelLoadError, match="no dropout layers"):
        ModelBundle.read(tmp_path).with_uncertainty(mc_dropout=10)


# -- the Bayesian MLP ------------------------------------------------------------------------------
def test_bnn_trains_and_predicts_with_an_uncertainty(ray_session, tmp_path):
    out = tmp_path / "bnn"
    s = hepray.run(clf_job(out, architecture={"name": "bnn", "samples": 16}, model={"hidden": [32]},
                           training={"epochs": 8, "batch_size": 128, "patience": None}), quiet=True)
    assert s["auc"] > 0.9  # measured ~0.96, as the deterministic MLP on this sample
    meta = json.loads((out / "model" / "hepray_model.json").read_text())
    assert meta["architecture"]["name"] == "bnn" and meta["architecture"]["predict_samples"] == 16
    t = _infer(tmp_path / "i", out / "model")
    assert t["score_std"].mean() > 1e-3 and ((t["score_mean"] >= 0) & (t["score_mean"] <= 1)).all()


# -- coverage on a toy with known truth probabilities ----------------------------------------------
def _toy_file(path, n, seed):
    r = np.random.default_rng(seed)
    x1, x2 = r.normal(size=n), r.normal(size=n)
    p = 1 / (1 + np.exp(-(1.2 * x1 - 0.8 * x2 + 0.4)))  # the truth probability of each event
    with uproot.recreate(path) as f:
        f.mktree("toy", {"x1": np.float32, "x2": np.float32, "p_true": np.float64, "y": np.int32})
        f["toy"].extend({"x1": x1.astype(np.float32), "x2": x2.astype(np.float32), "p_true": p,
                         "y": (r.random(n) < p).astype(np.int32)})


COVERAGE_TOLERANCE = 0.25  # 40 bins from 4 training samples; bins of one sample are correlated


@pytest.mark.xfail(strict=False, reason="issue 23 open: the bootstrap band under-covers (pooled 0.50-0.60 vs 0.68 "
                   "in runs so far; it measures training-sample variance, not the replicas' shared bias)")
def test_ensemble_band_covers_the_truth_probability(ray_session, tmp_path):
    """Four independent training samples of 2000 toy events, each bagged into 6 replicas; on an
    independent test sample, in 10 quantile bins of x1 each, the fraction of bins whose truth
    (mean known probability) lies inside ensemble mean ± replica spread is 68 % within
    COVERAGE_TOLERANCE (measured per sample 0.4-0.9, pooled over three 0.50 and 0.67 in two runs:
    one sample's bins move together, which is why several samples are pooled)."""
    _toy_file(tmp_path / "test.root", 10000, 2)
    inside = []
    for k, seed in enumerate((11, 12, 13, 14)):
        _toy_file(tmp_path / f"train{k}.root", 2000, seed)
        run = tmp_path / f"run{k}"
        hepray.run({"kind": "train_classifier", "name": "toy", "output": {"dir": str(run)},
                    "dataset": {"tree": "toy", "files": str(tmp_path / f"train{k}.root")}, "label": "y",
                    "features": ["x1", "x2"], "weights": {"balance_classes": False}, "mode": "direct", "seed": 7 * seed,
                    "model": {"hidden": [16, 16]}, "training": {"epochs": 10, "batch_size": 128, "patience": None},
                    "attribution": {"events": 0}, "export": {"torchscript": False, "onnx": False},
                    "bagging": {"models": 6, "variables": ["x1"], "bins": 5}}, quiet=True)
        job = {"kind": "infer", "name": "ti", "output": {"dir": str(tmp_path / f"inf{k}")},
               "dataset": {"tree": "toy", "files": str(tmp_path / "test.root")}, "keep": ["x1", "p_true"],
               "model": {"path": str(run / "ensemble"), "uncertainty": {"members": True}}}
        hepray.run(job, quiet=True)
        t = uproot.concatenate(glob.glob(str(tmp_path / f"inf{k}" / "parts" / "*.root")), library="np")
        P = np.stack([t[f"score_m{i}"] for i in range(6)])
        edges = np.quantile(t["x1"], np.linspace(0, 1, 11))
        which = np.clip(np.digitize(t["x1"], edges) - 1, 0, 9)
        r = probability_bands(P, which, 10, truth=t["p_true"])
        inside.append(r["coverage"])
    coverage = float(np.mean(inside))
    print(f"coverage per training sample {inside}, pooled {coverage:.3f}")
    assert abs(coverage - 0.68) <= COVERAGE_TOLERANCE, inside


# -- jets as nodes: the bagging band of the per-jet efficiency -------------------------------------
def test_jetgraph_bagging_band_vs_pt_eta_and_neighbour_dr(ray_session, tmp_path):
    from hepray.config import load_job

    job = load_job("jobs/train_jetgraph.yaml", overrides={
        "output.dir": str(tmp_path), "reference": False, "calibration": "temperature",
        "dataset.samples": [{"name": n, "files": str(SAMPLE / f"{n}_*.root")} for n in ("ttbar", "qcd", "wqq", "xqq")],
        "training": {"epochs": 6, "batch_size": 64, "learning_rate": 0.005, "patience": None},
        "bagging": {"models": 4, "variables": ["reco_pt", "reco_eta", "dr_nn"], "bins": 5}})
    hepray.run(job, quiet=True)
    m = json.loads((tmp_path / "metrics.json").read_text())
    b = m["bagging"]
    assert b["models"] == 4 and set(b["variables"]) == {"reco_pt", "reco_eta", "dr_nn"}
    for v, band in b["variables"].items():
        assert band["bins"] == 5 and all(s > 0 for s in band["std"]), v
        assert (tmp_path / "plots" / f"bagging_probability_{v}.png").stat().st_size > 5000
    coverage = np.mean([band["coverage"] for band in b["variables"].values()])
    print("jetgraph coverage per variable", {v: band["coverage"] for v, band in b["variables"].items()})
    assert abs(coverage - 0.68) <= 0.3  # 15 bins vs the observed pass fraction (with its binomial error)
    assert m["calibration"]["method"] == "temperature" and m["calibration"]["ece"] < 0.1
    assert json.loads((tmp_path / "ensemble" / "hepray_model.json").read_text())["members"][3] == "member_003"


# -- ParticleNet: bagged efficiency band, an ensemble infer_gnn scores -----------------------------
def test_gnn_bagging_band_and_ensemble_through_infer_gnn(ray_session, tmp_path):
    from tests.test_gnn import gnn_job

    out = tmp_path / "gnn"
    hepray.run(gnn_job(out, training={"epochs": 1, "batch_size": 64, "learning_rate": 0.005, "patience": None},
                       bagging={"models": 2, "variables": ["reco_pt"], "bins": 4}), quiet=True)
    m = json.loads((out / "metrics.json").read_text())
    band = m["bagging"]["variables"]["reco_pt"]["signal_efficiency"]
    assert len(band["mean"]) == 4 and all(0 < v < 1 for v in band["mean"]) and any(s > 0 for s in band["std"])
    assert "ece" in m["calibration"] and (out / "plots" / "bagging_signal_efficiency_reco_pt.png").exists()
    job = {"kind": "infer_gnn", "name": "ig", "output": {"dir": str(tmp_path / "ig")},
           "dataset": {"files": str(SAMPLE / "ttbar_*.root"), "tree": "jets", "cut": "reco_ok == 1"},
           "model": {"path": str(out / "ensemble")}}
    hepray.run(job, quiet=True)
    t = uproot.concatenate(glob.glob(str(tmp_path / "ig" / "parts" / "*.root")), library="np")
    assert t["score_std"].mean() > 1e-3 and 0.5 < t["score_mean"].mean() < 1  # top jets: mostly top-like
