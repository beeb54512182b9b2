"""GNN taggers on the committed Pythia sample (tests/data/generated): padded constituents from
real files, ParticleNet trained through the engine with an AUC floor, inference through the
engine (events in == out), and the jets-as-nodes graph against a (pT, η) efficiency map on a
target that depends on the neighbouring jet. Small networks, few epochs, one torch thread."""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

torch = pytest.importorskip("torch")

import hepray  # noqa: E402
from hepray.config import DatasetSpec, load_job  # noqa: E402
from hepray.data.planning import iter_plan  # noqa: E402
from hepray.data.reading import read_shard  # noqa: E402
from hepray.errors import ConfigError  # noqa: E402
from hepray.gnn.events import EfficiencyMap, event_slots, gather, scatter_back  # noqa: E402
from hepray.gnn.inputs import Constituents, RolesSpec  # noqa: E402

SAMPLE = Path(__file__).parent / "data" / "generated" / "sample" / "parts"
L = 24  # constituents kept per jet in these tests
EXPRESSIONS = {"const_pt_log": "log(const_pt)", "const_logptrel": "log(const_pt / reco_pt)",
               "const_e_log": "log(const_e)", "const_deltaR": "sqrt(const_deta**2 + const_dphi**2)",
               "const_mask": "const_pt > 0"}


def inputs(length: int) -> dict:
    """weaver-style input groups, as a job writes them."""
    return {
        "pf_points": {"length": length, "pad_mode": "wrap", "vars": [["const_deta", None], ["const_dphi", None]]},
        "pf_features": {"length": length, "pad_mode": "wrap",
                        "vars": ["const_pt_log", "const_e_log", "const_logptrel", "const_deltaR", ["const_charge", None]]},
        "pf_mask": {"length": length, "pad_mode": "constant", "vars": [["const_mask", None]]},
    }


INPUTS = inputs(L)
SMALL_NET = {"conv_params": [[7, [16, 16, 16]], [7, [32, 32, 32]]], "fc_params": [[64, 0.1]]}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # the machine is shared; two threads under load are several times slower


def _samples(names=(("ttbar", 1), ("qcd", 0))):
    return [{"name": n, "files": str(SAMPLE / f"{n}_*.root"), "label": lab} for n, lab in names]


def gnn_job(out, **extra) -> dict:
    job = {"kind": "train_gnn", "name": "gnn", "output": {"dir": str(out)},
           "dataset": {"tree": "jets", "cut": "reco_ok == 1", "samples": _samples(), "expressions": EXPRESSIONS},
           "constituents": "const_reco", "inputs": INPUTS, "preprocess": {"data_fraction": 0.5},
           "network": {"size": "lite", **SMALL_NET}, "classes": ["qcd", "top"], "split": {"validation": 0.2, "test": 0.3},
           "training": {"epochs": 3, "batch_size": 64, "learning_rate": 0.005, "patience": None},
           "mode": "direct", "threads": 1}
    job.update(extra)
    return job


# ---------------------------------------------------------------- padding from real files

def test_padded_shapes_and_masks_from_real_files():
    spec = DatasetSpec(files=str(SAMPLE / "ttbar_*.root"), tree="jets", cut="reco_ok == 1", expressions=EXPRESSIONS)
    P = 48  # longer than the 40 stored constituents: every jet has padding
    cons = Constituents.from_config(inputs(P), RolesSpec(), "auto", select="const_reco")
    assert set(cons.columns()) >= {"const_reco", "const_pt_log", "const_deta"}
    shard = next(s for s in iter_plan(spec, lambda p: p, "fail"))
    cols, n_in = read_shard(shard, spec, extra=cons.columns())
    n = len(cols["const_pt_log"])
    assert n_in == 1500 and 0 < n <= n_in
    fitted = cons.fit(cons.selected(cols))
    for var in fitted.params["groups"]["pf_features"]["vars"]:
        assert var["center"] != "auto"  # every auto centre fitted; raw ones stay None
    a = fitted.arrays(cols)
    assert a["points"].shape == (n, 2, P) and a["features"].shape == (n, 5, P) and a["mask"].shape == (n, 1, P)
    assert all(v.dtype == np.float32 for v in a.values())
    n_reco = ak.to_numpy(ak.sum(cols["const_reco"], axis=1))
    assert (n_reco < ak.to_numpy(ak.num(cols["const_reco"]))).any()  # the selection really drops particles
    np.testing.assert_array_equal(a["mask"][:, 0].sum(1), n_reco)
    # the first real constituent is the leading reconstructed one; wrap mode repeats it after the last
    lead = ak.to_numpy(ak.firsts(cols["const_deta"][cols["const_reco"]]))
    np.testing.assert_allclose(a["points"][:, 0, 0], lead, rtol=1e-6)
    k = int(np.argmin(n_reco))
    np.testing.assert_allclose(a["points"][k, :, n_reco[k]], a["points"][k, :, 0])
    short = Constituents.from_config(inputs(L), RolesSpec(), "manual", "const_reco").arrays(cols)  # manual: no fit
    np.testing.assert_array_equal(short["mask"][:, 0].sum(1), np.minimum(n_reco, L))  # truncated to the leading L
    # auto standardisation: the real log(pT) values are centred on their median
    real = a["features"][:, 0][a["mask"][:, 0] > 0]
    assert abs(np.median(real)) < 0.1 and 0.3 < np.percentile(real, 84) < 3


def test_config_refuses_inconsistent_inputs(tmp_path):
    with pytest.raises(ConfigError, match="inputs"):
        load_job(gnn_job(tmp_path, network={"points": "nope"}))
    bad = {**INPUTS, "pf_mask": {**INPUTS["pf_mask"], "pad_mode": "wrap"}}
    with pytest.raises(ConfigError, match="constant"):
        load_job(gnn_job(tmp_path, inputs=bad))
    with pytest.raises(ConfigError, match="features"):
        load_job(gnn_job(tmp_path, features=["reco_pt"]))
    with pytest.raises(ConfigError, match="calling"):
        load_job(gnn_job(tmp_path, constituents="__import__('os')"))


# ---------------------------------------------------------------- ParticleNet: train, infer

@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("gnn") / "train"
    return out, hepray.run(gnn_job(out), quiet=True)


def test_particlenet_top_vs_qcd_auc_floor_and_artifact(trained):
    out, s = trained
    m = json.loads((out / "metrics.json").read_text())
    assert s["mode"] == "direct" and s["epochs"] == 3
    assert m["auc"] > 0.88  # measured 0.94 after 2 epochs of the demo network; a broken input pipeline gives ~0.5-0.8
    assert m["n_test"] > 500 and m["rejection_at_30"] > 8
    for plot in ("roc.png", "scores.png", "training.png"):
        assert (out / "plots" / plot).stat().st_size > 5000
    meta = json.loads((out / "model" / "hepray_model.json").read_text())
    assert meta["architecture"]["name"] == "particlenet" and meta["inputs"]["select"] == "const_reco"
    assert meta["metrics"]["auc"] == pytest.approx(m["auc"])
    state = torch.load(out / "model" / "model.pt", weights_only=True)
    assert any(k.startswith("edge_convs.0") for k in state)
    assert len(list((out / "checkpoints" / "particlenet").glob("epoch_*"))) >= 1


def test_infer_gnn_scores_every_jet_through_the_engine(trained, tmp_path):
    out, _ = trained
    files = [str(SAMPLE / "ttbar_*.root"), str(SAMPLE / "qcd_*.root")]
    # no `expressions:` here: the ones the inputs need come with the model, as in training
    job = {"kind": "infer_gnn", "name": "ig", "output": {"dir": str(tmp_path)},
           "dataset": {"files": files, "tree": "jets", "shard_events": 700},
           "model": {"path": str(out / "model"), "output": "score_top", "batch_size": 256},
           "keep": ["label"], "engine": {"workers": 2}}
    assert json.loads((out / "model" / "hepray_model.json").read_text())["expressions"] == EXPRESSIONS
    assert hepray.plan(job)["events"] > 0
    s = hepray.run(job, quiet=True)
    total = sum(uproot.open(f)["jets"].num_entries for f in SAMPLE.glob("*.root") if f.name[:3] in ("ttb", "qcd"))
    assert s["events_in"] == s["events_out"] == total and s["shards"] >= 2
    man = json.loads((tmp_path / "parts" / "_manifest.json").read_text())
    parts = [uproot.open(tmp_path / "parts" / p["part"])["hepray"].arrays(["score_top", "label", "event"], library="np")
             for p in man["parts"]]
    score, label = np.concatenate([p["score_top"] for p in parts]), np.concatenate([p["label"] for p in parts])
    assert len(score) == total and np.all((score >= 0) & (score <= 1))
    assert score[label == 1].mean() > score[label == 0].mean() + 0.3


def test_infer_gnn_refuses_a_bad_stored_expression(trained, tmp_path):
    """Expressions stored with a model pass the same whitelist as a job's: a tampered one is
    refused in one line naming the model, before anything is read."""
    import shutil

    from hepray.errors import ConfigError

    out, _ = trained
    mdir = tmp_path / "model"
    shutil.copytree(out / "model", mdir)
    meta = json.loads((mdir / "hepray_model.json").read_text())
    meta["expressions"]["const_pt_log"] = "__import__('os').system('true')"
    (mdir / "hepray_model.json").write_text(json.dumps(meta))
    job = {"kind": "infer_gnn", "name": "ig", "output": {"dir": str(tmp_path / "out")},
           "dataset": {"files": str(SAMPLE / "ttbar_*.root"), "tree": "jets"}, "model": {"path": str(mdir)}}
    with pytest.raises(ConfigError, match="expressions stored with the model are invalid: .*calling .__import__.* is not allowed") as e:
        hepray.plan(job)
    assert "\n" not in str(e.value)


def test_particlenet_with_jet_globals_trains_and_scores_from_the_artifact(ray_session, tmp_path):
    """A flat `globals` group (jet mass, τ32, τ21) joins the pooled particle features: it is
    standardised with the rest, stored with the model, and the artifact scores the same inputs."""
    from hepray.models.predict import ModelBundle

    groups = {**INPUTS, "jet_globals": {"length": None, "vars": ["reco_mass", "reco_tau32", "reco_tau21"]}}
    with pytest.raises(ConfigError, match="length: null"):
        load_job(gnn_job(tmp_path, inputs={**groups, "jet_globals": {**groups["jet_globals"], "length": 4}},
                         network={"size": "lite", "globals": "jet_globals"}))
    job = gnn_job(tmp_path / "train", inputs=groups, network={"size": "lite", **SMALL_NET, "globals": "jet_globals"},
                  training={"epochs": 2, "batch_size": 64, "learning_rate": 0.005, "patience": None})
    s = hepray.run(job, quiet=True)
    assert s["auc"] > 0.92  # measured 0.948 after 2 epochs (the constituents-only net: 0.94 after 3)
    meta = json.loads((tmp_path / "train" / "model" / "hepray_model.json").read_text())
    assert meta["architecture"]["global_dims"] == 3
    assert meta["inputs"]["arguments"] == ["points", "features", "mask", "globals"]
    mass = next(v for v in meta["inputs"]["padding"]["groups"]["jet_globals"]["vars"] if v["name"] == "reco_mass")
    assert mass["center"] != "auto" and 50 < mass["center"] < 200  # median jet mass of top + QCD, GeV
    spec = DatasetSpec(files=str(SAMPLE / "ttbar_*.root"), tree="jets", cut="reco_ok == 1", expressions=EXPRESSIONS)
    shard = next(s for s in iter_plan(spec, lambda p: p, "fail"))
    cons = Constituents.from_meta(meta["inputs"])
    cols, _ = read_shard(shard, spec, extra=cons.columns())
    x = cons.arrays(cols)
    assert x["globals"].shape == (len(cols["reco_mass"]), 3)
    score = ModelBundle.read(tmp_path / "train" / "model").load(1)({k: v[:300] for k, v in x.items()})
    assert score.shape == (300, 1) and score.mean() > 0.5  # top jets

# ---------------------------------------------------------------- jets as nodes vs the map

def test_event_slots_gather_and_scatter_back():
    keys = [np.array([0, 0, 1, 1, 1, 2]), np.array([5, 5, 5, 5, 5, 5])]
    rank = np.array([1, 0, 0, 2, 1, 0])
    slots = event_slots(keys, rank, max_jets=2)
    assert slots.tolist() == [[1, 0], [2, 4], [5, -1]]  # the third jet of event 1 is dropped
    x = gather(np.arange(6.0) * 10, slots)
    assert x.tolist() == [[10, 0], [20, 40], [50, 0]]
    back = scatter_back(x, slots, 6)
    assert np.isnan(back[3]) and back[[0, 1, 2, 4, 5]].tolist() == [0, 10, 20, 40, 50]


def test_efficiency_map_recovers_a_binned_efficiency():
    rng = np.random.default_rng(0)
    pt, eta = rng.uniform(0, 2, 20000), rng.uniform(-2, 2, 20000)
    true = np.where(pt > 1, 0.8, 0.2) * np.where(np.abs(eta) > 1, 0.5, 1.0)
    m = EfficiencyMap.fit(pt, eta, rng.random(20000) < true, pt_bins=[0, 1, 2], eta_bins=[0, 1, 2])
    np.testing.assert_allclose(m.efficiency, [[0.2, 0.1], [0.8, 0.4]], atol=0.03)
    assert m.predict(np.array([5.0]), np.array([-1.5]))[0] == pytest.approx(m.efficiency[1, 1])  # overflow: edge bin


def test_jet_graph_beats_the_efficiency_map_on_a_neighbour_dependent_target(ray_session, tmp_path):
    job = load_job("jobs/train_jetgraph.yaml", overrides={
        "output.dir": str(tmp_path),
        "dataset.samples": [{"name": n, "files": str(SAMPLE / f"{n}_*.root")} for n in ("ttbar", "qcd", "wqq", "xqq")],
        "training": {"epochs": 10, "batch_size": 64, "learning_rate": 0.005, "patience": None}})
    s = hepray.run(job, quiet=True)
    m = json.loads((tmp_path / "metrics.json").read_text())
    cmp = m["comparison"]
    assert cmp["graph"]["jets"] == cmp["map"]["jets"] > 1000  # the same test jets for every method
    # measured: log-loss graph 0.449, per-jet net 0.476, map 0.633 (AUC 0.84 / 0.83 / 0.52)
    assert cmp["graph"]["log_loss"] < cmp["map"]["log_loss"] - 0.05
    assert cmp["graph"]["brier"] < cmp["map"]["brier"]
    assert cmp["graph"]["auc"] > cmp["map"]["auc"] + 0.1
    assert cmp["graph"]["log_loss"] < cmp["per_jet"]["log_loss"] + 0.005  # the neighbours never hurt
    assert s["graph_log_loss"] == pytest.approx(cmp["graph"]["log_loss"])
