"""kind: generate: kernels (N-subjettiness, detector, faults), determinism, the committed sample
and one small end-to-end run through the engine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import awkward as ak
import numpy as np
import pytest

from hepray.errors import ConfigError
from hepray.generate import faults as F
from hepray.generate.config import GenerateConfig
from hepray.generate.detector import (
    CHARGED_HADRON,
    DET_CHARGED,
    DET_NEUTRAL,
    DET_PHOTON,
    ELECTRON,
    MUON,
    NEUTRAL_HADRON,
    PHOTON,
    detector_class,
    efficiency,
    load_detector,
    lognormal_response,
    particle_class,
    relative_resolution,
    simulate,
)
from hepray.generate.jets import (
    exclusive_kt_axes,
    from_pt_eta_phi_e,
    kinematics,
    nsubjettiness,
    round_mantissa,
    safe_ratio,
    taus,
)
from hepray.generate.pythia import SEED_MAX, shard_seed

GENERATED = Path(__file__).parent / "data" / "generated"

DETECTOR = {
    "name": "test",
    "charged": {"resolution": {"constant": 0.01, "linear": 0.0002}, "angular": {"eta": 0.001, "phi": 0.001},
                "efficiency": {"barrel": 0.9, "endcap": 0.8, "barrel_eta": 1.5, "eta_max": 2.5, "pt_50": 1.0,
                               "pt_width": 0.2}},
    "photon": {"resolution": {"stochastic": 0.03, "constant": 0.005}, "angular": {"eta": 0.005, "phi": 0.005},
               "efficiency": {"barrel": 0.98, "endcap": 0.95, "eta_max": 3.0}},
    "neutral_hadron": {"resolution": {"stochastic": 1.0, "constant": 0.05}, "angular": {"eta": 0.03, "phi": 0.03},
                       "efficiency": {"barrel": 0.7, "endcap": 0.6, "eta_max": 3.0, "pt_50": 2.0, "pt_width": 0.5}},
}


def job(**extra) -> GenerateConfig:
    data = {"kind": "generate", "processes": [{"name": "qcd", "kind": "qcd", "n_jets": 10}]}
    data.update(extra)
    return GenerateConfig.model_validate(data)


def prongs(centers, n_per=1, spread=0.0, pt=100.0, seed=0):
    """Massless particles in tight clusters at (rap, phi) centers: a k-prong jet."""
    rng = np.random.default_rng(seed)
    rap = np.concatenate([np.full(n_per, c[0]) + spread * rng.standard_normal(n_per) for c in centers])
    phi = np.concatenate([np.full(n_per, c[1]) + spread * rng.standard_normal(n_per) for c in centers])
    pts = np.full(rap.size, pt)
    return from_pt_eta_phi_e(pts, rap, phi, pts * np.cosh(rap))


# -- jets ----------------------------------------------------------------------------------------

def test_tau1_of_two_equal_particles_is_half_their_distance_over_r0():
    a, r0 = 0.3, 0.8
    px, py, pz, e = prongs([(-a, 0.0), (a, 0.0)])
    t = taus(px, py, pz, e, r0)
    assert t[0] == pytest.approx(a / r0, rel=1e-9)  # E-scheme axis at rapidity 0, each particle a away
    assert t[1] == 0.0 and t[2] == 0.0  # two particles: each is its own axis


def test_nsubjettiness_counts_prongs():
    pytest.importorskip("fastjet")
    r0 = 0.8
    one = prongs([(0.0, 0.0)], n_per=20, spread=0.01)
    two = prongs([(-0.25, 0.0), (0.25, 0.1)], n_per=20, spread=0.01, seed=1)
    three = prongs([(-0.3, 0.0), (0.3, 0.0), (0.0, 0.35)], n_per=20, spread=0.01, seed=2)
    t1, t2, t3 = (taus(*p, r0) for p in (one, two, three))
    assert t1[0] < 0.03  # one prong: one axis explains it
    assert t2[1] / t2[0] < 0.1 < t1[1] / t1[0]  # tau21 small only for two prongs
    assert t3[2] / t3[1] < 0.1 and t3[1] / t3[0] > 0.3  # tau32 small only for three prongs
    assert t2[2] / t2[1] > 0.3


def test_nsubjettiness_with_given_axes_and_edge_cases():
    pt = np.array([1.0, 3.0])
    assert nsubjettiness(pt, [0.0, 0.4], [0.0, 0.0], [0.0], [0.0], 1.0) == pytest.approx(3 * 0.4 / 4)
    assert nsubjettiness(pt, [0.0, 0.4], [3.1, -3.1], [0.0], [3.1], 1.0) == pytest.approx(
        3 * math.hypot(0.4, 2 * math.pi - 6.2) / 4)  # azimuth wraps around
    assert nsubjettiness(np.array([]), [], [], [0.0], [0.0], 1.0) == 0.0
    np.testing.assert_array_equal(safe_ratio([1.0, 2.0], [0.0, 4.0]), [0.0, 0.5])


def test_exclusive_kt_axes_find_the_prongs():
    pytest.importorskip("fastjet")
    centers = [(-0.3, 0.0), (0.3, 0.0), (0.0, 0.35)]
    ax = kinematics(*exclusive_kt_axes(*prongs(centers, n_per=10, spread=0.005), 3).T)
    found = np.array(sorted(zip(np.round(ax["rap"], 2), np.round(ax["phi"], 2))))
    # one (rapidity, phi) row per prong; pytest 9 refuses nested tuples in approx, an array is fine
    np.testing.assert_allclose(found, np.array(sorted(centers)), atol=0.01, rtol=0)


def test_round_mantissa_keeps_relative_precision():
    x = np.random.default_rng(0).lognormal(size=10_000).astype(np.float32)
    r = round_mantissa(x, 10)
    assert np.max(np.abs(r / x - 1)) <= 2.0**-11 * 1.0001
    assert np.all(r.view(np.uint32) & np.uint32((1 << 13) - 1) == 0)
    np.testing.assert_array_equal(round_mantissa(x, None), x)


# -- detector ------------------------------------------------------------------------------------

def test_particle_classes():
    pid = np.array([211, -11, 13, 22, 130, 2112, -321])
    charge = np.array([1, 1, -1, 0, 0, 0, -1])
    np.testing.assert_array_equal(particle_class(pid, charge),
                                  [CHARGED_HADRON, ELECTRON, MUON, PHOTON, NEUTRAL_HADRON, NEUTRAL_HADRON, CHARGED_HADRON])
    np.testing.assert_array_equal(detector_class(particle_class(pid, charge)),
                                  [DET_CHARGED] * 3 + [DET_PHOTON, DET_NEUTRAL, DET_NEUTRAL, DET_CHARGED])


@pytest.mark.parametrize("pclass,energy", [(PHOTON, 100.0), (PHOTON, 4.0), (NEUTRAL_HADRON, 10.0),
                                           (NEUTRAL_HADRON, 300.0), (CHARGED_HADRON, 200.0)])
def test_smearing_matches_configured_resolution(pclass, energy):
    det = load_detector(DETECTOR)
    n = 200_000
    m = simulate(np.random.default_rng(1), np.full(n, energy), np.full(n, 0.5), np.zeros(n), np.zeros(n),
                 np.full(n, pclass, np.int8), det)
    block = {PHOTON: DETECTOR["photon"], NEUTRAL_HADRON: DETECTOR["neutral_hadron"],
             CHARGED_HADRON: DETECTOR["charged"]}[pclass]["resolution"]
    expected = math.sqrt(block.get("stochastic", 0) ** 2 / energy + block.get("constant", 0) ** 2
                         + (block.get("linear", 0) * energy) ** 2)
    r = m["e"] / energy
    assert r.mean() == pytest.approx(1.0, abs=3 * expected / math.sqrt(n) + 1e-4)
    assert r.std() == pytest.approx(expected, rel=0.02)
    ang = {PHOTON: 0.005, NEUTRAL_HADRON: 0.03, CHARGED_HADRON: 0.001}[pclass]
    assert (m["eta"] - 0.5).std() == pytest.approx(ang, rel=0.02)


def test_relative_resolution_and_lognormal():
    assert relative_resolution(100.0, 0.5, 0.03) == pytest.approx(math.hypot(0.05, 0.03))
    r = lognormal_response(np.random.default_rng(0), np.full(400_000, 1.0))
    assert r.min() > 0 and r.mean() == pytest.approx(1.0, abs=0.01) and r.std() == pytest.approx(1.0, rel=0.05)


def test_efficiency_flags_the_configured_fraction():
    det = load_detector(DETECTOR)
    n = 100_000
    rng = np.random.default_rng(2)
    cases = [  # (class, pt, eta, expected efficiency)
        (CHARGED_HADRON, 50.0, 0.3, 0.9), (CHARGED_HADRON, 50.0, 2.0, 0.8), (CHARGED_HADRON, 50.0, 2.7, 0.0),
        (CHARGED_HADRON, 1.0, 0.3, 0.45), (NEUTRAL_HADRON, 2.0, -1.0, 0.35), (PHOTON, 10.0, -2.0, 0.95),
    ]
    for pclass, pt, eta, eff in cases:
        e = np.full(n, pt * math.cosh(eta))
        m = simulate(rng, e, np.full(n, eta), np.zeros(n), np.zeros(n), np.full(n, pclass, np.int8), det)
        assert m["reco"].mean() == pytest.approx(eff, abs=4 * math.sqrt(max(eff * (1 - eff), 1e-6) / n)), (pclass, pt, eta)
        assert len(m["reco"]) == n  # flagged, never dropped
    p = efficiency(np.array([0.0, 1.0, 100.0]), np.zeros(3), np.full(3, DET_CHARGED), det)
    assert p[0] < 0.01 and p[1] == pytest.approx(0.45) and p[2] == pytest.approx(0.9)


def test_detector_yaml_default_and_errors(tmp_path):
    assert load_detector("default").name == "generic-pf"
    bad = tmp_path / "det.yaml"
    bad.write_text("charged: {}\nphoton: {}\nneutral_hadron: {resolution: {stochastic: -1}}\n")
    with pytest.raises(ConfigError, match="neutral_hadron.resolution.stochastic"):
        load_detector(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        load_detector("missing.yaml")


# -- faults --------------------------------------------------------------------------------------

def test_faults_apply_only_on_their_lumisections():
    cfg = job(faults=[{"type": "dead_region", "lumis": [2], "eta": [0, 1], "phi": [0, 1]},
                      {"type": "miscalibration", "lumis": [3, 4], "scale": 1.2, "classes": ["photon"]},
                      {"type": "noisy", "lumis": [5], "eta": 0.0, "phi": 0.0, "energy": 30}])
    fl = cfg.faults
    idx = F.lumi_fault_index(np.array([0, 2, 3, 4, 5, 6]), fl)
    np.testing.assert_array_equal(idx, [-1, 0, 1, 1, 2, -1])
    np.testing.assert_array_equal(F.fault_codes(idx, fl), [0, 1, 2, 2, 3, 0])

    eta, phi = np.array([0.5, 0.5, 1.5]), np.array([0.5, 0.5, 0.5])
    reco = F.apply_dead_regions(np.ones(3, bool), eta, phi, np.array([0, -1, 0]), fl)
    np.testing.assert_array_equal(reco, [False, True, True])  # inside + faulty lumi only

    e = F.apply_miscalibration(np.full(3, 10.0), np.array([DET_PHOTON, DET_CHARGED, DET_PHOTON]),
                               np.array([1, 1, -1]), fl)
    np.testing.assert_allclose(e, [12.0, 10.0, 10.0])

    # two jets in the noisy event (nearest within R gets the deposit), one far away in another event
    dep = F.noise_deposits(np.random.default_rng(0), np.array([7, 7, 8]), np.array([0.3, -0.6, 2.0]),
                           np.array([0.0, 0.0, 2.0]), np.array([2, 2, 2]), fl, 0.8)
    np.testing.assert_array_equal(dep["jet"], [0])
    assert dep["e"][0] > 0 and dep["eta"][0] == 0.0


def test_config_refuses_overlapping_faults_and_bad_settings():
    with pytest.raises(Exception, match="two faults"):
        job(faults=[{"type": "miscalibration", "lumis": [1], "scale": 1.1},
                    {"type": "noisy", "lumis": [1], "eta": 0, "phi": 0, "energy": 1}])
    with pytest.raises(Exception, match="mass applies to kind xqq"):
        job(processes=[{"name": "t", "kind": "ttbar", "n_jets": 1, "mass": 100}])
    with pytest.raises(Exception, match="not a Pythia setting"):
        job(processes=[{"name": "q", "kind": "qcd", "n_jets": 1, "pythia": ["import os"]}])
    with pytest.raises(ConfigError, match="faults"):
        import hepray

        hepray.load_job({"kind": "generate", "processes": [{"name": "q", "kind": "qcd", "n_jets": 1}],
                         "faults": [{"type": "burnt", "lumis": [1]}]})
    assert job().output.tree == "jets"


def test_seeds_are_deterministic_distinct_and_in_pythia_range():
    seeds = {shard_seed(7, p, k) for p in ("qcd", "ttbar") for k in range(500)}
    assert len(seeds) == 1000 and all(1 <= s <= SEED_MAX for s in seeds)
    assert shard_seed(7, "qcd", 3) == shard_seed(7, "qcd", 3) != shard_seed(8, "qcd", 3)


# -- generation ----------------------------------------------------------------------------------

def _produce(seed: int, kind: str = "qcd", n: int = 4, **jets):
    pytest.importorskip("pythia8mc")
    pytest.importorskip("fastjet")
    from hepray.generate.producer import ShardTask, produce

    cfg = job(processes=[{"name": kind, "kind": kind, "n_jets": n}], jets={"max_constituents": 30, **jets},
              faults=[{"type": "dead_region", "lumis": [0], "eta": [-5, 5], "phi": [-4, 4]}])
    return produce(cfg, load_detector("default"), ShardTask(cfg.processes[0], 2, seed, n, 2_000_000))[0]


def test_same_seed_same_arrays_different_seed_different():
    a, b, c = _produce(11), _produce(11), _produce(12)
    assert a.keys() == b.keys()
    for k in a:
        assert ak.to_list(a[k]) == ak.to_list(b[k]), k
    assert ak.to_list(a["const_pt"]) != ak.to_list(c["const_pt"])


def test_shard_columns_are_consistent():
    cols = _produce(5, "ttbar", 6)
    n = len(cols["event"])
    assert n == 6
    assert np.all(cols["event"] >= 2_000_000) and np.all(np.diff(cols["event"]) >= 0)
    np.testing.assert_array_equal(cols["luminosityBlock"], cols["event"] // 100)
    assert np.all((cols["gen_pt"] >= 550) & (cols["gen_pt"] < 650) & (np.abs(cols["gen_eta"]) < 2))
    assert np.all((cols["truth_dr"] >= 0) & (cols["truth_dr"] < 0.8))  # signal jets are matched
    assert np.all(cols["label"] == 1) and np.all(cols["process"] == 1)
    assert np.all(ak.num(cols["const_pt"]) == cols["n_const"]) and np.all(cols["n_const"] <= 30)
    assert np.all(cols["reco_nconst"] <= cols["gen_nconst"] + 1)  # at most one spurious deposit
    # constituents highest pT first, and the stored unreconstructed ones are flagged, not dropped
    assert ak.all(ak.fill_none(ak.max(cols["const_pt"][:, 1:] - cols["const_pt"][:, :-1], axis=1), 0) <= 0)
    assert 0.3 < ak.mean(cols["const_reco"]) < 1.0
    # the dead region is on lumisection 0, but shard 2 numbers its events from 2_000_000
    assert np.all(cols["luminosityBlock"] >= 20_000) and np.all(cols["fault"] == 0)


def test_dead_region_kills_reconstruction_in_its_lumisection():
    pytest.importorskip("pythia8mc")
    from hepray.generate.producer import ShardTask, produce

    cfg = job(processes=[{"name": "qcd", "kind": "qcd", "n_jets": 6}],
              faults=[{"type": "dead_region", "lumis": [0, 1, 2], "eta": [-5, 5], "phi": [-4, 4]}])
    out = produce(cfg, load_detector("default"), ShardTask(cfg.processes[0], 0, 3, 6, 0))[0]
    assert np.all(out["fault"] == 1)
    # everything within the tracker/calorimeter acceptance is dead: nothing is reconstructed
    assert np.all(out["reco_nconst"] == 0) and not np.any(out["reco_ok"])
    assert np.all(out["gen_nconst"] > 0)


# -- the committed sample --------------------------------------------------------------------------

def _committed_parts():
    parts = sorted((GENERATED / "sample" / "parts").glob("*.root"))
    if not parts:
        pytest.skip("tests/data/generated not generated yet (see its README)")
    return parts


def test_committed_sample_is_small_and_complete():
    import uproot

    parts = _committed_parts()
    total = sum(p.stat().st_size for p in GENERATED.rglob("*") if p.is_file())
    assert total < 5_000_000
    counts = {}
    for p in parts:
        t = uproot.open(p)["jets"]
        counts[p.name.rsplit("_", 1)[0]] = t.num_entries
        assert {"gen_pt", "reco_pt", "reco_ok", "const_pt", "const_reco", "fault", "run", "luminosityBlock",
                "event", "label", "process"} <= set(t.keys())
    assert {"ttbar", "qcd", "wqq"} <= set(counts)
    assert all(counts[k] >= 1000 for k in ("ttbar", "qcd", "wqq"))


def test_committed_sample_physics():
    from hepray.generate.plots import mass_peak, read_parts

    _committed_parts()
    s = read_parts(GENERATED / "sample" / "parts")
    assert 150 < mass_peak(s["ttbar"]["gen_mass"]) < 195
    assert 70 < mass_peak(s["wqq"]["gen_mass"]) < 100
    assert np.mean(s["ttbar"]["reco_tau32"]) < np.mean(s["qcd"]["reco_tau32"]) - 0.15
    assert np.mean(s["wqq"]["reco_tau21"]) < np.mean(s["qcd"]["reco_tau21"]) - 0.1
    ok = (s["qcd"]["fault"] == 0) & s["qcd"]["reco_ok"]
    resp = s["qcd"]["reco_pt"][ok] / s["qcd"]["gen_pt"][ok]
    assert 0.9 < np.median(resp) < 1.02
    assert set(np.unique(np.concatenate([v["fault"] for v in s.values()]))) == {0, 1, 2, 3}


# -- end to end ------------------------------------------------------------------------------------

def test_generate_job_end_to_end(ray_session, tmp_path):
    pytest.importorskip("pythia8mc")
    pytest.importorskip("fastjet")
    import uproot

    import hepray
    from hepray.generate.producer import ShardTask, produce
    from hepray.workloads.generate import plan_shards

    spec = {"kind": "generate", "name": "gen-e2e", "seed": 3, "output": {"dir": str(tmp_path / "run")},
            "engine": {"workers": 2, "progress_every_s": 60},
            "generator": {"jets_per_shard": 6, "events_per_lumi": 5},
            "jets": {"max_constituents": 20},
            "processes": [{"name": "qcd", "kind": "qcd", "n_jets": 10}, {"name": "wqq", "kind": "wqq", "n_jets": 6}],
            "faults": [{"type": "miscalibration", "lumis": [1], "scale": 1.5}]}
    summary = hepray.run(spec, quiet=True)
    assert summary["shards"] == 3 and summary["shards_failed"] == 0 and summary["events_out"] == 16
    assert summary["generation"]["jets_per_worker_s"] > 0
    run = tmp_path / "run"
    man = json.loads((run / "parts" / "_manifest.json").read_text())
    assert sorted(p["sample"] for p in man["parts"]) == ["qcd", "qcd", "wqq"]
    for name in ("jet_mass.png", "tau32.png", "pt_response.png", "physics.json"):
        assert (run / "plots" / name).stat().st_size > 0

    # the engine's part of shard 1 of qcd is exactly what the kernel makes from the same seed
    job_cfg = hepray.load_job(spec)
    shard = [s for s in plan_shards(job_cfg) if s.sample == "qcd"][1]
    part = next(p for p in man["parts"] if p["shard_id"] == shard.shard_id)
    got = uproot.open(run / "parts" / part["part"])["jets"].arrays(library="ak")
    ref, _, _ = produce(job_cfg, load_detector("default"),
                        ShardTask(job_cfg.processes[0], 1, shard.seed, 4, shard.entry_start))
    assert len(got) == 4
    for k in ("event", "gen_pt", "reco_pt", "const_pt", "const_reco", "fault"):
        assert ak.to_list(got[k]) == ak.to_list(ref[k]), k
    assert np.all(ak.to_numpy(got["event"]) >= 1_000_000)  # shard 1's event block
