"""Templates: weighted histograms per process, category and systematic variation.

Pure functions of arrays and ``hist`` objects, so the per-shard fill, the writers and the
workspace can be tested without Ray. One histogram per process holds everything:

    Hist(StrCategory(categories), StrCategory(variations), Variable(edges), storage=Weight())

with variations ``nominal``, ``<syst>Up``, ``<syst>Down``. Per-shard histograms travel back as
part summaries (engine/summary.py) and add up on the driver.

>>> import numpy as np
>>> h = empty_hist(["all"], ["nominal"], np.linspace(0, 1, 5), "score")
>>> h.fill("all", "nominal", np.array([0.1, 0.6]), weight=np.array([1.0, 2.0])).sum().value
3.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

NOMINAL = "nominal"


def variation_names(systematics: list[str]) -> list[str]:
    """``nominal`` then ``<s>Up``, ``<s>Down`` per systematic (combine's suffixes)."""
    return [NOMINAL] + [f"{s}{d}" for s in systematics for d in ("Up", "Down")]


def empty_hist(categories: list[str], variations: list[str], edges, variable: str):
    import hist

    return hist.Hist(
        hist.axis.StrCategory(list(categories), name="category", growth=False),
        hist.axis.StrCategory(list(variations), name="variation", growth=False),
        hist.axis.Variable(np.asarray(edges, dtype=float), name="x", label=variable),
        storage=hist.storage.Weight(),
    )


def fill(h, category: str, variation: str, x: np.ndarray, w: np.ndarray, mask: np.ndarray | None = None):
    """One ``hist.fill`` of the events in ``mask``: values ``x`` with weights ``w``."""
    if mask is not None:
        x, w = x[mask], w[mask]
    if len(x):
        h.fill(category, variation, x, weight=w)
    return h


def fixed_edges(bins: int | list[float], lo: float | None, hi: float | None) -> np.ndarray:
    if isinstance(bins, int):
        return np.linspace(lo, hi, bins + 1)
    return np.asarray(bins, dtype=float)


def quantile_edges(fine_counts: np.ndarray, fine_edges: np.ndarray, nbins: int) -> np.ndarray:
    """Edges that put an equal share of ``fine_counts`` (a fine histogram of the signal, weighted)
    in each of ``nbins`` bins, interpolated linearly inside the fine bins; the outer edges stay
    the range's. Coinciding edges (an empty stretch) are merged, so fewer bins may come back."""
    counts = np.clip(np.asarray(fine_counts, dtype=float), 0, None)
    total = counts.sum()
    if total <= 0:
        raise ValueError("no signal events to place quantile bins on")
    cdf = np.concatenate([[0.0], np.cumsum(counts)]) / total
    targets = np.linspace(0, 1, nbins + 1)[1:-1]
    inner = np.interp(targets, cdf, fine_edges)
    edges = np.concatenate([[fine_edges[0]], inner, [fine_edges[-1]]])
    return np.unique(edges)


def folded(h1) -> tuple[np.ndarray, np.ndarray]:
    """(values, variances) of a 1D weighted histogram with the underflow added to the first bin
    and the overflow to the last: the fit sees every selected event (a score of exactly 1.0 is
    the overflow of a [0, 1] axis)."""
    v = h1.values(flow=True).copy()
    var = h1.variances(flow=True).copy()
    for a in (v, var):
        a[1] += a[0]
        a[-2] += a[-1]
    return v[1:-1], var[1:-1]


def project(h, category: str, variation: str) -> tuple[np.ndarray, np.ndarray]:
    return folded(h[category, variation, :])


def as_th1(values: np.ndarray, variances: np.ndarray, edges: np.ndarray, name: str, title: str = ""):
    """A ROOT TH1D (uproot's model): the given bin contents and sumw2, no flow (folded)."""
    import hist

    h = hist.Hist(hist.axis.Variable(edges, name="x", label=title or name), storage=hist.storage.Weight(),
                  name=name)
    view = h.view(flow=False)
    view.value = values
    view.variance = variances
    return h


def template_table(hists: Mapping[str, Any], categories: list[str], systematics: Mapping[str, list[str]],
                   data: str | None = None) -> dict:
    """Everything the writers need, as plain arrays.

    Returns ``{category: {name: (values, variances)}}`` with combine's names: ``<process>``,
    ``<process>_<syst>Up/Down`` (only for the processes a systematic applies to) and
    ``data_obs``: the process named ``data`` if there is one, else the sum of all nominal
    templates (Asimov data for mu = 1, the expected result).
    """
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for cat in categories:
        tab: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for proc, h in hists.items():
            if proc == data:
                continue
            tab[proc] = project(h, cat, NOMINAL)
            for syst, procs in systematics.items():
                if proc in procs:
                    for d in ("Up", "Down"):
                        tab[f"{proc}_{syst}{d}"] = project(h, cat, f"{syst}{d}")
        if data is not None and data in hists:
            tab["data_obs"] = project(hists[data], cat, NOMINAL)
        else:
            mc = [tab[p] for p in hists if p != data]
            tab["data_obs"] = (sum(v for v, _ in mc), sum(v for v, _ in mc))  # Asimov: Poisson variance
        out[cat] = tab
    return out


def merge_low_background(table: dict, edges: np.ndarray, background: list[str], min_background: float = 0.0
                         ) -> tuple[dict, np.ndarray]:
    """Merge neighbouring bins, from the high end of the axis down, until every bin holds more
    than ``min_background`` expected background events (nominal, summed over the background
    processes) in every category: a bin with no background is infinite significance in the
    asymptotic formulae and breaks the fit. Contents and sumw2 of every template add exactly;
    the same merged edges serve every category (one binning, as the fit tools expect)."""
    nb = len(edges) - 1
    bkg = np.array([sum(tab[p][0] for p in background if p in tab) for tab in table.values()])  # (categories, bins)
    groups, cur = [], []
    for i in range(nb - 1, -1, -1):
        cur.append(i)
        if np.all(bkg[:, cur].sum(axis=1) > min_background):
            groups.append(cur)
            cur = []
    if cur:  # what is left at the low end joins the last group made (or all bins are one)
        if groups:
            groups[-1] += cur
        else:
            groups.append(cur)
    groups = [sorted(g) for g in reversed(groups)]
    if len(groups) == nb:
        return table, edges
    new_edges = np.array([edges[g[0]] for g in groups] + [edges[-1]])
    merged = {cat: {name: (np.array([v[g].sum() for g in groups]), np.array([var[g].sum() for g in groups]))
                    for name, (v, var) in tab.items()} for cat, tab in table.items()}
    return merged, new_edges


def write_root(path, table: dict, edges: np.ndarray, variable: str) -> None:
    """``templates.root``: one directory per category holding TH1D with sumw2, named as CMS
    combine reads them (``shapes * * templates.root $CHANNEL/$PROCESS $CHANNEL/$PROCESS_$SYSTEMATIC``)."""
    import uproot

    with uproot.recreate(path) as f:
        for cat, tab in table.items():
            for name, (v, var) in tab.items():
                f[f"{cat}/{name}"] = as_th1(v, var, edges, name, variable)


def datacard(table: dict, processes: list[str], signal: list[str], systematics: Mapping[str, list[str]],
             root_name: str = "templates.root") -> str:
    """A combine datacard for the templates: shape systematics for the variations, ``autoMCStats``
    for the MC statistical uncertainty."""
    cats = list(table)
    procs = [p for p in processes if p in next(iter(table.values()))]
    ordered = [p for p in procs if p in signal] + [p for p in procs if p not in signal]
    bkg_i = {p: i + 1 for i, p in enumerate(p for p in ordered if p not in signal)}
    sig_i = {p: -i for i, p in enumerate(p for p in ordered if p in signal)}
    idx = {**sig_i, **bkg_i}
    lines = [f"imax {len(cats)}", f"jmax {len(ordered) - 1}", f"kmax {len(systematics)}", "-" * 40,
             f"shapes * * {root_name} $CHANNEL/$PROCESS $CHANNEL/$PROCESS_$SYSTEMATIC", "-" * 40,
             "bin " + " ".join(cats), "observation " + " ".join("-1" for _ in cats), "-" * 40]
    cols = [(c, p) for c in cats for p in ordered]
    lines += ["bin " + " ".join(c for c, _ in cols), "process " + " ".join(p for _, p in cols),
              "process " + " ".join(str(idx[p]) for _, p in cols), "rate " + " ".join("-1" for _ in cols), "-" * 40]
    for syst, ps in systematics.items():
        lines.append(f"{syst} shape " + " ".join("1" if p in ps else "-" for _, p in cols))
    lines.append("* autoMCStats 0")
    return "\n".join(lines) + "\n"


def workspace(table: dict, processes: list[str], signal: list[str], systematics: Mapping[str, list[str]],
              mc_stat: bool = True, poi_max: float = 10.0) -> dict:
    """A pyhf JSON workspace (HistFactory): a channel per category, a sample per process; the
    signal scaled by the ``mu`` normfactor; each systematic a ``histosys`` (shape and rate,
    from the Up/Down templates) on the processes it applies to; with ``mc_stat`` one
    ``staterror`` per channel (Barlow-Beeston lite, from sumw2)."""
    channels, observations = [], []
    for cat, tab in table.items():
        samples = []
        for proc in [p for p in processes if p in tab]:
            v, var = tab[proc]
            mods: list[dict] = []
            if proc in signal:
                mods.append({"name": "mu", "type": "normfactor", "data": None})
            if mc_stat:
                mods.append({"name": f"staterror_{cat}", "type": "staterror", "data": np.sqrt(var).tolist()})
            for syst, ps in systematics.items():
                if proc in ps:
                    mods.append({"name": syst, "type": "histosys",
                                 "data": {"hi_data": tab[f"{proc}_{syst}Up"][0].tolist(),
                                          "lo_data": tab[f"{proc}_{syst}Down"][0].tolist()}})
            samples.append({"name": proc, "data": v.tolist(), "modifiers": mods})
        channels.append({"name": cat, "samples": samples})
        observations.append({"name": cat, "data": tab["data_obs"][0].tolist()})
    return {
        "channels": channels,
        "observations": observations,
        "measurements": [{"name": "measurement", "config": {
            "poi": "mu", "parameters": [{"name": "mu", "bounds": [[0.0, float(poi_max)]], "inits": [1.0]}]}}],
        "version": "1.0.0",
    }

