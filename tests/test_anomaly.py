"""Anomaly scans: reference tables, per-lumisection statistics and event-level search as pure
functions, then ``train_anomaly`` -> ``anomaly_scan`` on the committed faulty-run sample
(tests/data/anomaly/README.md) with checks that fail when the scan stops finding the faults."""

from __future__ import annotations

import csv
import glob
import io
import json
from pathlib import Path

import numpy as np
import pytest

from hepray.anomaly.dqm import (
    Binning,
    Calibration,
    classical_pvalues,
    combine_pvalues,
    counts_from_index,
    pseudo_lumis,
)
from hepray.anomaly.lumi import LumiSums, good_lumi_ranges, lumi_summary, lumi_table, performance
from hepray.anomaly.reference import ReferenceTable
from hepray.anomaly.search import (
    ScoreHistograms,
    auc_from_histograms,
    efficiency_at_rates,
    search_summary,
)
from hepray.anomaly.stats import binomial_interval

DATA = Path(__file__).parent / "data" / "anomaly"
SAMPLE = Path(__file__).parent / "data" / "generated" / "sample" / "parts"
DQ_FEATURES = ["reco_pt", "reco_eta", "reco_phi", "reco_mass", "reco_tau21", "reco_tau32", "reco_nconst"]


def _ref(n=20_000, n_features=3, seed=0) -> ReferenceTable:
    rng = np.random.default_rng(seed)
    err = rng.exponential(1.0, size=(n, n_features))
    return ReferenceTable.from_scores(err.mean(axis=1), err)


# -- pure functions ---------------------------------------------------------------------------
def test_reference_table_pvalues_thresholds_and_roundtrip():
    ref = _ref()
    rng = np.random.default_rng(1)
    fresh = rng.exponential(1.0, size=(20_000, 3)).mean(axis=1)
    p = ref.tail_pvalue(fresh)
    assert p.min() >= ref.p_min and p.max() <= 1.0
    # good data give uniform tail probabilities: deciles within 1.5% of 10%
    assert np.allclose(np.histogram(p, bins=10, range=(0, 1))[0] / len(p), 0.1, atol=0.015)
    for rate in (0.1, 0.01, 0.001):
        assert (fresh > ref.threshold(rate)).mean() == pytest.approx(rate, rel=0.35)
    assert ref.tail_pvalue([1e9])[0] == ref.p_min
    again = ReferenceTable.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert np.array_equal(again.tail_pvalue(fresh), p)
    drawn = ref.sample(rng, 20_000)
    assert abs(np.median(drawn) - np.median(fresh)) < 0.03


def _lumis(rng, ref_rng_scale=1.0, n_lumis=300, per_lumi=30, bad=(), shift_feature=1):
    """Events of ``n_lumis`` lumisections; those in ``bad`` have one feature's error tripled."""
    lumi = np.repeat(np.arange(n_lumis), per_lumi)
    err = rng.exponential(ref_rng_scale, size=(len(lumi), 3))
    truth = np.isin(lumi, bad).astype(int)
    err[truth == 1, shift_feature] *= 3.0
    return lumi, err, truth


def test_lumi_statistics_hold_false_alarm_and_find_shifted_lumis():
    ref = _ref()
    rng = np.random.default_rng(2)
    bad = list(range(0, 300, 10))
    lumi, err, truth = _lumis(rng, bad=bad)
    score = err.mean(axis=1)
    # two chunks in a different order must give the same sums as one
    whole = LumiSums(3, ref.threshold(0.01))
    whole.add(np.full(len(lumi), 7), lumi, score, ref.tail_pvalue(score), err, truth)
    half = len(lumi) // 2
    a, b = LumiSums(3, ref.threshold(0.01)), LumiSums(3, ref.threshold(0.01))
    b.add(np.full(half, 7), lumi[:half], score[:half], ref.tail_pvalue(score[:half]), err[:half], truth[:half])
    a.add(np.full(len(lumi) - half, 7), lumi[half:], score[half:], ref.tail_pvalue(score[half:]), err[half:], truth[half:])
    merged = a.merge(b).arrays()
    for k, v in whole.arrays().items():
        assert np.allclose(v, merged[k]), k
    assert merged["lumi"].tolist() == list(range(300)) and (merged["n"] == 30).all()

    features = ["a", "b", "c"]
    for statistic in ("fisher", "frac_above", "mean"):
        t = lumi_table(whole, ref, features, statistic=statistic, false_alarm=0.05, n_boot=500)
        perf = performance(t)
        assert perf["false_alarm_measured"]["value"] < 0.12, statistic  # alpha = 0.05 on 270 good ones
        assert perf["auc"][statistic] > 0.8, statistic
    t = lumi_table(whole, ref, features, statistic="fisher", false_alarm=0.05)
    assert performance(t)["found"]["value"] > 0.8
    flagged_bad = t["flagged"] & (t["truth"] > 0)
    assert all(t["top_features"][i][0]["feature"] == "b" for i in np.flatnonzero(flagged_bad))


def test_too_small_lumis_are_not_judged_and_good_ranges_skip_flags():
    ref = _ref()
    sums = LumiSums(3, ref.threshold(0.01))
    err = np.full((3, 3), 50.0)
    sums.add([1, 1, 1], [4, 4, 4], err.mean(axis=1), ref.tail_pvalue(err.mean(axis=1)), err)
    t = lumi_table(sums, ref, ["a", "b", "c"], min_events=5)
    assert not t["judged"][0] and not t["flagged"][0]
    ranges = good_lumi_ranges(np.array([1, 1, 1, 1, 2]), np.array([1, 2, 3, 4, 1]), np.array([True, True, False, True, True]))
    assert ranges == {"1": [[1, 2], [4, 4]], "2": [[1, 1]]}


def test_efficiency_at_background_rates_matches_direct_counting():
    rng = np.random.default_rng(3)
    bkg, sig = rng.exponential(1.0, 200_000), rng.exponential(3.0, 20_000)
    h = ScoreHistograms()
    h.add("bkg", bkg[:100_000])
    h.add("bkg", bkg[100_000:])
    h.add("sig", sig)
    rows = efficiency_at_rates(h.counts["sig"], h.counts["bkg"], [1e-2, 1e-3, 1e-4])
    for row in rows:
        t = np.quantile(bkg, 1 - row["background_rate"])
        assert row["threshold"] == pytest.approx(t, rel=0.03)
        assert row["signal_efficiency"] == pytest.approx((sig > t).mean(), abs=0.01)
        lo, hi = row["threshold_band"]
        assert lo <= row["signal_efficiency"] <= hi
    assert [r["reliable"] for r in rows] == [True, True, True]
    assert efficiency_at_rates(h.counts["sig"], h.counts["bkg"], [1e-6])[0]["reliable"] is False  # 0.2 events above
    from sklearn.metrics import roc_auc_score

    exact = roc_auc_score(np.r_[np.zeros(len(bkg)), np.ones(len(sig))], np.r_[bkg, sig])
    assert auc_from_histograms(h.counts["sig"], h.counts["bkg"]) == pytest.approx(exact, abs=0.002)
    ref = ReferenceTable.from_scores(bkg, bkg[:, None])
    s = search_summary(h, ["bkg"], {"sig": ["sig"]}, ref, [1e-2])
    at_ref = s["signals"]["sig"]["at_reference_threshold"][0]
    assert at_ref["background_rate_measured"] == pytest.approx(1e-2, rel=0.1)


def test_binomial_interval_is_honest_at_the_edges():
    lo, hi = binomial_interval(0, 10)
    assert lo == 0.0 and 0.1 < hi < 0.2
    lo, hi = binomial_interval(10, 10)
    assert hi == 1.0 and 0.8 < lo < 0.9
    lo, hi = binomial_interval(50, 100)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.1, abs=0.01)


def test_lumi_summaries_add_over_shards_like_one_pass():
    """The scan's per-shard summaries, added by the engine's rule, equal one pass over all events."""
    from hepray.engine.summary import add, decode, encode

    ref = _ref()
    rng = np.random.default_rng(4)
    lumi, err, truth = _lumis(rng, n_lumis=20, bad=[3, 7])
    score = err.mean(axis=1)
    idx = rng.integers(0, 5, size=(len(lumi), 2))
    args = dict(event_threshold=ref.threshold(0.01), n_bins=5)
    whole = lumi_summary(np.full(len(lumi), 7), lumi, score, ref.tail_pvalue(score), err, truth=truth,
                         hist_index=idx, **args)
    cut = 250  # mid-lumisection: lumisection 8 is split over the two "shards"
    a = lumi_summary(np.full(cut, 7), lumi[:cut], score[:cut], ref.tail_pvalue(score[:cut]), err[:cut],
                     truth=truth[:cut], hist_index=idx[:cut], **args)
    b = lumi_summary(np.full(len(lumi) - cut, 7), lumi[cut:], score[cut:], ref.tail_pvalue(score[cut:]), err[cut:],
                     truth=truth[cut:], hist_index=idx[cut:], **args)
    both = add(decode(encode(a)), decode(encode(b)))  # through the commit markers' JSON form
    assert both.keys() == whole.keys() and len(whole) == 20
    for k in whole:
        for name in ("n", "n_above", "truth", "hist"):
            assert np.array_equal(both[k][name], whole[k][name]), (k, name)
        assert np.allclose(both[k]["sum_err"], whole[k]["sum_err"]) and np.isclose(both[k]["sum_score"], whole[k]["sum_score"])
    sums = LumiSums.from_summary(both, 3, ref.threshold(0.01)).arrays()
    direct = LumiSums(3, ref.threshold(0.01))
    direct.add(np.full(len(lumi), 7), lumi, score, ref.tail_pvalue(score), err, truth)
    for k, v in direct.arrays().items():
        assert np.allclose(v, sums[k]), k


def test_classical_tests_match_scipy_and_hold_their_size():
    from scipy.stats import chi2_contingency, ks_2samp

    rng = np.random.default_rng(5)
    ref_x = rng.normal(size=(20_000, 2))
    b = Binning.from_reference(ref_x, ["a", "b"], bins=8)
    ref = b.counts(ref_x)[0]
    assert ref[:, 0].sum() == ref[:, -1].sum() == 0  # the outer bins hold only events outside the reference range
    lumi_x = rng.normal(size=(400, 2)) * [1.0, 1.3]  # b is wider: found; a is not
    h = b.counts(lumi_x)
    p, stat = classical_pvalues(h, ref, b.valid, "chi2", min_expected=0.0)
    v = 0
    inner = np.flatnonzero(b.valid[v])[1:-1]
    table = np.stack([h[0, v, inner], ref[v, inner]])
    table = table[:, table.sum(axis=0) > 0]
    assert stat[0, v] == pytest.approx(chi2_contingency(table, correction=False)[0], rel=1e-9)
    pk, dk = classical_pvalues(h, ref, b.valid, "ks")
    i_l, i_r = b.index(lumi_x)[:, 1], b.index(ref_x)[:, 1]
    exact = ks_2samp(i_l, i_r, method="asymp")
    assert dk[0, 1] == pytest.approx(exact.statistic, abs=1e-9) and pk[0, 1] == pytest.approx(exact.pvalue, rel=0.1)
    assert p[0, 1] < 1e-3 and p[0, 0] > 1e-3  # chi2 sees the width; KS, made for shifts, less so
    assert pk[0, 1] < 0.1 and pk[0, 1] < pk[0, 0]
    # good lumisections drawn from a held-out pool: the nominal 5% rate holds or is undershot
    # (chi2: its p-value doubled for the outside-the-range test, so ~2.5%; binned KS: conservative)
    good = pseudo_lumis(b.index(rng.normal(size=(20_000, 2))), np.full(2000, 300), b.n_bins, rng)
    for test, lo, hi in (("chi2", 0.015, 0.055), ("ks", 0.0, 0.06)):
        pg, _ = classical_pvalues(good, ref, b.valid, test)
        assert lo < (pg < 0.05).mean() < hi, (test, (pg < 0.05).mean())
        for how in ("min_p", "fisher"):
            assert (combine_pvalues(pg, how) < 0.05).mean() < 0.08, (test, how)
    # the calibrated threshold holds the false-alarm rate on other good lumisections
    pg, _ = classical_pvalues(good, ref, b.valid, "chi2")
    comb = combine_pvalues(pg, "min_p")
    thr, ok = Calibration.from_values(comb[:1000]).threshold(0.02)
    assert ok and 0.005 < (comb[1000:] < thr).mean() < 0.045
    assert Calibration.from_values(comb[:50]).threshold(0.01) == (0.01, False)  # too few to calibrate 1%: nominal
    assert counts_from_index(b.index(lumi_x), b.n_bins).sum() == 800


# -- the jobs, on the committed faulty run ----------------------------------------------------------
FEATURES = ["reco_pt", "reco_eta", "reco_phi", "reco_mass", "reco_tau1", "reco_tau2", "reco_tau3", "reco_nconst"]
ENGINE = {"workers": 2, "progress_every_s": 60}


LUMI_MODEL = {"events": [15, 60], "bins": 10, "train_lumis": 1000, "calibration_lumis": 1000}  # lumisections of ~27 jets


def _train_vae(tmp_path_factory, score: str = "recon", seed: int = 1, lumi: bool = False) -> dict:
    import hepray

    return hepray.run({
        "kind": "train_anomaly", "name": "t_vae", "seed": seed,
        "dataset": {"files": str(DATA / "reference" / "parts" / "*.root"), "tree": "jets"},
        "features": FEATURES, "model": {"type": "vae", "score": score},
        "training": {"batch_size": 64, "epochs": 100, "threads": 1},
        "lumi": LUMI_MODEL if lumi else {"enabled": False},
        "output": {"dir": str(tmp_path_factory.mktemp(f"anomaly_vae_{score}"))}, "engine": ENGINE,
    }, overwrite=True, quiet=True)


@pytest.fixture(scope="module")
def vae(ray_session, tmp_path_factory):
    """A VAE on the reference run (it found more faulty lumisections than the plain autoencoder:
    docs/anomaly.md), torch on one thread, seeded: the same bytes on every run; with the
    per-lumisection models."""
    return _train_vae(tmp_path_factory, lumi=True)


@pytest.fixture(scope="module")
def vae_kl(ray_session, tmp_path_factory):
    """The same training scored in the latent space (KL): the search mode's score, whose tail is
    physics (mass, substructure) rather than the odd eta/phi corners that dominate the
    reconstruction error's tail (docs/anomaly.md)."""
    return _train_vae(tmp_path_factory, score="kl")


@pytest.fixture(scope="module")
def dq_scan(vae, tmp_path_factory):
    import hepray

    out = tmp_path_factory.mktemp("anomaly_dq")
    summary = hepray.run({
        "kind": "anomaly_scan", "name": "dq",
        "dataset": {"files": str(DATA / "faulty" / "parts" / "*.root"), "tree": "jets"},
        "model": {"path": vae["model"]}, "truth": "fault", "output": {"dir": str(out)}, "engine": ENGINE,
    }, overwrite=True, quiet=True)
    return out, summary


def _input(pattern: str, branches: list[str]) -> dict:
    import uproot

    return uproot.concatenate(sorted(glob.glob(pattern)), branches, library="np")


def test_train_anomaly_artifact_is_self_contained(vae):
    import torch

    from hepray.anomaly.scoring import Scorer
    from hepray.models.artifact import load_metadata

    meta = load_metadata(vae["model"])
    assert meta["type"] == "torch" and meta["task"] == "anomaly" and meta["features"] == FEATURES
    assert meta["architecture"]["name"] == "vae" and len(meta["preprocessing"]["scale"]) == len(FEATURES)
    ref = ReferenceTable.from_dict(meta["anomaly"]["reference"])
    assert ref.n == vae["n_reference_heldout"] > 700  # validation + test halves of 2000 jets
    assert np.all(np.diff(ref.values) >= 0) and ref.values[0] >= 0
    raw = (Path(vae["model"]) / "model.pt").read_bytes()
    torch.load(io.BytesIO(raw), weights_only=True)  # a plain state_dict
    scorer = Scorer.from_bundle(meta, raw)
    X = np.column_stack([_input(str(DATA / "reference" / "parts" / "*.root"), FEATURES)[f] for f in FEATURES])
    s, e = scorer(X[:200])
    assert s.shape == (200,) and e.shape == (200, len(FEATURES)) and np.isfinite(s).all()
    X[0, 0] = np.nan
    assert scorer(X[:2])[0][0] == np.inf  # broken inputs are the most anomalous
    assert (Path(vae["model"]).parent / "plots" / "loss.png").exists()


def test_scan_writes_every_event_once_with_scores_and_identity(dq_scan):
    out, summary = dq_scan
    src = _input(str(DATA / "faulty" / "parts" / "*.root"), ["run", "luminosityBlock", "event"])
    assert summary["events_in"] == summary["events_out"] == len(src["event"]) == 3000
    parts = _input(str(out / "parts" / "*.root"), ["run", "luminosityBlock", "event", "anomaly_score", "anomaly_pvalue",
                                                   "fault", "label"] + [f"err_{f}" for f in FEATURES])
    assert sorted(zip(parts["luminosityBlock"], parts["event"])) == sorted(zip(src["luminosityBlock"], src["event"]))
    assert (parts["anomaly_pvalue"] > 0).all() and (parts["anomaly_pvalue"] <= 1).all()
    # per-lumisection sums read back from the parts equal a direct recomputation
    with open(out / "lumis.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(set(zip(src["run"], src["luminosityBlock"]))) == summary["lumisections"]
    for r in rows[::7]:
        sel = parts["luminosityBlock"] == int(r["lumi"])
        assert int(r["n"]) == sel.sum()
        assert float(r["mean_score"]) == pytest.approx(parts["anomaly_score"][sel].mean(), rel=1e-5)
        assert int(r["truth"]) == parts["fault"][sel].max()


def test_scan_finds_faulty_lumisections_and_keeps_the_good_ones(dq_scan):
    out, summary = dq_scan
    scan = json.loads((out / "scan.json").read_text())
    perf = scan["lumi"]["performance"]
    assert perf["faulty"] == 24 and perf["good"] == 86
    # measured with seed 1 (and seeds 2, 3 of the same job, to show the floors are not tuned to one model)
    assert summary["lumi_auc"] > 0.75  # fisher statistic; measured 0.87 (0.86, 0.87)
    found = {t: perf["found_per_truth"][t]["k"] for t in ("1", "2", "3")}
    assert found["1"] >= 5  # dead region: 8 injected, 8 found (5, 7)
    assert found["2"] + found["3"] >= 2  # miscalibration + noisy channel, 16 injected: 4 + 0 found (2 + 2, 2 + 2)
    assert perf["found"]["k"] >= 6  # 12 of 24 at false alarm 0.01 (9, 11)
    assert perf["false_alarm_measured"]["k"] <= 4  # 0.01 x 86 expected; measured 0 (1, 1)
    # the per-lumisection methods (seeds 1, 2 measured): the classical histogram tests find every dead
    # region (8/8, 8/8) and some miscalibrations (3/8, 3/8) at thresholds calibrated on held-out
    # pseudo-lumisections; the histogram autoencoder is weaker at ~27 jets (dead region 2/8, 4/8)
    methods = scan["lumi"]["methods"]
    assert set(methods) == {"events", "classical", "autoencoder", "combined"} and scan["lumi"]["decision"] == "combined"
    cl = methods["classical"]
    assert cl["calibrated"] and cl["test"] == "chi2" and cl["combine"] == "min_p"
    assert cl["found_per_truth"]["1"]["k"] >= 6 and cl["found_per_truth"]["1"]["k"] + cl["found_per_truth"]["2"]["k"] >= 8
    assert methods["autoencoder"]["found_per_truth"]["1"]["k"] >= 1
    for name in ("classical", "autoencoder"):
        m = methods[name]
        assert m["false_alarm_measured"]["k"] <= 4  # 86 good lumisections at 1%
        held = m["false_alarm_held_out"]  # 1000 other held-out good pseudo-lumisections
        assert held["n"] == 1000 and held["value"] <= 0.025, (name, held)  # measured 0.004, 0.010
    assert methods["combined"]["found"]["k"] >= cl["found"]["k"]  # any of the three, each at 1%/3
    flagged = json.loads((out / "flagged.json").read_text())
    assert len(flagged) == summary["flagged"] and all(f["features"][0]["feature"] in FEATURES for f in flagged)
    for f in flagged:  # each names the methods that flagged it and the variables driving each
        assert f["decision"] == "combined" and f["flagged_by"]
        for m in f["flagged_by"]:
            assert f["methods"][m]["flagged"] and f["methods"][m]["p"] < f["methods"][m]["threshold_p"]
        assert all(v["variable"] in FEATURES for v in f["methods"]["classical"]["variables"])
    dead = [f for f in flagged if f.get("truth") == 1 and "classical" in f["flagged_by"]]
    assert dead and all({"reco_eta", "reco_phi", "reco_pt", "reco_mass", "reco_nconst"} & {v["variable"] for v in
                                                                                         f["methods"]["classical"]["variables"]} for f in dead)
    good = json.loads((out / "good_lumis.json").read_text())["2"]
    kept = {lu for a, b in good for lu in range(a, b + 1)}
    assert not kept & {f["lumi"] for f in flagged}  # only the flagged lumisections go, not the run
    assert len(kept) >= 110 - len(flagged) - 20  # ranges may span numbers with no events
    for name in ("scores.png", "lumis.png", "flagged_features.png", "lumi_roc.png", "lumis_run2.png"):
        assert (out / "plots" / name).stat().st_size > 1000


def test_training_is_deterministic(vae, tmp_path_factory):
    """Same job, same seed: the same weights byte for byte (shards in a fixed order, weights,
    batches and VAE noise seeded, one torch thread), so the figures below do not drift."""
    again = _train_vae(tmp_path_factory)
    assert (Path(again["model"]) / "model.pt").read_bytes() == (Path(vae["model"]) / "model.pt").read_bytes()
    assert again["best_epoch"] == vae["best_epoch"]


def test_plain_autoencoder_streamed_per_epoch(ray_session, tmp_path):
    """cache_mb: 0 re-reads the reference shard by shard every epoch (bounded memory); a plain
    autoencoder trained so still learns the reference: its held-out reconstruction error is far
    below the ~1 per feature of an untrained network on standardised inputs."""
    import hepray

    s = hepray.run({
        "kind": "train_anomaly", "name": "t_ae", "seed": 2,
        "dataset": {"files": str(DATA / "reference" / "parts" / "*.root"), "tree": "jets", "shard_events": 500},
        "features": FEATURES, "model": {"type": "autoencoder"},
        "training": {"batch_size": 64, "epochs": 30, "cache_mb": 0}, "lumi": {"enabled": False},
        "output": {"dir": str(tmp_path / "ae")}, "engine": ENGINE,
    }, overwrite=True, quiet=True)
    assert s["n_train"] + s["n_reference_heldout"] == 2000 and s["dropped_non_finite"] == 0
    assert s["validation_loss"] < 0.4, s["validation_loss"]  # measured 0.173
    assert float(s["reference_quantiles"]["0.5"]) < 0.4  # median held-out score; measured 0.12


def test_event_level_search_finds_unseen_signal(vae_kl, tmp_path):
    import hepray

    vae = vae_kl

    summary = hepray.run({
        "kind": "anomaly_scan", "name": "search",
        "dataset": {"tree": "jets", "cut": "fault == 0", "samples": [
            {"name": "qcd", "label": 0, "files": [str(DATA / "faulty" / "parts" / "*.root"), str(SAMPLE / "qcd_*.root")]},
            {"name": "ttbar", "label": 1, "files": str(SAMPLE / "ttbar_*.root")}]},
        "model": {"path": vae["model"]}, "lumi": {"enabled": False}, "output": {"dir": str(tmp_path / "scan")},
        "engine": ENGINE,
    }, overwrite=True, quiet=True)
    search = json.loads((tmp_path / "scan" / "scan.json").read_text())["search"]
    top = search["signals"]["ttbar"]
    at = {w["background_rate"]: w for w in top["at_background_rate"]}
    assert search["background_events"] == 2335 + 1114 and top["events"] == 1262
    # a model that has learnt nothing gives AUC 0.5 and efficiency = background rate
    assert top["auc"] > 0.75  # measured 0.87 (seeds 2, 3: 0.83, 0.84)
    assert at[0.01]["signal_efficiency"] > 0.02 and at[0.01]["reliable"]  # 2x random; measured 0.048 (seeds 2, 3: 0.029, 0.033)
    assert not at[1e-4]["reliable"]  # 0.3 background events above: says so
    assert summary["search_ttbar"]["eff_at_0.01"] == at[0.01]["signal_efficiency"]
    assert (tmp_path / "scan" / "plots" / "search_roc.png").exists()


def test_bad_configs_are_refused_before_running(tmp_path):
    import torch

    import hepray
    from hepray.config import load_job
    from hepray.errors import ConfigError
    from hepray.models import build_model
    from hepray.models.artifact import save_metadata

    with pytest.raises(ConfigError, match="lumi.maps"):
        load_job({"kind": "train_anomaly", "dataset": {"files": "x.root"}, "features": ["a", "b"],
                  "lumi": {"maps": [{"x": "a", "y": "b", "w": "pt"}]}})
    with pytest.raises(ConfigError, match="lumi.events"):
        load_job({"kind": "train_anomaly", "dataset": {"files": "x.root"}, "features": ["a"], "lumi": {"events": [50, 10]}})
    with pytest.raises(ConfigError, match="needs type: vae"):
        load_job({"kind": "train_anomaly", "dataset": {"files": "x.root"}, "features": ["a"],
                                "model": {"type": "autoencoder", "score": "kl"}})
    mlp = build_model({"name": "mlp", "n_inputs": 2, "hidden": [4], "n_outputs": 1})
    torch.save(mlp.state_dict(), tmp_path / "model.pt")
    save_metadata(tmp_path, {"type": "torch", "file": "model.pt", "features": ["a", "b"], "task": "binary",
                             "architecture": mlp.arch})
    with pytest.raises(ConfigError, match="not an anomaly model"):
        hepray.run({"kind": "anomaly_scan", "dataset": {"files": "x.root"}, "model": {"path": str(tmp_path)},
                    "output": {"dir": str(tmp_path / "out")}}, quiet=True)


@pytest.mark.slow
def test_demo_anomaly_step_flags_the_faulty_lumisections_only(ray_session, tmp_path, monkeypatch):
    """The demo's data-quality chain as `hepray demo` runs it (jobs/generate_dq.yaml ->
    train_anomaly.yaml -> anomaly_scan.yaml), in a scratch directory: the scan flags the three
    faulty lumisections (one per fault type) and none of the 25 good ones. About a minute on 2
    cores (Pythia makes the 1800 jets)."""
    import hepray

    root = Path(__file__).parent.parent
    monkeypatch.chdir(tmp_path)
    hepray.run(str(root / "jobs" / "generate_dq.yaml"), overwrite=True, quiet=True)
    hepray.run(str(root / "jobs" / "train_anomaly.yaml"), overwrite=True, quiet=True)
    s = hepray.run(str(root / "jobs" / "anomaly_scan.yaml"), overwrite=True, quiet=True,
                   overrides={"dataset.samples": [{"name": "qcd", "files": "runs/demo/generate_dq/parts/qcd_*.root", "label": 0}]})
    assert s["lumi_decision"] == "combined"
    assert s["lumi_found"] == 1.0 and s["lumi_good_flagged"] == 0 and s["flagged"] == 3, s
    flagged = json.loads((tmp_path / "runs/demo/anomaly_scan/flagged.json").read_text())
    assert sorted((f["lumi"], f["truth"]) for f in flagged) == [(1, 1), (2, 2), (3, 3)]
    good = json.loads((tmp_path / "runs/demo/anomaly_scan/good_lumis.json").read_text())["1"]
    assert [0, 0] in good and [4, 13] in good



def test_replayed_jets_keep_their_generator_features_when_turned():
    """A replay turns whole events in azimuth and mirrors them in eta: the rotated generator-level
    features it hands the detector equal those recomputed from the turned constituents."""
    from hepray.generate.producer import GenJets, _jet_features
    from hepray.generate.replay import pool_features, replay

    rng = np.random.default_rng(6)
    n_jets, per = 12, 15
    pt, eta, phi = rng.exponential(40, n_jets * per) + 1, rng.normal(0.3, 0.2, n_jets * per), rng.normal(1.0, 0.2, n_jets * per)
    const = {"px": pt * np.cos(phi), "py": pt * np.sin(phi), "pz": pt * np.sinh(eta), "e": pt * np.cosh(eta),
             "m": np.zeros(n_jets * per), "pid": np.full(n_jets * per, 211, np.int32), "charge": np.ones(n_jets * per, np.int8)}
    pool = GenJets(const, np.arange(0, n_jets * per + 1, per), np.repeat(np.arange(6), 2), np.tile([0, 1], 6).astype(np.int32),
                   np.full(n_jets, -1.0), 6, 0.0)
    g, f = replay(pool, pool_features(pool, 0.8), rng, 20, 1000)
    assert g.n_jets == 40 and g.event.min() == 1000 and g.event.max() == 1019
    c = g.const
    again = _jet_features(c["px"], c["py"], c["pz"], c["e"], g.offsets, None, 0.8)
    for k in ("pt", "eta", "phi", "mass", "tau1", "tau2", "tau3", "nconst"):
        assert np.allclose(f[k], again[k], atol=1e-9), k
    assert np.std(f["phi"]) > 1.0 and (f["eta"] < 0).mean() > 0.2  # turned and mirrored


def test_profile_map_statistic_against_a_direct_computation():
    """The classical method's pT-per-cell map: per-lumisection sums added over shards equal one
    pass, and its chi2 equals the sum over cells computed directly; a hot cell is seen."""
    from hepray.anomaly.dqm import ProfileMap
    from hepray.engine.summary import add

    rng = np.random.default_rng(7)
    ref = np.column_stack([rng.uniform(-2, 2, 50_000), rng.uniform(-3, 3, 50_000), rng.normal(600, 30, 50_000)])
    m = ProfileMap.from_reference(ref, (0, 1, 2), ("eta", "phi", "pt"), (4, 4))
    lumi = np.column_stack([rng.uniform(-2, 2, 600), rng.uniform(-3, 3, 600), rng.normal(600, 30, 600)])
    hot = (lumi[:, 0] > 0) & (lumi[:, 0] < 1) & (lumi[:, 1] > 0) & (lumi[:, 1] < 1.5)
    lumi[hot, 2] += 60  # a hot cell
    cell = m.cells(lumi[:, 0], lumi[:, 1])
    s = add(m.sums(cell[:300], lumi[:300, 2]), m.sums(cell[300:], lumi[300:, 2]))
    assert np.allclose(s, m.sums(cell, lumi[:, 2]))
    chi = 0.0
    for c in range(16):
        sel_r, sel_l = m.cells(ref[:, 0], ref[:, 1]) == c, cell == c
        if sel_l.any():
            chi += sel_l.sum() * (lumi[sel_l, 2].mean() - ref[sel_r, 2].mean()) ** 2 / ref[sel_r, 2].var()
    from hepray.anomaly.stats import chi2_sf

    assert m.pvalues(s)[0] == pytest.approx(chi2_sf(chi, 16), rel=1e-6) and m.pvalues(s)[0] < 1e-6
    good = m.sums(cell, rng.normal(600, 30, 600))
    assert m.pvalues(good)[0] > 1e-3
