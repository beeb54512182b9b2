"""``kind: templates``: weighted histograms of a column per process, category and systematic
variation, filled on the shards and added on the driver as per-shard summaries; written as
``templates.root`` (CMS combine naming), a datacard, a pyhf workspace and plots, and fitted
with pyhf when ``fit:`` asks (docs/templates.md)."""

from __future__ import annotations

import numpy as np
from typing import Literal

from pydantic import Field, model_validator

from ..config import DatasetSpec, JobConfig, Name, Spec
from ..data.expressions import CONSTANTS, Expression
from ..data.reading import read_shard
from ..data.steps import ENTRY
from ..errors import ConfigError, DataError, HeprayError
from ..fit import templates as T
from .base import PartData, ShardProcessor, Workload
from .registry import register


class TemplateProcess(Spec):
    """A process: the events of ``sample`` (default: every sample) passing ``cut``, weighted by
    the sample's weight times ``weight``; with ``xsec`` (pb) its templates are scaled to
    ``xsec * 1000 * lumi / (sum of its weights before the categories)`` events."""

    name: Name
    sample: str | None = None
    cut: str | None = None
    weight: str | None = None
    xsec: float | None = Field(None, gt=0)
    signal: bool = False
    data: bool = False  # observed data: data_obs, never scaled, no systematics


class Category(Spec):
    name: Name
    cut: str | None = None


class Systematic(Spec):
    """A weight variation (``weight_up``/``weight_down``: factors on the nominal weight) or a
    variation of the histogrammed column (``variable_up``/``variable_down``: e.g. a JES-shifted
    score), applied to ``processes`` (default: every simulated process)."""

    name: Name
    weight_up: str | None = None
    weight_down: str | None = None
    variable_up: str | None = None
    variable_down: str | None = None
    processes: list[str] | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        w = (self.weight_up is not None, self.weight_down is not None)
        v = (self.variable_up is not None, self.variable_down is not None)
        if w != (True, True) and v != (True, True) or (any(w) and any(v)):
            raise ValueError("give weight_up and weight_down, or variable_up and variable_down")
        return self


class Binning(Spec):
    """``bins``: a number (with ``range``) or the edges; ``quantile: true``: ``bins`` bins with
    equal signal in each (weighted, all categories together), inside ``range``."""

    bins: int | list[float] = 10
    range: tuple[float, float] | None = None
    quantile: bool = False
    # bins are merged (from the high end) until each holds more than this much expected
    # background in every category; 0: only bins with no background at all are merged
    min_background: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _check(self):
        if isinstance(self.bins, int):
            if self.bins < 1:
                raise ValueError("bins must be >= 1")
            if self.range is None:
                raise ValueError("a number of bins needs range: [low, high]")
        else:
            if self.quantile:
                raise ValueError("quantile binning takes a number of bins, not edges")
            if len(self.bins) < 2 or any(b <= a for a, b in zip(self.bins, self.bins[1:])):
                raise ValueError("edges must be at least two, increasing")
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError("range: low must be below high")
        return self


class FitSpec(Spec):
    enabled: bool = True
    poi_max: float = Field(10.0, gt=0)


class TemplatesConfig(JobConfig):
    dataset: DatasetSpec
    variable: str  # the column (or an expression) histogrammed, e.g. a model's score
    binning: Binning
    processes: list[TemplateProcess] = []  # default: one per dataset sample (label 1: signal)
    categories: list[Category] = [Category(name="all")]
    systematics: list[Systematic] = []
    lumi: float = Field(1.0, gt=0)  # fb^-1: with a process's xsec, its expected events
    mc_stat: bool = True  # staterror per channel in the workspace (autoMCStats in the datacard)
    fit: FitSpec | None = None
    # plots: the stacked templates per category (templates), also every systematic's up/down per
    # process and category (all: processes x categories x systematics figures), or none
    plots: Literal["templates", "all", "none"] = "templates"

    @model_validator(mode="after")
    def _names(self):
        for what, items in (("processes", self.processes), ("categories", self.categories),
                            ("systematics", self.systematics)):
            names = [i.name for i in items]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ConfigError("", what, f"name {dup[0]!r} is used twice")
        if not self.categories:
            raise ConfigError("", "categories", "give at least one category")
        samples = [s.name for s in self.dataset.sample_list()]
        for i, p in enumerate(self.processes):
            if p.sample is not None and p.sample not in samples:
                raise ConfigError("", f"processes[{i}].sample", f"{p.sample!r} is not a dataset sample ({samples})")
            if p.data and (p.signal or p.xsec):
                raise ConfigError("", f"processes[{i}]", "a data process takes no signal or xsec")
        procs = [p.name for p in self.process_list()]
        if sum(p.data for p in self.process_list()) > 1:
            raise ConfigError("", "processes", "at most one data process")
        for i, s in enumerate(self.systematics):
            for p in s.processes or []:
                if p not in procs:
                    raise ConfigError("", f"systematics[{i}].processes", f"{p!r} is not a process ({procs})")
        if self.binning.quantile and not any(p.signal for p in self.process_list()):
            raise ConfigError("", "binning.quantile", "quantile binning is flat in signal: mark a process signal: true")
        if self.fit is not None and self.fit.enabled and not any(p.signal for p in self.process_list()):
            raise ConfigError("", "fit", "the fit needs a process with signal: true")
        for field, text in self.expression_fields():
            Expression(text, field=field)
        return self

    def process_list(self) -> list[TemplateProcess]:
        if self.processes:
            return list(self.processes)
        return [TemplateProcess(name=s.name, sample=s.name, signal=s.label == 1) for s in self.dataset.sample_list()]

    def expression_fields(self) -> list[tuple[str, str]]:
        out = [("variable", self.variable)]
        for i, p in enumerate(self.processes):
            out += [(f"processes[{i}].{k}", getattr(p, k)) for k in ("cut", "weight") if getattr(p, k)]
        out += [(f"categories[{i}].cut", c.cut) for i, c in enumerate(self.categories) if c.cut]
        for i, s in enumerate(self.systematics):
            out += [(f"systematics[{i}].{k}", getattr(s, k)) for k in ("weight_up", "weight_down", "variable_up",
                                                                       "variable_down") if getattr(s, k)]
        return out

    def affected(self) -> dict[str, list[str]]:
        """systematic -> the processes it applies to (never the data)."""
        mc = [p.name for p in self.process_list() if not p.data]
        return {s.name: [p for p in (s.processes or mc) if p in mc] for s in self.systematics}


def _columns(texts) -> list[str]:
    names: set[str] = set()
    for t in texts:
        names |= Expression(t).names
    return sorted(n for n in names if n not in CONSTANTS)


class TemplatesProcessor(ShardProcessor):
    """Per shard: read the columns the expressions need, fill one histogram per process (axes:
    category, variation, variable); the histograms are the part's summary. No columns written."""

    def __init__(self, job: TemplatesConfig, edges: np.ndarray | None, fine: tuple[np.ndarray, list[str]] | None = None):
        self.dataset, self.variable = job.dataset, job.variable
        self.processes = [p.model_dump() for p in job.process_list()]
        self.categories = [c.model_dump() for c in job.categories]
        self.systematics = [s.model_dump() for s in job.systematics]
        self.affected = job.affected()
        self.edges, self.fine = edges, fine  # fine: (edges, signal processes): the quantile pass
        self.extra = _columns(t for _, t in job.expression_fields())

    def setup(self, num_cpus: int) -> None:
        self._expr = {}

    def _eval(self, text: str | None, cols: dict, n: int, shard, what: str, dtype=float) -> np.ndarray | None:
        if text is None:
            return None
        e = self._expr.get(text) or self._expr.setdefault(text, Expression(text, field=what))
        v = e.evaluate(cols)
        if np.ndim(v) == 0:
            return np.full(n, v, dtype=dtype)
        try:
            v = np.asarray(v)  # a column's own dtype (float32 stays float32: no copy)
            if v.dtype.kind not in ("b" if dtype is bool else "fiub"):
                v = None
        except (TypeError, ValueError):
            v = None
        if v is None or v.shape != (n,):
            raise DataError(shard.file, f"{what}: {text!r} must give one number per event", shard=shard.shard_id)
        return v

    def process(self, shard) -> PartData:
        cols, n_in = read_shard(shard, self.dataset, extra=self.extra)
        n = len(cols[ENTRY])
        x = self._eval(self.variable, cols, n, shard, "variable")
        cat_masks = [(c["name"], self._eval(c["cut"], cols, n, shard, f"categories.{c['name']}.cut", bool))
                     for c in self.categories]
        if self.fine is not None:  # quantile pass: the signal's fine histogram, all categories together
            edges, signal = self.fine
            counts = np.zeros(len(edges) - 1)
            in_cat = _any(m for _, m in cat_masks)
            for p in self.processes:
                if p["name"] not in signal or (p["sample"] is not None and p["sample"] != shard.sample):
                    continue
                sel, w = self._selection(p, cols, n, shard)
                m = sel if in_cat is None else sel & in_cat
                counts += np.histogram(np.clip(x[m], edges[0], edges[-1]), edges, weights=w[m])[0]
            return PartData({}, n_in, summary={"fine": counts})
        variations = T.variation_names([s["name"] for s in self.systematics])
        shifted = {}
        for s in self.systematics:
            for d in ("up", "down"):
                shifted[(s["name"], d)] = (
                    self._eval(s[f"variable_{d}"], cols, n, shard, f"systematics.{s['name']}.variable_{d}"),
                    self._eval(s[f"weight_{d}"], cols, n, shard, f"systematics.{s['name']}.weight_{d}"))
        hists, sumw, events = {}, {}, {}
        for p in self.processes:
            if p["sample"] is not None and p["sample"] != shard.sample:
                continue
            sel, w = self._selection(p, cols, n, shard)
            h = T.empty_hist([c for c, _ in cat_masks], variations, self.edges, self.variable)
            sumw[p["name"]] = float(w[sel].sum())
            events[p["name"]] = int(sel.sum())
            for cat, cm in cat_masks:
                idx = np.flatnonzero(sel if cm is None else sel & cm)  # taken once, then each variation indexes
                xi, wi = x[idx], w[idx]
                T.fill(h, cat, T.NOMINAL, xi, wi)
                for s in self.systematics:
                    if p["name"] not in self.affected[s["name"]]:
                        continue
                    for d, suffix in (("up", "Up"), ("down", "Down")):
                        xs, ws = shifted[(s["name"], d)]
                        T.fill(h, cat, s["name"] + suffix, xi if xs is None else xs[idx],
                               wi if ws is None else wi * ws[idx])
            hists[p["name"]] = h
        return PartData({}, n_in, summary={"hists": hists, "sumw": sumw, "events": events})

    def _selection(self, p: dict, cols: dict, n: int, shard) -> tuple[np.ndarray, np.ndarray]:
        sel = self._eval(p["cut"], cols, n, shard, f"processes.{p['name']}.cut", bool)
        w = self._eval(p["weight"], cols, n, shard, f"processes.{p['name']}.weight")
        w = np.full(n, shard.weight) if w is None else w * shard.weight
        return (np.ones(n, bool) if sel is None else sel), w


def _any(masks):
    out = None
    for m in masks:
        if m is None:
            return None
        out = m if out is None else out | m
    return out


FINE_BINS = 4000


@register("templates")
class Templates(Workload):
    """Weighted histogram templates per process/category/systematic for combine and pyhf (and a pyhf fit)."""

    Config = TemplatesConfig

    def columns(self) -> list[str]:
        return _columns(t for _, t in self.job.expression_fields())

    def run(self, ctx) -> dict:
        job = self.job
        procs = job.process_list()
        if job.fit is not None and job.fit.enabled:  # before any shard runs: pip install hepray[fit]
            from ..extras import require

            require("pyhf")
        plan = ctx.plan(job.dataset, extra=self.columns())
        ctx.log(f"plan: {plan.files} files, {plan.shards} shards, {plan.events} events")
        b = job.binning
        if b.quantile:
            fine = np.linspace(b.range[0], b.range[1], FINE_BINS + 1)
            res = ctx.map_shards(plan, TemplatesProcessor(job, None, (fine, [p.name for p in procs if p.signal])),
                                 name="binning")
            counts = (res["summary"] or {}).get("fine")
            if counts is None or counts.sum() <= 0:
                raise ConfigError(job.source, "binning.quantile", "no signal events selected to place the bins on")
            edges = T.quantile_edges(counts, fine, b.bins)
        else:
            edges = T.fixed_edges(b.bins, *(b.range or (None, None)))
        res = ctx.map_shards(plan, TemplatesProcessor(job, edges))
        total = res["summary"] or {}
        hists = total.get("hists", {})
        missing = [p.name for p in procs if p.name not in hists]
        if missing:
            raise HeprayError(f"processes {missing} selected no shard (check their sample names and the files)")
        scale = {}
        for p in procs:
            if p.xsec is not None:
                sw = total["sumw"][p.name]
                if sw <= 0:
                    raise HeprayError(f"process {p.name!r}: no events with positive weight to normalise to xsec")
                scale[p.name] = p.xsec * 1000.0 * job.lumi / sw
                hists[p.name] = hists[p.name] * scale[p.name]
        data = next((p.name for p in procs if p.data), None)
        names = [p.name for p in procs]
        signal = [p.name for p in procs if p.signal]
        affected = job.affected()
        table = T.template_table({n: hists[n] for n in names}, [c.name for c in job.categories], affected, data)
        table, merged = T.merge_low_background(table, edges, [p.name for p in procs if not p.signal and not p.data],
                                               b.min_background)
        if len(merged) != len(edges):
            ctx.log(f"binning: {len(edges) - 1} bins merged into {len(merged) - 1} (each with more than "
                    f"{b.min_background:g} background events in every category)")
            edges = merged
        root = ctx.store.local("templates.root")
        T.write_root(root, table, edges, job.variable)
        (ctx.store.local("datacard.txt")).write_text(T.datacard(table, [n for n in names if n != data], signal, affected))
        spec = T.workspace(table, [n for n in names if n != data], signal, affected, job.mc_stat,
                           job.fit.poi_max if job.fit else 10.0)
        ctx.write_json("workspace.json", spec)
        yields = {cat: {name: float(v.sum()) for name, (v, _) in tab.items() if name in names or name == "data_obs"}
                  for cat, tab in table.items()}
        out = {k: v for k, v in res.items() if k not in ("summary",)}
        out.update({"edges": [float(e) for e in edges], "yields": yields, "scale": scale,
                    "events_per_process": total.get("events", {}), "templates": str(ctx.store.path("templates.root")),
                    "workspace": str(ctx.store.path("workspace.json")), "lumi_fb": job.lumi,
                    "data_obs": data or "asimov (sum of all processes, mu = 1)"})
        from ..report import plots

        pdir = ctx.store.local("plots")
        for cat, tab in table.items() if job.plots != "none" else ():
            plots.stacked_templates(tab, edges, [n for n in names if n != data], signal, pdir / f"templates_{cat}.png",
                                    job.variable, f"{cat}", observed=data is not None)
            for syst, ps in affected.items() if job.plots == "all" else ():
                for p in ps:
                    plots.variation(tab, edges, p, syst, pdir / f"syst_{cat}_{p}_{syst}.png", job.variable)
        if job.fit is not None and job.fit.enabled:
            from ..fit.pyhf_fit import cls_plot, fit

            r = fit(spec, observed=data is not None)
            ctx.write_json("fit.json", r)
            if job.plots != "none":
                cls_plot(r["scan"], pdir / "cls_scan.png", f"L = {job.lumi:g} fb$^{{-1}}$")
            out.update({k: v for k, v in r.items() if k != "scan"})
            band = r["mu_up_band"]
            ctx.log(f"fit (L = {job.lumi:g}/fb): expected significance {r['significance_expected']:.3f} sigma, "
                    f"95% CL upper limit on mu {r['mu_up_expected']:.4g} "
                    f"(-1s {band['-1sigma']:.3g}, +1s {band['+1sigma']:.3g})")
        return out

