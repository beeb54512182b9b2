"""How far the fixed-point firmware is from the float model it was converted from.

A trigger cares about decisions, not scores: the headline number is the fraction of events
whose accept/reject decision differs at the working point, where the working point is the
threshold that keeps the *float* model's background acceptance at the rate budget (so both
models are cut at the same place, as the firmware threshold would be set from the offline
model). Also reported: the same with the fixed-point threshold re-tuned to the budget (what
the trigger would really run after calibration), argmax disagreement for multi-class models,
score differences, ROC curves and AUCs.

Scores: binary models output one logit/margin (what the firmware computes; the sigmoid is
monotonic so cuts on either agree). Multi-class models use the softmax probability of
``signal_class`` computed from each model's outputs, and argmax over all outputs.
Without labels every event counts as background, so the budget is a rate on that sample
(the trigger case: the rate is measured on zero-bias data) and no efficiency is reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def signal_score(outputs: np.ndarray, multiclass: bool, signal_class: int = 0) -> np.ndarray:
    outputs = np.asarray(outputs, dtype=np.float64)
    if not multiclass:
        return outputs[:, 0]
    z = outputs - outputs.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p[:, signal_class] / p.sum(axis=1)


def threshold_at(scores: np.ndarray, fraction: float, weights: np.ndarray | None = None) -> float:
    """Smallest cut ``t`` with (weighted) fraction of ``scores > t`` at most ``fraction``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return float("nan")
    w = np.ones_like(scores) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    s, cw = scores[order], np.cumsum(w[order]) / w.sum()
    # accepting the top k events: their weight must stay within the budget; ties move together
    k = int(np.searchsorted(cw, fraction + 1e-12, side="right"))
    while 0 < k < len(s) and s[k - 1] == s[k]:
        k -= 1
    return float(s[k]) if k < len(s) else float(s[-1]) - 1.0


def _rate(mask: np.ndarray, w: np.ndarray) -> float:
    return float(w[mask].sum() / w.sum()) if w.sum() > 0 else float("nan")


def roc_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    from ..report.metrics import roc

    tpr, fpr, _ = roc(labels, scores, weights)
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def compare(float_out: np.ndarray, fixed_out: np.ndarray, labels: np.ndarray | None = None, *,
            multiclass: bool = False, signal_class: int = 0, background_fraction: float = 0.01,
            input_rate_hz: float | None = None, weights: np.ndarray | None = None) -> dict:
    """The fidelity numbers (plain JSON). ``labels``: 1 for signal (binary) or the class index."""
    F = np.asarray(float_out, dtype=np.float64)
    Q = np.asarray(fixed_out, dtype=np.float64)
    n = len(F)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    sf, sq = signal_score(F, multiclass, signal_class), signal_score(Q, multiclass, signal_class)
    if labels is not None:
        lab = np.asarray(labels)
        is_sig = (lab == signal_class) if multiclass else (lab == 1)
    else:
        is_sig = np.zeros(n, dtype=bool)
    bkg = ~is_sig
    t_float = threshold_at(sf[bkg], background_fraction, w[bkg])
    t_fixed = threshold_at(sq[bkg], background_fraction, w[bkg])
    acc_f, acc_q, acc_q_tuned = sf > t_float, sq > t_float, sq > t_fixed
    diff = np.abs(F - Q)
    report: dict = {
        "events": n,
        "signal_events": int(is_sig.sum()), "background_events": int(bkg.sum()),
        "working_point": {"background_fraction": background_fraction, "threshold_float": t_float,
                          "threshold_fixed_retuned": t_fixed, "score": "softmax" if multiclass else "logit"},
        "decision_agreement": float(np.mean(acc_f == acc_q)) if n else float("nan"),
        "decision_disagreement": float(np.mean(acc_f != acc_q)) if n else float("nan"),
        "decision_disagreement_retuned": float(np.mean(acc_f != acc_q_tuned)) if n else float("nan"),
        "max_abs_diff": float(diff.max()) if n else float("nan"),
        "mean_abs_diff": float(diff.mean()) if n else float("nan"),
        "max_abs_diff_score": float(np.abs(sf - sq).max()) if n else float("nan"),
        "mean_abs_diff_score": float(np.abs(sf - sq).mean()) if n else float("nan"),
        "background_acceptance": {"float": _rate(acc_f[bkg], w[bkg]), "fixed": _rate(acc_q[bkg], w[bkg]),
                                  "fixed_retuned": _rate(acc_q_tuned[bkg], w[bkg])},
    }
    if multiclass:
        report["argmax_agreement"] = float(np.mean(F.argmax(1) == Q.argmax(1))) if n else float("nan")
        report["argmax_disagreement"] = 1.0 - report["argmax_agreement"]
    if input_rate_hz:
        report["rate_hz"] = {k: v * input_rate_hz for k, v in report["background_acceptance"].items()}
    if is_sig.any() and bkg.any():
        y = is_sig.astype(int)
        _, _, auc_f = roc_auc(sf, y, w)
        _, _, auc_q = roc_auc(sq, y, w)
        report["auc"] = {"float": auc_f, "fixed": auc_q, "drop": auc_f - auc_q}
        report["signal_efficiency"] = {"float": _rate(acc_f[is_sig], w[is_sig]), "fixed": _rate(acc_q[is_sig], w[is_sig]),
                                       "fixed_retuned": _rate(acc_q_tuned[is_sig], w[is_sig])}
    return report


def passes(report: dict, min_agreement: float = 0.995, max_auc_drop: float = 0.005) -> bool:
    """The tolerance the precision scan applies: decision agreement and AUC drop."""
    ok = report.get("decision_agreement", 0.0) >= min_agreement
    if "auc" in report:
        ok = ok and report["auc"]["drop"] <= max_auc_drop
    return bool(ok)


def plots(float_out: np.ndarray, fixed_out: np.ndarray, labels: np.ndarray | None, out_dir: str | Path, *,
          multiclass: bool = False, signal_class: int = 0, title: str = "", report: dict | None = None) -> list[str]:
    """ROC (float vs fixed point) and score-difference plots as PNG; returns the file names."""
    from ..report.plots import _plt, _save

    plt = _plt()  # mplhep style of the job's report: block

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sf = signal_score(float_out, multiclass, signal_class)
    sq = signal_score(fixed_out, multiclass, signal_class)
    written = []
    if labels is not None:
        lab = np.asarray(labels)
        y = ((lab == signal_class) if multiclass else (lab == 1)).astype(int)
        if 0 < y.sum() < len(y):
            fig, ax = plt.subplots(figsize=(5, 4.5))
            for s, name, style in ((sf, "float", "-"), (sq, "fixed point", "--")):
                fpr, tpr, auc = roc_auc(s, y)
                ax.plot(tpr, np.maximum(fpr, 1e-6), style, label=f"{name} (AUC {auc:.4f})")
            if report:
                bf = report["working_point"]["background_fraction"]
                ax.axhline(bf, color="grey", lw=0.8, ls=":", label=f"rate budget {bf:g}")
            ax.set_yscale("log")
            ax.set_xlabel("signal efficiency")
            ax.set_ylabel("background acceptance")
            ax.set_title(title or "ROC: float vs fixed point")
            ax.legend(loc="lower right", fontsize=8)
            _save(fig, out_dir / "roc.png")
            written.append("roc.png")
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    axes[0].hist(sq - sf, bins=80, histtype="step")
    axes[0].set_xlabel("fixed - float score")
    axes[0].set_yscale("log")
    lo, hi = np.percentile(np.concatenate([sf, sq]), [0.1, 99.9]) if len(sf) else (0, 1)
    axes[1].hist2d(sf, sq, bins=80, range=[[lo, hi], [lo, hi]], cmin=1)
    axes[1].set_xlabel("float score")
    axes[1].set_ylabel("fixed-point score")
    if report:
        axes[1].axvline(report["working_point"]["threshold_float"], color="r", lw=0.8)
        axes[1].axhline(report["working_point"]["threshold_float"], color="r", lw=0.8)
    fig.suptitle(title or "fixed point vs float")
    _save(fig, out_dir / "scores.png")
    written.append("scores.png")
    return written
