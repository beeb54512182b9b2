"""Classifier metrics as pure functions of (labels, scores, weights).

ROC and AUC are computed here with numpy, as scikit-learn's ``roc_curve``/``roc_auc_score``
do (same points, same trapezoidal AUC; tests compare them): importing ``sklearn.metrics`` costs
~2 s per process, a tenth of a 1 M-event BDT job.
"""

from __future__ import annotations

import numpy as np


def roc(y: np.ndarray, s: np.ndarray, w: np.ndarray | None = None, drop_intermediate: bool = True):
    """(signal efficiency, background efficiency, thresholds), weighted; ``y == 1`` is signal.

    One point per distinct score, from (0, 0) at threshold +inf; collinear points are dropped
    unless ``drop_intermediate=False``. Raises ValueError when one class is absent."""
    s = np.asarray(s, dtype=np.float64).ravel()
    pos = np.asarray(y).ravel() == 1
    w = np.ones(len(s)) if w is None else np.asarray(w, dtype=np.float64).ravel()
    order = np.argsort(s, kind="mergesort")[::-1]
    s, pos, w = s[order], pos[order], w[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last row of each distinct score
    tps = np.cumsum(np.where(pos, w, 0.0))[last]
    fps = np.cumsum(np.where(pos, 0.0, w))[last]
    thr = s[last]
    if drop_intermediate and len(tps) > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps, fps, thr = tps[keep], fps[keep], thr[keep]
    if len(tps) == 0 or tps[-1] <= 0 or fps[-1] <= 0:
        raise ValueError("ROC needs both classes: the labels hold only one (or zero total weight)")
    tpr, fpr = np.r_[0.0, tps / tps[-1]], np.r_[0.0, fps / fps[-1]]
    return tpr, fpr, np.r_[np.inf, thr]


def auc(y, s, w=None) -> float:
    """Area under the (weighted) ROC curve, trapezoidal."""
    tpr, fpr, _ = roc(y, s, w)
    return float(np.trapezoid(tpr, fpr))


def rejection_at(y, s, w=None, eff: float = 0.3) -> float | None:
    """Background rejection 1/eps_B at signal efficiency ``eff`` (interpolated on the ROC);
    None when no background event passes (too few events to measure it)."""
    tpr, fpr, _ = roc(y, s, w)
    eps_b = float(np.interp(eff, tpr, fpr))
    return None if eps_b <= 0 else 1.0 / eps_b


ASYMPTOTIC_KS = 10_000  # effective size n1 n2 / (n1 + n2) from which the asymptotic p-value is used


def ks(a, b) -> dict:
    """Two-sample Kolmogorov-Smirnov test (two-sided): statistic and p-value.

    Large samples (effective size >= ASYMPTOTIC_KS) use Kolmogorov's limit with Stephens'
    small-sample correction, computed here (agrees with scipy's ``ks_2samp`` to ~1e-3, tests
    compare them); smaller ones use scipy's exact computation (importing scipy.stats costs ~1 s).
    """
    a = np.sort(np.asarray(a, dtype=np.float64))
    b = np.sort(np.asarray(b, dtype=np.float64))
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return {"statistic": float("nan"), "pvalue": float("nan")}
    en = n1 * n2 / (n1 + n2)
    if en < ASYMPTOTIC_KS:
        from scipy.stats import ks_2samp

        r = ks_2samp(a, b)
        return {"statistic": float(r.statistic), "pvalue": float(r.pvalue)}
    x = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, x, side="right") / n1 - np.searchsorted(b, x, side="right") / n2)))
    lam = (np.sqrt(en) + 0.12 + 0.11 / np.sqrt(en)) * d
    k = np.arange(1, 101)
    p = float(np.clip(2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k**2 * lam**2)), 0.0, 1.0)) if lam > 0.2 else 1.0
    return {"statistic": d, "pvalue": p}


def binary_summary(y, s, w=None) -> dict:
    return {"auc": auc(y, s, w), "rejection_at_30": rejection_at(y, s, w, 0.3),
            "rejection_at_50": rejection_at(y, s, w, 0.5)}
