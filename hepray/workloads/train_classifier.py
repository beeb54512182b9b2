"""``kind: train_classifier``: a torch MLP over flat features, binary or multi-class, trained
in one process or on Ray Train (DDP), optionally adversarial (ADNN) or systematic-aware.

Steps:

1. one distributed pass (a Ray task per shard): rows per split, class weight sums (for class
   balancing) and the moments of the training rows' features (standardisation, stored with the
   model);
2. training with :func:`hepray.training.fit` on batches streamed from the shards
   (:class:`~hepray.training.ShardBatches`): ``mode: direct`` in this process, ``ray_train`` on
   Ray Train's TorchTrainer (one rank per worker, DDP), ``auto`` picks (see
   :func:`hepray.training.choose_mode`); a checkpoint per epoch, ``hepray run --resume``
   continues from the last one;
3. evaluation as for the BDT (ROC, rejection, train-vs-test KS, per class), Taylor-expansion
   feature attribution, TorchScript and ONNX exports checked against torch, and for ADNN or
   systematic-aware training the diagnostics that show what the extra term bought (adversary
   and fresh-probe accuracy, score KS between signal models; score shift under the variation),
   each next to a reference trained without the term.

The model folder is the usual artifact (``type: torch``), so ``kind: infer`` runs it.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..config import Spec
from ..data.loading import iter_columns
from ..data.shard import Shard
from ..errors import ConfigError
from ..models.artifact import save_metadata
from ..training.bagging import (
    BaggingSpec,
    edges_for,
    efficiency_bands,
    load_weights,
    poisson_counts,
    probability_bands,
    replica_seeds,
    train_replicas,
)
from .base import Workload
from .registry import register
from .train_common import (
    TEST_SCORES,
    TrainJob,
    calibration_meta,
    class_names,
    fit_calibration,
    class_setup,
    load_training_data,
    score_report,
    shard_rows,
    subsample,
)

ACTIVATION = Literal["relu", "tanh", "elu", "silu", "leakyrelu"]


class ModelSpec(Spec):
    hidden: list[int] = Field([64, 64, 32], min_length=1)
    activation: ACTIVATION = "elu"  # smooth: second-order Taylor attribution is 0 for ReLU
    dropout: float = Field(0.0, ge=0, lt=1)


class ArchitectureSpec(Spec):
    """``mlp``: the deterministic network of ``model:``; ``bnn``: the same layout with mean-field
    Gaussian weights (Bayes by Backprop, ``hepray.models.bnn``), predicting with ``samples``
    weight samples (mean and standard deviation)."""

    name: Literal["mlp", "bnn"] = "mlp"
    prior_sigma: float = Field(1.0, gt=0)  # bnn: the weights' N(0, prior_sigma^2) prior
    samples: int = Field(20, gt=0)  # bnn: predictive samples


class TrainingSpec(Spec):
    epochs: int = Field(30, gt=0)
    batch_size: int = Field(256, gt=0)
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "step", "plateau", "none"] = "cosine"
    step_epochs: int = Field(10, gt=0)  # step: period; plateau: patience of the lr decay
    gamma: float = Field(0.5, gt=0, le=1)
    patience: int | None = Field(8, gt=0)  # early stopping; null: never
    min_delta: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    checkpoint_every: int = Field(1, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    shuffle_window: int = Field(4, gt=0)  # shards whose rows are shuffled together
    cache: bool = True  # keep converted rows in memory after the first epoch


class AdversarialSpec(Spec):
    """ADNN: ``domains`` are sample names, one domain each (events of other samples have none)."""

    domains: list[str] = Field(min_length=2)
    alpha: float = Field(1.0, ge=0)
    mode: Literal["minimax", "confusion"] = "confusion"
    hidden: list[int] = [32]
    learning_rate: float | None = Field(None, gt=0)  # default: training.learning_rate
    adversary_steps: int = Field(1, gt=0)
    probe_epochs: int = Field(40, gt=0)  # fresh probe trained on the frozen penultimate layer
    reference: bool = True  # also train with alpha = 0 and report the same numbers


class SystematicSpec(Spec):
    """A variation of the inputs: each named feature scaled by 1 ± its relative shift."""

    name: str
    scale: dict[str, float] = Field(min_length=1)


class SystematicLossSpec(Spec):
    lam: float = Field(1.0, ge=0, alias="lambda")
    bins: int = Field(20, gt=1)
    bandwidth: float = Field(0.05, gt=0)
    kind: Literal["l2", "chi2"] = "l2"
    reference: bool = True  # also train with lambda = 0 and report the same shifts

    model_config = {**Spec.model_config, "populate_by_name": True}


class AttributionSpec(Spec):
    events: int = Field(1000, ge=0)  # test events (0: skip); second order costs a backward pass per feature
    second_order: bool = True
    top: int = Field(10, gt=0)


class ExportSpec(Spec):
    torchscript: bool = True
    # on request: torch's ONNX exporter took 2.6 s (a whole 3-epoch fit at 1 M events) where
    # TorchScript takes 0.1 s; `kind: infer` and C++ (libtorch) read the TorchScript file
    onnx: bool = False
    check_events: int = Field(512, gt=1)


class TrainClassifierConfig(TrainJob):
    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    mode: Literal["auto", "direct", "ray_train"] = "auto"
    num_workers: int | None = Field(None, gt=0)  # ray_train; default: cluster CPUs / engine.cpus_per_worker
    use_gpu: bool = False
    threads: int | None = Field(None, gt=0)  # torch threads per process; default: engine.cpus_per_worker
    # auto: Ray Train when events x epochs exceed this (measured break-even, docs/classifier.md)
    auto_ray_train_work: int = Field(20_000_000, gt=0)
    adversarial: AdversarialSpec | None = None
    systematics: list[SystematicSpec] = []
    systematic_loss: SystematicLossSpec | None = None
    attribution: AttributionSpec = AttributionSpec()
    export: ExportSpec = ExportSpec()
    architecture: ArchitectureSpec = ArchitectureSpec()
    bagging: BaggingSpec = BaggingSpec()

    @model_validator(mode="after")
    def _consistent(self):
        if self.bagging.models and (self.adversarial is not None or self.systematic_loss is not None):
            raise ConfigError("", "bagging", "bootstrap replicas of adversarial or systematic-aware training are "
                              "not supported; drop `bagging:` or the extra loss term")
        bad = sorted(set(self.bagging.variables) - set(self.features))
        if bad:
            raise ConfigError("", "bagging.variables", f"{bad[0]!r} is not one of `features:`")
        if self.architecture.name == "bnn" and self.model.dropout:
            raise ConfigError("", "model.dropout", "a bnn samples its weights; dropout is for the mlp")
        for i, syst in enumerate(self.systematics):
            bad = sorted(set(syst.scale) - set(self.features))
            if bad:
                raise ConfigError("", f"systematics[{i}].scale.{bad[0]}", "not one of `features:`")
        if self.systematic_loss is not None and not self.systematics:
            raise ConfigError("", "systematic_loss", "needs at least one entry in `systematics:`")
        if self.adversarial is not None:
            if self.systematic_loss is not None:
                raise ConfigError("", "adversarial", "use either `adversarial:` or `systematic_loss:`, not both")
            names = [s.name for s in self.dataset.samples]
            bad = [d for d in self.adversarial.domains if d not in names]
            if bad:
                raise ConfigError("", "adversarial.domains", f"{bad[0]!r} is not a sample name ({', '.join(names)})")
        return self


# -- rows of one shard ---------------------------------------------------------------------------
@dataclasses.dataclass
class ClassifierRows:
    """Shard -> arrays for the network: standardised ``x``, label ``y``, weight ``w`` (sample x
    event weight x class-balance factor), signal-model domain ``d`` (-1: none). Picklable: it
    runs in Ray tasks and Ray Train workers."""

    job: TrainClassifierConfig
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    factors: np.ndarray | None = None
    bootstrap_seed: int | None = None  # a bagging replica: training rows weighted by Poisson(1) counts

    def columns(self) -> list[str]:
        return list(self.job.features) + [c for c in (self.job.label, self.job.weights.event) if c]

    def raw(self, shard_dict: dict) -> dict:
        shard = Shard.from_dict(shard_dict)
        _, cols = next(iter_columns([shard], self.job.dataset, self.columns()))
        rows = shard_rows(cols, self.job, shard)
        domains = self.job.adversarial.domains if self.job.adversarial else []
        rows["d"] = np.full(len(rows["y"]), domains.index(shard.sample) if shard.sample in domains else -1, np.int64)
        return rows

    def __call__(self, shard_dict: dict, part: str = "train") -> dict:
        r = self.raw(shard_dict)
        m = r[part]
        x = (r["X"][m] - self.mean) / self.scale
        w = r["w"][m] * (self.factors[r["y"][m]] if self.factors is not None else 1.0)
        if self.bootstrap_seed is not None and part == "train":
            w = w * poisson_counts(len(r["y"]), self.bootstrap_seed, Shard.from_dict(shard_dict).shard_id)[m]
        return {"x": x.astype(np.float32), "y": r["y"][m], "w": w.astype(np.float32), "d": r["d"][m]}


def _shard_statistics(shard_dict: dict, rows: ClassifierRows) -> dict:
    """One shard's share of the statistics pass (runs as a Ray task)."""
    from ..training.standardize import Moments

    r = rows.raw(shard_dict)
    tr = r["train"]
    return {"train": int(tr.sum()), "val": int(r["val"].sum()), "test": int(r["test"].sum()),
            "max_label": int(r["y"].max()) if len(r["y"]) else -1, "min_label": int(r["y"].min()) if len(r["y"]) else 0,
            "class_weight": np.bincount(r["y"][tr], r["w"][tr].astype(np.float64)) if tr.any() else np.zeros(1),
            "moments": Moments.of(r["X"][tr])}


# -- one training, in whichever process ----------------------------------------------------------
def build_networks(job: TrainClassifierConfig, n_inputs: int, n_outputs: int):
    """The classifier (an MLP) and, for ADNN, ``ModuleDict(classifier=..., adversary=...)``."""
    import torch

    from ..models.losses import Adversary
    from ..models.mlp import MLP

    torch.manual_seed(job.seed)
    m = job.model
    if job.architecture.name == "bnn":
        from ..models.bnn import BayesianMLP

        a = job.architecture
        clf = BayesianMLP(n_inputs, m.hidden, n_outputs, activation=m.activation, prior_sigma=a.prior_sigma,
                          predict_samples=a.samples)
    else:
        clf = MLP(n_inputs, m.hidden, n_outputs, activation=m.activation, dropout=m.dropout)
    if job.adversarial is None:
        return clf
    adv = Adversary(m.hidden[-1], len(job.adversarial.domains), hidden=job.adversarial.hidden)
    return torch.nn.ModuleDict({"classifier": clf, "adversary": adv})


def train_process(setup: dict, checkpoints, *, rank: int = 0, world: int = 1, device=None, log=None):
    """Build model, batches and objective from ``setup`` and run :func:`hepray.training.fit`.

    The same function runs in the driver (``direct``) and in every Ray Train worker; returns
    (model, FitResult).
    """
    import torch

    from ..training import LoopConfig, ShardBatches, common_steps, fit
    from ..training.objectives import Adversarial, Classification, SystematicAware, Variational, scale_variations

    job: TrainClassifierConfig = setup["job"]
    t = job.training
    rows: ClassifierRows = setup["rows"]
    model = build_networks(job, len(job.features), setup["n_outputs"])
    shards, groups = setup["shards"], setup["groups"]
    steps = common_steps(setup["rows_train"], world, t.batch_size, groups) if world > 1 else None
    common = dict(rank=rank, world=world, groups=groups, seed=job.seed, window=t.shuffle_window, cache=t.cache)
    train = ShardBatches(shards, functools.partial(rows, part="train"), t.batch_size, rows=setup["rows_train"],
                         steps=steps, **common)
    val = ShardBatches(shards, functools.partial(rows, part="val"), 4 * t.batch_size, rows=setup["rows_val"],
                       shuffle=False, **common)
    sync = "ddp"
    if job.adversarial is not None:
        adv = job.adversarial
        opt_c = torch.optim.AdamW(model["classifier"].parameters(), t.learning_rate, weight_decay=t.weight_decay)
        opt_a = torch.optim.Adam(model["adversary"].parameters(), adv.learning_rate or t.learning_rate)
        optimizers = {"classifier": opt_c, "adversary": opt_a}
        objective = Adversarial(opt_c, opt_a, setup["alpha"], len(adv.domains), adv.mode, adv.adversary_steps)
        sync = "optimizer"
    else:
        optimizers = torch.optim.AdamW(model.parameters(), t.learning_rate, weight_decay=t.weight_decay)
        if job.systematic_loss is not None:
            sl = job.systematic_loss
            variations = []
            for syst in job.systematics:
                deltas = [syst.scale.get(f, 0.0) for f in job.features]
                variations += scale_variations(deltas, rows.mean, rows.scale)
            objective = SystematicAware(variations, setup["lam"], sl.bins, sl.bandwidth, sl.kind)
        elif job.architecture.name == "bnn":  # KL per training event: the ELBO over the training set's size
            objective = Variational(sum(setup["rows_train"]))
        else:
            objective = Classification()
    config = LoopConfig(epochs=t.epochs, schedule=t.schedule, step_epochs=t.step_epochs, gamma=t.gamma,
                        patience=t.patience, min_delta=t.min_delta, grad_clip=t.grad_clip,
                        checkpoint_every=t.checkpoint_every)
    result = fit(model, optimizers, objective, train, config=config, val_batches=lambda epoch: val(0),
                 val_step=objective.validate, checkpoints=checkpoints, sync=sync, device=device, log=log)
    return model, result


def bootstrap_rows(setup: dict, seed: int) -> dict:
    """A bagging replica's rows: the training rows weighted by Poisson(1) counts of ``seed``."""
    return {"rows": dataclasses.replace(setup["rows"], job=setup["job"], bootstrap_seed=seed)}


def _ray_worker(setup: dict):
    """Entry point of each Ray Train worker."""
    import torch

    from ..training import RayTrainCheckpoints, worker_context

    torch.set_num_threads(setup["threads"])
    rank, world, device = worker_context()
    train_process(setup, RayTrainCheckpoints(), rank=rank, world=world, device=device,
                  log=lambda msg: print(f"[hepray train_classifier rank {rank}] {msg}", flush=True))


# -- the workload --------------------------------------------------------------------------------
@register("train_classifier")
class TrainClassifier(Workload):
    """Torch MLP classifier on sharded ROOT data (direct or Ray Train DDP), ADNN, systematic-aware."""

    Config = TrainClassifierConfig

    def columns(self) -> list[str]:
        return ClassifierRows(self.job).columns()

    def run(self, ctx) -> dict:

        from ..training import choose_mode
        from ..training.standardize import map_shard_tasks, merge_all

        job: TrainClassifierConfig = self.job
        from ..report import plots

        plots.prefetch()  # the evaluation plots come last; their import overlaps the statistics pass and the fit
        ctx.join()
        plan = ctx.plan(job.dataset, extra=self.columns())
        shards = list(plan)
        t0 = time.perf_counter()
        stats = [r for _, r in map_shard_tasks(_shard_statistics, shards, ClassifierRows(job), mapper=ctx.map_tasks)]
        moments = merge_all(r["moments"] for r in stats)
        pre = moments.to_preprocessing()
        n_classes, task, factors = class_setup(job, stats)
        n_train = sum(r["train"] for r in stats)
        rows = ClassifierRows(job, np.asarray(pre["mean"]), np.asarray(pre["scale"]), factors)
        ctx.log(f"plan: {plan.files} files, {plan.shards} shards, {plan.events} events; statistics pass "
                f"{time.perf_counter() - t0:.1f}s: train {n_train}, validation {sum(r['val'] for r in stats)}, "
                f"test {sum(r['test'] for r in stats)}")
        mode, workers = choose_mode(job, n_train, ctx.cluster_cpus(), ctx.nodes())
        setup = {"job": job, "rows": rows, "shards": [_absolute(s) for s in shards], "groups": [s.sample for s in shards],
                 "rows_train": [r["train"] for r in stats], "rows_val": [r["val"] for r in stats],
                 "n_outputs": 1 if task == "binary" else n_classes,
                 "alpha": job.adversarial.alpha if job.adversarial else 0.0,
                 "lam": job.systematic_loss.lam if job.systematic_loss else 0.0,
                 # one Ray Train worker's share; direct mode too unless `threads:` (small MLPs lose
                 # with more intra-op threads: measured 1.5k vs 150k events/s, 2 vs 1, loaded 2 cores)
                 "threads": job.threads or max(1, int(job.engine.cpus_per_worker))}
        ctx.log(f"mode: {mode}" + (f" ({workers} Ray Train workers)" if mode == "ray_train" else ""))
        seconds = {"statistics": round(time.perf_counter() - t0, 2)}
        lap = time.perf_counter()

        def timed(name: str):
            nonlocal lap
            now = time.perf_counter()
            seconds[name] = round(now - lap, 2)
            lap = now

        model, fit_info = self._train(ctx, setup, mode, workers, "main")
        timed("train")

        from ..training import diagnostics

        data, shard_ids = load_training_data(ctx, job, plan=plan)
        timed("load_evaluation_events")
        classes = class_names(job, data)
        clf = model["classifier"] if job.adversarial else model
        evaluator = diagnostics.Evaluator(clf, rows.mean, rows.scale, task)
        # Scores for the test rows and as many training rows (plenty for the train-vs-test KS), as
        # for the BDT; ADNN's fresh probes train on the scores of all rows.
        train = data.train if job.adversarial else subsample(data.train, max(int(data.test.sum()), 1000), job.seed)
        scored = data.test | train | (data.val if job.adversarial or job.calibration != "none" else False)
        S = np.full((len(data.y), setup["n_outputs"]), np.nan, dtype=np.float32)
        S[scored] = evaluator.scores(data.X[scored])
        pdir = ctx.store.local("plots")
        result = score_report(S, data, classes, pdir, "DNN", train=train, scores_path=ctx.store.local(TEST_SCORES),
                              temperature=fit_calibration(job, S, data))
        result.update(task=task, training={"mode": mode, "workers": workers if mode == "ray_train" else 1, **fit_info})
        diagnostics.plot_history(fit_info["history"], pdir / "training.png")
        timed("evaluate")
        stochastic = job.architecture.name == "bnn"
        if stochastic and (job.attribution.events or job.export.torchscript or job.export.onnx):
            ctx.log("bnn: no Taylor attribution or TorchScript/ONNX export (every forward pass samples its weights; "
                    "kind: infer predicts from the model folder with its samples)")
        if job.attribution.events and not stochastic:
            result["attribution"] = diagnostics.attribution(evaluator, data.X[data.test][: job.attribution.events],
                                                            job.features, classes, job.attribution, pdir)
            timed("attribution")
        if job.adversarial:
            result["adversarial"] = {"auc": result["auc"], **self._adversarial_report(
                ctx, setup, mode, workers, evaluator, data, S, fit_info)}
            timed("adversarial")
        if job.systematics:
            result["systematics"] = {"auc": result["auc"], **self._systematic_report(
                ctx, setup, mode, workers, evaluator, data, S, pdir)}
            timed("systematics")
        if job.bagging.models:
            result["bagging"] = self._bagging(ctx, setup, evaluator, data, classes, result, pre, task,
                                              data.fingerprint(shard_ids))
            timed("bagging")
        mdir = ctx.store.local("model")
        if (job.export.torchscript or job.export.onnx) and not stochastic:
            result["export"] = diagnostics.export(evaluator, data.X[data.test][: job.export.check_events], mdir,
                                                  job.export.torchscript, job.export.onnx)
            timed("export")
        result["seconds"] = seconds
        self._save(mdir, clf, pre, task, classes, result, data.fingerprint(shard_ids), data.samples)
        ctx.write_json("metrics.json", result)
        ctx.log("seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
        summary = {"events_in": plan.events, "mode": mode, "model": str(ctx.store.path("model")),
                   **{k: result[k] for k in ("auc", "rejection_at_30", "rejection_at_50", "accuracy") if k in result},
                   "epochs": fit_info["epochs_done"], "events_per_s": fit_info["events_per_s"],
                   "ece": result["calibration"]["ece"]}
        if job.bagging.models:
            summary["ensemble"] = result["bagging"].get("ensemble")
            summary["ensemble_auc"] = result["bagging"]["auc"]
        if job.adversarial:
            adv = result["adversarial"]
            summary.update(probe_accuracy=adv["probe_accuracy"], adversary_accuracy=adv["adversary_accuracy"])
        return summary

    # -- training in either mode ------------------------------------------------------------------
    def _train(self, ctx, setup: dict, mode: str, workers: int, tag: str):
        """Train once; returns (model with the best weights, FitResult as a dict)."""
        import torch

        from ..training import (
            DirectoryCheckpoints,
            FitResult,
            read_loop_state,
            read_weights,
            run_torch_trainer,
        )

        job: TrainClassifierConfig = self.job
        if mode == "direct":
            store = DirectoryCheckpoints(ctx.store.local(f"checkpoints/{tag}"), keep=job.training.keep_checkpoints)
            if not ctx.resume:
                store.clear()
            threads = torch.get_num_threads()
            torch.set_num_threads(setup["threads"])
            try:
                model, res = train_process(setup, store, log=lambda m: ctx.log(f"[{tag}] {m}"))
            finally:
                torch.set_num_threads(threads)
            return model, res.to_dict()
        result = run_torch_trainer(_ray_worker, setup, storage=ctx.store.path("ray_train"), name=tag,
                                   num_workers=workers, use_gpu=job.use_gpu, cpus_per_worker=job.engine.cpus_per_worker,
                                   resume=ctx.resume, keep_checkpoints=job.training.keep_checkpoints,
                                   address=ctx.address)
        with result.checkpoint.as_directory() as folder:
            weights, state = read_weights(folder, "best"), read_loop_state(folder)
        model = build_networks(job, len(job.features), setup["n_outputs"])
        model.load_state_dict(weights)
        return model, FitResult.from_state(state).to_dict()

    def _bagging(self, ctx, setup, evaluator, data, classes, result, pre, task, fingerprint) -> dict:
        """N bootstrap replicas in parallel (``ctx.map_tasks``, one CPU each); the ensemble's
        evaluation (``plots/ensemble/``), efficiency bands vs ``bagging.variables``, probability
        bands with their coverage, and the replicas as an ensemble model folder (``ensemble/``)."""
        from ..models.artifact import save_ensemble
        from ..report import metrics

        job: TrainClassifierConfig = self.job
        bag = job.bagging
        seeds = replica_seeds(job.seed, bag.models)
        replicas, seconds = train_replicas(ctx, {**setup, "process": train_process, "bootstrap": bootstrap_rows},
                                           bag, job.seed)
        ctx.log(f"bagging: {bag.models} replicas in {seconds:.1f}s")
        rows = data.test | data.val
        members, temps = [], []
        for weights, _ in replicas:
            net = load_weights(build_networks(job, len(job.features), setup["n_outputs"]), weights)
            S = np.full((len(data.y), setup["n_outputs"]), np.nan, dtype=np.float32)
            S[rows] = evaluator.with_model(net).scores(data.X[rows])
            T = fit_calibration(job, S, data)
            temps.append(T)
            members.append((net, S if T is None else metrics.apply_temperature(S, T)))
        P = np.stack([S for _, S in members])  # [models, n, K], calibrated as each member predicts
        pdir = ctx.store.local("plots")
        ens = score_report(P.mean(0), data, classes, pdir / "ensemble", f"DNN ensemble ({bag.models})",
                           train=np.zeros_like(data.train))
        out = {"models": bag.models, "seconds": round(seconds, 3), "auc": ens["auc"], "calibration": {
            k: ens["calibration"][k] for k in ("ece", "brier")},
            "member_auc": [metrics.auc(data.y[data.test], S[data.test, 0], data.raw_weight[data.test])
                           for _, S in members] if P.shape[2] == 1 else None}
        if P.shape[2] == 1:
            t = data.test
            variables = {v: data.X[t, job.features.index(v)] for v in bag.variables}
            out.update(efficiency_bands(P[:, t, 0], result_scores(evaluator, data.X[t]), data.y[t], variables, bag,
                                        pdir, "DNN"))
            out["probability"] = {}
            for v, values in variables.items():
                edges = edges_for(values, bag.bins)
                which = np.clip(np.digitize(values, edges) - 1, 0, len(edges) - 2)
                out["probability"][v] = {"edges": edges.tolist(), **probability_bands(
                    P[:, t, 0], which, len(edges) - 1, data.w[t], y=data.y[t])}
        if bag.save:
            edir = ctx.store.local("ensemble")
            names = [f"member_{i:03d}" for i in range(bag.models)]
            for name, (net, _), T, seed in zip(names, members, temps, seeds):
                self._save(edir / name, net, pre, task, classes, {"calibration": {"temperature": T}}, fingerprint,
                           data.samples)
            save_ensemble(edir, names, {"bagging": {"models": bag.models, "seeds": seeds}})
            out["ensemble"] = str(ctx.store.path("ensemble"))
        return out

    def _with(self, setup: dict, **update) -> dict:
        return {**setup, **update}

    def _adversarial_report(self, ctx, setup, mode, workers, evaluator, data, S, fit_info) -> dict:
        from ..training import diagnostics

        job: TrainClassifierConfig = self.job
        adv = job.adversarial
        pdir = ctx.store.local("plots")
        out = {"alpha": adv.alpha, "mode": adv.mode, "domains": list(adv.domains),
               **diagnostics.adnn_metrics(evaluator, data, S, adv.domains, job.seed, adv.probe_epochs),
               "adversary_accuracy": _at_best(fit_info, "train_adversary_accuracy")}
        diagnostics.plot_domains(S, data, adv.domains, pdir / "scores_per_domain.png", f"ADNN alpha={adv.alpha}")
        if adv.reference and adv.alpha > 0:
            ctx.log("reference training with alpha = 0")
            ref_model, ref_fit = self._train(ctx, self._with(setup, alpha=0.0), mode, workers, "reference")
            ref_eval = evaluator.with_model(ref_model["classifier"])
            S0 = ref_eval.scores(data.X)
            ref = diagnostics.adnn_metrics(ref_eval, data, S0, adv.domains, job.seed, adv.probe_epochs)
            ref.update(alpha=0.0, adversary_accuracy=_at_best(ref_fit, "train_adversary_accuracy"),
                       auc=score_report(S0, data, self._classes(data), pdir / "reference", "DNN alpha=0").get("auc"))
            diagnostics.plot_domains(S0, data, adv.domains, pdir / "scores_per_domain_alpha0.png", "alpha = 0")
            out["reference"] = ref
        return out

    def _systematic_report(self, ctx, setup, mode, workers, evaluator, data, S, pdir) -> dict:
        from ..training import diagnostics

        job: TrainClassifierConfig = self.job
        out = {"lambda": job.systematic_loss.lam if job.systematic_loss else 0.0,
               "shifts": diagnostics.systematic_shifts(evaluator, data, S, job.systematics, job.features, pdir, "")}
        out["mean_ks"] = diagnostics.mean_of(out["shifts"], "ks")
        sl = job.systematic_loss
        if sl is not None and sl.reference and sl.lam > 0:
            ctx.log("reference training with lambda = 0")
            ref_model, _ = self._train(ctx, self._with(setup, lam=0.0), mode, workers, "reference")
            ref_eval = evaluator.with_model(ref_model)
            S0 = ref_eval.scores(data.X)
            shifts = diagnostics.systematic_shifts(ref_eval, data, S0, job.systematics, job.features, pdir, "_lambda0")
            out["reference"] = {"lambda": 0.0, "shifts": shifts, "mean_ks": diagnostics.mean_of(shifts, "ks"),
                                "auc": score_report(S0, data, self._classes(data), pdir / "reference", "DNN lambda=0").get("auc")}
        return out

    def _classes(self, data) -> list[str]:
        return class_names(self.job, data)

    def _save(self, mdir, clf, pre, task, classes, result, fingerprint, samples):
        import torch

        job: TrainClassifierConfig = self.job
        mdir.mkdir(parents=True, exist_ok=True)
        torch.save(clf.state_dict(), mdir / "model.pt")
        save_metadata(mdir, {
            "type": "torch", "file": "model.pt", "features": list(job.features), "classes": classes, "task": task,
            "architecture": clf.arch, "preprocessing": pre,
            "metrics": {k: result[k] for k in ("auc", "rejection_at_30", "rejection_at_50", "accuracy") if k in result},
            "exports": {k: v.get("file") for k, v in result.get("export", {}).items()},
            "dataset_fingerprint": fingerprint, "samples": samples,
            **calibration_meta(result.get("calibration", {}).get("temperature")),
        })


def result_scores(evaluator, X: np.ndarray) -> np.ndarray:
    """The nominal model's signal probability (binary) of raw features ``X``."""
    return evaluator.scores(X)[:, 0]


def _absolute(shard: Shard) -> dict:
    """The shard as a dict with a local file path made absolute: Ray Train workers run in their
    own working directory, where a path relative to the driver's would not be found."""
    d = shard.to_dict()
    if d.get("file") and "://" not in d["file"]:
        d["file"] = str(Path(d["file"]).resolve())
    return d


def _at_best(fit_info: dict, key: str):
    """``key`` of the epoch whose weights were kept (the best one; else the last)."""
    history = fit_info.get("history", [])
    best = fit_info.get("best_epoch")
    entries = [h for h in history if h["epoch"] == best] or history[-1:]
    return entries[0].get(key) if entries else None
