"""kind: templates against an independent fill: the same events read with plain uproot and filled
with hist directly; the pyhf fit against the asymptotic formulae computed by hand from the
histograms read back from templates.root."""

from __future__ import annotations

import json
from pathlib import Path

import hist
import numpy as np
import pytest
import uproot
from scipy.optimize import brentq
from scipy.stats import norm

import hepray
from hepray.errors import ConfigError

N_SIG, N_BKG = 6_000, 20_000
EDGES = np.linspace(0, 1, 9)


def _write(path: Path, n: int, signal: bool, seed: int) -> str:
    rng = np.random.default_rng(seed)
    score = rng.beta(5, 2, n) if signal else rng.beta(2, 5, n)
    score[:3] = [0.0, 1.0, 1.0]  # edges of the range: 1.0 is the overflow of [0, 1], folded into the last bin
    pt = rng.exponential(50, n) + 20
    cols = {"score": score, "score_jesUp": np.clip(score * 1.05, 0, 1), "score_jesDown": score * 0.95, "pt": pt,
            "w": rng.uniform(0.5, 1.5, n), "event": np.arange(n, dtype=np.int64) + seed * 10**7,
            "run": np.ones(n, np.int32), "luminosityBlock": np.zeros(n, np.int32)}
    with uproot.recreate(path) as f:
        f.mktree("Events", {k: v.dtype for k, v in cols.items()})
        for a in range(0, n, 2_000):
            f["Events"].extend({k: v[a:a + 2_000] for k, v in cols.items()})
    return str(path)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("tpl")
    return {"sig": _write(d / "sig.root", N_SIG, True, 1),
            "bkg": [_write(d / f"bkg_{i}.root", N_BKG // 2, False, 2 + i) for i in range(2)]}


def _job(samples, out, **kw) -> dict:
    job = {
        "kind": "templates", "name": "tpl", "output": {"dir": str(out)},
        "engine": {"workers": 2, "progress_every_s": 60},
        "dataset": {"tree": "Events", "shard_events": 4_000, "samples": [
            {"name": "sig", "files": samples["sig"], "label": 1, "weight": 0.01},
            {"name": "bkg", "files": samples["bkg"], "label": 0, "weight": 0.5}]},
        "variable": "score",
        "binning": {"bins": 8, "range": [0, 1]},
        "processes": [{"name": "signal", "sample": "sig", "signal": True, "weight": "w"},
                      {"name": "ttbar", "sample": "bkg", "cut": "event % 2 == 0", "weight": "w"},
                      {"name": "qcd", "sample": "bkg", "cut": "event % 2 == 1"}],
        "categories": [{"name": "lowpt", "cut": "pt < 60"}, {"name": "highpt", "cut": "pt >= 60"}],
        "systematics": [{"name": "jes", "variable_up": "score_jesUp", "variable_down": "score_jesDown"},
                        {"name": "wnorm", "weight_up": "1 + 0.2 * score", "weight_down": "1 - 0.2 * score",
                         "processes": ["ttbar"]}],
        "mc_stat": True, "plots": "all",
    }
    job.update(kw)
    return job


def _direct(samples) -> dict:
    """The reference: uproot.concatenate + hist.fill, written here without hepray."""
    refs = {}
    sig = uproot.concatenate(f"{samples['sig']}:Events", library="np")
    bkg = uproot.concatenate([f"{f}:Events" for f in samples["bkg"]], library="np")
    procs = {"signal": (sig, np.ones(len(sig["score"]), bool), 0.01 * sig["w"]),
             "ttbar": (bkg, bkg["event"] % 2 == 0, 0.5 * bkg["w"]),
             "qcd": (bkg, bkg["event"] % 2 == 1, np.full(len(bkg["score"]), 0.5))}
    for name, (a, sel, w) in procs.items():
        for cat, cm in (("lowpt", a["pt"] < 60), ("highpt", a["pt"] >= 60)):
            m = sel & cm
            variants = {"": (a["score"], w), "_jesUp": (a["score_jesUp"], w), "_jesDown": (a["score_jesDown"], w)}
            if name == "ttbar":
                variants.update({"_wnormUp": (a["score"], w * (1 + 0.2 * a["score"])),
                                 "_wnormDown": (a["score"], w * (1 - 0.2 * a["score"]))})
            for suffix, (x, ww) in variants.items():
                h = hist.Hist(hist.axis.Regular(8, 0, 1), storage=hist.storage.Weight())
                h.fill(np.minimum(x[m], 1 - 1e-12), weight=ww[m])  # the folded overflow: x == 1.0 in the last bin
                refs[f"{cat}/{name}{suffix}"] = h
    return refs


def test_templates_match_a_direct_fill(ray_session, samples, tmp_path):
    s = hepray.run(_job(samples, tmp_path / "run"), quiet=True)
    assert s["events_in"] == N_SIG + N_BKG
    root = uproot.open(tmp_path / "run" / "templates.root")
    refs = _direct(samples)
    for key, ref in refs.items():
        h = root[key]
        assert h.classname == "TH1D"
        np.testing.assert_allclose(h.values(), ref.values(), rtol=1e-9, err_msg=key)
        np.testing.assert_allclose(h.variances(), ref.variances(), rtol=1e-9, err_msg=key)  # sumw2 kept
        np.testing.assert_allclose(h.axis().edges(), EDGES)
    # systematics only where they apply: no qcd_wnormUp; data_obs = Asimov sum
    assert "highpt/qcd_wnormUp" not in root and "highpt/ttbar_wnormUp" in root
    asimov = sum(refs[f"lowpt/{p}"].values() for p in ("signal", "ttbar", "qcd"))
    np.testing.assert_allclose(root["lowpt/data_obs"].values(), asimov, rtol=1e-9)
    ws = json.loads((tmp_path / "run" / "workspace.json").read_text())
    assert [c["name"] for c in ws["channels"]] == ["lowpt", "highpt"]
    ttbar = next(x for x in ws["channels"][0]["samples"] if x["name"] == "ttbar")
    assert {m["type"] for m in ttbar["modifiers"]} == {"staterror", "histosys"}
    pyhf = pytest.importorskip("pyhf")
    model = pyhf.Workspace(ws).model()  # valid against pyhf's schema
    assert model.config.nmaindata == 16 and set(model.config.parameters) >= {"mu", "jes", "wnorm"}
    card = (tmp_path / "run" / "datacard.txt").read_text()
    assert "shapes * * templates.root $CHANNEL/$PROCESS $CHANNEL/$PROCESS_$SYSTEMATIC" in card
    assert any(p.name.startswith("templates_lowpt") for p in (tmp_path / "run" / "plots").iterdir())


def _asymptotic(s: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """By hand (Cowan et al. 2011, no nuisance parameters): the median discovery significance
    sqrt(q0_A) with q0_A = 2 sum[(s+b) ln(1+s/b) - s], and the median CLs limit: qtilde_mu on the
    background-only Asimov data, 2 sum[mu s - b ln(1 + mu s / b)], equal to Phi^-1(0.975)^2."""
    z = np.sqrt(2 * np.sum((s + b) * np.log1p(s / b) - s))
    q = lambda mu: 2 * np.sum(mu * s - b * np.log1p(mu * s / b)) - norm.isf(0.025) ** 2  # noqa: E731
    return float(z), float(brentq(q, 1e-6, 1e3))


def test_fit_matches_asymptotic_formula(ray_session, samples, tmp_path):
    pytest.importorskip("pyhf")
    job = _job(samples, tmp_path / "fit", systematics=[], mc_stat=False, lumi=2.0,
               binning={"bins": 6, "range": [0, 1], "quantile": True}, fit={"poi_max": 20},
               processes=[{"name": "signal", "sample": "sig", "signal": True, "xsec": 0.02},
                          {"name": "bkg", "sample": "bkg", "weight": "w"}])
    s = hepray.run(job, quiet=True)
    root = uproot.open(tmp_path / "fit" / "templates.root")
    sig = np.concatenate([root[f"{c}/signal"].values() for c in ("lowpt", "highpt")])
    bkg = np.concatenate([root[f"{c}/bkg"].values() for c in ("lowpt", "highpt")])
    # xsec 0.02 pb x 1000 x 2 fb^-1 = 40 signal events over both categories (all signal is in one)
    assert sig.sum() == pytest.approx(40.0, rel=1e-9)
    # quantile-flat in signal: equal signal per bin, all categories together
    per_bin = root["lowpt/signal"].values() + root["highpt/signal"].values()
    np.testing.assert_allclose(per_bin, 40.0 / 6, rtol=0.02)
    z, mu_up = _asymptotic(sig, bkg)
    assert s["significance_expected"] == pytest.approx(z, rel=2e-3)
    assert s["mu_up_expected"] == pytest.approx(mu_up, rel=5e-3)
    assert 1.0 < z < 10.0  # a meaningful toy: neither 0 nor certain
    band = s["mu_up_band"]
    assert band["-2sigma"] < band["-1sigma"] < band["median"] < band["+1sigma"] < band["+2sigma"]
    assert (tmp_path / "fit" / "plots" / "cls_scan.png").stat().st_size > 0
    # a shape systematic and the MC statistics can only widen the limit
    job2 = _job(samples, tmp_path / "fit2", mc_stat=True, lumi=2.0, binning=job["binning"], fit={"poi_max": 20},
                processes=job["processes"],
                systematics=[{"name": "jes", "variable_up": "score_jesUp", "variable_down": "score_jesDown"}])
    s2 = hepray.run(job2, quiet=True)
    assert s2["mu_up_expected"] > s["mu_up_expected"] and s2["significance_expected"] < z


@pytest.mark.parametrize("change, field", [
    ({"binning": {"bins": 5}}, "binning"),
    ({"binning": {"bins": [0, 0.5, 0.4]}}, "binning"),
    ({"systematics": [{"name": "x", "weight_up": "1.1"}]}, "systematics[0]"),
    ({"processes": [{"name": "a", "sample": "nope"}]}, "processes[0].sample"),
    ({"variable": "score +"}, "variable"),
    ({"fit": {}, "systematics": [], "processes": [{"name": "a", "sample": "sig"}]}, "fit"),
])
def test_bad_templates_job(samples, tmp_path, change, field):
    with pytest.raises(ConfigError) as err:
        hepray.load_job(_job(samples, tmp_path, **change))
    assert field in str(err.value)


class _Links:
    def __init__(self, page: str):
        from html.parser import HTMLParser

        self.src, self.href = [], []
        outer = self

        class P(HTMLParser):
            def handle_starttag(self, tag, attrs):
                a = dict(attrs)
                if tag == "img":
                    outer.src.append(a["src"])
                if tag == "a" and "href" in a:
                    outer.href.append(a["href"])

        P().feed(page)


def _check_page(page: Path) -> int:
    """Every image of the page resolves to a file that decodes as an image, every link to a file.
    (No headless browser is installed here: the links are parsed and the files opened instead.)"""
    from PIL import Image

    links = _Links(page.read_text())
    for src in links.src:
        with Image.open(page.parent / src) as im:
            im.verify()  # raises on a truncated or non-image file
    for href in links.href:
        assert (page.parent / href).is_file(), href
    return len(links.src)


def test_report_and_index(ray_session, samples, tmp_path):
    from hepray.cli import main
    from hepray.report.html import write_index

    run_dir = tmp_path / "rep"
    s = hepray.run(_job(samples, run_dir, report={"style": "ATLAS", "label": "Simulation Internal", "lumi": 2}),
                   quiet=True)
    page = run_dir / "report.html"
    n = _check_page(page)
    assert n == len(list((run_dir / "plots").glob("*.png"))) >= 2 + 2 * 3 + 2  # templates, jes x3, wnorm x1 per category
    text = page.read_text()
    assert "templates.root" in text and "Summary" in text and "kind: templates" in text
    page.unlink()
    assert main(["report", str(run_dir)]) == 0 and page.is_file()
    assert main(["report", str(tmp_path / "nope")]) == 2
    index = write_index(tmp_path, {"templates": {"run_dir": s["run_dir"], "seconds": 1.0}})
    assert _Links(index.read_text()).href == ["rep/report.html"]
    _check_page(index)


def test_merge_low_background_keeps_totals():
    from hepray.fit.templates import merge_low_background

    edges = np.linspace(0, 1, 6)
    tab = {"c1": {"s": (np.array([1., 2, 3, 4, 5]), np.array([1., 2, 3, 4, 5])),
                  "b": (np.array([50., 10, 2, 0, 0]), np.array([5., 1, 1, 0, 0]))},
           "c2": {"s": (np.array([0., 1, 1, 1, 1]), np.array([0., 1, 1, 1, 1])),
                  "b": (np.array([40., 5, 0, 1, 0]), np.array([4., 1, 0, 1, 0]))}}
    merged, new = merge_low_background(tab, edges, ["b"], 0.0)
    # from the top: bins 3+4 have b = 0 in c1 -> joined with bin 2 (c1: 2, c2: 1): [0, .2, .4, 1]
    np.testing.assert_allclose(new, [0, 0.2, 0.4, 1.0])
    np.testing.assert_allclose(merged["c1"]["s"][0], [1, 2, 12])
    np.testing.assert_allclose(merged["c2"]["b"][1], [4, 1, 1])
    for cat in tab:
        for name, (v, var) in tab[cat].items():
            assert merged[cat][name][0].sum() == v.sum() and merged[cat][name][1].sum() == var.sum()
    assert all((merged[c]["b"][0] > 0).all() for c in merged)
    same, e = merge_low_background(tab, edges, ["b"], -1.0)  # nothing to merge
    assert same is tab and e is edges


def test_quantile_edges_flat():
    from hepray.fit.templates import quantile_edges

    fine = np.linspace(0, 1, 1001)
    rng = np.random.default_rng(3)
    x = rng.beta(5, 2, 200_000)
    counts, _ = np.histogram(x, fine)
    edges = quantile_edges(counts, fine, 5)
    per_bin, _ = np.histogram(x, edges)
    np.testing.assert_allclose(per_bin / len(x), 0.2, atol=0.003)
    assert edges[0] == 0 and edges[-1] == 1
