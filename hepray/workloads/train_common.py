"""What every training workload shares: label/weight/split config, loading, and the split."""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..config import DatasetSpec, JobConfig, Spec
from ..data.columns import LABEL, SAMPLE, WEIGHT
from ..data.loading import SPLIT, load_columns
from ..errors import ConfigError
from ..io.parts import as_path, staged_file


class SplitSpec(Spec):
    """Fractions of events, chosen by a hash of the event identity (never by file order)."""

    validation: float = Field(0.2, ge=0, lt=1)
    test: float = Field(0.2, ge=0, lt=1)

    @model_validator(mode="after")
    def _room_for_training(self):
        if self.validation + self.test >= 0.95:
            raise ValueError("validation + test must leave at least 5% of events for training")
        return self


class WeightSpec(Spec):
    event: str | None = None  # a branch or expression name with per-event weights
    balance_classes: bool = True  # reweight so every class has the same total weight in training


class TrainJob(JobConfig):
    dataset: DatasetSpec
    features: list[str] = Field(min_length=1)
    label: str | None = None  # a branch holding integer classes; default: the samples' labels
    classes: list[str] | None = None  # class names, index = label
    weights: WeightSpec = WeightSpec()
    split: SplitSpec = SplitSpec()
    task: Literal["auto", "binary", "multiclass"] = "auto"
    # temperature: one temperature T fitted on the validation split (probabilities sigma(z / T)),
    # stored with the model (``calibration`` in its metadata) and applied by every predictor
    calibration: Literal["none", "temperature"] = "none"


def split_masks(u: np.ndarray, split: SplitSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) masks from the per-event split value ``hepray_u`` in [0, 1):
    test is ``u < test``, validation the next ``validation`` fraction, training the rest."""
    test = u < split.test
    val = (u >= split.test) & (u < split.test + split.validation)
    return ~(test | val), val, test


def balance_factors(class_weight_sums: np.ndarray, n_train: int) -> np.ndarray:
    """Per-class weight factors that give every class the same total training weight
    (``n_train / n_classes`` each); a class without training weight keeps factor 1.
    Shared by in-memory training (:class:`Data`) and streaming training (one pass of sums)."""
    sums = np.asarray(class_weight_sums, dtype=np.float64)
    safe = np.where(sums > 0, sums, 1.0)
    return np.where(sums > 0, n_train / (len(sums) * safe), 1.0)


def shard_rows(cols: dict, job: TrainJob, shard) -> dict:
    """One shard's training rows without loading the rest: features ``X`` (float32), labels
    ``y``, raw weights ``w`` (sample weight times the event weight) and the split masks.
    For training paths that stream shards (external memory, torch batches)."""
    from ..data.reading import feature_matrix

    u = cols[SPLIT]
    X = feature_matrix(cols, list(job.features), shard.file or "")
    y = np.asarray(cols[job.label]).astype(np.int64) if job.label else np.full(len(u), shard.label, dtype=np.int64)
    w = np.full(len(u), shard.weight, dtype=np.float32)
    if job.weights.event:
        w = w * np.asarray(cols[job.weights.event], dtype=np.float32)
    train, val, test = split_masks(u, job.split)
    return {"X": X, "y": y, "w": w, "train": train, "val": val, "test": test}


class Data:
    """Training data in memory: features X, labels y, weights w, split masks, extra columns."""

    def __init__(self, cols: dict, job: TrainJob, keep: list[str] | None = None):
        """``keep``: when given, the feature columns not named in it are dropped from ``cols``
        once copied into ``X`` (at 1 M events x 16 features, 64 MB less at the peak)."""
        self.cols = cols
        self.samples: list[str] = cols.pop("__samples__")
        self.X = np.column_stack([np.asarray(cols[f], dtype=np.float32) for f in job.features])
        for f in job.features if keep is not None else ():
            if f not in keep and f not in (job.label, job.weights.event):
                cols.pop(f, None)
        y = np.asarray(cols[job.label] if job.label else cols[LABEL])
        if (y < 0).any():
            raise ConfigError(job.source, "dataset.samples", "every sample needs a `label:` (or set `label:` to a branch)")
        self.y = y.astype(np.int64)
        w = np.asarray(cols[WEIGHT], dtype=np.float64)
        if job.weights.event:
            w = w * np.asarray(cols[job.weights.event], dtype=np.float64)
        self.raw_weight = w
        self.train, self.val, self.test = split_masks(cols[SPLIT], job.split)
        self.n_classes = int(self.y.max()) + 1
        self.w = self.raw_weight.copy()
        if job.weights.balance_classes:  # equal total weight per class, from the training part
            sums = np.bincount(self.y[self.train], self.raw_weight[self.train], minlength=self.n_classes)
            self.w *= balance_factors(sums, int(self.train.sum()))[self.y]

    @property
    def sample(self) -> np.ndarray:
        return np.asarray(self.cols[SAMPLE])

    def fingerprint(self, shard_ids: list[str]) -> str:
        return hashlib.sha1("|".join(sorted(shard_ids)).encode()).hexdigest()


def load_training_data(ctx, job: TrainJob, extra: list[str] = (), plan=None) -> tuple[Data, list[str]]:
    if plan is None:
        plan = ctx.plan(job.dataset)
        ctx.log(f"plan: {plan.files} files, {plan.shards} shards, {plan.events} events")
    columns = list(job.features) + [c for c in (job.label, job.weights.event) if c] + list(extra)
    cols = load_columns(plan, job.dataset, columns, mapper=ctx.map_tasks)
    shard_ids = [s.shard_id for s in plan]
    return Data(cols, job, keep=list(extra)), shard_ids


def class_setup(job: TrainJob, stats: list[dict]) -> tuple[int, str, np.ndarray]:
    """(number of classes, task, class-balance factors) from a streaming statistics pass: one
    dict per shard with ``min_label``, ``max_label``, ``class_weight`` and ``train`` counts."""
    n_classes = max(s["max_label"] for s in stats) + 1
    if min(s["min_label"] for s in stats) < 0 or n_classes < 2:
        raise ConfigError(job.source, "dataset.samples", "every sample needs a `label:` >= 0, and at least two classes")
    task = job.task if job.task != "auto" else ("binary" if n_classes == 2 else "multiclass")
    if task == "binary" and n_classes > 2:
        raise ConfigError(job.source, "task", f"binary, but the labels have {n_classes} classes")
    sums = np.zeros(n_classes)
    for s in stats:
        sums[: len(s["class_weight"])] += s["class_weight"]
    n_train = sum(s["train"] for s in stats)
    factors = balance_factors(sums, n_train) if job.weights.balance_classes else np.ones(n_classes)
    return n_classes, task, factors


def subsample(mask: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` of the rows in ``mask``, picked at random with ``seed`` (a mask again)."""
    idx = np.flatnonzero(mask)
    if len(idx) <= n:
        return mask
    out = np.zeros_like(mask)
    out[np.random.default_rng(seed).choice(idx, n, replace=False)] = True
    return out


def class_names(job: TrainJob, data: Data) -> list[str]:
    if job.classes:
        return list(job.classes)
    if job.dataset.samples and all(s.label is not None for s in job.dataset.samples):
        names: dict[int, list[str]] = {}
        for s in job.dataset.samples:
            names.setdefault(s.label, []).append(s.name)
        return ["+".join(names.get(c, [str(c)])) for c in range(data.n_classes)]
    return [str(c) for c in range(data.n_classes)]


TEST_SCORES = "test_scores.parquet"  # in the run directory of every training workload


def write_test_scores(path, S: np.ndarray, data: Data, classes: list[str]) -> None:
    """The test events' scores as Parquet with the event-identity split value (``hepray_u``),
    in dataset order: models trained on the same dataset and split share these rows, so their
    scores line up for paired comparisons (the GNN benchmark bootstraps AUC differences this
    way). Objects of one event (two jets) share ``hepray_u`` and keep their file order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = data.test
    names = ["score"] if S.shape[1] == 1 else [f"score_{c}" for c in classes]
    cols = {SPLIT: np.asarray(data.cols[SPLIT])[t], "sample": data.sample[t].astype(np.int16),
            "label": data.y[t], "weight": data.raw_weight[t], **{n: S[t, j] for j, n in enumerate(names)}}
    table = pa.table(cols).replace_schema_metadata({"samples": ",".join(data.samples), "classes": ",".join(classes)})
    with staged_file(as_path(path)) as local:  # whole or not at all, local disk or object store
        pq.write_table(table, local)


def fit_calibration(job: TrainJob, S: np.ndarray, data: Data) -> float | None:
    """The temperature of ``calibration: temperature``, fitted on the validation rows of the
    uncalibrated probabilities ``S`` under the training weights (class-balanced when
    ``weights.balance_classes``: the population the scores are probabilities for); None when
    calibration is off."""
    from ..report.metrics import fit_temperature

    if job.calibration != "temperature":
        return None
    v = data.val & np.isfinite(S).all(axis=1)
    if not v.any():
        raise ConfigError(job.source, "calibration", "temperature scaling is fitted on the validation split; "
                          "set split.validation > 0")
    return fit_temperature(data.y[v], S[v], data.w[v])


def calibration_meta(temperature: float | None) -> dict:
    """The model metadata's ``calibration`` entry (empty when there is none)."""
    return {} if temperature is None else {"calibration": {"method": "temperature", "temperature": float(temperature)}}


def calibration_report(S: np.ndarray, data: Data, plot_dir, model_name: str, temperature: float | None = None,
                       rows: np.ndarray | None = None) -> dict:
    """ECE, Brier score and reliability diagram of uncalibrated scores ``S`` on the test rows
    (``rows``: a subset of them), weighted as in training (:func:`fit_calibration`); with a
    ``temperature``, the same after scaling (``ece``/``brier`` are then the calibrated ones,
    ``uncalibrated`` the numbers before)."""
    from ..report import metrics, plots

    t = data.test if rows is None else rows
    t = t & np.isfinite(S).all(axis=1)
    y, w = data.y[t], data.w[t]
    before = metrics.calibration_summary(y, S[t], w)
    curves = {"uncalibrated": {**before["reliability"], "ece": before["ece"]}}
    out = before
    if temperature is not None:
        after = metrics.calibration_summary(y, metrics.apply_temperature(S[t], temperature), w)
        curves[f"temperature T={temperature:.3f}"] = {**after["reliability"], "ece": after["ece"]}
        out = {**after, "method": "temperature", "temperature": float(temperature),
               "uncalibrated": {"ece": before["ece"], "brier": before["brier"]}}
    plots.reliability_diagram(curves, plot_dir / "reliability.png", f"{model_name} reliability (test events)")
    return out


def score_report(S: np.ndarray, data: Data, classes: list[str], plot_dir, model_name: str,
                 train: np.ndarray | None = None, scores_path=None, temperature: float | None = None) -> dict:
    """Test-set metrics and plots of any classifier's scores ``S`` [n, K] (K = 1: binary).

    Binary: AUC, rejection at 30/50% signal efficiency, train AUC and train-vs-test KS per class
    (overtraining), ROC, score and per-sample score plots. Multi-class: one-vs-rest AUC, ROC
    and score plots per class, accuracy of the highest score, train-vs-test KS per class.
    ``train``: the training rows the overtraining checks use (default all; ``S`` need only be
    filled on these and the test rows). ``scores_path``: also write the test scores there
    (:func:`write_test_scores`). Every report has ``calibration`` (ECE, Brier score,
    reliability diagram: :func:`calibration_report`); ``temperature``: the scores are reported
    (and written) after temperature scaling, as the stored model predicts them.
    """
    from ..report import metrics, plots

    calibration = calibration_report(S, data, plot_dir, model_name, temperature)
    if temperature is not None:
        S = metrics.apply_temperature(S, temperature)

    out: dict = {"n_train": int(data.train.sum()), "n_validation": int(data.val.sum()), "n_test": int(data.test.sum()),
                 "classes": classes}
    t, y, w = data.test, data.y, data.raw_weight
    tr = data.train if train is None else train
    if scores_path is not None:
        write_test_scores(scores_path, S, data, classes)
    if S.shape[1] == 1:
        s = S[:, 0]
        out.update(metrics.binary_summary(y[t], s[t], w[t]))
        if tr.any():
            out["auc_train"] = metrics.auc(y[tr], s[tr], w[tr])
            out["ks_overtraining"] = {classes[c]: metrics.ks(s[tr & (y == c)], s[t & (y == c)]) for c in (0, 1)}
        tpr, fpr, _ = metrics.roc(y[t], s[t], w[t])
        plots.roc_curves({f"{model_name} (AUC {out['auc']:.4f})": (tpr, fpr)}, plot_dir / "roc.png", f"{model_name}, test events")
        plots.score_distributions({f"{classes[c]} test": s[t & (y == c)] for c in (0, 1)}, plot_dir / "scores.png",
                                  f"{model_name} score: test (lines) vs train (points)",
                                  dashed={f"{classes[c]} train": s[tr & (y == c)] for c in (0, 1)})
        per_sample = {name: s[t & (data.sample == i)] for i, name in enumerate(data.samples)}
        plots.score_distributions(per_sample, plot_dir / "scores_per_sample.png", f"{model_name} score per sample (test)")
        out["calibration"] = calibration
        return out
    out["auc_per_class"] = {c: metrics.auc(y[t] == i, S[t, i], w[t]) for i, c in enumerate(classes)}
    out["auc"] = float(np.mean(list(out["auc_per_class"].values())))
    out["accuracy"] = float(np.average(S[t].argmax(1) == y[t], weights=w[t]))
    if tr.any():
        out["ks_overtraining"] = {c: metrics.ks(S[tr & (y == i), i], S[t & (y == i), i]) for i, c in enumerate(classes)}
    curves = {}
    for i, c in enumerate(classes):
        tpr, fpr, _ = metrics.roc(y[t] == i, S[t, i], w[t])
        curves[f"{c} vs rest (AUC {out['auc_per_class'][c]:.3f})"] = (tpr, fpr)
        plots.score_distributions({f"true {k}": S[t & (y == j), i] for j, k in enumerate(classes)},
                                  plot_dir / f"scores_{c}.png", f"score for class {c}: test (lines) vs train (points)",
                                  dashed={f"true {c} train": S[tr & (y == i), i]})
    plots.roc_curves(curves, plot_dir / "roc.png", f"{model_name} one-vs-rest, test events")
    out["calibration"] = calibration
    return out
