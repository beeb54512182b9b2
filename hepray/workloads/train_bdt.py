"""``kind: train_bdt``: xgboost ``hist`` on sharded ROOT data, evaluation, bagging uncertainties.

Three training paths, chosen by ``mode`` (``auto`` picks):

- ``direct``: shards read in parallel by Ray tasks into one process, one ``xgb.train`` using all
  its cores. Fastest whenever the data fit one machine (measured: Ray Train's XGBoostTrainer
  took ~65 s for a fit plain xgboost does in ~1.5 s on 2 cores).
- ``distributed``: Ray Train's XGBoostTrainer (xgboost's collective across Ray workers), fed by
  Ray Data reading the same shards: for clusters where the data exceed one node.
- ``external_memory``: an ``xgb.DataIter`` over shards, one shard in memory at a time, pages
  cached on disk: for data larger than a worker's memory on one node.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field

from ..extras import import_xgboost
from ..models.artifact import save_metadata
from ..report import plots
from ..training.bagging import BaggingSpec, bootstrap_indices, efficiency_bands, replica_seeds
from .base import Workload
from .registry import register
from .train_common import (
    TEST_SCORES,
    Data,
    TrainJob,
    calibration_meta,
    class_names,
    fit_calibration,
    load_training_data,
    score_report,
    shard_rows,
    subsample,
)

SAFE_PARAMS = {"max_depth", "eta", "learning_rate", "subsample", "colsample_bytree", "colsample_bylevel",
               "min_child_weight", "lambda", "alpha", "gamma", "max_bin", "max_leaves", "grow_policy",
               "scale_pos_weight", "max_delta_step", "tree_method"}


class TrainBDTConfig(TrainJob):
    rounds: int = Field(300, gt=0)
    early_stopping_rounds: int | None = Field(20, gt=0)
    params: dict[str, float | int | str] = {"max_depth": 6, "eta": 0.1}
    mode: Literal["auto", "direct", "distributed", "external_memory"] = "auto"
    max_in_memory_gb: float = Field(4.0, gt=0)  # above this, auto leaves the direct path
    num_workers: int | None = Field(None, gt=0)  # distributed mode; default: cluster CPUs
    model_format: Literal["json", "ubj"] = "json"
    bagging: BaggingSpec = BaggingSpec()
    # SHAP importances on a random sample of test events, sized for the ranking plot (0: skip).
    # approximate: xgboost's approx_contribs (Saabas), as cheap as a prediction at any depth;
    # exact: TreeSHAP, O(trees x leaves x depth^2) per event (~0.75 ms at depth 6, 200 trees:
    # 20000 events cost 2.6x a 1 M-event fit), for when the exact values matter.
    shap_events: int = Field(5000, ge=0)
    shap_method: Literal["approximate", "exact"] = "approximate"

    def xgb_params(self, n_classes: int, nthread: int) -> dict:
        bad = set(self.params) - SAFE_PARAMS
        if bad:
            from ..errors import ConfigError

            raise ConfigError(self.source, f"params.{sorted(bad)[0]}", f"not a supported xgboost parameter; use: {', '.join(sorted(SAFE_PARAMS))}")
        p = {"tree_method": "hist", "seed": self.seed, "nthread": nthread, **self.params}
        if n_classes > 2:
            p.update(objective="multi:softprob", num_class=n_classes, eval_metric="mlogloss")
        else:
            p.update(objective="binary:logistic", eval_metric="logloss")
        return p


def _fit(params, dtrain, dval, rounds, early):
    xgb = import_xgboost()

    # Only the validation set is evaluated each round (early stopping): evaluating the training set
    # too cost ~20% of the fit at 1 M events and nothing read it.
    evals = [(dval, "validation")] if dval is not None else []
    booster = xgb.train(params, dtrain, rounds, evals=evals, verbose_eval=False,
                        early_stopping_rounds=early if dval is not None else None)
    best = getattr(booster, "best_iteration", None)
    if best is not None and best + 1 < booster.num_boosted_rounds():
        booster = booster[: best + 1]  # keep only the trees early stopping chose
    return booster


def _bag_one(seed, X, y, w, params, rounds, X_test):
    """One bootstrap replica (a map_tasks task: the seed is its item): its test scores and the
    booster as JSON bytes (the ensemble member)."""
    xgb = import_xgboost()

    idx = bootstrap_indices(len(y), seed)
    b = xgb.train({**params, "nthread": 1, "seed": seed}, xgb.QuantileDMatrix(X[idx], y[idx], weight=w[idx]), rounds)
    return b.inplace_predict(X_test), bytes(b.save_raw("json"))


@register("train_bdt")
class TrainBDT(Workload):
    """Train an xgboost BDT on sharded ROOT data; evaluation, plots, bagging, model artifact."""

    Config = TrainBDTConfig

    def run(self, ctx) -> dict:
        plots.prefetch()  # the evaluation plots come last; their import overlaps reading and the fit
        xgb = import_xgboost()

        from ..engine.runtime import local_cpus

        job: TrainBDTConfig = self.job
        if ctx.on_cluster():
            ctx.join()  # join it now; a local instance starts only if the job needs one
        extra = list(job.bagging.variables)
        plan = ctx.plan(job.dataset)
        mode = self._choose_mode(ctx, plan.events, len(job.features))
        ctx.log(f"plan: {plan.files} files, {plan.shards} shards, {plan.events} events; mode: {mode}")
        t0 = time.perf_counter()
        load_s = None
        if mode == "external_memory":
            booster, data = self._train_external(ctx, plan)
        else:
            data, _ = load_training_data(ctx, job, extra, plan)
            load_s = time.perf_counter() - t0
            ctx.log(f"loaded {len(data.y)} events in {load_s:.1f}s "
                    f"(train {data.train.sum()}, validation {data.val.sum()}, test {data.test.sum()})")
            if mode == "distributed":
                booster = self._train_distributed(ctx, data, job.xgb_params(data.n_classes, 1))
            else:  # the fit runs in this process: its threads are this machine's CPUs
                params = job.xgb_params(data.n_classes, local_cpus())
                dtrain = xgb.QuantileDMatrix(data.X[data.train], data.y[data.train], weight=data.w[data.train])
                dval = (xgb.QuantileDMatrix(data.X[data.val], data.y[data.val], weight=data.w[data.val], ref=dtrain)
                        if data.val.any() else None)
                booster = _fit(params, dtrain, dval, job.rounds, job.early_stopping_rounds)
        fit_s = time.perf_counter() - t0
        ctx.log(f"trained {booster.num_boosted_rounds()} trees in {fit_s:.1f}s")
        classes = class_names(job, data)
        t1 = time.perf_counter()
        result = self._evaluate(ctx, booster, data, classes)
        # seconds_train: loading and fit; seconds_load: its loading part (None: external memory reads as it fits)
        result.update(mode=mode, seconds_train=round(fit_s, 3), seconds_evaluate=round(time.perf_counter() - t1, 3),
                      seconds_load=None if load_s is None else round(load_s, 3), trees=booster.num_boosted_rounds())
        if job.bagging.models and data.n_classes == 2:
            result["bagging"] = self._bagging(ctx, booster, data, classes, [s.shard_id for s in plan])
        self._save(ctx, booster, data, classes, result, [s.shard_id for s in plan])
        ctx.write_json("metrics.json", result)
        return {"events_in": plan.events, **{k: result[k] for k in ("auc", "rejection_at_30", "rejection_at_50") if k in result},
                "trees": result["trees"], "mode": mode, "ece": result["calibration"]["ece"], "model": str(ctx.run_dir / "model"),
                "seconds_train": result["seconds_train"], "seconds_load": result["seconds_load"],
                "seconds_evaluate": result["seconds_evaluate"]}

    # -- paths --------------------------------------------------------------------------------
    def _choose_mode(self, ctx, events: int, n_features: int) -> str:
        job = self.job
        mode = job.mode
        if mode == "auto":
            gb = events * (n_features + 4) * 4 / 1e9
            if gb <= job.max_in_memory_gb:
                return "direct"
            # a cluster was joined at the start of the run when there is one
            mode = "distributed" if ctx.nodes() > 1 else "external_memory"
        if mode == "distributed":
            ctx.join()
        return mode

    def _train_distributed(self, ctx, data: Data, params: dict):
        """Ray Train XGBoostTrainer (engine/train.py); each worker gets its part of the training rows."""
        from ..engine.train import fit_xgboost

        job: TrainBDTConfig = self.job
        n = job.num_workers or max(1, ctx.cluster_cpus() - 1)
        rows = [(data.X[m], data.y[m], data.w[m]) for m in (data.train, data.val)]
        return fit_xgboost(*rows, params, job.rounds, job.early_stopping_rounds, num_workers=n,
                           storage=ctx.store.path("ray_train"), address=ctx.address)

    def _train_external(self, ctx, plan):
        """One shard in memory at a time: xgboost builds quantiles and pages from the iterator."""
        xgb = import_xgboost()

        from ..data.loading import iter_columns

        job: TrainBDTConfig = self.job
        columns = list(job.features) + [c for c in (job.label, job.weights.event) if c]
        shards = list(plan)

        class ShardIter(xgb.DataIter):
            def __init__(self, part: str):
                self.part, self.i = part, 0
                super().__init__(cache_prefix=str(ctx.store.scratch() / f"xgb_cache_{part}"))

            def next(self, input_data):
                if self.i == len(shards):
                    return False
                _, cols = next(iter_columns([shards[self.i]], job.dataset, columns))
                self.i += 1
                d = shard_rows(cols, job, shards[self.i - 1])
                m = d["val"] if self.part == "val" else d["train"]
                input_data(data=d["X"][m], label=d["y"][m], weight=d["w"][m])
                return True

            def reset(self):
                self.i = 0

        if job.weights.balance_classes:
            ctx.log("external_memory: class balancing uses the sample weights only (no global pass)")
        n_classes = len({s.label for s in shards if s.label is not None}) if not job.label else None
        params = job.xgb_params(n_classes or 2, 2)
        dtrain = xgb.ExtMemQuantileDMatrix(ShardIter("train"))
        dval = xgb.ExtMemQuantileDMatrix(ShardIter("val"), ref=dtrain)
        booster = _fit(params, dtrain, dval, job.rounds, job.early_stopping_rounds)
        # evaluation holds the test rows only (set split.test small for very large data)
        from ..data.columns import concatenate
        from ..data.loading import SPLIT

        def test_rows():
            for s, cols in iter_columns(shards, job.dataset, columns):
                keep = cols[SPLIT] < job.split.test
                yield s, {k: v[keep] for k, v in cols.items()}

        unbalanced = job.model_copy(update={"weights": job.weights.model_copy(update={"balance_classes": False})})
        return booster, Data(concatenate(test_rows()), unbalanced)

    # -- evaluation -----------------------------------------------------------------------------
    def _evaluate(self, ctx, booster, data: Data, classes: list[str]) -> dict:
        job: TrainBDTConfig = self.job
        # Scores for the test rows and as many training rows (plenty for the train-vs-test KS):
        # scoring every training row cost as much as ~20 boosting rounds at 1 M events.
        train = subsample(data.train, max(int(data.test.sum()), 1000), job.seed)
        rows = data.test | train | (data.val if job.calibration != "none" else False)
        k = 1 if data.n_classes <= 2 else data.n_classes  # binary: one score column
        S = np.full((len(data.y), k), np.nan, dtype=np.float32)
        S[rows] = booster.inplace_predict(data.X[rows]).reshape(int(rows.sum()), -1)
        pdir = ctx.store.local("plots")
        t = data.test
        out = score_report(S, data, classes, pdir, "BDT", train=train, scores_path=ctx.store.local(TEST_SCORES),
                           temperature=fit_calibration(job, S, data))
        gain = booster.get_score(importance_type="total_gain")
        out["importance_gain"] = {f: float(gain.get(f"f{i}", 0.0)) for i, f in enumerate(job.features)}
        plots.bar_ranking(out["importance_gain"], pdir / "importance_gain.png", "feature importance", "total gain")
        if job.shap_events:
            xgb = import_xgboost()

            exact = job.shap_method == "exact"
            idx = np.flatnonzero(subsample(t, job.shap_events, job.seed + 1))  # random, not the first file's
            contrib = booster.predict(xgb.DMatrix(data.X[idx]), pred_contribs=True, approx_contribs=not exact)
            contrib = contrib.reshape(len(idx), -1, len(job.features) + 1)[:, :, :-1]  # drop bias
            shap = np.abs(contrib).mean(axis=(0, 1))
            out["importance_shap"] = {f: float(v) for f, v in zip(job.features, shap)}
            out["shap"] = {"events": len(idx), "method": job.shap_method}
            plots.bar_ranking(out["importance_shap"], pdir / "importance_shap.png",
                              f"SHAP ({'TreeSHAP' if exact else 'approximate'}, {len(idx)} test events)", "mean |SHAP|")
        return out

    def _bagging(self, ctx, booster, data: Data, classes: list[str], shard_ids: list[str]) -> dict:
        """N bootstrap BDTs (as many rounds as the nominal kept) in parallel Ray tasks; bands vs
        each ``bagging.variables``; the replicas as an ensemble model folder (``ensemble/``)."""
        from ..models.artifact import save_ensemble

        job: TrainBDTConfig = self.job
        bag = job.bagging
        params = job.xgb_params(2, 1)
        tr, t = data.train, data.test
        t0 = time.perf_counter()
        replicas = list(ctx.map_tasks(_bag_one, replica_seeds(job.seed, bag.models), data.X[tr], data.y[tr], data.w[tr],
                                      params, booster.num_boosted_rounds(), data.X[t], parallel=bag.parallel))
        seconds = time.perf_counter() - t0
        scores = np.stack([r[0] for r in replicas])  # (models, n_test)
        variables = {v: np.asarray(data.cols[v])[t] for v in bag.variables}
        out = efficiency_bands(scores, booster.inplace_predict(data.X[t]), data.y[t], variables, bag,
                               ctx.store.local("plots"), "BDT")
        out["seconds"] = round(seconds, 3)
        if bag.save:
            edir = ctx.store.local("ensemble")
            names = [f"member_{i:03d}" for i in range(bag.models)]
            for name, (_, raw) in zip(names, replicas):
                (edir / name).mkdir(parents=True, exist_ok=True)
                (edir / name / "model.json").write_bytes(raw)
                save_metadata(edir / name, {"type": "xgboost", "file": "model.json", "features": list(job.features),
                                            "classes": classes, "task": "binary", "params": params,
                                            "dataset_fingerprint": data.fingerprint(shard_ids), "samples": data.samples})
            save_ensemble(edir, names, {"bagging": {"models": bag.models, "seeds": replica_seeds(job.seed, bag.models)}})
            out["ensemble"] = str(ctx.store.path("ensemble"))
        return out

    def _save(self, ctx, booster, data: Data, classes, result, shard_ids):
        job: TrainBDTConfig = self.job
        mdir = ctx.store.local("model")
        mdir.mkdir(parents=True, exist_ok=True)
        fname = f"model.{job.model_format}"
        booster.save_model(mdir / fname)
        save_metadata(mdir, {
            "type": "xgboost", "file": fname, "features": list(job.features), "classes": classes,
            "task": "multiclass" if data.n_classes > 2 else "binary", "params": job.xgb_params(data.n_classes, 1),
            "trees": booster.num_boosted_rounds(), "metrics": {k: result[k] for k in ("auc", "rejection_at_30", "rejection_at_50") if k in result},
            "dataset_fingerprint": data.fingerprint(shard_ids), "samples": data.samples,
            **calibration_meta(result["calibration"].get("temperature")),
        })

