"""Classifier metrics as pure functions of (labels, scores, weights)."""

from __future__ import annotations

import numpy as np


def roc(y: np.ndarray, s: np.ndarray, w: np.ndarray | None = None):
    """(signal efficiency, background efficiency, thresholds), weighted."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, s, sample_weight=w)
    return tpr, fpr, thr


def auc(y, s, w=None) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s, sample_weight=w))


def rejection_at(y, s, w=None, eff: float = 0.3) -> float | None:
    """Background rejection 1/eps_B at signal efficiency ``eff`` (interpolated on the ROC);
    None when no background event passes (too few events to measure it)."""
    tpr, fpr, _ = roc(y, s, w)
    eps_b = float(np.interp(eff, tpr, fpr))
    return None if eps_b <= 0 else 1.0 / eps_b


def ks(a, b) -> dict:
    from scipy.stats import ks_2samp

    r = ks_2samp(a, b)
    return {"statistic": float(r.statistic), "pvalue": float(r.pvalue)}


def binary_summary(y, s, w=None) -> dict:
    return {"auc": auc(y, s, w), "rejection_at_30": rejection_at(y, s, w, 0.3),
            "rejection_at_50": rejection_at(y, s, w, 0.5)}
