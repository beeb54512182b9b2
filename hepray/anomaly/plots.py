"""The anomaly report's figures, drawn from the bounded summaries (quantile table, score
histograms, lumisection table), never from per-event arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..report.plots import _plt, _save
from .reference import ReferenceTable
from .search import EDGES

FAULT_NAMES = {1: "dead region", 2: "miscalibration", 3: "noisy"}
_FAULT_STYLE = {1: ("v", "tab:purple"), 2: ("s", "tab:orange"), 3: ("D", "tab:green")}


def score_distributions(ref: ReferenceTable, hists: dict[str, np.ndarray], path, rates=(1e-2, 1e-3),
                        per_decade: int = 10) -> Path:
    """Reference (from the model's quantile table) vs each scanned sample, as the fraction of
    events per log-spaced bin; dashed lines at the reference thresholds of ``rates``."""
    plt = _plt()
    step = (len(EDGES) - 1) // (12 * per_decade)
    coarse = EDGES[::step]
    filled = [h for h in hists.values() if h.sum()]
    nz = np.flatnonzero(sum(filled)[1:-1]) if filled else np.array([], int)
    lo = min(ref.values[ref.values > 0].min() if (ref.values > 0).any() else 1e-3, EDGES[nz[0]] if len(nz) else np.inf)
    hi = max(ref.values[-1], EDGES[nz[-1] + 1] if len(nz) else 0)
    keep = (coarse >= lo / 10 ** (1 / per_decade)) & (coarse <= hi * 10 ** (1 / per_decade))
    edges = coarse[keep]
    centers = np.sqrt(edges[1:] * edges[:-1])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.step(centers, np.diff(ref.cdf(edges)), where="mid", color="k", lw=2, label=f"reference (held out, n={ref.n})")
    for name, h in hists.items():
        if not h.sum():
            continue
        cum = np.concatenate([[0], np.cumsum(h[1:-1])])[::step][keep]  # events below each coarse edge
        ax.step(centers, np.diff(cum) / h.sum(), where="mid", lw=1.3, label=f"{name} (n={int(h.sum())})")
    for r in rates:
        ax.axvline(ref.threshold(r), ls="--", lw=0.8, color="gray")
        ax.text(ref.threshold(r), 0.95, f" {r:g}", transform=ax.get_xaxis_transform(),
                fontsize=7, color="gray", va="top")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("anomaly score (reconstruction error)")
    ax.set_ylabel("fraction of events per bin")
    ax.set_title("score: reference vs scanned (dashed: reference rates)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def lumi_scan(table: dict, path, title: str = "per-lumisection significance") -> Path:
    """Significance of the chosen statistic per lumisection, the threshold at the false-alarm
    rate, flagged lumisections in red and, where truth is known, the injected faults marked."""
    from .stats import z_from_p

    plt = _plt()
    runs = table["run"]
    one_run = len(np.unique(runs)) == 1
    x = table["lumi"] if one_run else np.arange(len(runs))
    z, j, f = table["z"], table["judged"], table["flagged"]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(x[j & ~f], z[j & ~f], "o", ms=3.5, color="tab:blue", label="good")
    ax.plot(x[f], z[f], "o", ms=5, color="tab:red", label="flagged")
    zt = float(z_from_p(table["false_alarm"]))
    ax.axhline(zt, ls="--", color="tab:red", lw=1, label=f"threshold (false alarm {table['false_alarm']:g})")
    truth = table["truth"]
    ymin = np.nanmin(np.concatenate([z[j], [0.0]])) - 1.0
    for code in np.unique(truth[truth > 0]):
        m, c = _FAULT_STYLE.get(int(code), ("x", "k"))
        sel = truth == code
        ax.plot(x[sel], np.full(sel.sum(), ymin), m, color=c, ms=6, label=f"truth: {FAULT_NAMES.get(int(code), code)}")
    if not one_run:
        for b in np.flatnonzero(np.diff(runs)) + 0.5:
            ax.axvline(b, color="gray", lw=0.5)
    ax.set_xlabel("lumisection" if one_run else "lumisection (runs in order, separated by lines)")
    ax.set_ylabel(f"significance of {table['statistic']} [sigma]")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    return _save(fig, path)


def feature_contributions(table: dict, features: list[str], path, max_lumis: int = 40) -> Path:
    """For the flagged lumisections (most significant first): each feature's mean
    reconstruction-error excess over the reference, in units of its reference spread."""
    plt = _plt()
    idx = np.flatnonzero(table["flagged"])
    idx = idx[np.argsort(-table["z"][idx])][:max_lumis]
    fig, ax = plt.subplots(figsize=(0.55 * len(features) + 3, 0.28 * max(len(idx), 1) + 2))
    if len(idx):
        zf = np.clip(table["feature_z"][idx], -10, 10)
        im = ax.imshow(zf, aspect="auto", cmap="RdBu_r", vmin=-10, vmax=10)
        fig.colorbar(im, ax=ax, label="mean error excess [reference sigma of the mean], clipped at 10")
        labels = [f"{table['run'][i]}:{table['lumi'][i]}" + (f" ({FAULT_NAMES.get(int(table['truth'][i]), '?')})"
                                                            if table["truth"][i] > 0 else "") for i in idx]
        ax.set_yticks(range(len(idx)), labels, fontsize=7)
    else:
        ax.text(0.5, 0.5, "no lumisection flagged", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_xticks(range(len(features)), features, rotation=60, ha="right", fontsize=8)
    ax.set_title("features driving the flags (run:lumi, truth)")
    return _save(fig, path)


def loss_curve(history: list[dict], path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], label="train")
    ax.plot(ep, [h["validation_loss"] for h in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def methods_per_run(run: int, lumi: np.ndarray, truth: np.ndarray, methods: dict, path) -> Path:
    """One run's summary: per method (a panel each), every lumisection's ``-log10 p`` against the
    method's threshold (dashed), flagged lumisections in red, true faults marked below.

    ``methods``: name -> {"p": [L], "threshold": float, "flagged": [L] bool, "label": str}."""
    plt = _plt()
    lumi = np.asarray(lumi)
    contiguous = len(lumi) < 2 or np.all(np.diff(lumi) == 1)
    x = lumi if contiguous else np.arange(len(lumi))  # gaps in the numbering: lumisections side by side
    fig, axes = plt.subplots(len(methods), 1, figsize=(9, 2.3 * len(methods) + 0.8), sharex=True, squeeze=False)
    for ax, (name, m) in zip(axes[:, 0], methods.items()):
        s = np.minimum(-np.log10(np.clip(np.asarray(m["p"], dtype=np.float64), 1e-300, None)), 300.0)
        f = np.asarray(m["flagged"], bool)
        thr = -np.log10(m["threshold"])
        top = max(np.nanmax(s) if len(s) else 1.0, thr, 1.0)
        ax.plot(x[~f], s[~f], "o", ms=3, color="tab:blue", label="not flagged")
        ax.plot(x[f], s[f], "o", ms=4.5, color="tab:red", label="flagged")
        ax.axhline(thr, ls="--", color="tab:red", lw=1, label=f"threshold (p < {m['threshold']:.2g})")
        for code in np.unique(truth[truth > 0]):
            mk, c = _FAULT_STYLE.get(int(code), ("x", "k"))
            sel = truth == code
            ax.plot(x[sel], np.full(sel.sum(), 1.08 * top), mk, color=c, ms=5, label=f"truth: {FAULT_NAMES.get(int(code), code)}")
        ax.set_ylabel("-log10 p" if name != "combined" else "-log10 (p / threshold), best method")
        ax.set_title(m.get("label", name), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=5, loc="lower right" if top > 3 * thr else "upper right")
    if not contiguous:
        step = max(1, len(lumi) // 30)
        axes[-1, 0].set_xticks(x[::step], [str(v) for v in lumi[::step]], rotation=60, fontsize=7)
    axes[-1, 0].set_xlabel("lumisection")
    fig.suptitle(f"run {run}: per-lumisection statistic vs threshold, per method", fontsize=10)
    return _save(fig, path)
