"""Plots every workload writes (matplotlib, Agg): people would rather look at a ROC than read one."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def prefetch() -> None:
    """Import matplotlib in a background thread (0.6-1.2 s) while the caller reads data or fits,
    which leaves a core free much of the time; the first plot then finds it imported."""
    import threading

    threading.Thread(target=_plt, name="hepray-import-matplotlib", daemon=True).start()


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path, title: str = "ROC") -> Path:
    """``curves``: label -> (signal efficiency, background efficiency). Log-scale rejection plot."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for label, (tpr, fpr) in curves.items():
        ok = fpr > 0
        ax.plot(tpr[ok], 1.0 / fpr[ok], label=label)
    ax.set_yscale("log")
    ax.set_xlabel("signal efficiency")
    ax.set_ylabel("background rejection 1/$\\varepsilon_B$")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def score_distributions(groups: dict[str, np.ndarray], path, title: str = "score", bins: int = 40,
                        dashed: dict[str, np.ndarray] | None = None, xlabel: str = "score") -> Path:
    """Normalised histograms per group; ``dashed`` ones overlaid as points (e.g. test vs train)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    lo = min(float(np.min(v)) for v in groups.values() if len(v))
    hi = max(float(np.max(v)) for v in groups.values() if len(v))
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    for label, v in groups.items():
        ax.hist(v, bins=edges, density=True, histtype="step", lw=1.5, label=label)
    for label, v in (dashed or {}).items():
        if not len(v):  # e.g. no training rows kept in memory (external-memory training)
            continue
        h, _ = np.histogram(v, bins=edges, density=True)
        ax.plot(0.5 * (edges[1:] + edges[:-1]), h, ".", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("normalised")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def bar_ranking(values: dict[str, float], path, title: str, xlabel: str) -> Path:
    plt = _plt()
    items = sorted(values.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(5.5, 0.3 * len(items) + 1.5))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(fig, path)


def band(x: np.ndarray, center: np.ndarray, lo: np.ndarray, hi: np.ndarray, path, xlabel: str, ylabel: str,
         title: str, label: str = "mean", band_label: str = "±1σ",
         points: tuple[np.ndarray, np.ndarray, str] | None = None) -> Path:
    """A central value with its band; ``points``: (values, errors, label) drawn over it, e.g.
    the observed frequency the band is compared with."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot(x, center, "o-", label=label)
    ax.fill_between(x, lo, hi, alpha=0.3, label=band_label)
    if points is not None:
        ax.errorbar(x, points[0], yerr=points[1], fmt="ks", ms=4, label=points[2])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def mass_spectrum(values: np.ndarray, path, xlabel: str = "$m_{\\mu\\mu}$ [GeV]", lo: float = 0.25, hi: float = 300,
                  bins: int = 300, marks: dict[str, float] | None = None, title: str = "") -> Path:
    """Events per log-spaced bin on log-log axes (ROOT's df102 dimuon plot); ``marks``: name ->
    mass of a resonance, labelled above the spectrum."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    edges = np.geomspace(lo, hi, bins + 1)
    counts, _ = np.histogram(values, edges)
    ax.stairs(counts, edges, fill=True, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(0.5, max(2, counts.max()) * 5)
    for name, m in (marks or {}).items():
        ax.axvline(m, color="gray", lw=0.6, ls=":")
        ax.text(m, max(2, counts.max()) * 2, name, ha="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("events / bin")
    ax.set_title(title or f"{len(values)} events")
    return _save(fig, path)


def reliability_diagram(curves: dict[str, dict], path, title: str = "reliability") -> Path:
    """``curves``: label -> ``metrics.reliability`` dict (with ``ece``). Observed frequency
    against predicted probability per bin; the diagonal is perfect calibration; the lower
    panel shows how many events each bin holds."""
    plt = _plt()
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(5.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfectly calibrated")
    for label, r in curves.items():
        pred, obs = np.asarray(r["predicted"], float), np.asarray(r["observed"], float)
        ok = np.isfinite(pred) & np.isfinite(obs)
        ece = r.get("ece")
        line = ax.plot(pred[ok], obs[ok], "o-", ms=4, label=label + (f" (ECE {ece:.3f})" if ece is not None else ""))
        edges = np.asarray(r["edges"])
        axn.stairs(np.asarray(r["counts"]), edges, color=line[0].get_color())
    ax.set_ylabel("observed frequency")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    axn.set_yscale("log")
    axn.set_xlabel("predicted probability")
    axn.set_ylabel("events")
    return _save(fig, path)
