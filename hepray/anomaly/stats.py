"""Small statistics shared by the lumisection and event-level results: every rate we report
comes with the interval its sample size allows. Written with ``scipy.special`` only: importing
``scipy.stats`` costs seconds, more than a whole scan of a small run."""

from __future__ import annotations

import numpy as np


def binomial_interval(k: int, n: int, cl: float = 0.6827) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval of a fraction k/n: honest for k = 0 or k = n, where the
    normal approximation claims zero uncertainty."""
    from scipy.special import betaincinv

    if n <= 0:
        return (float("nan"), float("nan"))
    a = (1.0 - cl) / 2.0
    lo = 0.0 if k <= 0 else float(betaincinv(k, n - k + 1, a))
    hi = 1.0 if k >= n else float(betaincinv(k + 1, n - k, 1.0 - a))
    return lo, hi


def fraction(k: int, n: int) -> dict:
    """``{"value", "k", "n", "lo", "hi"}`` with the 68% Clopper-Pearson interval."""
    lo, hi = binomial_interval(int(k), int(n))
    return {"value": (k / n) if n else float("nan"), "k": int(k), "n": int(n), "lo": lo, "hi": hi}


def z_from_p(p) -> np.ndarray:
    """One-sided significance of a p-value (``p = 0.5`` -> 0), capped at 40 sigma so a
    p-value underflowing to 0 still plots."""
    from scipy.special import ndtri

    p = np.clip(np.asarray(p, dtype=np.float64), 1e-300, 1.0)
    return np.minimum(-ndtri(p), 40.0)


def chi2_sf(x, dof) -> np.ndarray:
    """``P(chi2(dof) >= x)``."""
    from scipy.special import gammaincc

    return gammaincc(np.asarray(dof, dtype=np.float64) / 2.0, np.maximum(np.asarray(x, dtype=np.float64), 0.0) / 2.0)


def binomial_sf(k, n, p: float) -> np.ndarray:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)`` (1 for k <= 0)."""
    from scipy.special import betainc

    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = betainc(np.maximum(k, 1.0), np.maximum(n - k + 1.0, 1e-300), p)
    return np.where(k <= 0, 1.0, np.where(k > n, 0.0, out))
