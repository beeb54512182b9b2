"""``kind: anomaly_scan``: score every event with a ``train_anomaly`` model through the engine,
then judge every (run, lumisection) against the model's reference, data-quality style.

1. Scoring (a ShardProcessor on the actor pool, one part per shard, exactly once): the event
   identity, ``anomaly_score``, ``anomaly_pvalue`` (the reference tail probability),
   ``err_<feature>`` (per-feature squared reconstruction error, standardised units), ``label``
   (the sample's, -1 if none), the truth column if named, and ``keep`` columns.
2. Aggregation reads the written parts back, one at a time, into per-lumisection running sums
   and per-sample score histograms (``hepray.anomaly``): memory grows with lumisections, not
   events; with many parts, groups of parts are summed by Ray tasks and merged.
3. Results: ``lumis.csv`` (every lumisection: statistics, p-values, flag, driving features),
   ``flagged.csv``/``flagged.json`` (the bad ones only, with their features), ``good_lumis.json``
   (run -> good lumisection ranges, so only bad lumisections are dropped), ``scan.json``
   (measured performance against the truth column, event-level search) and ``plots/``.

Which samples form the data stream of the lumisection scan: ``lumi.samples``, by default those
without a label or labelled 0, so a labelled signal sample mixed in for the event-level search
(numbered from the same lumisections) does not pollute the data-quality scan.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..config import DatasetSpec, JobConfig, Spec
from ..data.reading import ENTRY, feature_matrix, identity_columns, read_shard
from ..errors import ConfigError
from ..io.parts import as_path
from ..io.store import local_copy
from ..models.predict import ModelBundle
from .base import PartData, ShardProcessor, Workload
from .registry import register

SCORE, PVALUE, LABEL = "anomaly_score", "anomaly_pvalue", "label"
PARALLEL_MIN_PARTS = 32  # more parts than this are aggregated by Ray tasks


def err_column(feature: str) -> str:
    return f"err_{feature}"


class ScanModelRef(Spec):
    path: str
    batch_size: int = Field(65536, gt=0)


class LumiSpec(Spec):
    enabled: bool = True
    statistic: Literal["fisher", "frac_above", "mean"] = "fisher"
    false_alarm: float = Field(0.01, gt=0, lt=1)  # per judged lumisection
    event_quantile: float = Field(0.99, gt=0, lt=1)  # frac_above: reference quantile per event
    min_events: int = Field(5, ge=1)  # fewer events: not judged, never flagged
    top_features: int = Field(3, ge=1)
    bootstrap: int = Field(2000, ge=100)  # pseudo-lumisections per size for statistic: mean
    samples: list[str] | None = None  # default: samples without a label or labelled 0


class SearchSpec(Spec):
    enabled: bool = True  # runs when the dataset has samples labelled 0 and > 0
    background_rates: list[float] = [1e-2, 1e-3, 1e-4]


class AnomalyScanConfig(JobConfig):
    dataset: DatasetSpec
    model: ScanModelRef
    truth: str | None = None  # per-event truth code, 0 good (e.g. `fault`): measured performance
    keep: list[str] = []
    lumi: LumiSpec = LumiSpec()
    search: SearchSpec = SearchSpec()
    plots: bool = True


class AnomalyProcessor(ShardProcessor):
    """Scores one shard: identity, score, tail probability, per-feature errors."""

    def __init__(self, bundle: ModelBundle, dataset: DatasetSpec, features: list[str], extra: list[str],
                 batch_size: int):
        self.bundle, self.dataset, self.features, self.extra, self.batch_size = bundle, dataset, features, extra, batch_size

    def setup(self, num_cpus: int) -> None:
        from ..anomaly.reference import ReferenceTable
        from ..anomaly.scoring import Scorer

        self.scorer = Scorer.from_bundle(self.bundle.meta, self.bundle.raw, num_cpus, self.batch_size)
        self.ref = ReferenceTable.from_dict(self.bundle.meta["anomaly"]["reference"])

    def process(self, shard) -> PartData:
        cols, n_in = read_shard(shard, self.dataset, extra=self.features + self.extra)
        scores, errors = self.scorer(feature_matrix(cols, self.features, shard.file))
        out = {k: cols[k] for k in identity_columns(cols, self.dataset) + self.extra}
        out[SCORE] = scores
        out[PVALUE] = self.ref.tail_pvalue(scores).astype(np.float32)
        for j, f in enumerate(self.features):
            out[err_column(f)] = errors[:, j]
        out[LABEL] = np.full(len(scores), -1 if shard.label is None else shard.label, dtype=np.int32)
        return PartData(out, n_in)


def _part_columns(path, fmt: str, tree: str) -> list[str]:
    """Column names of a written part (none for an empty ROOT part, which has no tree)."""
    with local_copy(path) as path:
        if fmt == "root":
            import uproot

            with uproot.open(path) as f:
                return list(f[tree].keys()) if tree in f else []
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)


def _read_part(path, fmt: str, tree: str, names: list[str]) -> dict | None:
    """The columns ``names`` (those present) of one written part (local or on a store); None
    for an empty part."""
    with local_copy(path) as local:
        return _read_local_part(local, fmt, tree, names)


def _read_local_part(path: Path, fmt: str, tree: str, names: list[str]) -> dict | None:
    if fmt == "root":
        import uproot

        with uproot.open(path) as f:
            if tree not in f:
                return None
            t = f[tree]
            return t.arrays([n for n in names if n in t.keys()], library="np")
    import awkward as ak

    arr = ak.from_parquet(path, columns=[n for n in names if n in _part_columns(path, fmt, tree)])
    return {n: ak.to_numpy(arr[n]) for n in arr.fields}


def aggregate_parts(parts: list[dict], parts_dir: str, fmt: str, tree: str, features: list[str],
                    id_cols: tuple[str, str], lumi_samples: list[str] | None, truth: str | None,
                    event_threshold: float):
    """Per-lumisection sums (over ``lumi_samples``) and per-sample score histograms of the
    given parts, read one at a time: what each Ray task of the aggregation runs."""
    from ..anomaly.lumi import LumiSums
    from ..anomaly.search import ScoreHistograms

    sums, hists = LumiSums(len(features), event_threshold), ScoreHistograms()
    run_col, lumi_col = id_cols
    names = [SCORE, PVALUE, run_col, lumi_col] + [err_column(f) for f in features] + ([truth] if truth else [])
    for p in parts:
        cols = _read_part(as_path(parts_dir) / p["part"], fmt, tree, names)
        if cols is None or not len(cols[SCORE]):
            continue
        hists.add(p.get("sample") or "data", cols[SCORE])
        if lumi_samples is not None and (p.get("sample") or "data") not in lumi_samples:
            continue
        if run_col not in cols or lumi_col not in cols:
            continue
        errors = np.column_stack([cols[err_column(f)] for f in features])
        sums.add(cols[run_col], cols[lumi_col], cols[SCORE], cols[PVALUE], errors, cols.get(truth) if truth else None)
    return sums, hists


@register("anomaly_scan")
class AnomalyScan(Workload):
    """Score events with an anomaly model; flag lumisections; event-level search efficiencies."""

    Config = AnomalyScanConfig

    def _bundle(self) -> ModelBundle:
        job = self.job
        bundle = ModelBundle.read(job.resolve(job.model.path))
        if bundle.meta.get("task") != "anomaly" or "anomaly" not in bundle.meta:
            raise ConfigError(job.source, "model.path", "not an anomaly model (train it with kind: train_anomaly)")
        return bundle

    def columns(self) -> list[str]:
        return list(self._bundle().features) + self._extra()

    def _extra(self) -> list[str]:
        return list(self.job.keep) + ([self.job.truth] if self.job.truth and self.job.truth not in self.job.keep else [])

    def run(self, ctx) -> dict:
        job: AnomalyScanConfig = self.job
        bundle = self._bundle()
        features = list(bundle.features)
        plan = ctx.plan(job.dataset, extra=features + self._extra())
        ctx.log(f"plan: {plan.files} files, {plan.shards} shards, {plan.events} events")
        t0 = time.perf_counter()
        proc = AnomalyProcessor(bundle, job.dataset, features, self._extra(), job.model.batch_size)
        mapped = ctx.map_shards(plan, proc)
        t_score = time.perf_counter() - t0
        t1 = time.perf_counter()
        result = self._aggregate(ctx, bundle, features)
        t_agg = time.perf_counter() - t1
        timing = {"seconds_score": round(t_score, 3), "seconds_aggregate": round(t_agg, 3),
                  "events_per_s": round(mapped["events_in"] / max(t_score + t_agg, 1e-9), 1)}
        result["timing"] = timing
        ctx.write_json("scan.json", result)
        summary = {k: mapped[k] for k in ("events_in", "events_out", "shards", "shards_failed") if k in mapped}
        lumi = result.get("lumi") or {}
        perf = lumi.get("performance") or {}
        summary.update({"lumisections": lumi.get("lumisections"), "flagged": lumi.get("flagged"), **timing})
        if "auc" in perf:
            summary["lumi_auc"] = perf["auc"][job.lumi.statistic]
            summary["lumi_found"] = perf["found"]["value"]
            summary["lumi_false_alarm_measured"] = perf["false_alarm_measured"]["value"]
        for name, sig in ((result.get("search") or {}).get("signals") or {}).items():
            summary[f"search_{name}"] = {f"eff_at_{w['background_rate']:g}": w["signal_efficiency"]
                                         for w in sig["at_background_rate"]}
        return summary

    # -- aggregation --------------------------------------------------------------------------
    def _lumi_samples(self) -> list[str] | None:
        job = self.job
        if job.lumi.samples is not None:
            return list(job.lumi.samples)
        if not job.dataset.samples:
            return None
        return [s.name for s in job.dataset.samples if s.label in (None, 0)]

    def _aggregate(self, ctx, bundle: ModelBundle, features: list[str]) -> dict:
        from ..anomaly.reference import ReferenceTable

        job: AnomalyScanConfig = self.job
        ref = ReferenceTable.from_dict(bundle.meta["anomaly"]["reference"])
        parts_dir = ctx.store.path("parts")
        manifest = json.loads((parts_dir / "_manifest.json").read_bytes())
        parts = manifest["parts"]
        id_cols = self._id_columns(parts_dir, manifest)
        args = (str(parts_dir), manifest["format"], manifest["tree"], features, id_cols or ("", ""),
                self._lumi_samples(), job.truth, ref.threshold(1.0 - job.lumi.event_quantile))
        sums, hists = self._sum_parts(ctx, parts, args)
        out: dict = {"model": job.model.path, "features": features, "events": int(sum(h.sum() for h in hists.counts.values())),
                     "reference_events": ref.n, "score_kind": bundle.meta["anomaly"].get("score", "recon")}
        pdir = ctx.store.local("plots")
        if job.lumi.enabled and id_cols is None:
            ctx.log("no run/lumisection columns found: lumisection scan skipped (set dataset.event_id)")
        elif job.lumi.enabled:
            out["lumi"] = self._lumi_results(ctx, sums, ref, features, pdir)
        search = self._search(hists, ref, pdir)
        if search:
            out["search"] = search
        if job.plots:
            from ..anomaly.plots import score_distributions

            score_distributions(ref, hists.counts, pdir / "scores.png")
        return out

    def _id_columns(self, parts_dir: Path, manifest: dict) -> tuple[str, str] | None:
        """(run, lumisection) column names, as the engine detected them for the event identity."""
        for p in manifest["parts"]:
            names = _part_columns(parts_dir / p["part"], manifest["format"], manifest["tree"])
            if names:
                ids = [c for c in identity_columns(dict.fromkeys(names), self.job.dataset) if c != ENTRY]
                return (ids[0], ids[1]) if len(ids) >= 2 else None
        return None

    def _sum_parts(self, ctx, parts: list[dict], args: tuple, min_parts: int = PARALLEL_MIN_PARTS):
        """In this process up to ``min_parts`` parts (reading a few columns of a part takes
        milliseconds, starting Ray workers seconds); beyond, groups of parts on Ray tasks,
        merged here (each returns only sums and histograms, never events)."""
        workers = ctx.workers()
        if len(parts) <= max(min_parts, 1):
            return aggregate_parts(parts, *args)
        from ..anomaly.lumi import LumiSums
        from ..anomaly.search import ScoreHistograms

        groups = [g for g in (parts[i::workers * 2] for i in range(workers * 2)) if g]
        sums, hists = LumiSums(len(args[3]), args[-1]), ScoreHistograms()  # results from Ray are read-only
        for s, h in ctx.map_tasks(aggregate_parts, groups, *args, parallel=True):
            sums.merge(s)
            hists.merge(h)
        return sums, hists

    def _lumi_results(self, ctx, sums, ref, features: list[str], pdir: Path) -> dict:
        from ..anomaly.lumi import good_lumi_ranges, lumi_table, performance

        job: AnomalyScanConfig = self.job
        ls = job.lumi
        table = lumi_table(sums, ref, features, statistic=ls.statistic, false_alarm=ls.false_alarm,
                           event_quantile=ls.event_quantile, min_events=ls.min_events, top_features=ls.top_features,
                           n_boot=ls.bootstrap, seed=job.seed)
        _write_lumi_tables(ctx.store.local(), table, job.truth)
        ctx.write_json("good_lumis.json", good_lumi_ranges(table["run"], table["lumi"], ~table["flagged"]))
        out = {"lumisections": int(len(table["n"])), "judged": int(table["judged"].sum()),
               "flagged": int(table["flagged"].sum()), "statistic": ls.statistic, "false_alarm": ls.false_alarm,
               "expected_false_alarms": round(ls.false_alarm * int(table["judged"].sum()), 2)}
        if job.truth:
            out["performance"] = performance(table)
        if job.plots:
            from ..anomaly import plots as aplots

            aplots.lumi_scan(table, pdir / "lumis.png")
            aplots.feature_contributions(table, features, pdir / "flagged_features.png")
            perf = out.get("performance") or {}
            if "auc" in perf:
                from ..report.metrics import roc
                from ..report.plots import roc_curves

                j = table["judged"]
                y = (table["truth"][j] > 0).astype(int)
                curves = {}
                for k in ("fisher", "frac_above", "mean"):
                    tpr, fpr, _ = roc(y, -np.log(np.maximum(table[f"p_{k}"][j], 1e-300)))
                    curves[f"{k} (AUC {perf['auc'][k]:.3f})"] = (tpr, fpr)
                roc_curves(curves, pdir / "lumi_roc.png", "faulty vs good lumisections")
        ctx.log(f"lumisections: {out['judged']} judged, {out['flagged']} flagged "
                f"(expected false alarms {out['expected_false_alarms']})")
        return out

    def _search(self, hists, ref, pdir: Path) -> dict | None:
        from ..anomaly.search import roc_from_histograms, search_summary

        job: AnomalyScanConfig = self.job
        if not job.search.enabled or not job.dataset.samples:
            return None
        background = [s.name for s in job.dataset.samples if s.label == 0]
        signals = {s.name: [s.name] for s in job.dataset.samples if s.label is not None and s.label > 0}
        if not background or not signals:
            return None
        if len(signals) > 1:
            signals["all_signal"] = [n for v in list(signals.values()) for n in v]
        out = search_summary(hists, background, signals, ref, list(job.search.background_rates))
        if job.plots:
            from ..report.plots import roc_curves

            curves = {f"{name} (AUC {s['auc']:.3f})": roc_from_histograms(hists.total(s["samples"]), hists.total(background))
                      for name, s in out["signals"].items()}
            roc_curves(curves, pdir / "search_roc.png", "injected signal vs background events")
        return out


def _write_lumi_tables(run_dir: Path, table: dict, truth: str | None) -> None:
    """``lumis.csv`` (all), ``flagged.csv`` and ``flagged.json`` (flagged, most significant first)."""
    cols = ["run", "lumi", "n", "mean_score", "fisher", "frac_above", "p_fisher", "p_frac_above", "p_mean",
            "pvalue", "z", "judged", "flagged"] + (["truth"] if truth else [])

    def row(i: int) -> dict:
        r = {c: table[c][i].item() for c in cols}
        r["top_features"] = ";".join(f"{t['feature']}:{t['z']:.1f}" for t in table["top_features"][i])
        return r

    rows = [row(i) for i in range(len(table["n"]))]
    flagged = sorted((i for i in range(len(rows)) if table["flagged"][i]), key=lambda i: -table["z"][i])
    for name, sel in (("lumis.csv", range(len(rows))), ("flagged.csv", flagged)):
        with open(run_dir / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols + ["top_features"])
            w.writeheader()
            w.writerows(rows[i] for i in sel)
    from ..io.parts import write_json_atomic

    write_json_atomic(run_dir / "flagged.json", [{**{c: rows[i][c] for c in cols}, "features": table["top_features"][i]}
                                                for i in flagged])
