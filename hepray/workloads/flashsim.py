"""``kind: train_flashsim`` and ``kind: flashsim``: a Lamarr-style flash simulation.

``train_flashsim`` learns, from full-simulation files, a pipeline of parameterizations (an
efficiency classifier, then conditional flows or GANs of detector-level responses given
generator-level features; see :mod:`hepray.flashsim`), exports them (TorchScript, ONNX, checked
against torch) and validates them on the held-out test split.

``flashsim`` runs a trained pipeline over a generator-level dataset on Ray: one part per shard,
written exactly once by the engine, each shard's random stream seeded from (job seed, shard id).
The parts have the full simulation's branch names (``reco_*`` and the pass-through ``gen_*`` and
identity columns) in its tree (``jets``), so any job written for full-simulation files runs on
them by changing ``files:``. When the input also holds the full simulation of the same jets, the
job compares the two (:func:`hepray.flashsim.validation.compare`) and, given a classifier trained
on full simulation, its ROC on both.
"""

from __future__ import annotations

import fnmatch
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..config import DatasetSpec, JobConfig, Spec
from ..data.loading import SPLIT, load_columns
from ..errors import ConfigError
from ..flashsim.config import FitSpec, PipelineSpec
from ..report import metrics
from .base import PartData, ShardProcessor, Workload
from .generate import _throughput
from .registry import register
from .train_common import SplitSpec, split_masks


class ValidationSpec(Spec):
    enabled: bool = True
    features: list[str] | None = None  # default: every generated float/int column (not the flags)
    efficiency_vs: list[str] = ["gen_pt", "gen_eta", "gen_phi"]
    bins: int = Field(10, gt=1)
    c2st_folds: int = Field(5, ge=2)
    holdout: bool = True  # flashsim: compare on the training job's test split only (same sample names)
    max_jets: int = Field(500_000, gt=0)


class DownstreamSpec(Spec):
    """A classifier trained on full simulation (a hepray model folder), run on flash and full."""

    model: str
    label: str = "label"
    signal: list[int] = [1]
    background: list[int] = [0]


class TrainFlashSimConfig(JobConfig):
    dataset: DatasetSpec
    pipeline: PipelineSpec
    training: FitSpec = FitSpec()
    threads: int = Field(1, gt=0)  # torch threads (small networks gain little from more)
    split: SplitSpec = SplitSpec(validation=0.2, test=0.3)
    export: list[Literal["torchscript", "onnx"]] = ["torchscript", "onnx"]
    validation: ValidationSpec = ValidationSpec()


class FlashSimConfig(JobConfig):
    default_tree = "jets"  # the full simulation's tree: downstream jobs read either unchanged

    dataset: DatasetSpec | None = None  # generator-level input files ...
    generate: str | dict | None = None  # ... or a `kind: generate` job (path or mapping): jets made on the fly
    model: str  # a train_flashsim model folder
    keep: list[str] | None = None  # input columns copied to the output; default: the pipeline's passthrough
    batch_size: int = Field(65536, gt=0)
    validation: ValidationSpec = ValidationSpec()
    downstream: DownstreamSpec | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.dataset is None) == (self.generate is None):
            raise ValueError("give exactly one of dataset: (generator-level files) or generate: (a generate job)")
        return self


# -- shared helpers ------------------------------------------------------------------------------
def file_layout(path: str, tree: str) -> dict:
    """Flat branches of one file in file order, with their numpy dtypes (read from one entry)."""
    import uproot

    from ..data.files import open_tree

    f, t = open_tree(path, tree)
    try:
        flat = [k for k in t.keys() if isinstance(t[k].interpretation, uproot.AsDtype)]
        first = t.arrays(flat, entry_stop=1, library="np")
        return {"order": flat, "dtypes": {k: str(first[k].dtype) for k in flat}}
    finally:
        f.close()


def _matching(names: list[str], patterns: list[str]) -> list[str]:
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _expressions_for(names: list[str], expressions: dict[str, str]) -> dict[str, str]:
    """The dataset expressions ``names`` need, with the expressions those use in turn."""
    from ..data.expressions import Expression

    out: dict[str, str] = {}
    todo = [n for n in names if n in expressions]
    while todo:
        n = todo.pop()
        if n in out:
            continue
        out[n] = expressions[n]
        todo += [m for m in Expression(expressions[n]).names if m in expressions]
    return out


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _compare(ctx, job, pipe_columns: list[str], target: str | None, full: dict, flash: dict, out_dir: Path) -> dict:
    from ..flashsim.validation import compare

    v: ValidationSpec = job.validation
    features = v.features or [c for c in pipe_columns if c != target and np.asarray(flash[c]).dtype.kind in "fi"]
    result = compare(full, flash, features=features, target=target, out_dir=out_dir, seed=job.seed,
                     efficiency_vs=[x for x in v.efficiency_vs if x in full], bins=v.bins,
                     c2st_folds=v.c2st_folds, nthread=_threads(ctx))
    c2 = result["two_sample_test"]
    worst = max(result["features"].items(), key=lambda kv: kv[1]["ks"])
    ctx.log(f"validation on {result['jets']} jets: two-sample AUC {c2['auc']:.3f} (null ±{c2['auc_null_std']:.3f}); "
            f"worst KS {worst[0]} {worst[1]['ks']:.3f}; plots in {out_dir}")
    return result


def _threads(ctx) -> int:
    return ctx.cluster_cpus(join=False)


# -- train_flashsim ------------------------------------------------------------------------------
@register("train_flashsim")
class TrainFlashSim(Workload):
    """Train an efficiency model and conditional flows/GANs of detector-level responses."""

    Config = TrainFlashSimConfig

    def steps(self) -> tuple[list[str], list[tuple]]:
        """(efficiency conditions, [(parameterization spec, its conditions)])."""
        p: PipelineSpec = self.job.pipeline
        eff_conditions = list(p.efficiency.conditions or p.conditions) if p.efficiency else []
        out = []
        for spec in p.parameterizations:
            conds = list(spec.conditions or p.conditions) + list(spec.extra_conditions)
            for o, s in spec.outputs.items():
                r = s.reference_for(o, p.prefix)
                if r is not None and r not in conds:
                    conds.append(r)
            out.append((spec, conds))
        return eff_conditions, out

    def columns(self) -> list[str]:
        p: PipelineSpec = self.job.pipeline
        eff_conditions, steps = self.steps()
        cols = list(eff_conditions) + ([p.efficiency.target] if p.efficiency else [])
        for spec, conds in steps:
            cols += conds + list(spec.outputs)
        return list(dict.fromkeys(cols))

    def run(self, ctx) -> dict:
        from ..flashsim.pipeline import PipelineBundle, save_network, write_manifest
        from ..flashsim.training import train_efficiency, train_parameterization

        job: TrainFlashSimConfig = self.job
        p = job.pipeline
        _set_threads(job.threads)
        ctx.join()
        plan = ctx.plan(job.dataset, extra=self.columns())
        ctx.log(f"plan: {plan.files} files, {plan.shards} shards, {plan.events} events")
        layout = file_layout(next(iter(plan)).file, job.dataset.tree)
        made = self._made(layout)
        validate_vs = [c for c in job.validation.efficiency_vs if c in layout["order"]]
        t0 = time.perf_counter()
        cols = load_columns(plan, job.dataset, list(dict.fromkeys(self.columns() + made + validate_vs)),
                            mapper=ctx.map_tasks)
        samples = cols.pop("__samples__")
        train, val, test = split_masks(cols[SPLIT], job.split)
        ctx.log(f"loaded {len(train)} jets in {time.perf_counter() - t0:.1f}s "
                f"(train {train.sum()}, validation {val.sum()}, test {test.sum()})")
        mdir = ctx.store.local("model")
        eff_conditions, steps = self.steps()
        result: dict = {"jets": len(train), "jets_train": int(train.sum()), "jets_validation": int(val.sum()),
                        "jets_test": int(test.sum()), "parameterizations": {}}
        manifest: dict = {"efficiency": None, "parameterizations": []}
        reco = np.ones(len(train), bool)
        if p.efficiency:
            eff = p.efficiency
            ctx.log(f"efficiency: P({eff.target} | {', '.join(eff_conditions)})")
            net, meta, m = train_efficiency(cols, train, val, eff, eff_conditions, eff.training or job.training,
                                            job.seed, ctx.log)
            save_network(mdir / "efficiency", net, {**meta, "metrics": m})
            manifest["efficiency"] = {"name": "efficiency", "dir": "efficiency", "model": "mlp", "target": eff.target,
                                      "conditions": eff_conditions, "outputs": [eff.target]}
            result["efficiency"] = m
            reco = np.asarray(cols[eff.target], bool)
        for k, (spec, conds) in enumerate(steps):
            ctx.log(f"{spec.name}: {spec.model} of {', '.join(spec.outputs)} | {', '.join(conds)}")
            net, meta, m = train_parameterization(cols, train & reco, val & reco, spec, conds, p.prefix,
                                                  spec.training or job.training, job.seed + 1 + k, ctx.log)
            save_network(mdir / spec.name, net, {**meta, "metrics": m})
            manifest["parameterizations"].append({"name": spec.name, "dir": spec.name, "model": spec.model,
                                                  "conditions": conds, "outputs": list(spec.outputs)})
            result["parameterizations"][spec.name] = m
        manifest.update(
            columns=made, dtypes={c: layout["dtypes"].get(c, "float32") for c in made},
            branch_order=layout["order"], derived=dict(p.derived), fill=p.fill, mantissa_bits=p.mantissa_bits,
            passthrough=list(p.passthrough), expressions=_expressions_for(self.columns(), job.dataset.expressions),
            training={"samples": samples, "split": job.split.model_dump(), "seed": job.seed, "job": job.name},
        )
        write_manifest(mdir, manifest)
        bundle = PipelineBundle.read(mdir)
        test_cols = {k: v[test] for k, v in cols.items() if isinstance(v, np.ndarray)}
        if job.export and test.any():
            result["export"] = self._export(ctx, bundle, test_cols)
        if test.any():
            result["efficiency_test"] = self._efficiency_test(ctx, bundle, test_cols)
            if job.validation.enabled:
                from ..flashsim.pipeline import stream_seed

                flash = bundle.load().generate(test_cols, stream_seed(job.seed, "validation"))
                target = p.efficiency.target if p.efficiency else None
                result["validation"] = _compare(ctx, job, made, target, test_cols, flash, ctx.store.local("plots"))
        result["seconds"] = round(time.perf_counter() - t0, 2)
        ctx.write_json("metrics.json", result)
        summary = {"events_in": plan.events, "model": str(ctx.store.path("model"))}
        if "validation" in result:
            summary["two_sample_auc"] = result["validation"]["two_sample_test"]["auc"]
        if result.get("efficiency_test"):
            summary["efficiency_auc"] = result["efficiency_test"]["auc"]
        return summary

    def _made(self, layout: dict) -> list[str]:
        """What generation writes, in the training files' branch order; the files' own
        detector-level branches that the pipeline does not make are named in a log line."""
        p: PipelineSpec = self.job.pipeline
        made = ([p.efficiency.target] if p.efficiency else []) + [o for s in p.parameterizations for o in s.outputs]
        made += list(p.derived)
        missing = [c for c in made if c not in layout["order"] and c not in p.derived]
        if missing:
            raise ConfigError(self.job.source, "pipeline", f"{missing} are not flat branches of the training files")
        order = {c: i for i, c in enumerate(layout["order"])}
        return sorted(made, key=lambda c: order.get(c, len(order)))

    def _export(self, ctx, bundle, test_cols: dict) -> dict:
        """TorchScript/ONNX of every step, each checked against torch on test-split jets."""
        import torch

        from ..data.reading import feature_matrix
        from ..flashsim.pipeline import manifest_steps
        from ..models.export import check_export, export_onnx, export_torchscript

        job: TrainFlashSimConfig = self.job
        pipe = bundle.load()
        modules = ([pipe.efficiency] if pipe.efficiency is not None else []) + [m for _, m in pipe.parameterizations]
        report = {}
        gen = torch.Generator().manual_seed(job.seed)
        for step, module in zip(manifest_steps(bundle.manifest), modules):
            cols = dict(test_cols)
            context = torch.from_numpy(feature_matrix(cols, step["conditions"])[:512])
            args = (context,) if step["model"] == "mlp" else (context, torch.randn(len(context), module.n_noise,
                                                                                   generator=gen))
            names = ["context"] if step["model"] == "mlp" else ["context", "noise"]
            folder = Path(bundle.path) / step["dir"]
            ts = export_torchscript(module, args, folder / "model.ts") if "torchscript" in job.export else None
            # the TorchScript-based ONNX exporter: ~20x faster than torch.export's on these unrolled
            # flow inversions, same graph
            onnx = (export_onnx(module, args, folder / "model.onnx", input_names=names, output_names=["output"],
                                dynamo=False) if "onnx" in job.export else None)
            checks = check_export(module, args, ts, onnx)
            with torch.no_grad():  # outputs are in physical units (GeV): also relative to their size
                scale = float(module(*args).abs().max().clamp(min=1.0))
            for c in checks.values():
                if "max_abs_diff" in c:
                    c["max_rel_diff"] = c["max_abs_diff"] / scale
            report[step["name"]] = checks
            diffs = {k: f"{v.get('max_abs_diff', float('nan')):.2g} ({v.get('max_rel_diff', float('nan')):.1g} rel)"
                     for k, v in checks.items()}
            ctx.log(f"export {step['name']}: max |difference| vs torch {diffs}")
        return report

    def _efficiency_test(self, ctx, bundle, test_cols: dict) -> dict:
        """The efficiency model on the test split against the truth flag: AUC, calibration."""
        import torch

        from ..data.reading import feature_matrix

        eff = bundle.manifest.get("efficiency")
        if not eff:
            return {}
        pipe = bundle.load()
        with torch.no_grad():
            p = pipe.efficiency(torch.from_numpy(feature_matrix(test_cols, eff["conditions"]))).numpy()
        y = np.asarray(test_cols[eff["target"]], bool)
        out = {"mean_predicted": float(p.mean()), "mean_observed": float(y.mean()),
               "brier": float(np.mean((p - y) ** 2)), "n": len(y), "n_false": int((~y).sum())}
        out["auc"] = metrics.auc(y, p) if 0 < y.sum() < len(y) else None
        auc = "n/a" if out["auc"] is None else f"{out['auc']:.3f}"
        ctx.log(f"efficiency on test jets: AUC {auc}, mean predicted {out['mean_predicted']:.4f} vs observed "
                f"{out['mean_observed']:.4f} ({out['n_false']} of {len(y)} not reconstructed)")
        return out


# -- flashsim ------------------------------------------------------------------------------------
class FlashSimProcessor(ShardProcessor):
    """Reads a shard's generator-level columns, runs the pipeline with the shard's seed."""

    def __init__(self, bundle, dataset: DatasetSpec, keep: list[str], seed: int, batch_size: int):
        self.bundle, self.dataset, self.keep, self.seed, self.batch_size = bundle, dataset, keep, seed, batch_size

    def setup(self, num_cpus: int) -> None:
        _set_threads(num_cpus)
        self.pipeline = self.bundle.load()

    def process(self, shard) -> PartData:
        from ..data.reading import read_shard

        t0 = time.perf_counter()
        cols, n_in = read_shard(shard, self.dataset, extra=self.pipeline.inputs() + self.keep)
        return _timed(self.simulate(shard, cols, n_in), t0)

    def simulate(self, shard, cols: dict, n_in: int) -> PartData:
        from ..flashsim.pipeline import stream_seed

        made = self.pipeline.generate(cols, stream_seed(self.seed, shard.shard_id), self.batch_size)
        out = {**{k: cols[k] for k in self.keep}, **made}
        order = {c: i for i, c in enumerate(self.bundle.manifest.get("branch_order", []))}
        return PartData({k: out[k] for k in sorted(out, key=lambda c: order.get(c, len(order)))}, n_in)


class OnTheFlyProcessor(FlashSimProcessor):
    """Generator-level jets made in the shard (Pythia 8 + FastJet of a ``generate`` job, no
    detector), then the pipeline: the flash counterpart of ``kind: generate``."""

    def __init__(self, bundle, gen_job, keep: list[str], seed: int, batch_size: int):
        super().__init__(bundle, None, keep, seed, batch_size)
        self.gen_job = gen_job

    def setup(self, num_cpus: int) -> None:
        from .generate import GenerateProcessor

        GenerateProcessor(self.gen_job, None).setup(num_cpus)
        super().setup(num_cpus)

    def process(self, shard) -> PartData:
        from ..data.expressions import Expression

        t0 = time.perf_counter()
        cols, n_events = generator_level(self.gen_job, shard)
        for name, text in self.pipeline.expressions.items():  # e.g. fault flags from `fault`
            cols[name] = np.asarray(Expression(text, field=f"expressions.{name}").evaluate(cols))
        return _timed(self.simulate(shard, cols, n_events), t0)


def _timed(part: PartData, t0: float) -> PartData:
    """The part with its summary: worker seconds, jets, events (added over shards: throughput)."""
    jets = len(next(iter(part.columns.values()))) if part.columns else 0
    part.summary = {"worker_seconds": time.perf_counter() - t0, "jets": jets, "events": part.n_in}
    return part


GEN_IDENTITY = ("run", "luminosityBlock", "event", "jet_rank", "process", "label", "truth_dr", "fault")
GEN_FEATURES = ("pt", "eta", "phi", "mass", "tau1", "tau2", "tau3", "tau21", "tau32")  # and gen_nconst


def generator_level(gen_job, shard) -> tuple[dict, int]:
    """The generator-level and identity columns a ``generate`` shard would write (same seeds,
    event numbers, lumisections and fault codes), without the detector; and the events generated."""
    from ..generate import faults as F
    from ..generate.jets import round_mantissa
    from ..generate.producer import ShardTask, _jet_features, generate_jets
    from .generate import _jets_per_shard

    gen, js = gen_job.generator, gen_job.jets
    proc = next(p for p in gen_job.processes if p.name == shard.sample)
    per = _jets_per_shard(gen_job, proc)
    k = shard.entry_start // gen.events_stride
    g = generate_jets(gen_job, ShardTask(proc, k, int(shard.seed), min(per, proc.n_jets - k * per), shard.entry_start))
    c = g.const
    gj = _jet_features(c["px"], c["py"], c["pz"], c["e"], g.offsets, None, js.radius)
    lumi = g.event // gen.events_per_lumi
    out = {
        "run": np.full(g.n_jets, gen.run, np.int32), "luminosityBlock": lumi.astype(np.int32),
        "event": g.event.astype(np.int64), "jet_rank": g.rank.astype(np.int32),
        "process": np.full(g.n_jets, proc.code, np.int32), "label": np.full(g.n_jets, proc.label_value, np.int32),
        "truth_dr": round_mantissa(g.truth_dr, js.mantissa_bits),
        "fault": F.fault_codes(F.lumi_fault_index(lumi, gen_job.faults), gen_job.faults),
    }
    for name in GEN_FEATURES:
        out[f"gen_{name}"] = round_mantissa(gj[name], js.mantissa_bits)
    out["gen_nconst"] = gj["nconst"].astype(np.int32)
    return out, g.n_events


@register("flashsim")
class FlashSim(Workload):
    """Generate detector-level jets from generator-level ones with a trained pipeline, on Ray."""

    Config = FlashSimConfig

    def bundle(self):
        from ..flashsim.pipeline import PipelineBundle

        return PipelineBundle.read(self.job.resolve(self.job.model))

    def dataset(self, bundle=None) -> DatasetSpec:
        """The job's dataset plus the expressions the pipeline's conditions need (None when the
        job generates its events on the fly)."""
        if self.job.dataset is None:
            return None
        bundle = bundle or self.bundle()
        return self.job.dataset.with_expressions(bundle.manifest.get("expressions"), self.job.source, f"model ({self.job.model})")

    def columns(self) -> list[str]:
        """Branches read: the pipeline's inputs, with its expressions (e.g. fault flags) replaced
        by the branches they read (what ``hepray plan`` checks against the files)."""
        from ..data.expressions import Expression

        pipe = self.bundle().load()
        names = [c for c in pipe.inputs() if c not in pipe.expressions]
        for name, text in pipe.expressions.items():
            names += sorted(Expression(text, field=f"expressions.{name}").names)
        return list(dict.fromkeys(names))

    def generate_job(self):
        """The ``generate:`` job, validated like any job file (errors name it)."""
        from ..config import load_job

        g = self.job.generate
        gen_job = load_job(g if isinstance(g, dict) else self.job.resolve(g))
        if gen_job.kind != "generate":
            raise ConfigError(self.job.source, "generate", f"must be a `kind: generate` job, got kind {gen_job.kind!r}")
        return gen_job

    def run(self, ctx) -> dict:
        job: FlashSimConfig = self.job
        bundle = self.bundle()
        pipe = bundle.load()
        if job.generate is not None:
            return self._run_on_the_fly(ctx, bundle, pipe)
        dataset = self.dataset(bundle)
        plan = ctx.plan(dataset, extra=pipe.inputs())
        ctx.log(f"plan: {plan.files} files, {plan.shards} shards, {plan.events} events; pipeline "
                f"{' -> '.join(s['name'] for s in _steps(bundle))}")
        if not plan.shards:
            raise ConfigError(job.source, "dataset", "no events to simulate")
        layout = file_layout(next(iter(plan)).file, dataset.tree)
        keep = self._keep(ctx, bundle, layout)
        summary = ctx.map_shards(plan, FlashSimProcessor(bundle, dataset, keep, job.seed, job.batch_size))
        summary["generation"] = _throughput(summary.pop("summary"))
        if summary["generation"]:
            ctx.log(f"flash simulation: {summary['generation']['jets_per_worker_s']:.0f} jets per worker-second")
        has_full = all(c in layout["order"] for c in pipe.columns)
        if job.validation.enabled and has_full:
            summary.update(self._validate(ctx, bundle, plan, dataset, layout))
        elif job.validation.enabled:
            ctx.log("no validation: the input holds no full simulation of these jets")
        return summary

    def _run_on_the_fly(self, ctx, bundle, pipe) -> dict:
        from .generate import plan_shards

        gen_job = self.generate_job()
        shards = plan_shards(gen_job)
        made = set(bundle.manifest["columns"])
        produced = list(GEN_IDENTITY) + [f"gen_{n}" for n in GEN_FEATURES] + ["gen_nconst"]
        missing = [c for c in pipe.inputs() if c not in produced and c not in pipe.expressions]
        if missing:
            raise ConfigError(self.job.source, "generate", f"the pipeline needs {missing}, which generation does not make")
        absent = [k for k in self.job.keep or [] if k not in produced]
        if absent:
            raise ConfigError(self.job.source, "keep", f"{absent} are not made by generation (it makes {produced})")
        keep = [k for k in (self.job.keep or _matching(produced, bundle.manifest.get("passthrough", []))) if k not in made]
        ctx.log(f"plan: {len(shards)} shards generated on the fly ({', '.join(p.name for p in gen_job.processes)}); "
                f"pipeline {' -> '.join(s['name'] for s in _steps(bundle))}")
        summary = ctx.map_shards(shards, OnTheFlyProcessor(bundle, gen_job, keep, self.job.seed, self.job.batch_size))
        summary["generation"] = _throughput(summary.pop("summary"))
        return summary

    def _keep(self, ctx, bundle, layout: dict) -> list[str]:
        made = set(bundle.manifest["columns"])
        if self.job.keep is not None:
            from ..data.reading import is_defined

            missing = [k for k in self.job.keep if k not in layout["order"] and not is_defined(self.job.dataset, k)]
            if missing:
                raise ConfigError(self.job.source, "keep", f"{missing} are not flat branches of the input")
            return [k for k in self.job.keep if k not in made]
        patterns = bundle.manifest.get("passthrough", [])
        keep = [k for k in _matching(layout["order"], patterns) if k not in made]
        absent = [p for p in patterns if not _matching(layout["order"], [p])]
        if absent:
            ctx.log(f"pass-through columns absent from the input (not written): {absent}")
        return keep

    def _validate(self, ctx, bundle, plan, dataset: DatasetSpec, layout: dict) -> dict:
        """Flash parts vs the input's own full simulation, jet by jet (same plan order), on the
        training job's test split when ``validation.holdout`` and the sample names match."""
        job: FlashSimConfig = self.job
        v = job.validation
        pipe_cols = list(bundle.manifest["columns"])
        extra = list(v.efficiency_vs) + ([job.downstream.label] if job.downstream else []) + ["event"]
        want = list(dict.fromkeys(pipe_cols + [c for c in extra if c in layout["order"]]))
        full = load_columns(plan, dataset, want, mapper=ctx.map_tasks)
        samples = full.pop("__samples__")
        flash = _read_parts(ctx.store.path("parts"), want)
        n = len(full[pipe_cols[0]])
        if len(flash[pipe_cols[0]]) != n or ("event" in flash and not np.array_equal(flash["event"], full["event"])):
            ctx.log("no validation: the parts do not line up with the input (skipped shards?)")
            return {}
        for k in want:  # columns not passed through (e.g. the label) are the same jets' in the input
            flash.setdefault(k, full[k])
        keep = np.ones(n, bool)
        train_info = bundle.manifest.get("training", {})
        if v.holdout and set(samples) <= set(train_info.get("samples", [])):
            keep = full[SPLIT] < train_info["split"]["test"]
            ctx.log(f"validation on the training job's test split: {keep.sum()} of {n} jets")
        elif v.holdout:
            ctx.log("validation on every jet: the sample names differ from the training job's, so its "
                    "test split is unknown here")
        keep &= np.cumsum(keep) <= v.max_jets
        full = {k: np.asarray(full[k])[keep] for k in want}
        flash = {k: np.asarray(flash[k])[keep] for k in want}
        target = bundle.manifest["efficiency"]["target"] if bundle.manifest.get("efficiency") else None
        out_dir = ctx.store.local("validation")
        result = {"validation": _compare(ctx, job, pipe_cols, target, full, flash, out_dir)}
        if job.downstream:
            result["downstream"] = self._downstream(ctx, full, flash, target, out_dir)
        ctx.write_json("validation/metrics.json", result)
        short = {"two_sample_auc": result["validation"]["two_sample_test"]["auc"]}
        if "downstream" in result:
            short["downstream_auc"] = {k: result["downstream"][k]["auc"] for k in ("full", "flash")}
        return short

    def _downstream(self, ctx, full: dict, flash: dict, target: str | None, out_dir: Path) -> dict:
        from ..flashsim.validation import downstream
        from ..models.predict import ModelBundle

        d: DownstreamSpec = self.job.downstream
        model = ModelBundle.read(self.job.resolve(d.model))
        features = list(model.features or [])
        missing = [f for f in features if f not in full]
        if missing:
            raise ConfigError(self.job.source, "downstream.model", f"its features {missing} are not made by the pipeline")
        res = downstream(full, flash, model.load(_threads(ctx)), features, label=d.label, signal=list(d.signal),
                         background=list(d.background), target=target, out_dir=out_dir, name=Path(d.model).name)
        ctx.log(f"downstream {d.model}: AUC full {res['full']['auc']:.4f}, flash {res['flash']['auc']:.4f}")
        return res


def _steps(bundle) -> list[dict]:
    from ..flashsim.pipeline import manifest_steps

    return manifest_steps(bundle.manifest)


def _read_parts(parts_dir, columns: list[str]) -> dict:
    """Columns of the committed parts, in plan order (the manifest's shard index)."""
    import json

    import uproot

    from ..io.store import local_copy

    manifest = json.loads((parts_dir / "_manifest.json").read_bytes())
    chunks: dict[str, list] = {}
    for part in sorted(manifest["parts"], key=lambda r: r["index"]):
        with local_copy(parts_dir / part["part"]) as path, uproot.open(path) as f:
            t = f[manifest["tree"]]
            arrays = t.arrays([c for c in columns if c in t.keys()], library="np")
        for k, v in arrays.items():
            chunks.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in chunks.items()}
