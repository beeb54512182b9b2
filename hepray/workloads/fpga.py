"""``kind: fpga``: an L1-trigger stage for a trained small MLP (hls4ml) or BDT (conifer).

Steps, each leaving its output in the run directory:

1. optional precision scan (``scan:``): a grid of ``ap_fixed<W,I>`` converted, compiled and
   scored as parallel Ray tasks on a sample of the dataset -> ``scan.json``, ``plots/scan.png``;
   the narrowest precision within ``tolerance:`` is used below (``scan.apply``);
2. conversion: the HLS project (firmware sources, Tcl, weights) -> ``firmware/``;
3. bit-accurate emulation over the whole dataset through the engine: every actor compiles the
   shipped project once (g++), then scores its shards with the float model and the C
   simulation -> ``parts/`` (``float_score*``, ``fpga_score*``, label, weight, event identity); each
   shard's timings come back as its summary (engine/summary.py), added up in ``fidelity.json``;
4. fidelity: decision/argmax agreement, score differences, ROC and efficiency at the rate
   budget -> ``fidelity.json``, ``plots/roc.png``, ``plots/scores.png``;
5. latency/resources: vendor HLS synthesis where on PATH, else the labelled estimate ->
   ``resources.json``.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from ..io.store import local_copy
from ..config import DatasetSpec, JobConfig, Spec
from ..data.reading import feature_matrix, identity_columns, read_shard
from ..errors import ConfigError
from .base import PartData, ShardProcessor, Workload
from .registry import register
from .train_common import SplitSpec


def _fixed(v: str) -> str:
    from ..fpga.fixed import FixedType

    try:
        FixedType.parse(v)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return v


class ModelRef(Spec):
    path: str


class LayerSpec(Spec):
    precision: str | dict[str, str] | None = None  # one type for the layer, or {weight:, bias:, result:, accum:}
    reuse_factor: int | None = Field(None, ge=1)


class HLSSpec(Spec):
    """hls4ml options for torch MLPs (see hepray.fpga.hls)."""

    precision: str = "ap_fixed<16,6>"
    reuse_factor: int = Field(1, ge=1)
    accum: str = "auto"
    layers: dict[str, LayerSpec] = {}
    backend: Literal["Vitis", "Vivado"] = "Vitis"
    io_type: Literal["io_parallel"] = "io_parallel"
    strategy: Literal["Latency", "Resource"] = "Latency"
    clock_period: float = Field(5.0, gt=0)
    part: str = "xcvu13p-flga2577-2-e"
    project_name: str = Field("trigger_nn", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("precision")
    @classmethod
    def _precision(cls, v):
        return _fixed(v)

    @field_validator("accum")
    @classmethod
    def _accum(cls, v):
        return v if v in ("auto", "same") else _fixed(v)


class BDTSpec(Spec):
    """conifer options for xgboost BDTs (see hepray.fpga.bdt)."""

    precision: str = "ap_fixed<18,8>"
    input_precision: str = "auto"
    correct: bool = True
    clock_period: float = Field(5.0, gt=0)
    part: str = "xcvu13p-flga2577-2-e"
    project_name: str = Field("trigger_bdt", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("precision")
    @classmethod
    def _precision(cls, v):
        return _fixed(v)

    @field_validator("input_precision")
    @classmethod
    def _inp(cls, v):
        return v if v == "auto" else _fixed(v)


class RateSpec(Spec):
    background_fraction: float = Field(0.01, gt=0, lt=1)  # background acceptance allowed (the rate budget)
    input_rate_hz: float | None = Field(None, gt=0)  # e.g. 40e6 bunch crossings: also report rates in Hz


class ToleranceSpec(Spec):
    min_agreement: float = Field(0.995, gt=0, le=1)
    max_auc_drop: float = Field(0.005, ge=0)


class ScanSpec(Spec):
    enabled: bool = False
    precisions: list[str] = []  # an explicit grid; else widths x integers
    widths: list[int] = [8, 10, 12, 14, 16, 18]
    integers: list[int] = [4, 6]
    rounding: str = "AP_TRN"
    overflow: str = "AP_WRAP"
    reuse_factors: list[int] = [1]
    max_events: int = Field(20_000, gt=0)
    apply: bool = True  # emulate the dataset with the chosen precision

    @field_validator("precisions")
    @classmethod
    def _grid(cls, v):
        return [_fixed(p) for p in v]


class FPGAConfig(JobConfig):
    model: ModelRef
    dataset: DatasetSpec
    label: str | None = None  # integer class branch; default: the samples' `label:`
    signal_class: int | str = 1  # binary: label value of signal; multiclass: class index or name
    events: Literal["all", "test", "validation"] = "all"  # the held-out part, as the training split it
    split: SplitSpec = SplitSpec()
    hls: HLSSpec = HLSSpec()
    bdt: BDTSpec = BDTSpec()
    rate: RateSpec = RateSpec()
    tolerance: ToleranceSpec = ToleranceSpec()
    scan: ScanSpec = ScanSpec()
    synth: Literal["auto", "never", "always"] = "auto"
    per_event_benchmark: int = Field(500, ge=0)  # events per shard also run one C call at a time


def _select(cols: dict, mask: np.ndarray) -> dict:
    return {k: v[mask] for k, v in cols.items()}


def _split_mask(cols: dict, job: FPGAConfig, shard) -> np.ndarray | None:
    if job.events == "all":
        return None
    from ..data.loading import SPLIT, split_value

    u = cols[SPLIT] if SPLIT in cols else split_value(cols, job.dataset, shard)  # the value training used
    if job.events == "test":
        return u < job.split.test
    return (u >= job.split.test) & (u < job.split.test + job.split.validation)


def _labels(cols: dict, job: FPGAConfig, shard, n: int) -> np.ndarray:
    if job.label:
        return np.asarray(cols[job.label]).astype(np.int64)
    return np.full(n, -1 if shard.label is None else int(shard.label), dtype=np.int64)


def output_names(n_outputs: int, prefix: str) -> list[str]:
    return [prefix] if n_outputs == 1 else [f"{prefix}_{k}" for k in range(n_outputs)]


class FPGAProcessor(ShardProcessor):
    """Per actor: unpack and compile the project once; per shard: float vs C simulation."""

    def __init__(self, job: FPGAConfig, project: bytes, art_path: str, art_meta: dict, art_raw: bytes,
                 features: list[str]):
        self.job, self.project = job, project
        self.art_path, self.art_meta, self.art_raw = art_path, art_meta, art_raw
        self.features = features

    def setup(self, num_cpus: int) -> None:
        from ..fpga.artifacts import Artifact
        from ..fpga.emulate import compile_project, unpack_project

        tmp = tempfile.mkdtemp(prefix="hepray-fpga-")
        atexit.register(shutil.rmtree, tmp, True)
        self.emu = compile_project(unpack_project(self.project, tmp))
        self.art = Artifact(self.art_path, self.art_meta, self.art_raw)
        self.reference = self.art.float_reference()

    def process(self, shard) -> PartData:
        job = self.job
        extra = self.features + ([job.label] if job.label else [])
        cols, n_in = read_shard(shard, job.dataset, extra=extra)
        mask = _split_mask(cols, job, shard)
        if mask is not None:
            cols = _select(cols, mask)
        X = feature_matrix(cols, self.features, shard.file)
        Z = self.art.standardise(X)
        t0 = time.perf_counter()
        F = self.reference(Z)
        t1 = time.perf_counter()
        Q = self.emu.predict(Z)
        t2 = time.perf_counter()
        k = min(len(Z), job.per_event_benchmark)
        self.emu.predict_per_event(Z[:k])
        t3 = time.perf_counter()
        # timings travel back with the part (added over shards on the driver): no side files
        timing = {"events": len(Z), "float_s": t1 - t0, "batched_s": t2 - t1,
                  "per_event_events": k, "per_event_s": t3 - t2, "compile_s": [round(self.emu.compile_s, 2)]}
        out = {c: cols[c] for c in identity_columns(cols, job.dataset) if c in cols}
        out["label"] = _labels(cols, job, shard, len(Z))
        out["weight"] = np.full(len(Z), shard.weight, dtype=np.float32)
        for j, name in enumerate(output_names(F.shape[1], "float_score")):
            out[name] = F[:, j].astype(np.float32)
        for j, name in enumerate(output_names(Q.shape[1], "fpga_score")):
            out[name] = Q[:, j].astype(np.float64)
        return PartData(out, n_in, summary=timing)


@register("fpga")
class FPGA(Workload):
    """Convert a trained trigger model to FPGA firmware and measure what the conversion costs."""

    Config = FPGAConfig

    def run(self, ctx) -> dict:
        from ..fpga import fidelity
        from ..fpga.artifacts import Artifact
        from ..fpga.emulate import pack_project, project_meta
        from ..fpga.estimate import latency_and_resources

        job: FPGAConfig = self.job
        from ..models.artifact import load_metadata

        if load_metadata(job.resolve(job.model.path))["type"] == "ensemble":
            raise ConfigError(job.source, "model.path", f"{job.model.path} is an ensemble (bagging replicas); the FPGA "
                              "stage compiles one model: give one member folder (e.g. member_000)")
        art = Artifact.read(job.resolve(job.model.path))
        features = art.features
        if not features:
            raise ConfigError(job.source, "model.path", "the model stores no feature list")
        signal = self._signal_index(art)
        fid_kw = {"multiclass": art.multiclass, "signal_class": signal,
                  "background_fraction": job.rate.background_fraction, "input_rate_hz": job.rate.input_rate_hz}
        extra = features + ([job.label] if job.label else [])
        plan = ctx.plan(job.dataset, extra=extra)
        ctx.log(f"plan: {plan.files} files, {plan.shards} shards, {plan.events} events; model {art.type} "
                f"({len(features)} features, {'multiclass' if art.multiclass else 'binary'})")

        options = self._options(art)
        summary: dict = {}
        if job.scan.enabled:
            chosen = self._scan(ctx, art, plan, features, options, fid_kw)
            summary["scan"] = {"chosen": chosen}
            if chosen and job.scan.apply:
                options["precision"] = chosen
        project = self._convert(ctx, art, options)
        meta = project_meta(project)
        ctx.log(f"firmware: {meta['kind']} {options['precision']} -> {project}")

        proc = FPGAProcessor(job, pack_project(project), art.path, art.meta, art.raw, list(features))
        mapped = ctx.map_shards(plan, proc)

        cols = self._read_parts(ctx, meta["n_outputs"])
        labels = cols["label"] if (cols["label"] >= 0).all() and len(cols["label"]) else None
        F = np.column_stack([cols[n] for n in output_names(meta["n_outputs"], "float_score")])
        Q = np.column_stack([cols[n] for n in output_names(meta["n_outputs"], "fpga_score")])
        report = fidelity.compare(F, Q, labels, weights=cols["weight"], **fid_kw)
        report["precision"] = options["precision"]
        report["throughput"] = self._throughput(mapped)
        report["passes_tolerance"] = fidelity.passes(report, job.tolerance.min_agreement, job.tolerance.max_auc_drop)
        ctx.write_json("fidelity.json", report)
        fidelity.plots(F, Q, labels, ctx.store.local("plots"), multiclass=art.multiclass, signal_class=signal,
                       title=f"{meta['kind']} {options['precision']}", report=report)
        resources = latency_and_resources(project, meta, job.synth)
        ctx.write_json("resources.json", resources)
        est = resources.get("synthesis") or resources["estimate"]
        ctx.log(f"decision agreement {report['decision_agreement']:.5f}"
                + (f", AUC {report['auc']['float']:.4f} -> {report['auc']['fixed']:.4f}" if "auc" in report else "")
                + f"; {report['throughput']['batched_events_per_s']:.0f} ev/s batched vs "
                f"{report['throughput']['per_event_events_per_s']:.0f} per event; "
                f"latency {est.get('latency_ns')} ns ({est['source']})")
        summary.update({
            **{k: v for k, v in mapped.items() if k in ("shards", "shards_ok", "events_in", "events_out", "seconds")},
            "precision": options["precision"], "decision_agreement": report["decision_agreement"],
            "auc_drop": report.get("auc", {}).get("drop"), "passes_tolerance": report["passes_tolerance"],
            "latency_ns": est.get("latency_ns"), "latency_source": est["source"],
            "batched_events_per_s": report["throughput"]["batched_events_per_s"],
        })
        return summary

    # -- pieces ------------------------------------------------------------------------------------
    def _signal_index(self, art) -> int:
        s = self.job.signal_class
        if isinstance(s, str):
            if s not in art.classes:
                raise ConfigError(self.job.source, "signal_class", f"{s!r} is not one of the model's classes {art.classes}")
            return art.classes.index(s) if art.multiclass else 1
        return int(s)

    def _options(self, art) -> dict:
        import dataclasses

        job = self.job
        if art.type == "torch":
            from ..fpga.hls import HLSOptions

            spec = job.hls.model_dump()
            spec["layers"] = {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in spec["layers"].items()}
            return dataclasses.asdict(HLSOptions(**spec))
        from ..fpga.bdt import BDTOptions

        return dataclasses.asdict(BDTOptions(**job.bdt.model_dump()))

    def _convert(self, ctx, art, options: dict) -> Path:
        out = ctx.store.local("firmware")
        if out.exists():
            shutil.rmtree(out)
        if art.type == "torch":
            from ..fpga.hls import HLSOptions, convert_mlp

            return convert_mlp(art, out, HLSOptions(**options))
        from ..fpga.bdt import BDTOptions, convert_bdt

        return convert_bdt(art, out, BDTOptions(**options))

    def _scan(self, ctx, art, plan, features, options: dict, fid_kw: dict) -> str | None:
        from ..data.loading import iter_columns
        from ..fpga.fixed import grid
        from ..fpga.scan import Tolerance, plot_scan, run_scan

        job = self.job
        sc = job.scan
        points = list(sc.precisions) or [str(t) for t in grid(sc.widths, sc.integers, sc.rounding, sc.overflow)]
        extra = features + ([job.label] if job.label else [])
        Xs, ys, n = [], [], 0
        for shard, cols in iter_columns(plan, job.dataset, extra):
            mask = _split_mask(cols, job, shard)
            if mask is not None:
                cols = _select(cols, mask)
            X = feature_matrix(cols, features, shard.file)
            Xs.append(X)
            ys.append(_labels(cols, job, shard, len(X)))
            n += len(X)
            if n >= sc.max_events:
                break
        X = np.concatenate(Xs)[: sc.max_events] if Xs else np.zeros((0, len(features)), np.float32)
        y = np.concatenate(ys)[: sc.max_events] if ys else np.zeros(0, np.int64)
        labels = y if len(y) and (y >= 0).all() else None
        ctx.log(f"scan: {len(points)} precisions on {len(X)} events as Ray tasks")
        result = run_scan(art, art.standardise(X), labels, points, base_options=options,
                          reuse_factors=sc.reuse_factors, fidelity_kw=fid_kw, mapper=ctx.map_tasks,
                          tolerance=Tolerance(job.tolerance.min_agreement, job.tolerance.max_auc_drop), log=ctx.log)
        ctx.write_json("scan.json", result)
        (ctx.store.local("plots")).mkdir(parents=True, exist_ok=True)
        plot_scan(result, ctx.store.local("plots") / "scan.png")
        ctx.log(f"scan: chose {result['chosen']} (narrower failing: {', '.join(result['failed_narrower']) or 'none'})")
        return result["chosen"]

    def _read_parts(self, ctx, n_outputs: int) -> dict:
        """The score columns of every part, back on the driver (a few numbers per event)."""
        manifest = json.loads((ctx.store.path("parts") / "_manifest.json").read_text())
        names = ["label", "weight"] + output_names(n_outputs, "float_score") + output_names(n_outputs, "fpga_score")
        chunks: dict[str, list] = {n: [] for n in names}
        for part in manifest["parts"]:
            with local_copy(ctx.store.path("parts") / part["part"]) as path:  # a local part, or a store's
                if manifest["format"] == "root":
                    import uproot

                    with uproot.open(path) as f:
                        if manifest["tree"] not in f:
                            continue  # an empty part (no events after the split)
                        arrays = f[manifest["tree"]].arrays(names, library="np")
                else:
                    import awkward as ak

                    arr = ak.from_parquet(path, columns=names)
                    arrays = {n: ak.to_numpy(arr[n]) for n in names}
            for n in names:
                chunks[n].append(np.asarray(arrays[n]))
        out = {n: (np.concatenate(v) if v else np.zeros(0)) for n, v in chunks.items()}
        out["label"] = out["label"].astype(np.int64)
        return out

    @staticmethod
    def _throughput(mapped: dict) -> dict:
        t = mapped["summary"] or {}
        ev, batched, pe_ev, pe = (t.get(k, 0) for k in ("events", "batched_s", "per_event_events", "per_event_s"))
        return {
            "events": ev, "batched_events_per_s": ev / batched if batched > 0 else float("nan"),
            "per_event_events": pe_ev, "per_event_events_per_s": pe_ev / pe if pe > 0 else float("nan"),
            "float_events_per_s": ev / max(t.get("float_s", 0), 1e-9),
            "compile_s_per_actor": sorted(set(t.get("compile_s", []))),
            "end_to_end_events_per_s": mapped["events_in"] / mapped["seconds"] if mapped.get("seconds") else float("nan"),
            "note": "per worker process, one CPU each; end-to-end includes reading, actor start and compiles",
        }
