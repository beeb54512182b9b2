"""What every training workload shares: label/weight/split config, loading, and the split."""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..config import DatasetSpec, JobConfig, Spec
from ..data.columns import LABEL, SAMPLE, WEIGHT
from ..data.loading import SPLIT, load_columns


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


class Data:
    """Training data in memory: features X, labels y, weights w, split masks, extra columns."""

    def __init__(self, cols: dict, job: TrainJob):
        self.cols = cols
        self.samples: list[str] = cols.pop("__samples__")
        self.X = np.column_stack([np.asarray(cols[f], dtype=np.float32) for f in job.features])
        y = np.asarray(cols[job.label] if job.label else cols[LABEL])
        if (y < 0).any():
            from ..errors import ConfigError

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
    cols = load_columns(plan, job.dataset, columns)
    shard_ids = [s.shard_id for s in plan]
    return Data(cols, job), shard_ids


def class_names(job: TrainJob, data: Data) -> list[str]:
    if job.classes:
        return list(job.classes)
    if job.dataset.samples and all(s.label is not None for s in job.dataset.samples):
        names: dict[int, list[str]] = {}
        for s in job.dataset.samples:
            names.setdefault(s.label, []).append(s.name)
        return ["+".join(names.get(c, [str(c)])) for c in range(data.n_classes)]
    return [str(c) for c in range(data.n_classes)]
