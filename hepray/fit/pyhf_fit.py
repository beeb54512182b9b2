"""The fit on the templates with pyhf: expected discovery significance and the 95 % CL upper limit
on the signal strength mu, asymptotic formulae (Cowan, Cranmer, Gross, Vitells 2011).

- Discovery: the q0 test of mu = 0 on the Asimov data set for mu = 1 (every nuisance parameter at
  its nominal value): the median significance expected if the signal is there.
- Limit: CLs with the qtilde test statistic on the background-only Asimov data set: the median
  expected limit and its ±1σ, ±2σ band. With ``observed=True`` (a ``data`` process was given)
  the same on the observed data.

>>> res = fit(spec)   # doctest: +SKIP
>>> res["significance_expected"], res["mu_up_expected"]   # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from ..extras import require


def _model(spec: dict):
    pyhf = require("pyhf")
    pyhf.set_backend("numpy")
    ws = pyhf.Workspace(spec)  # validates against pyhf's JSON schema
    return pyhf, ws, ws.model()


def fit(spec: dict, observed: bool = False, scan_points: int = 21) -> dict:
    from scipy.stats import norm

    pyhf, ws, model = _model(spec)
    poi = model.config.poi_index
    pars = np.asarray(model.config.suggested_init(), dtype=float)
    pars[poi] = 1.0
    asimov_sb = model.expected_data(pars)
    p0 = float(pyhf.infer.hypotest(0.0, asimov_sb, model, test_stat="q0"))
    pars[poi] = 0.0
    asimov_b = model.expected_data(pars)
    _, exp = pyhf.infer.intervals.upper_limits.upper_limit(asimov_b, model, level=0.05)
    exp = [float(x) for x in np.ravel(exp)]
    out = {
        "p0_expected": p0,
        "significance_expected": float(norm.isf(p0)),
        "mu_up_expected": exp[2],
        "mu_up_band": {"-2sigma": exp[0], "-1sigma": exp[1], "median": exp[2], "+1sigma": exp[3], "+2sigma": exp[4]},
        "parameters": len(model.config.suggested_init()),
        "bins": int(model.config.nmaindata),
    }
    hi = max(2.0 * exp[4], 1e-3)
    mus = np.linspace(0.0, hi, scan_points)[1:]
    cls = [pyhf.infer.hypotest(float(m), asimov_b, model, return_expected_set=True) for m in mus]
    out["scan"] = {"mu": mus.tolist(), "cls_obs": [float(c[0]) for c in cls],
                   "cls_exp": [[float(x) for x in np.ravel(c[1])] for c in cls]}
    if observed:
        data = ws.data(model)
        obs, _ = pyhf.infer.intervals.upper_limits.upper_limit(data, model, level=0.05)
        p0_obs = float(pyhf.infer.hypotest(0.0, data, model, test_stat="q0"))
        out.update({"mu_up_observed": float(obs), "p0_observed": p0_obs,
                    "significance_observed": float(norm.isf(p0_obs))})
    return out


def cls_plot(scan: dict, path, title: str = "", report=None):
    """CLs vs mu with the expected ±1σ/±2σ band (the 'Brazil' plot), 0.05 marked."""
    from ..report import plots

    plt = plots._plt()
    mu = np.asarray(scan["mu"])
    e = np.asarray(scan["cls_exp"])  # columns: -2, -1, median, +1, +2 sigma
    with plots.styled(report):
        fig, ax = plt.subplots(figsize=(6, 4.8))
        ax.fill_between(mu, e[:, 0], e[:, 4], color="#ffdf00", label=r"expected $\pm 2\sigma$")
        ax.fill_between(mu, e[:, 1], e[:, 3], color="#00cc00", label=r"expected $\pm 1\sigma$")
        ax.plot(mu, e[:, 2], "k--", label="expected median")
        ax.axhline(0.05, color="red", lw=1, label="95% CL")
        ax.set_xlabel(r"signal strength $\mu$")
        ax.set_ylabel(r"CL$_s$")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=9, title=title or None)
        plots.experiment_label(ax, report)
        return plots._save(fig, path)
