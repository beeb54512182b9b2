"""``kind: train_gnn``: ParticleNet on jet constituents, trained like the deep classifier.

Steps (the same as ``train_classifier``, with padded constituents instead of flat features):

1. one distributed pass (a Ray task per shard): rows per split, class weight sums, and a
   ``preprocess.data_fraction`` sample of the training constituents, on which weaver-style
   auto-standardisation is fitted (:class:`hepray.gnn.inputs.Constituents`, stored with the
   model);
2. training with :func:`hepray.training.fit` on batches padded shard by shard in the reading
   stage (:class:`GNNRows` in :class:`~hepray.training.ShardBatches`): ``direct`` in this
   process or ``ray_train`` on Ray Train (DDP), ``auto`` picks; checkpoints every epoch,
   ``--resume`` continues;
3. the model folder is written (``type: torch``, ``architecture: particlenet``, ``inputs``:
   padding parameters, selection and argument roles), then every shard is scored through that
   artifact by Ray tasks - the code path ``kind: infer_gnn`` uses - and evaluated like the BDT
   and the DNN (:func:`~hepray.workloads.train_common.score_report`: ROC, rejection, KS).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from ..data.columns import concatenate, num_rows
from ..data.loading import iter_columns
from ..data.shard import Shard
from ..errors import ConfigError
from ..gnn.inputs import Constituents, PreprocessSpec, RolesSpec, check_inputs, fraction_rows
from ..models.artifact import save_metadata
from ..training.bagging import BaggingSpec, efficiency_bands, load_weights, poisson_counts, train_replicas
from .base import Workload
from .registry import register
from .train_classifier import TrainingSpec
from .train_common import (
    TEST_SCORES,
    Data,
    TrainJob,
    calibration_meta,
    class_names,
    fit_calibration,
    class_setup,
    score_report,
    shard_rows,
)

SCORE = "hepray_score"


class NetworkSpec(RolesSpec):
    """ParticleNet size (``lite``: 2 EdgeConv blocks k=7, ``full``: 3 blocks k=16, as in the
    paper and weaver-core) or explicit ``conv_params``/``fc_params``, and the input roles."""

    size: Literal["lite", "full"] = "lite"
    conv_params: list[tuple[int, list[int]]] | None = None  # [[k, [c1, c2, c3]], ...]
    fc_params: list[tuple[int, float]] | None = None  # [[width, dropout], ...]


class TrainGNNConfig(TrainJob):
    features: list[str] = []  # not used: ParticleNet reads `inputs:`
    inputs: dict[str, dict[str, Any]]  # weaver-core style groups: length, pad_mode, vars
    constituents: str | None = None  # jagged boolean expression: which constituents enter
    preprocess: PreprocessSpec = PreprocessSpec()
    network: NetworkSpec = NetworkSpec()
    training: TrainingSpec = TrainingSpec(epochs=20, batch_size=256, learning_rate=5e-3)
    mode: Literal["auto", "direct", "ray_train"] = "auto"
    num_workers: int | None = Field(None, gt=0)  # ray_train; default: cluster CPUs / engine.cpus_per_worker
    use_gpu: bool = False
    threads: int | None = Field(None, gt=0)  # torch threads in direct mode; default: the cluster's CPUs
    auto_ray_train_work: int = Field(2_000_000, gt=0)  # auto: Ray Train above events x epochs
    score_batch: int = Field(2048, gt=0)  # jets per forward pass when scoring
    bagging: BaggingSpec = BaggingSpec()  # bootstrap replicas: efficiency bands vs bagging.variables

    @field_validator("features")
    @classmethod
    def _no_features(cls, v):
        if v:
            raise ValueError("ParticleNet reads `inputs:` (constituents); flat `features:` are for train_classifier")
        return v

    @model_validator(mode="after")
    def _inputs(self):
        try:
            check_inputs(self.inputs, self.network, self.preprocess.method)
        except ValueError as exc:
            raise ConfigError("", "inputs", str(exc)) from None
        if self.constituents:
            from ..data.expressions import Expression

            Expression(self.constituents, field="constituents")
        return self

    def constituents_spec(self) -> Constituents:
        """The inputs before fitting (``auto`` centres unresolved)."""
        return Constituents.from_config(self.inputs, self.network, self.preprocess.method, self.constituents)


# -- rows of one shard ---------------------------------------------------------------------------
@dataclasses.dataclass
class GNNRows:
    """Shard -> padded network inputs of one split, label ``y``, weight ``w`` (sample x event
    weight x class-balance factor). Picklable: runs in Ray tasks and Ray Train workers."""

    job: TrainGNNConfig
    constituents: Constituents
    factors: np.ndarray | None = None
    bootstrap_seed: int | None = None  # a bagging replica: training rows weighted by Poisson(1) counts

    def columns(self) -> list[str]:
        return (self.constituents.columns() + [c for c in (self.job.label, self.job.weights.event) if c]
                + list(self.job.bagging.variables))

    def raw(self, shard_dict: dict) -> tuple[Shard, dict, dict]:
        """(shard, its columns, its rows: y, w and split masks)."""
        shard = Shard.from_dict(shard_dict)
        _, cols = next(iter_columns([shard], self.job.dataset, self.columns()))
        return shard, cols, shard_rows(cols, self.job, shard)

    def __call__(self, shard_dict: dict, part: str = "train") -> dict:
        shard, cols, r = self.raw(shard_dict)
        m = r[part]
        arrays = self.constituents.arrays({k: v[m] for k, v in cols.items()}, shard.file)
        w = r["w"][m] * (self.factors[r["y"][m]] if self.factors is not None else 1.0)
        if self.bootstrap_seed is not None and part == "train":
            w = w * poisson_counts(len(r["y"]), self.bootstrap_seed, shard.shard_id)[m]
        return {**arrays, "y": r["y"][m], "w": w.astype(np.float32)}


def bootstrap_rows(setup: dict, seed: int) -> dict:
    """A bagging replica's rows: the training jets weighted by Poisson(1) counts of ``seed``."""
    return {"rows": dataclasses.replace(setup["rows"], job=setup["job"], bootstrap_seed=seed)}


def _shard_statistics(shard_dict: dict, rows: GNNRows, fraction: float, seed: int) -> dict:
    """One shard's share of the statistics pass (a Ray task): split counts, class weights and
    a random ``fraction`` of its training constituents for the standardisation fit."""
    shard, cols, r = rows.raw(shard_dict)
    tr, y = r["train"], r["y"]
    pick = tr & fraction_rows(len(tr), fraction, seed, shard.index)
    sample = rows.constituents.selected({k: v[pick] for k, v in cols.items()}, shard.file)
    return {"train": int(tr.sum()), "val": int(r["val"].sum()), "test": int(r["test"].sum()),
            "min_label": int(y.min()) if len(y) else 0, "max_label": int(y.max()) if len(y) else -1,
            "class_weight": np.bincount(y[tr], r["w"][tr].astype(np.float64)) if tr.any() else np.zeros(1),
            "sample": sample}


def _score_shard(shard_dict: dict, rows: GNNRows, bundle, batch: int) -> dict:
    """Scores of every event of a shard through the saved model artifact (a Ray task), with
    what the evaluation needs: split value, label and event-weight columns."""
    from ..data.loading import SPLIT

    shard, cols, _ = rows.raw(shard_dict)
    predict = bundle.load(1)
    inputs = rows.constituents.arrays(cols, shard.file)
    n = len(cols[SPLIT])
    parts = [predict({k: v[i:i + batch] for k, v in inputs.items()}) for i in range(0, n, batch)]
    S = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
    out = {SPLIT: cols[SPLIT], **{f"{SCORE}_{j}": S[:, j] for j in range(S.shape[1])}}
    out.update({c: cols[c] for c in (rows.job.label, rows.job.weights.event, *rows.job.bagging.variables) if c})
    return out


# -- one training, in whichever process ----------------------------------------------------------
def build_network(setup: dict):
    import torch

    from ..models.particlenet import ParticleNet

    job: TrainGNNConfig = setup["job"]
    torch.manual_seed(job.seed)
    n = job.network
    c = setup["rows"].constituents
    return ParticleNet(c.n_features, setup["n_outputs"], size=n.size, conv_params=n.conv_params,
                       fc_params=n.fc_params, global_dims=c.n_globals)


def train_process(setup: dict, checkpoints, *, rank: int = 0, world: int = 1, device=None, log=None):
    """Model, padded batches and objective from ``setup``, then :func:`hepray.training.fit`;
    the same in the driver (``direct``) and in each Ray Train worker."""
    import torch

    from ..gnn.training import loop_config
    from ..training import ShardBatches, common_steps, fit
    from ..training.objectives import Classification

    job: TrainGNNConfig = setup["job"]
    t = job.training
    rows: GNNRows = setup["rows"]
    model = build_network(setup)
    shards, groups = setup["shards"], setup["groups"]
    steps = common_steps(setup["rows_train"], world, t.batch_size, groups) if world > 1 else None
    common = dict(rank=rank, world=world, groups=groups, seed=job.seed, window=t.shuffle_window, cache=t.cache)
    train = ShardBatches(shards, functools.partial(rows, part="train"), t.batch_size, rows=setup["rows_train"],
                         steps=steps, **common)
    val = ShardBatches(shards, functools.partial(rows, part="val"), 4 * t.batch_size, rows=setup["rows_val"],
                       shuffle=False, **common)
    optimizer = torch.optim.AdamW(model.parameters(), t.learning_rate, weight_decay=t.weight_decay)
    objective = Classification(inputs=rows.constituents.arguments)
    result = fit(model, optimizer, objective, train, config=loop_config(t), val_batches=lambda epoch: val(0),
                 val_step=objective.validate, checkpoints=checkpoints, device=device, log=log)
    return model, result


# -- the workload --------------------------------------------------------------------------------
@register("train_gnn")
class TrainGNN(Workload):
    """ParticleNet jet tagging on constituents (direct or Ray Train DDP); model for infer_gnn."""

    Config = TrainGNNConfig

    def columns(self) -> list[str]:
        job: TrainGNNConfig = self.job
        return GNNRows(job, job.constituents_spec()).columns()

    def run(self, ctx) -> dict:

        from ..gnn.training import run_training
        from ..training import choose_mode
        from ..training.diagnostics import plot_history
        from ..training.standardize import map_shard_tasks

        job: TrainGNNConfig = self.job
        ctx.join()
        plan = ctx.plan(job.dataset, extra=self.columns())
        shards = list(plan)
        t0 = time.perf_counter()
        rows = GNNRows(job, job.constituents_spec())
        stats = [r for _, r in map_shard_tasks(_shard_statistics, shards, rows, job.preprocess.data_fraction, job.seed,
                                               mapper=ctx.map_tasks)]
        n_classes, task, factors = class_setup(job, stats)
        sample = concatenate((s, r.pop("sample")) for s, r in zip(shards, stats))
        constituents = rows.constituents.fit({k: sample[k] for k in rows.constituents.variables()}, job.seed)
        rows = GNNRows(job, constituents, factors)
        n_train = sum(r["train"] for r in stats)
        ctx.log(f"plan: {plan.files} files, {plan.shards} shards, {plan.events} events; statistics pass "
                f"{time.perf_counter() - t0:.1f}s: train {n_train}, validation {sum(r['val'] for r in stats)}, "
                f"test {sum(r['test'] for r in stats)}; standardisation from {num_rows(sample)} jets")
        mode, workers = choose_mode(job, n_train, ctx.cluster_cpus(), ctx.nodes())
        setup = {"job": job, "rows": rows, "shards": [s.to_dict() for s in shards], "groups": [s.sample for s in shards],
                 "rows_train": [r["train"] for r in stats], "rows_val": [r["val"] for r in stats],
                 "n_outputs": 1 if task == "binary" else n_classes, "tag": "particlenet", "task": task,
                 "process": train_process, "build": build_network,
                 "threads": max(1, int(job.engine.cpus_per_worker))}
        ctx.log(f"mode: {mode}" + (f" ({workers} Ray Train workers)" if mode == "ray_train" else ""))
        model, fit_info = run_training(ctx, setup, mode=mode, workers=workers,
                                       keep_checkpoints=job.training.keep_checkpoints,
                                       threads=job.threads or ctx.cluster_cpus(), use_gpu=job.use_gpu,
                                       cpus_per_worker=job.engine.cpus_per_worker)
        mdir = ctx.store.local("model")
        meta = self._save(mdir, model, constituents, task, fit_info)

        # evaluation through the saved artifact, shard by shard in Ray tasks
        from ..models.predict import ModelBundle

        bundle = ModelBundle.read(mdir)
        scored = list(map_shard_tasks(_score_shard, shards, rows, bundle, job.score_batch, mapper=ctx.map_tasks))
        cols = concatenate(scored)
        score_names = [k for k in cols if k.startswith(SCORE)]
        data = Data(cols, job.model_copy(update={"features": score_names}), keep=list(job.bagging.variables))
        classes = class_names(job, data)
        pdir = ctx.store.local("plots")
        result = score_report(data.X, data, classes, pdir, "ParticleNet", scores_path=ctx.store.local(TEST_SCORES),
                              temperature=fit_calibration(job, data.X, data))
        result["training"] = {"mode": mode, "workers": workers if mode == "ray_train" else 1, **fit_info}
        result.update(task=task, network=model.arch, parameters=int(sum(p.numel() for p in model.parameters())))
        plot_history(fit_info["history"], pdir / "training.png")
        meta["classes"] = classes
        meta["metrics"] = {k: result[k] for k in ("auc", "rejection_at_30", "rejection_at_50", "accuracy") if k in result}
        meta["dataset_fingerprint"] = data.fingerprint([s.shard_id for s in shards])
        meta["samples"] = data.samples
        if job.bagging.models and data.n_classes == 2:
            result["bagging"] = self._bagging(ctx, setup, shards, rows, data, classes, pdir)
        meta.update(calibration_meta(result["calibration"].get("temperature")))
        save_metadata(mdir, meta)
        ctx.write_json("metrics.json", result)
        return {"events_in": plan.events, "mode": mode, "model": str(ctx.store.path("model")),
                **{k: result[k] for k in ("auc", "rejection_at_30", "rejection_at_50", "accuracy") if k in result},
                "epochs": fit_info["epochs_done"], "events_per_s": fit_info["events_per_s"],
                "ece": result["calibration"]["ece"]}

    def _bagging(self, ctx, setup, shards, rows, data, classes, pdir) -> dict:
        """N ParticleNets on Poisson-bootstrapped training jets, in parallel (``ctx.map_tasks``);
        each saved as a member of ``ensemble/`` and scored through its folder like the nominal;
        efficiency bands at the nominal working point vs ``bagging.variables``."""
        from ..models.artifact import save_ensemble
        from ..models.predict import ModelBundle
        from ..training.standardize import map_shard_tasks

        job: TrainGNNConfig = self.job
        bag = job.bagging
        replicas, seconds = train_replicas(ctx, {**setup, "bootstrap": bootstrap_rows}, bag, job.seed)
        ctx.log(f"bagging: {bag.models} replicas in {seconds:.1f}s")
        edir = ctx.store.local("ensemble")
        names = [f"member_{i:03d}" for i in range(bag.models)]
        scores = []
        for name, (weights, fit) in zip(names, replicas):
            net = load_weights(build_network(setup), weights)
            meta = self._save(edir / name, net, rows.constituents, setup["task"], fit)
            save_metadata(edir / name, {**meta, "classes": classes, "samples": data.samples})
            bundle = ModelBundle.read(edir / name)
            cols = concatenate(map_shard_tasks(_score_shard, shards, rows, bundle, job.score_batch, mapper=ctx.map_tasks))
            scores.append(np.asarray(cols[f"{SCORE}_0"]))
        t = data.test
        P = np.stack(scores)[:, t]  # events in the same (plan) order as the nominal's
        variables = {v: np.asarray(data.cols[v], float)[t] for v in bag.variables}
        out = efficiency_bands(P, data.X[t, 0], data.y[t], variables, bag, pdir, "ParticleNet")
        out["seconds"] = round(seconds, 3)
        save_ensemble(edir, names, {"bagging": {"models": bag.models}})
        out["ensemble"] = str(ctx.store.path("ensemble"))
        return out

    def _save(self, mdir, model, constituents: Constituents, task: str, fit_info: dict) -> dict:
        import torch

        mdir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), mdir / "model.pt")
        meta = {"type": "torch", "file": "model.pt", "features": None, "classes": [], "task": task,
                "architecture": model.arch, "inputs": {"arguments": constituents.arguments, **constituents.to_meta()},
                # the derived columns the inputs are built from: infer_gnn reads them from here
                "expressions": dict(self.job.dataset.expressions),
                "training": {k: fit_info[k] for k in ("epochs_done", "best_epoch", "events_per_s")}}
        save_metadata(mdir, meta)
        return meta
