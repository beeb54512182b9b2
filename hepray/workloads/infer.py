"""``kind: infer``: score every event of a dataset with a trained model, one part per shard."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from ..config import DatasetSpec, JobConfig, Spec
from ..data.reading import feature_matrix, identity_columns, read_shard
from ..data.steps import ENTRY
from ..errors import ConfigError, DataError
from ..models.predict import ModelBundle
from .base import PartData, ShardProcessor, Workload
from .registry import register


class UncertaintySpec(Spec):
    """Predict with an uncertainty: ``<output>_mean`` and ``<output>_std`` per class. An
    ensemble (bagging) or a ``bnn`` always does; ``mc_dropout: N`` makes a torch network with
    dropout layers do it from N stochastic passes (batched: ~N x one pass)."""

    mc_dropout: int = Field(0, ge=0)
    samples: int | None = Field(None, gt=0)  # passes of a bnn (default: the number stored with it)
    members: bool = False  # an ensemble: also each member's scores (<output>_m0, _m1, ...)


def with_uncertainty(bundle: ModelBundle, spec: UncertaintySpec | None, source: str) -> ModelBundle:
    """``bundle`` predicting as ``model.uncertainty`` asks; a request it cannot serve is a
    one-line error naming the field."""
    from ..errors import ModelLoadError

    if spec is None:
        return bundle
    try:
        return bundle.with_uncertainty(spec.mc_dropout, spec.members, spec.samples)
    except ModelLoadError as exc:
        raise ConfigError(source, "model.uncertainty", f"{exc.path}: {exc.problem}") from None


class ModelRef(Spec):
    path: str
    features: list[str] | None = None  # default: the features stored with the model
    feature_map: dict[str, str] = {}  # stored feature name -> the column to feed it (renamed inputs)
    output: str = "score"
    batch_size: int = Field(1_000_000, gt=0)
    uncertainty: UncertaintySpec | None = None


class InferConfig(JobConfig):
    dataset: DatasetSpec
    model: ModelRef
    keep: list[str] = []  # input columns copied into the output next to the scores


class InferProcessor(ShardProcessor):
    def __init__(self, bundle: ModelBundle, dataset: DatasetSpec, features: list[str], output: str,
                 keep: list[str], batch_size: int, on_nonfinite: str = "fail"):
        self.bundle, self.dataset, self.features = bundle, dataset, features
        self.output, self.keep, self.batch_size = output, keep, batch_size
        self.on_nonfinite = on_nonfinite

    def setup(self, num_cpus: int) -> None:
        self.predict = self.bundle.load(num_cpus)  # once per actor, threads = CPUs Ray gave it

    def process(self, shard) -> PartData:
        cols, n_in = read_shard(shard, self.dataset, extra=self.features + self.keep)
        X = feature_matrix(cols, self.features, shard.file, order=self.bundle.matrix_order)
        nonfinite = self._nonfinite(X, cols, shard)
        scores = [self.predict(X[i:i + self.batch_size]) for i in range(0, len(X), self.batch_size)]
        S = np.concatenate(scores) if scores else np.zeros((0, len(self.bundle.output_names())), np.float32)
        out = {k: cols[k] for k in identity_columns(cols, self.dataset) + self.keep}
        for j, name in enumerate(self.bundle.output_names(self.output, S.shape[1])):
            out[name] = S[:, j]
        return PartData(out, n_in, stats={"nonfinite": nonfinite} if nonfinite else {})

    def _nonfinite(self, X: np.ndarray, cols: dict, shard) -> dict[str, int]:
        """NaN or inf per feature: the shard fails naming the first (engine.on_nonfinite: fail), or
        they are scored as they are and counted in the shard's manifest entry (count)."""
        finite = np.isfinite(X)
        if finite.all():  # the common case: one pass, ~1 ms per million values
            return {}
        counts = {name: int(k) for name, k in zip(self.features, (~finite).sum(axis=0)) if k}
        if self.on_nonfinite == "count":
            return counts
        name = next(iter(counts))
        row = int(np.argmin(finite[:, self.features.index(name)]))
        raise DataError(shard.file, f"feature {name!r} has {counts[name]} NaN or inf values (first at entry "
                        f"{int(cols[ENTRY][row])})", shard=shard.shard_id,
                        hint="fix the input, or set engine.on_nonfinite: count to score them and count them per shard")


@register("infer")
class Infer(Workload):
    """Score every event with a trained model (xgboost or torch), one part per shard."""

    Config = InferConfig

    def features(self, bundle: ModelBundle | None = None) -> list[str]:
        """The columns fed to the model, in its order: the stored list (renamed by
        ``model.feature_map``), or the job's list for a model that stores none. A job list that
        differs from the stored one (names or order) would silently give other scores: refused."""
        job = self.job
        bundle = bundle or ModelBundle.read(job.resolve(job.model.path))
        stored, given, fmap = bundle.features, job.model.features, job.model.feature_map
        if stored and fmap:
            unknown = sorted(set(fmap) - set(stored))
            if unknown:
                raise ConfigError(job.source, "model.feature_map", f"{unknown[0]!r} is not one of the model's "
                                  f"features {stored}")
            stored = [fmap.get(f, f) for f in stored]
        elif fmap:
            raise ConfigError(job.source, "model.feature_map", "the model stores no feature list to map; "
                              "name the columns in model.features")
        if stored and given and list(given) != list(stored):
            raise ConfigError(job.source, "model.features", f"{list(given)} differ from the model's stored "
                              f"features {list(stored)} (names or order); drop model.features, or map stored "
                              "names to columns with model.feature_map")
        features = stored or given
        if not features:
            raise ConfigError(job.source, "model.features", "the model stores no feature list: name them here")
        if bundle.n_features and bundle.n_features != len(features):
            raise ConfigError(job.source, "model.features", f"{len(features)} features given, the model "
                              f"({bundle.path}) takes {bundle.n_features}")
        return list(features)

    def columns(self) -> list[str]:
        return self.features() + list(self.job.keep)

    def run(self, ctx) -> dict:
        job = self.job
        bundle = with_uncertainty(ModelBundle.read(job.resolve(job.model.path)), job.model.uncertainty, job.source)
        features = self.features(bundle)
        plan = ctx.plan(job.dataset, extra=features + list(job.keep), flat=features)
        ctx.log(f"plan: {plan.files} files, {plan.shards} shards, {plan.events} events")
        proc = InferProcessor(bundle, job.dataset, list(features), job.model.output, list(job.keep), job.model.batch_size,
                              job.engine.on_nonfinite)
        return ctx.map_shards(plan, proc)
