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


def fit(spec: dict, observed: bool = False, scan_points: int = 16, rtol: float = 1e-4) -> dict:
    """Expected (and with ``observed`` observed) results of the workspace ``spec``; see the
    module doc. The limits are roots of CLs(mu) = 0.05 found by Brent's method to ``rtol``; the
    ±1σ/±2σ band is read off a scan of ``scan_points`` values of mu (also kept for the plot)."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    pyhf, ws, model = _model(spec)
    poi = model.config.poi_index
    hi_bound = float(model.config.suggested_bounds()[poi][1])
    pars = np.asarray(model.config.suggested_init(), dtype=float)
    pars[poi] = 1.0
    asimov_sb = model.expected_data(pars)
    p0 = float(pyhf.infer.hypotest(0.0, asimov_sb, model, test_stat="q0"))
    pars[poi] = 0.0
    asimov_b = model.expected_data(pars)
    median = _limit(pyhf, brentq, asimov_b, model, hi_bound, rtol)  # observed on b-only Asimov = median expected
    mus = np.linspace(0.0, min(3.0 * median, hi_bound), scan_points + 1)[1:]
    cls = [pyhf.infer.hypotest(float(m), asimov_b, model, return_expected_set=True) for m in mus]
    exp = np.array([[float(x) for x in np.ravel(c[1])] for c in cls])  # columns -2, -1, 0, +1, +2 sigma
    band = [_crossing(mus, exp[:, j]) for j in range(5)]
    band[2] = median
    out = {
        "p0_expected": p0,
        "significance_expected": float(norm.isf(p0)),
        "mu_up_expected": median,
        "mu_up_band": dict(zip(("-2sigma", "-1sigma", "median", "+1sigma", "+2sigma"), band)),
        "parameters": len(model.config.suggested_init()),
        "bins": int(model.config.nmaindata),
        "scan": {"mu": mus.tolist(), "cls_obs": [float(c[0]) for c in cls], "cls_exp": exp.tolist()},
    }
    if observed:
        data = ws.data(model)
        p0_obs = float(pyhf.infer.hypotest(0.0, data, model, test_stat="q0"))
        out.update({"mu_up_observed": _limit(pyhf, brentq, data, model, hi_bound, rtol), "p0_observed": p0_obs,
                    "significance_observed": float(norm.isf(p0_obs))})
    return out


def _limit(pyhf, brentq, data, model, hi_bound: float, rtol: float) -> float:
    """The mu where CLs = 0.05 (bracketed by doubling from mu = 1 up to the POI's bound)."""
    def f(mu):
        return float(pyhf.infer.hypotest(float(mu), data, model)) - 0.05

    lo, hi = 0.0, min(1.0, hi_bound)
    while f(hi) > 0:
        if hi >= hi_bound:
            raise ValueError(f"the 95% CL limit on mu is above the POI's upper bound {hi_bound:g}: raise fit.poi_max")
        lo, hi = hi, min(2 * hi, hi_bound)
    return float(brentq(f, lo, hi, rtol=rtol, xtol=1e-9))


def _crossing(mu: np.ndarray, cls: np.ndarray, level: float = 0.05) -> float:
    """Where a scanned CLs curve falls through ``level`` (log-linear between the scan points);
    NaN if the scan does not reach it."""
    below = np.nonzero(cls < level)[0]
    if not len(below) or below[0] == 0:
        return float("nan") if not len(below) else float(mu[0])
    i = below[0]
    y0, y1 = np.log(max(cls[i - 1], 1e-300)), np.log(max(cls[i], 1e-300))
    return float(mu[i - 1] + (np.log(level) - y0) / (y1 - y0) * (mu[i] - mu[i - 1]))


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
