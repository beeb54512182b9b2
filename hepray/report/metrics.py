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


# -- calibration ---------------------------------------------------------------------------------
def _probabilities(p) -> np.ndarray:
    """[n, K] probabilities from [n] or [n, 1] (binary: the signal probability) or [n, K]."""
    p = np.asarray(p, dtype=np.float64)
    return p.reshape(len(p), -1)


def brier(y, p, w=None) -> float:
    """Weighted Brier score: mean squared difference between the predicted probability and the
    outcome (binary: one column, the signal probability; multi-class: summed over classes, as
    Brier defined it, so a perfect classifier scores 0 and a constant 1/K scores 1 - 1/K)."""
    P = _probabilities(p)
    y = np.asarray(y).astype(np.int64).ravel()
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64).ravel()
    if P.shape[1] == 1:
        d = (P[:, 0] - (y == 1)) ** 2
    else:
        d = ((P - np.eye(P.shape[1])[y]) ** 2).sum(axis=1)
    return float(np.average(d, weights=w))


def reliability(y, p, w=None, bins: int = 15) -> dict:
    """Reliability-diagram numbers in ``bins`` equal-width confidence bins on [0, 1].

    Binary: the signal probability against the (weighted) fraction of signal per bin.
    Multi-class: the top-label confidence (highest probability) against the fraction of events
    whose true class is the predicted one (Guo et al. 2017). ``ece``: the expected calibration
    error, Σ_b (W_b / W) |observed_b - predicted_b|. Empty bins have ``nan``.
    """
    P = _probabilities(p)
    y = np.asarray(y).astype(np.int64).ravel()
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64).ravel()
    if P.shape[1] == 1:
        conf, hit = P[:, 0], (y == 1).astype(np.float64)
    else:
        conf, hit = P.max(axis=1), (P.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges) - 1, 0, bins - 1)
    W = np.bincount(which, w, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(which, w * conf, minlength=bins) / W
        observed = np.bincount(which, w * hit, minlength=bins) / W
    ok = W > 0
    ece = float(np.sum(W[ok] * np.abs(observed[ok] - predicted[ok])) / max(W.sum(), 1e-300))
    return {"ece": ece, "edges": edges.tolist(), "predicted": predicted.tolist(), "observed": observed.tolist(),
            "weight": W.tolist(), "counts": np.bincount(which, minlength=bins).tolist()}


def calibration_summary(y, p, w=None, bins: int = 15) -> dict:
    """``{"ece", "brier", "reliability": {...}}`` of one classifier's probabilities."""
    r = reliability(y, p, w, bins)
    return {"ece": r.pop("ece"), "brier": brier(y, p, w), "reliability": r}


def logits_of(p) -> np.ndarray:
    """Logits that give back ``p`` (binary: log-odds of one column; multi-class: log p, which
    softmax maps back to p), clipped at 1e-7 so saturated scores stay finite."""
    P = np.clip(_probabilities(p), 1e-7, 1 - 1e-7)
    return np.log(P / (1 - P)) if P.shape[1] == 1 else np.log(P)


def apply_temperature(p, temperature: float) -> np.ndarray:
    """Probabilities ``sigma(z / T)`` (softmax for several columns) of the logits ``z`` of ``p``:
    temperature scaling. T > 1 softens over-confident scores; the ranking (ROC, AUC) of a
    binary score is unchanged."""
    z = logits_of(p) / float(temperature)
    if z.shape[1] == 1:
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def nll(y, p, w=None) -> float:
    """Weighted mean negative log-likelihood (log-loss) of probabilities ``p``."""
    P = np.clip(_probabilities(p), 1e-12, 1 - 1e-12)
    y = np.asarray(y).astype(np.int64).ravel()
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64).ravel()
    if P.shape[1] == 1:
        ll = np.where(y == 1, np.log(P[:, 0]), np.log(1 - P[:, 0]))
    else:
        ll = np.log(P[np.arange(len(y)), y])
    return float(-np.average(ll, weights=w))


def fit_temperature(y, p, w=None) -> float:
    """The temperature T minimising the weighted log-loss of ``apply_temperature(p, T)``
    (Guo et al. 2017), searched over log T in [-3, 3] (T in [0.05, 20]) with a bounded scalar
    minimiser; fitted on validation events, never on the test events it is judged on."""
    from scipy.optimize import minimize_scalar

    z = logits_of(p)
    y = np.asarray(y).astype(np.int64).ravel()
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64).ravel()
    w = w / w.sum()
    if z.shape[1] == 1:
        s = np.where(y == 1, 1.0, -1.0)

        def loss(logt):
            return float(np.sum(w * np.logaddexp(0.0, -s * z[:, 0] / np.exp(logt))))
    else:
        zy = z[np.arange(len(y)), y]

        def loss(logt):
            t = np.exp(logt)
            return float(np.sum(w * (np.logaddexp.reduce(z / t, axis=1) - zy / t)))

    r = minimize_scalar(loss, bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(r.x))
