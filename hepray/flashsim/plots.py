"""Plots of the flash-vs-full validation (matplotlib Agg, via :mod:`hepray.report.plots`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..report.plots import _plt, _save, score_distributions


def feature_grid(full: dict, flash: dict, features: list[str], distances: dict, path: Path) -> Path:
    """One panel per feature: normalised histograms of full and flash, W1 and KS in the title."""
    plt = _plt()
    cols = min(4, len(features))
    rows = math.ceil(len(features) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for ax, f in zip(axes.flat, features):
        a = np.asarray(full[f], dtype=np.float64)
        b = np.asarray(flash[f], dtype=np.float64)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if not len(a):
            continue
        lo, hi = np.quantile(np.concatenate([a, b]), [0.002, 0.998])
        edges = np.linspace(lo, hi if hi > lo else lo + 1, 41)
        ax.hist(a, bins=edges, density=True, histtype="stepfilled", alpha=0.35, label="full")
        ax.hist(b, bins=edges, density=True, histtype="step", lw=1.5, label="flash")
        d = distances.get(f, {})
        rel = d.get("wasserstein_rel")
        ax.set_title(f"{f}\nW1/σ {rel:.3f}  KS {d.get('ks', float('nan')):.3f}" if rel is not None else f, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(features):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    return _save(fig, path)


def correlation_pair(full: np.ndarray, flash: np.ndarray, features: list[str], path: Path) -> Path:
    """Full, flash and flash - full correlation matrices side by side."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    for ax, m, title, cmap, lim in ((axes[0], full, "full simulation", "coolwarm", 1.0),
                                    (axes[1], flash, "flash simulation", "coolwarm", 1.0),
                                    (axes[2], flash - full, "flash - full", "PiYG", 0.2)):
        im = ax.imshow(m, vmin=-lim, vmax=lim, cmap=cmap)
        ax.set_xticks(range(len(features)), features, rotation=90, fontsize=7)
        ax.set_yticks(range(len(features)), features, fontsize=7)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def efficiency_curves(curves: dict[str, dict], xlabel: str, target: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for i, (label, c) in enumerate(curves.items()):
        e = np.asarray(c["edges"])
        x = 0.5 * (e[1:] + e[:-1]) + (i - 0.5) * 0.08 * np.diff(e)  # offset so error bars do not overlap
        ax.errorbar(x, c["efficiency"], yerr=c["error"], xerr=None, fmt="o" if i == 0 else "s", ms=4, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"fraction with {target}")
    ax.set_title(f"{target} vs {xlabel}")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def c2st(scores: np.ndarray, labels: np.ndarray, result: dict, path: Path) -> Path:
    return score_distributions({"full simulation": scores[labels == 0], "flash simulation": scores[labels == 1]},
                               path, f"two-sample BDT: AUC {result['auc']:.3f} (null ±{result['auc_null_std']:.3f})",
                               xlabel="P(flash)")
