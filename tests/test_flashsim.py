"""Flash simulation on the committed Pythia sample (tests/data/generated): a pipeline trained
with ``train_flashsim``, generation through the engine with ``flashsim``, and bounds a broken
pipeline would miss (two-sample AUC, efficiency AUC/calibration, downstream ROC, export
agreement, seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import uproot

import hepray
from hepray.errors import ConfigError

torch = pytest.importorskip("torch")

SAMPLE = Path(__file__).parent / "data" / "generated" / "sample" / "parts"
PROCESSES = ("ttbar", "qcd", "wqq", "xqq")
CONDITIONS = ["gen_pt", "gen_eta", "gen_phi", "gen_mass", "gen_tau1", "gen_tau21", "gen_tau32", "gen_nconst",
              "dead_region", "miscalibrated", "noisy"]
BDT_FEATURES = ["reco_pt", "reco_eta", "reco_mass", "reco_tau1", "reco_tau2", "reco_tau3", "reco_tau21",
                "reco_tau32", "reco_nconst"]


def dataset(processes=PROCESSES, **extra) -> dict:
    return {"tree": "jets", "samples": [{"name": p, "files": str(SAMPLE / f"{p}_*.root")} for p in processes],
            "expressions": {"dead_region": "fault == 1", "miscalibrated": "fault == 2", "noisy": "fault == 3"},
            **extra}


def pipeline(model: str = "flow") -> dict:
    return {
        "conditions": CONDITIONS,
        "efficiency": {"target": "reco_ok", "hidden": [32, 32]},
        "parameterizations": [
            {"name": "kinematics", "model": model, "flow": {"n_layers": 3, "hidden": 32},
             "outputs": {"reco_pt": "log_ratio", "reco_eta": "diff", "reco_phi": "dphi", "reco_mass": "log_ratio"}},
            {"name": "substructure", "model": "flow", "extra_conditions": ["reco_pt", "reco_mass"],
             "flow": {"n_layers": 3, "hidden": 32},
             "outputs": {"reco_tau1": "diff", "reco_tau21": "diff", "reco_tau32": "diff", "reco_nconst": "ratio"}},
        ],
        "derived": {"reco_tau2": "reco_tau21 * reco_tau1", "reco_tau3": "reco_tau32 * reco_tau2",
                    "reco_pass": "reco_ok & (reco_pt >= 550) & (reco_pt < 650) & (abs(reco_eta) < 2.0)"},
        "mantissa_bits": 10,  # as the committed sample was written
    }


def train_job(out, **extra) -> dict:
    job = {"kind": "train_flashsim", "name": "tf", "seed": 5, "output": {"dir": str(out)}, "dataset": dataset(),
           "pipeline": pipeline(), "training": {"epochs": 25, "batch_size": 128, "lr": 0.003, "patience": 6},
           "split": {"validation": 0.2, "test": 0.3}}
    job.update(extra)
    return job


def flash_job(out, model, seed=11, **extra) -> dict:
    job = {"kind": "flashsim", "name": "fs", "seed": seed, "output": {"dir": str(out)}, "model": str(model),
           "dataset": dataset(), "engine": {"workers": 2, "progress_every_s": 60}}
    job.update(extra)
    return job


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("flashsim") / "train"
    summary = hepray.run(train_job(out), quiet=True)
    return out, summary, json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def bdt(ray_session, tmp_path_factory):
    """The top-vs-QCD BDT of jobs/train_bdt.yaml, trained on full simulation."""
    out = tmp_path_factory.mktemp("flashsim") / "bdt"
    hepray.run({"kind": "train_bdt", "name": "bdt", "output": {"dir": str(out)},
                "dataset": {"tree": "jets", "cut": "reco_ok == 1",
                            "samples": [{"name": "ttbar", "files": str(SAMPLE / "ttbar_*.root"), "label": 1},
                                        {"name": "qcd", "files": str(SAMPLE / "qcd_*.root"), "label": 0}]},
                "features": BDT_FEATURES, "rounds": 80, "params": {"max_depth": 3, "eta": 0.15},
                "split": {"validation": 0.2, "test": 0.3}, "shap_events": 0}, quiet=True)
    return out / "model"


@pytest.fixture(scope="module")
def flashed(trained, bdt, tmp_path_factory):
    out = tmp_path_factory.mktemp("flashsim") / "flash"
    job = flash_job(out, trained[0] / "model", downstream={"model": str(bdt), "signal": [1], "background": [0]})
    return out, hepray.run(job, quiet=True)


# ---------------------------------------------------------------- pure parts
def test_response_transforms_round_trip():
    from hepray.flashsim.modules import CODES, _from_response, to_response

    rng = np.random.default_rng(0)
    gen = rng.uniform(0.5, 3.0, 200)
    for name in CODES:
        reco = gen * rng.uniform(0.8, 1.2, 200) if name != "dphi" else rng.uniform(-np.pi, np.pi, 200)
        y = to_response(name, reco, gen)
        back = _from_response(torch.full((1,), CODES[name]), torch.tensor(y)[:, None], torch.tensor(gen)[:, None])
        np.testing.assert_allclose(back[:, 0].numpy(), reco, atol=1e-9, err_msg=name)
    assert np.allclose(to_response("dphi", np.array([3.1]), np.array([-3.1])), 6.2 - 2 * np.pi)


def test_flow_inverse_matches_sample_and_transform():
    from hepray.flashsim.modules import flow_inverse
    from hepray.models.flows import ConditionalFlow

    torch.manual_seed(0)
    flow = ConditionalFlow(n_features=3, n_context=2, n_layers=3, hidden=16)
    with torch.no_grad():
        for made in flow.mades:  # non-trivial weights (the output layer starts at zero)
            made.out.weight.normal_(0, 0.3)
        ctx = torch.randn(50, 2)
        u = torch.randn(50, 3, generator=torch.Generator().manual_seed(4))
        x = flow_inverse(flow, u, ctx)
        torch.testing.assert_close(x, flow.sample(ctx, generator=torch.Generator().manual_seed(4)))
        torch.testing.assert_close(flow.transform(x, ctx)[0], u, atol=1e-5, rtol=1e-5)


def test_config_refuses_a_broken_chain():
    from hepray.config import load_job

    bad = pipeline()
    bad["parameterizations"][0]["extra_conditions"] = ["reco_tau1"]  # made later, not before
    with pytest.raises(ConfigError, match="not made by an earlier"):
        load_job(train_job("x", pipeline=bad))
    bad = pipeline()
    bad["parameterizations"][0]["outputs"]["reco_pt"] = "squared"
    with pytest.raises(ConfigError, match="parameterizations"):
        load_job(train_job("x", pipeline=bad))


# ---------------------------------------------------------------- train_flashsim
def test_artifacts_and_manifest(trained):
    out, summary, m = trained
    man = json.loads((out / "model" / "flashsim_pipeline.json").read_text())
    assert [p["name"] for p in man["parameterizations"]] == ["kinematics", "substructure"]
    assert man["parameterizations"][1]["conditions"][-2:] == ["reco_pt", "reco_mass"]
    assert man["efficiency"]["outputs"] == ["reco_ok"]
    full_reco = [k for k in uproot.open(next(SAMPLE.glob("ttbar_*.root")))["jets"].keys() if k.startswith("reco_")]
    assert man["columns"] == full_reco  # every detector-level branch, in the files' order
    for step in ("efficiency", "kinematics", "substructure"):
        meta = json.loads((out / "model" / step / "hepray_model.json").read_text())
        assert meta["type"] == "torch" and meta["architecture"]["name"] in ("mlp", "conditional_flow")
        state = torch.load(out / "model" / step / "model.pt", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert m["parameterizations"]["kinematics"]["dropped_non_finite"] == 0


def test_export_agrees_with_torch(trained):
    _, _, m = trained
    for step, checks in m["export"].items():
        for fmt in ("torchscript", "onnx"):
            # outputs are in GeV: relative to the largest output; the efficiency is in [0, 1]
            assert checks[fmt]["max_rel_diff"] < 1e-4, (step, fmt, checks[fmt])
    assert m["export"]["efficiency"]["onnx"]["max_abs_diff"] < 1e-4


def test_exported_onnx_runs_without_hepray(trained):
    ort = pytest.importorskip("onnxruntime")
    out, _, _ = trained
    sess = ort.InferenceSession(str(out / "model" / "kinematics" / "model.onnx"), providers=["CPUExecutionProvider"])
    cols = uproot.open(next(SAMPLE.glob("qcd_*.root")))["jets"].arrays(CONDITIONS[:8] + ["fault"], library="np",
                                                                        entry_stop=300)
    context = np.column_stack([cols[c] for c in CONDITIONS[:8]] + [cols["fault"] == k for k in (1, 2, 3)])
    noise = np.random.default_rng(1).standard_normal((300, 4))
    reco_pt = sess.run(None, {"context": context.astype(np.float32), "noise": noise.astype(np.float32)})[0][:, 0]
    response = reco_pt / cols["gen_pt"]
    assert 0.9 < np.median(response) < 1.0 and 0.01 < np.std(response[np.abs(response - 1) < 0.2]) < 0.15


def test_efficiency_model_against_truth(trained):
    _, summary, m = trained
    e = m["efficiency_test"]
    # Jets fail only inside the dead region of its lumisections (~0.5 %): the dead flag and eta/phi
    # are inputs, so a model that learned the region ranks them first; chance is 0.5.
    assert e["n_false"] >= 3 and e["auc"] > 0.85
    # calibrated: mean P within 3 binomial sigma (sqrt(0.007 / 1600) = 0.002) of the observed rate;
    # class-balanced training (the usual classifier default) would put it near 0.5-0.9
    assert abs(e["mean_predicted"] - e["mean_observed"]) < 0.006
    eff = m["validation"]["efficiency"]
    assert abs(eff["flash"] - eff["full"]) < 0.01
    assert summary["efficiency_auc"] == e["auc"]


def test_two_sample_auc_below_ceiling(trained):
    """C2ST on the held-out 30 % (~1600 jet pairs, null spread ±0.010): below 0.58 (measured
    0.530 with these 25-epoch settings). The same classifier, on full-simulation jets, gives ~0.5
    against other full-simulation jets, 0.6 against jets whose pT is 3 % off, and ~1 against jets
    whose features were shuffled independently (1-D shapes right, correlations gone)."""
    from hepray.flashsim.validation import two_sample_test

    _, summary, m = trained
    c2 = m["validation"]["two_sample_test"]
    assert c2["n_full"] > 1400 and c2["auc_null_std"] < 0.012
    assert c2["auc"] < 0.58 and summary["two_sample_auc"] == c2["auc"], c2
    feats = m["validation"]["features"]
    assert all(f["wasserstein_rel"] < 0.15 for f in feats.values()), feats
    assert m["validation"]["correlation"]["max_abs_difference"] < 0.1

    names = ["reco_pt", "reco_eta", "reco_mass", "reco_tau1", "reco_tau21", "reco_tau32", "reco_nconst"]
    X = []
    for f in sorted(SAMPLE.glob("*.root")):
        a = uproot.open(f)["jets"].arrays(names + ["reco_ok"], library="np")
        X.append(np.column_stack([a[k] for k in names])[a["reco_ok"]])
    rng = np.random.default_rng(0)
    X = np.vstack(X)[rng.permutation(sum(len(x) for x in X))]
    full, other = X[:1500], X[1500:3000]
    assert abs(two_sample_test(full, other, seed=1)["auc"] - 0.5) < 0.04
    assert two_sample_test(full, other * np.r_[1.03, np.ones(6)], seed=1)["auc"] > 0.58
    shuffled = np.column_stack([c[rng.permutation(len(c))] for c in other.T])
    assert two_sample_test(full, shuffled, seed=1)["auc"] > 0.9


# ---------------------------------------------------------------- flashsim through the engine
def test_events_in_equal_out_and_branches_match_full_simulation(flashed):
    out, s = flashed
    total = sum(uproot.open(f)["jets"].num_entries for f in SAMPLE.glob("*.root"))
    assert s["events_in"] == s["events_out"] == total and s["shards_failed"] == 0 and s["shards"] == 4
    man = json.loads((out / "parts" / "_manifest.json").read_text())
    assert man["tree"] == "jets" and len(list((out / "parts").glob("*.root"))) == 4
    full = uproot.open(next(SAMPLE.glob("ttbar_*.root")))["jets"]
    flash = uproot.open(next((out / "parts").glob("ttbar_*.root")))["jets"]
    reco = lambda t: {k for k in t.keys() if k.startswith("reco_")}  # noqa: E731
    gen = lambda t: {k for k in t.keys() if k.startswith("gen_")}  # noqa: E731
    assert reco(flash) == reco(full) and gen(flash) == gen(full)
    assert {"run", "luminosityBlock", "event", "jet_rank", "process", "label", "fault"} <= set(flash.keys())
    for k in flash.keys():  # same types, so readers written for full simulation read these unchanged
        assert flash[k].typename == full[k].typename, k
    a = flash.arrays(["reco_ok", "reco_pt", "reco_nconst", "reco_tau2", "reco_tau21", "reco_tau1"], library="np")
    np.testing.assert_array_equal(a["reco_pt"][~a["reco_ok"]], 0.0)  # not reconstructed: no measurement
    ok = a["reco_ok"]
    assert np.all(a["reco_nconst"][ok] >= 0) and np.allclose(a["reco_tau2"][ok], a["reco_tau21"][ok] * a["reco_tau1"][ok],
                                                              rtol=2e-3, atol=1e-6)


def test_validation_and_downstream_roc(flashed):
    out, s = flashed
    v = json.loads((out / "validation" / "metrics.json").read_text())
    assert v["validation"]["jets"] < 2000  # the training job's test split only
    assert s["two_sample_auc"] < 0.6
    d = v["downstream"]
    assert d["full"]["auc"] > 0.9 and abs(d["auc_difference"]) < 0.03, d
    for plot in ("features", "correlations", "efficiency_gen_pt", "efficiency_gen_eta", "two_sample_test",
                 "downstream_roc"):
        assert (out / "validation" / f"{plot}.png").stat().st_size > 5000, plot


def test_seed_per_shard_reproducible(flashed, trained):
    """A shard's output is a function of (job seed, shard id): the engine's part equals an
    in-process rerun of that shard; another job seed gives other values."""
    from hepray.config import load_job
    from hepray.workloads.flashsim import FlashSim

    out, _ = flashed
    workload = FlashSim(load_job(flash_job(out, trained[0] / "model")))
    bundle = workload.bundle()
    shard = hepray.plan(workload.dataset(bundle))["shards"][1]
    record = hepray.io.parts.committed(out / "parts", shard.shard_id)  # parts carry their attempt id
    part = uproot.open(out / "parts" / record["part"])["jets"].arrays(library="np")

    def rerun(seed: int) -> dict:
        proc = workload_processor(workload, bundle, seed)
        return proc.process(shard).columns

    same, other = rerun(11), rerun(12)
    assert set(same) == set(part)
    for k in part:
        np.testing.assert_array_equal(same[k], part[k], err_msg=k)
    assert not np.array_equal(same["reco_pt"], other["reco_pt"])
    np.testing.assert_array_equal(same["gen_pt"], other["gen_pt"])


def workload_processor(workload, bundle, seed: int):
    from hepray.workloads.flashsim import FlashSimProcessor

    layout_keep = [k for k in uproot.open(next(SAMPLE.glob("*.root")))["jets"].keys()
                   if k.startswith("gen_") or k in ("run", "luminosityBlock", "event", "jet_rank", "process", "label",
                                                    "truth_dr", "fault")]
    proc = FlashSimProcessor(bundle, workload.dataset(bundle), layout_keep, seed, 65536)
    proc.setup(1)
    return proc


# ---------------------------------------------------------------- generator-level events made on the fly
def test_flashsim_on_the_fly_from_a_generate_job(trained, tmp_path):
    """``generate:`` instead of ``dataset:``: Pythia 8 + FastJet jets made in each shard (no
    detector), then the pipeline. The generator-level columns equal those ``kind: generate``
    writes for the same job (same seeds, event numbers, lumisections, faults); the detector-level
    ones carry the full simulation's names."""
    gen = {"kind": "generate", "name": "g", "seed": 4, "plots": False, "output": {"dir": str(tmp_path / "full")},
           "generator": {"jets_per_shard": 6, "events_per_lumi": 5}, "jets": {"max_constituents": 1},
           "processes": [{"name": "qcd", "kind": "qcd", "n_jets": 12}],
           "faults": [{"type": "dead_region", "lumis": [1], "eta": [-1.0, 1.0], "phi": [-1.0, 0.5]}],
           "engine": {"workers": 2, "progress_every_s": 60}}
    s = hepray.run({"kind": "flashsim", "name": "otf", "seed": 11, "model": str(trained[0] / "model"), "generate": gen,
                    "output": {"dir": str(tmp_path / "flash")}, "engine": {"workers": 2, "progress_every_s": 60}},
                   quiet=True)
    assert s["events_out"] == 12 and s["shards"] == 2 and s["shards_failed"] == 0 and s["generation"]
    full_run = hepray.run(gen, quiet=True)
    assert full_run["events_out"] == 12
    flash = uproot.concatenate(str(tmp_path / "flash" / "parts" / "*.root") + ":jets", library="np")
    full = uproot.concatenate(str(tmp_path / "full" / "parts" / "*.root") + ":jets", library="np")
    reco = {k for k in full if k.startswith("reco_")}
    assert {k for k in flash if k.startswith("reco_")} == reco
    order_flash, order_full = np.argsort(flash["event"] * 4 + flash["jet_rank"]), np.argsort(full["event"] * 4 + full["jet_rank"])
    for k in [c for c in full if c.startswith("gen_")] + ["run", "luminosityBlock", "event", "fault", "label"]:
        np.testing.assert_array_equal(flash[k][order_flash], full[k][order_full], err_msg=k)
    assert (flash["fault"] == 1).any() == (full["fault"] == 1).any()
    ok = flash["reco_ok"]
    assert ok.mean() > 0.8 and np.all(np.abs(flash["reco_pt"][ok] / flash["gen_pt"][ok] - 1) < 0.5)


def test_plan_checks_the_branches_behind_pipeline_expressions(trained, tmp_path):
    """`hepray plan` of a flashsim job: the pipeline's fault flags are expressions of `fault`,
    which is what must be in the files (it used to look for a branch `dead_region`)."""
    from hepray.workloads.flashsim import FlashSim

    job = hepray.config.load_job(flash_job(tmp_path, trained[0] / "model"))
    cols = FlashSim(job).columns()
    assert "fault" in cols and "dead_region" not in cols and "gen_pt" in cols
    p = hepray.plan(job)
    assert p["events"] == sum(uproot.open(f)["jets"].num_entries for f in SAMPLE.glob("*.root"))


def test_flashsim_needs_exactly_one_source(tmp_path):
    base = {"kind": "flashsim", "model": "m", "output": {"dir": str(tmp_path)}}
    for extra in ({}, {"dataset": {"files": "x.root"}, "generate": "jobs/generate.yaml"}):
        with pytest.raises(ConfigError, match="exactly one of dataset"):
            hepray.config.load_job({**base, **extra})


# ---------------------------------------------------------------- GAN parameterization
def test_gan_parameterization_trains_generates_and_exports(ray_session, tmp_path):
    job = train_job(tmp_path / "gan", pipeline={**pipeline("gan"), "efficiency": None},
                    dataset=dataset(["qcd"]), training={"epochs": 4, "batch_size": 128},
                    validation={"enabled": False})
    job["pipeline"]["parameterizations"] = job["pipeline"]["parameterizations"][:1]
    job["pipeline"]["derived"] = {}
    hepray.run(job, quiet=True)
    m = json.loads((tmp_path / "gan" / "metrics.json").read_text())
    assert m["parameterizations"]["kinematics"]["epochs"] == 4  # GANs run every epoch
    assert m["export"]["kinematics"]["onnx"]["max_rel_diff"] < 1e-4
    from hepray.flashsim.pipeline import PipelineBundle

    pipe = PipelineBundle.read(tmp_path / "gan" / "model").load()
    cols = uproot.open(next(SAMPLE.glob("qcd_*.root")))["jets"].arrays(CONDITIONS[:8] + ["fault"], library="np",
                                                                        entry_stop=200)
    cols.update(dead_region=cols["fault"] == 1, miscalibrated=cols["fault"] == 2, noisy=cols["fault"] == 3)
    made = pipe.generate(cols, seed=3)
    assert list(made) == ["reco_pt", "reco_eta", "reco_phi", "reco_mass"]
    assert all(np.isfinite(v).all() and len(v) == 200 for v in made.values())
    assert np.all(made["reco_pt"] > 0)  # log_ratio keeps pT positive
