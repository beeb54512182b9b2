"""Plots every workload writes: matplotlib (Agg) in mplhep's HEP styles, histograms drawn from
``hist`` objects with their errors; people would rather look at a ROC than read one.

The job's ``report:`` block (style CMS | ATLAS | none, label, lumi, com) picks the style and the
experiment label. ``hepray.run`` sets it for the run (:func:`styled`, a context variable on the
driver, where plots are made); every figure made through :func:`_plt` gets the style and every
figure saved through :func:`_save` gets the label, so no plot function needs the job.
"""

from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path

import numpy as np

_REPORT: contextvars.ContextVar = contextvars.ContextVar("hepray_report", default=None)
_applied = [None]  # the style the process's rcParams hold now
STYLES = {"CMS": "CMS", "ATLAS": "ATLAS", "none": "ROOT"}


def _spec(report=None) -> dict:
    report = report if report is not None else _REPORT.get()
    if report is None:
        return {"style": "none", "label": "Simulation", "lumi": None, "com": None}
    return report if isinstance(report, dict) else report.model_dump()


@contextlib.contextmanager
def styled(report=None):
    """Plots made inside use ``report`` (a ReportSpec or its dict; None: the current one)."""
    token = _REPORT.set(report) if report is not None else None
    try:
        yield
    finally:
        if token is not None:
            _REPORT.reset(token)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = STYLES[_spec()["style"]]
    if _applied[0] != style:
        import mplhep

        matplotlib.rcdefaults()
        matplotlib.use("Agg")
        mplhep.style.use(style)
        # the experiments' styles are sized for 10 x 10 inch figures; hepray's are about half that
        plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 110, "font.size": 11, "axes.labelsize": 12,
                             "axes.titlesize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10,
                             "legend.fontsize": 9, "xtick.major.size": 6, "ytick.major.size": 6,
                             "xtick.minor.size": 3, "ytick.minor.size": 3, "lines.linewidth": 1.5})
        _applied[0] = style
    return plt


def prefetch() -> None:
    """Import matplotlib and mplhep in a background thread (1-1.5 s) while the caller reads data
    or fits, which leaves a core free much of the time; the first plot then finds them imported."""
    import threading

    def imports():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
        import mplhep  # noqa: F401

    threading.Thread(target=imports, name="hepray-import-matplotlib", daemon=True).start()


def experiment_label(ax, report=None) -> None:
    """The experiment label above ``ax`` (CMS/ATLAS + label, or the label alone), with the
    luminosity and centre-of-mass energy when the report gives them."""
    import mplhep

    r = _spec(report)
    if getattr(ax, "_hepray_label", False):
        return
    # data=True: the label is the whole text (with data=False mplhep prepends its own "Simulation")
    kw = {"ax": ax, "data": True, "lumi": r["lumi"], "com": r["com"], "loc": 0}
    title = ax.get_title()
    if title:  # the label takes the title's place: the title moves inside, as a legend-like note
        ax.set_title("")
        ax.text(0.02, 0.98, title, transform=ax.transAxes, fontsize="x-small", va="top", ha="left")
    size = 11
    if r["style"] == "CMS":
        mplhep.cms.label(r["label"], fontsize=size, **kw)
    elif r["style"] == "ATLAS":
        mplhep.atlas.label(r["label"], fontsize=size, **kw)
    else:
        mplhep.label.exp_label(exp="", llabel=r["label"], fontsize=size, **kw)
    ax._hepray_label = True


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = [a for a in fig.get_axes() if a.get_visible() and a.has_data()]
    if axes:
        experiment_label(axes[0])
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)
    return path


def hist1d(values: np.ndarray, edges: np.ndarray, weights: np.ndarray | None = None):
    """A weighted ``hist`` histogram of ``values`` (errors from sumw2)."""
    import hist

    h = hist.Hist(hist.axis.Variable(edges), storage=hist.storage.Weight())
    h.fill(values, weight=weights if weights is not None else np.ones(len(values)))
    return h


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
    """Normalised histograms per group (``hist`` objects, drawn by mplhep with their statistical
    errors); ``dashed`` ones overlaid as points (e.g. test vs train)."""
    import mplhep

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    lo = min(float(np.min(v)) for v in groups.values() if len(v))
    hi = max(float(np.max(v)) for v in groups.values() if len(v))
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    for label, v in groups.items():
        if len(v):
            mplhep.histplot(hist1d(np.asarray(v), edges), ax=ax, density=True, yerr=True, histtype="step", lw=1.5,
                            label=label, flow=None)
    for label, v in (dashed or {}).items():
        if not len(v):  # e.g. no training rows kept in memory (external-memory training)
            continue
        mplhep.histplot(hist1d(np.asarray(v), edges), ax=ax, density=True, yerr=True, histtype="errorbar",
                        markersize=3, label=label, flow=None)
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
    import mplhep

    h = hist1d(np.asarray(values), edges)
    counts = h.values()
    mplhep.histplot(h, ax=ax, histtype="fill", alpha=0.7, flow=None)
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


def stacked_templates(tab: dict, edges: np.ndarray, processes: list[str], signal: list[str], path, xlabel: str,
                      title: str = "", observed: bool = False) -> Path:
    """The category's templates: backgrounds stacked, signal on top as a line, data_obs as points
    (Asimov unless ``observed``), statistical errors from sumw2."""
    import mplhep

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    bkg = [p for p in processes if p not in signal]
    if bkg:
        mplhep.histplot([tab[p][0] for p in bkg], edges, ax=ax, stack=True, histtype="fill", label=bkg, alpha=0.8)
        tot = sum(tab[p][0] for p in bkg)
        err = np.sqrt(sum(tab[p][1] for p in bkg))
        ax.stairs(tot + err, edges, baseline=tot - err, fill=True, hatch="///", alpha=0.0, label="MC stat.")
    for p in signal:
        mplhep.histplot(tab[p][0], edges, yerr=np.sqrt(tab[p][1]), ax=ax, histtype="step", lw=2, label=f"{p} (signal)")
    v, var = tab["data_obs"]
    mplhep.histplot(v, edges, yerr=np.sqrt(var), ax=ax, histtype="errorbar", color="black",
                    label="data" if observed else "Asimov data")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("events / bin")
    ax.set_yscale("log")
    top = max(float(np.max(v)) if len(v) else 1.0, 1.0)
    ax.set_ylim(max(top * 1e-4, 1e-3), top * 50)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def variation(tab: dict, edges: np.ndarray, process: str, syst: str, path, xlabel: str) -> Path:
    """A process's nominal template with its ``syst`` Up/Down variations and their ratio."""
    import mplhep

    plt = _plt()
    fig, (ax, rax) = plt.subplots(2, 1, figsize=(5.5, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    nom, nvar = tab[process]
    up, down = tab[f"{process}_{syst}Up"][0], tab[f"{process}_{syst}Down"][0]
    mplhep.histplot(nom, edges, yerr=np.sqrt(nvar), ax=ax, color="black", label="nominal")
    mplhep.histplot(up, edges, ax=ax, color="tab:red", label=f"{syst} up")
    mplhep.histplot(down, edges, ax=ax, color="tab:blue", label=f"{syst} down")
    with np.errstate(divide="ignore", invalid="ignore"):
        for arr, c in ((up, "tab:red"), (down, "tab:blue")):
            rax.stairs(np.where(nom > 0, arr / nom, 1.0), edges, color=c)
    rax.axhline(1, color="gray", lw=0.8)
    rax.set_ylabel("var / nom")
    rax.set_xlabel(xlabel)
    ax.set_ylabel("events / bin")
    ax.set_title(f"{process}: {syst}")
    ax.legend(fontsize=8)
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
