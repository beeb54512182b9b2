"""``kind: anomaly_scan``: score every event with a ``train_anomaly`` model through the engine,
then judge every (run, lumisection) against the model's reference, data-quality style.

1. Scoring (a ShardProcessor on the actor pool, one part per shard, exactly once): the event
   identity, ``anomaly_score``, ``anomaly_pvalue`` (the reference tail probability),
   ``err_<feature>`` (per-feature squared reconstruction error, standardised units), ``label``
   (the sample's, -1 if none), the truth column if named, and ``keep`` columns.
2. Each shard also returns, as its per-shard summary (hepray/engine/summary.py), its
   per-lumisection sums (event counts, score sums, per-feature errors, truth codes, and the
   histograms of the monitored variables in the model's bins) and its per-sample score
   histograms; the engine adds them over shards (a lumisection split over shards gets all its
   events) and keeps them in the commit markers, so the parts are never read back and a resumed
   run adds the kept shards' summaries too. Memory grows with lumisections, not events.
3. Per lumisection, three methods (``events``: the per-event scores combined; ``classical``:
   per-variable histogram tests against the reference; ``autoencoder``: the histogram
   autoencoder; hepray/anomaly/dqm.py) each give a p-value and a decision at its calibrated
   threshold, and ``combined`` flags when any of ``lumi.combined`` flags at ``false_alarm / M``
   (Bonferroni over the M methods). ``lumi.decision`` picks which one the outputs use.
4. Results: ``lumis.csv`` (every lumisection: every method's p-value and flag, the decision,
   driving features), ``flagged.csv``/``flagged.json`` (the flagged ones, each naming the methods
   that flagged it and the variables driving each), ``good_lumis.json`` (run -> good lumisection
   ranges, so only bad lumisections are dropped), ``scan.json`` (thresholds, measured false-alarm
   rates with Clopper-Pearson intervals, performance against the truth column, event-level
   search) and ``plots/`` (one summary per run: every method's statistic vs its threshold).

Which samples form the data stream of the lumisection scan: ``lumi.samples``, by default those
without a label or labelled 0, so a labelled signal sample mixed in for the event-level search
(numbered from the same lumisections) does not pollute the data-quality scan.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..config import DatasetSpec, JobConfig, Spec
from ..data.reading import ENTRY, feature_matrix, identity_columns, read_shard
from ..errors import ConfigError
from ..models.predict import ModelBundle
from .base import PartData, ShardProcessor, Workload
from .registry import register

SCORE, PVALUE, LABEL = "anomaly_score", "anomaly_pvalue", "label"
LUMI_METHODS = ("events", "classical", "autoencoder")


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
    decision: Literal["combined", "events", "classical", "autoencoder"] = "combined"  # what flags a lumisection
    combined: list[Literal["events", "classical", "autoencoder"]] = ["events", "classical", "autoencoder"]  # Bonferroni OR
    top_variables: int = Field(3, ge=1)  # variables named per method in flagged.json


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
    """Scores one shard: identity, score, tail probability, per-feature errors; its summary holds
    the shard's per-lumisection sums and histograms and its score histogram (module doc)."""

    def __init__(self, bundle: ModelBundle, dataset: DatasetSpec, features: list[str], extra: list[str],
                 batch_size: int, lumi_samples: list[str] | None = None, truth: str | None = None,
                 event_quantile: float = 0.99, lumi: bool = True):
        self.bundle, self.dataset, self.features, self.extra, self.batch_size = bundle, dataset, features, extra, batch_size
        self.lumi_samples, self.truth, self.event_quantile, self.lumi = lumi_samples, truth, event_quantile, lumi

    def setup(self, num_cpus: int) -> None:
        from ..anomaly.dqm import Binning, ProfileMap
        from ..anomaly.reference import ReferenceTable
        from ..anomaly.scoring import Scorer

        self.scorer = Scorer.from_bundle(self.bundle.meta, self.bundle.raw, num_cpus, self.batch_size)
        self.ref = ReferenceTable.from_dict(self.bundle.meta["anomaly"]["reference"])
        block = self.bundle.meta["anomaly"].get("lumi")
        self.binning = Binning.from_dict(block["binning"]) if block and self.lumi else None
        self.maps = [ProfileMap.from_dict(m) for m in block.get("maps", [])] if block and self.lumi else []

    def process(self, shard) -> PartData:
        from ..anomaly.lumi import lumi_summary
        from ..anomaly.search import ScoreHistograms

        cols, n_in = read_shard(shard, self.dataset, extra=self.features + self.extra)
        X = feature_matrix(cols, self.features, shard.file)
        scores, errors = self.scorer(X)
        out = {k: cols[k] for k in identity_columns(cols, self.dataset) + self.extra}
        out[SCORE] = scores
        out[PVALUE] = self.ref.tail_pvalue(scores).astype(np.float32)
        for j, f in enumerate(self.features):
            out[err_column(f)] = errors[:, j]
        out[LABEL] = np.full(len(scores), -1 if shard.label is None else shard.label, dtype=np.int32)
        sample = shard.sample or "data"
        hists = ScoreHistograms()
        hists.add(sample, scores)
        summary = {"scores": hists.counts, "lumis": {}}
        ids = [c for c in identity_columns(cols, self.dataset) if c != ENTRY]
        if self.lumi and len(ids) >= 2 and (self.lumi_samples is None or sample in self.lumi_samples):
            idx = None
            if self.binning is not None:
                Xv = X[:, [self.features.index(v) for v in self.binning.variables]]
                idx = self.binning.index(Xv)
            fi = self.features.index
            maps = [(m, m.cells(X[:, fi(m.x)], X[:, fi(m.y)]), X[:, fi(m.w)]) for m in self.maps]
            summary["lumis"] = lumi_summary(cols[ids[0]], cols[ids[1]], scores, out[PVALUE], errors,
                                            self.ref.threshold(1.0 - self.event_quantile),
                                            cols.get(self.truth) if self.truth else None, idx,
                                            self.binning.n_bins if self.binning is not None else 0, maps)
            summary["id_columns"] = {ids[0]: 1, ids[1]: 1}
        return PartData(out, n_in, summary=summary)


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
        has_lumi_model = "lumi" in bundle.meta["anomaly"]
        wanted = {job.lumi.decision} - {"combined", "events"}
        if job.lumi.enabled and wanted and not has_lumi_model:
            raise ConfigError(job.source, "lumi.decision", f"{job.lumi.decision}: the model has no lumisection "
                              "models (retrain it with kind: train_anomaly, lumi.enabled: true and enough reference events)")
        plan = ctx.plan(job.dataset, extra=features + self._extra())
        ctx.log(f"plan: {plan.files} files, {plan.shards} shards, {plan.events} events")
        t0 = time.perf_counter()
        proc = AnomalyProcessor(bundle, job.dataset, features, self._extra(), job.model.batch_size,
                                self._lumi_samples(), job.truth, job.lumi.event_quantile, job.lumi.enabled)
        mapped = ctx.map_shards(plan, proc)
        t_score = time.perf_counter() - t0
        t1 = time.perf_counter()
        result = self._aggregate(ctx, bundle, features, mapped.get("summary") or {})
        t_agg = time.perf_counter() - t1
        timing = {"seconds_score": round(t_score, 3), "seconds_aggregate": round(t_agg, 3),
                  "events_per_s": round(mapped["events_in"] / max(t_score + t_agg, 1e-9), 1)}
        result["timing"] = timing
        ctx.write_json("scan.json", result)
        summary = {k: mapped[k] for k in ("events_in", "events_out", "shards", "shards_failed") if k in mapped}
        lumi = result.get("lumi") or {}
        summary.update({"lumisections": lumi.get("lumisections"), "flagged": lumi.get("flagged"), **timing})
        if lumi:
            summary["lumi_decision"] = lumi["decision"]
        perf = lumi.get("performance") or {}
        if "auc" in perf:
            summary["lumi_auc"] = perf["auc"][job.lumi.statistic]
        for m, r in (lumi.get("methods") or {}).items():
            if "found" in r:
                summary[f"lumi_found_{m}"] = r["found"]["value"]
        dec = (lumi.get("methods") or {}).get(lumi.get("decision"), {})
        if "found" in dec:
            summary["lumi_found"] = dec["found"]["value"]
            summary["lumi_false_alarm_measured"] = dec["false_alarm_measured"]["value"]
            summary["lumi_good_flagged"] = dec["false_alarm_measured"]["k"]
        for name, sig in ((result.get("search") or {}).get("signals") or {}).items():
            summary[f"search_{name}"] = {f"eff_at_{w['background_rate']:g}": w["signal_efficiency"]
                                         for w in sig["at_background_rate"]}
        return summary

    # -- aggregation (the reduced per-shard summaries) ---------------------------------------------
    def _lumi_samples(self) -> list[str] | None:
        job = self.job
        if job.lumi.samples is not None:
            return list(job.lumi.samples)
        if not job.dataset.samples:
            return None
        return [s.name for s in job.dataset.samples if s.label in (None, 0)]

    def _aggregate(self, ctx, bundle: ModelBundle, features: list[str], reduced: dict) -> dict:
        from ..anomaly.lumi import LumiSums
        from ..anomaly.reference import ReferenceTable
        from ..anomaly.search import ScoreHistograms

        job: AnomalyScanConfig = self.job
        ref = ReferenceTable.from_dict(bundle.meta["anomaly"]["reference"])
        hists = ScoreHistograms(dict(reduced.get("scores") or {}))
        lumis = reduced.get("lumis") or {}
        out: dict = {"model": job.model.path, "features": features, "events": int(sum(h.sum() for h in hists.counts.values())),
                     "reference_events": ref.n, "score_kind": bundle.meta["anomaly"].get("score", "recon")}
        pdir = ctx.store.local("plots")
        if job.lumi.enabled and not lumis:
            ctx.log("no run/lumisection columns found: lumisection scan skipped (set dataset.event_id)")
        elif job.lumi.enabled:
            sums = LumiSums.from_summary(lumis, len(features), ref.threshold(1.0 - job.lumi.event_quantile))
            out["lumi"] = self._lumi_results(ctx, sums, lumis, bundle, ref, features, pdir)
        search = self._search(hists, ref, pdir)
        if search:
            out["search"] = search
        if job.plots:
            from ..anomaly.plots import score_distributions

            score_distributions(ref, hists.counts, pdir / "scores.png")
        return out

    def _methods(self, table: dict, lumis: dict, bundle: ModelBundle) -> tuple[dict, dict]:
        """Every available method's p-values, thresholds and flags, and the ms per lumisection each
        took. ``events``: the chosen per-event statistic at its nominal threshold; ``classical``
        and ``autoencoder``: calibrated on held-out good lumisections (hepray/anomaly/dqm.py)."""
        from ..anomaly.dqm import LumiModel

        ls = self.job.lumi
        L = len(table["n"])
        j = table["judged"]
        methods: dict = {"events": {"p": np.where(j, table["pvalue"], 1.0), "calibrated": False,
                                    "calibration": f"nominal ({ls.statistic} p-value under the reference table)",
                                    "drive_names": None}}
        cost = {"events": table.pop("_seconds") * 1e3 / max(L, 1)}
        block = bundle.meta["anomaly"].get("lumi")
        if block:
            t0 = time.perf_counter()
            model = LumiModel.from_dict(block)
            keys = [f"{r}:{lu}" for r, lu in zip(table["run"].tolist(), table["lumi"].tolist())]
            counts = np.stack([np.asarray(lumis[k]["hist"]) for k in keys])
            t_load = time.perf_counter() - t0
            t0 = time.perf_counter()
            from ..anomaly.dqm import classical_pvalues, combine_pvalues

            pv, _ = classical_pvalues(counts, model.reference, model.binning.valid, model.test, model.min_expected)
            if model.maps:
                sums = np.stack([np.asarray(lumis[k]["maps"]) for k in keys])
                pv = np.concatenate([pv, np.stack([m.pvalues(sums[:, i]) for i, m in enumerate(model.maps)], axis=1)], axis=1)
            methods["classical"] = {"p": np.where(j, combine_pvalues(pv, model.combine), 1.0), "drive": -np.log10(np.maximum(pv, 1e-300)),
                                    "p_var": pv, "calibrated": True, "test": model.test, "combine": model.combine}
            cost["classical"] = (time.perf_counter() - t0) * 1e3 / max(L, 1)
            t0 = time.perf_counter()
            stat, p, share = model.ae.statistic(counts)
            methods["autoencoder"] = {"p": np.where(j, p, 1.0), "drive": share, "statistic": stat, "calibrated": True}
            cost["autoencoder"] = (time.perf_counter() - t0) * 1e3 / max(L, 1)
            cost["load_lumi_model_ms"] = t_load * 1e3
            for m in ("classical", "autoencoder"):
                methods[m]["calibration_model"] = model.calibration[m]
                methods[m]["check"] = model.check[m]
                methods[m]["calibration"] = (f"{model.calibration[m].m} pseudo-lumisections of held-out good reference "
                                             "events (test split, first half)")
                methods[m]["drive_names"] = model.binning.variables if m == "autoencoder" else model.drive_names
            methods["_sizes"] = block["pseudo_lumis"]["sizes"]
        return methods, cost

    def _decide(self, methods: dict) -> dict:
        """Thresholds at ``false_alarm`` per method; ``combined``: any of ``lumi.combined``
        (those available) at ``false_alarm / M``."""
        from ..anomaly.dqm import false_alarm

        ls = self.job.lumi
        combined = [m for m in ls.combined if m in methods]
        if not combined:
            combined = ["events"]
        for name, m in methods.items():
            if name.startswith("_"):
                continue
            for key, alpha in (("", ls.false_alarm), ("_combined", ls.false_alarm / len(combined))):
                if "calibration_model" in m:
                    thr, ok = m["calibration_model"].threshold(alpha)
                else:
                    thr, ok = alpha, False
                m[f"threshold{key}"], m[f"threshold_calibrated{key}"] = thr, ok
                m[f"flagged{key}"] = m["p"] < thr
            if "check" in m:
                m["check_false_alarm"] = false_alarm(m["check"], m["threshold"])
        flag = np.zeros(len(methods["events"]["p"]), bool)
        for name in combined:
            flag |= methods[name]["flagged_combined"]
        methods["combined"] = {"p": np.min([methods[n]["p"] / methods[n]["threshold_combined"] for n in combined], axis=0),
                               "flagged": flag, "threshold": 1.0, "members": combined,
                               "calibrated": all(methods[n]["threshold_calibrated_combined"] for n in combined),
                               "calibration": f"any of {', '.join(combined)} at false_alarm / {len(combined)} (Bonferroni)"}
        return methods

    def _lumi_results(self, ctx, sums, lumis: dict, bundle: ModelBundle, ref, features: list[str], pdir: Path) -> dict:
        from ..anomaly.dqm import false_alarm
        from ..anomaly.lumi import good_lumi_ranges, lumi_table, performance
        from ..anomaly.stats import fraction

        job: AnomalyScanConfig = self.job
        ls = job.lumi
        t0 = time.perf_counter()
        table = lumi_table(sums, ref, features, statistic=ls.statistic, false_alarm=ls.false_alarm,
                           event_quantile=ls.event_quantile, min_events=ls.min_events, top_features=ls.top_features,
                           n_boot=ls.bootstrap, seed=job.seed)
        table["_seconds"] = time.perf_counter() - t0
        methods, cost = self._methods(table, lumis, bundle)
        sizes = methods.pop("_sizes", None)
        methods = self._decide(methods)
        decision = ls.decision if ls.decision in methods else "combined"
        flagged = methods[decision]["flagged"] & table["judged"]
        table["flagged"] = flagged
        table["decision"] = decision
        judged = table["judged"]
        n_med = float(np.median(table["n"][judged])) if judged.any() else 0.0
        if sizes and judged.any() and not (sizes[0] <= n_med <= sizes[1]):
            ctx.log(f"warning: median lumisection size {n_med:.0f} events is outside the calibrated sizes {sizes} "
                    "(set lumi.events of the training job to cover it)")
        _write_lumi_tables(ctx.store.local(), table, methods, job.truth, ls.top_variables)
        ctx.write_json("good_lumis.json", good_lumi_ranges(table["run"], table["lumi"], ~flagged))
        bad = table["truth"] > 0
        per_method = {}
        for name, m in methods.items():
            r = {"flagged": int((m["flagged"] & judged).sum()), "threshold_p": float(m["threshold"]),
                 "calibrated": bool(m.get("threshold_calibrated", m.get("calibrated", False))),
                 "calibration": m.get("calibration"), "ms_per_lumisection": round(cost.get(name, 0.0), 4)}
            if name == "combined":
                r.pop("ms_per_lumisection")
                r["members"] = m["members"]
            if "check_false_alarm" in m:
                r["false_alarm_held_out"] = m["check_false_alarm"]
            for k in ("test", "combine"):
                if k in m:
                    r[k] = m[k]
            if job.truth:
                f = m["flagged"] & judged
                r["found"] = fraction((f & bad).sum(), (bad & judged).sum())
                r["found_per_truth"] = {int(t): fraction((f & (table["truth"] == t)).sum(), (judged & (table["truth"] == t)).sum())
                                        for t in np.unique(table["truth"][bad & judged])}
                r["false_alarm_measured"] = false_alarm(np.where(f, 0.0, 1.0)[~bad & judged], 0.5)
            per_method[name] = r
        out = {"lumisections": int(len(table["n"])), "judged": int(judged.sum()), "flagged": int(flagged.sum()),
               "decision": decision, "statistic": ls.statistic, "false_alarm": ls.false_alarm,
               "expected_false_alarms": round(ls.false_alarm * int(judged.sum()), 2), "median_events": n_med,
               "calibrated_sizes": sizes, "methods": per_method,
               "cost_ms_per_lumisection": {k: round(v, 4) for k, v in cost.items()}}
        if job.truth:
            table["flagged"] = methods["events"]["flagged"] & judged  # the events method's own performance
            out["performance"] = performance(table)
            table["flagged"] = flagged
        if job.plots:
            self._plots(table, methods, features, pdir)
        ctx.log(f"lumisections: {out['judged']} judged, {out['flagged']} flagged by {decision} "
                f"(expected false alarms {out['expected_false_alarms']}); "
                + ", ".join(f"{k} {v['flagged']}" for k, v in per_method.items()))
        return out

    def _plots(self, table: dict, methods: dict, features: list[str], pdir: Path) -> None:
        from ..anomaly import plots as aplots

        aplots.lumi_scan(table, pdir / "lumis.png")
        aplots.feature_contributions(table, features, pdir / "flagged_features.png")
        for run in np.unique(table["run"]).tolist():
            sel = table["run"] == run
            panels = {name: {"p": m["p"][sel], "threshold": m["threshold"], "flagged": m["flagged"][sel] & table["judged"][sel],
                             "label": f"{name}: {m.get('calibration', '')}"} for name, m in methods.items()}
            aplots.methods_per_run(int(run), table["lumi"][sel], table["truth"][sel], panels, pdir / f"lumis_run{run}.png")
        j = table["judged"]
        y = (table["truth"][j] > 0).astype(int)
        if 0 < y.sum() < len(y):
            from ..report.metrics import auc, roc
            from ..report.plots import roc_curves

            curves = {}
            for k in ("fisher", "frac_above", "mean"):
                s = -np.log(np.maximum(table[f"p_{k}"][j], 1e-300))
                tpr, fpr, _ = roc(y, s)
                curves[f"events/{k} (AUC {auc(y, s):.3f})"] = (tpr, fpr)
            for name in ("classical", "autoencoder"):
                if name in methods:
                    s = -np.log(np.maximum(methods[name]["p"][j], 1e-300))
                    tpr, fpr, _ = roc(y, s)
                    curves[f"{name} (AUC {auc(y, s):.3f})"] = (tpr, fpr)
            roc_curves(curves, pdir / "lumi_roc.png", "faulty vs good lumisections")

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


def _drivers(m: dict, i: int, top: int) -> list[dict]:
    """The variables driving method ``m``'s statistic for lumisection ``i``."""
    names = m.get("drive_names")
    if not names:
        return []
    d = m["drive"][i]
    order = np.argsort(-d)[:top]
    if "p_var" in m:
        return [{"variable": names[v], "p": float(m["p_var"][i, v])} for v in order]
    return [{"variable": names[v], "share": round(float(d[v]), 4)} for v in order]


def _write_lumi_tables(run_dir: Path, table: dict, methods: dict, truth: str | None, top: int) -> None:
    """``lumis.csv`` (all), ``flagged.csv`` and ``flagged.json`` (flagged, most significant first)."""
    names = [m for m in (*LUMI_METHODS, "combined") if m in methods]
    cols = ["run", "lumi", "n", "mean_score", "fisher", "frac_above", "p_fisher", "p_frac_above", "p_mean",
            "pvalue", "z", "judged", "flagged"] + (["truth"] if truth else [])

    def row(i: int) -> dict:
        r = {c: table[c][i].item() for c in cols}
        for m in names:
            r[f"p_{m}" if m != "combined" else "ratio_combined"] = float(methods[m]["p"][i])
            r[f"flag_{m}"] = bool(methods[m]["flagged"][i] and table["judged"][i])
        r["top_features"] = ";".join(f"{t['feature']}:{t['z']:.1f}" for t in table["top_features"][i])
        for m in ("classical", "autoencoder"):
            if m in methods:
                r[f"drivers_{m}"] = ";".join(d["variable"] for d in _drivers(methods[m], i, top))
        return r

    rows = [row(i) for i in range(len(table["n"]))]
    dec = methods[table["decision"]]
    flagged = sorted((i for i in range(len(rows)) if table["flagged"][i]), key=lambda i: float(dec["p"][i]))
    fields = list(rows[0]) if rows else cols
    for name, sel in (("lumis.csv", range(len(rows))), ("flagged.csv", flagged)):
        with open(run_dir / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows[i] for i in sel)
    from ..io.parts import write_json_atomic

    def entry(i: int) -> dict:
        e = {c: rows[i][c] for c in ("run", "lumi", "n") + (("truth",) if truth else ())}
        e["decision"] = table["decision"]
        e["flagged_by"] = [m for m in names if m != "combined" and rows[i][f"flag_{m}"]]
        e["methods"] = {m: {"p": float(methods[m]["p"][i]), "threshold_p": float(methods[m]["threshold"]),
                            "flagged": rows[i][f"flag_{m}"], "variables": _drivers(methods[m], i, top)}
                        for m in names if m != "combined"}
        if "events" in e["methods"]:  # its drivers: the features whose reconstruction error exceeds the reference most
            e["methods"]["events"]["variables"] = [{"variable": t["feature"], "z": round(t["z"], 2)}
                                                   for t in table["top_features"][i][:top]]
        e["features"] = table["top_features"][i]  # the event model's per-feature reconstruction excess
        return e

    write_json_atomic(run_dir / "flagged.json", [entry(i) for i in flagged])
