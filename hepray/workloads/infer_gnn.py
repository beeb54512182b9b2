"""``kind: infer_gnn``: score every jet with a trained ParticleNet through the core engine.

Each actor loads the model once (``setup``); each shard is read, its constituents selected and
padded exactly as in training (the padding parameters, selection and roles come from the
model's metadata, :class:`hepray.gnn.inputs.Constituents`), and scored in batches of
``model.batch_size`` jets. One part per shard, with the event identity next to the score, as
``kind: infer`` writes for flat-feature models.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from ..config import DatasetSpec, JobConfig, Spec
from ..data.reading import ENTRY, identity_columns, read_shard
from ..errors import ConfigError
from ..gnn.inputs import Constituents
from ..models.predict import ModelBundle
from .base import PartData, ShardProcessor, Workload
from .infer import UncertaintySpec, with_uncertainty
from .registry import register


class GNNModelRef(Spec):
    path: str
    output: str = "score"
    batch_size: int = Field(1024, gt=0)  # jets per forward pass (memory ~ batch x length x channels)
    uncertainty: UncertaintySpec | None = None  # as for kind: infer (mean and std per class)


class InferGNNConfig(JobConfig):
    dataset: DatasetSpec
    model: GNNModelRef
    keep: list[str] = []  # input columns copied into the output next to the scores


def gnn_constituents(bundle: ModelBundle, where: str = "") -> Constituents:
    """The input definition stored with a ``train_gnn`` model; a clear error for other models."""
    inputs = bundle.meta.get("inputs")
    if not inputs or "padding" not in inputs:
        raise ConfigError(where, "model.path", f"{bundle.path} is not a train_gnn model (no padded `inputs` in its "
                                               f"metadata); use kind: infer for flat-feature models")
    return Constituents.from_meta(inputs)


class InferGNNProcessor(ShardProcessor):
    def __init__(self, bundle: ModelBundle, dataset: DatasetSpec, output: str, keep: list[str], batch_size: int):
        self.bundle, self.dataset, self.output, self.keep, self.batch_size = bundle, dataset, output, keep, batch_size
        self.constituents = gnn_constituents(bundle)

    def setup(self, num_cpus: int) -> None:
        self.predict = self.bundle.load(num_cpus)  # once per actor

    def process(self, shard) -> PartData:
        cols, n_in = read_shard(shard, self.dataset, extra=self.constituents.columns() + self.keep)
        inputs = self.constituents.arrays(cols, shard.file)
        n, bs = len(cols[ENTRY]), self.batch_size
        names = self.bundle.output_names(self.output)
        parts = [self.predict({k: v[i:i + bs] for k, v in inputs.items()}) for i in range(0, n, bs)]
        S = np.concatenate(parts) if parts else np.zeros((0, len(names)), np.float32)
        out = {k: cols[k] for k in identity_columns(cols, self.dataset) + self.keep}
        out.update({name: S[:, j] for j, name in enumerate(names)})
        return PartData(out, n_in)


@register("infer_gnn")
class InferGNN(Workload):
    """Score every jet with a train_gnn model (ParticleNet), padded per shard, one part per shard."""

    Config = InferGNNConfig

    def _bundle(self) -> ModelBundle:
        return ModelBundle.read(self.job.resolve(self.job.model.path))

    def columns(self) -> list[str]:
        return gnn_constituents(self._bundle(), self.job.source).columns() + list(self.job.keep)

    def dataset(self) -> DatasetSpec:
        """The job's dataset plus the expressions stored with the model that it does not define:
        the inputs are derived exactly as in training."""
        job: InferGNNConfig = self.job
        return job.dataset.with_expressions(self._bundle().meta.get("expressions"), job.source, f"model.path ({job.model.path})")

    def run(self, ctx) -> dict:
        job: InferGNNConfig = self.job
        bundle = with_uncertainty(self._bundle(), job.model.uncertainty, job.source)
        constituents = gnn_constituents(bundle, job.source)
        dataset = self.dataset()
        plan = ctx.plan(dataset, extra=constituents.columns() + list(job.keep))
        ctx.log(f"plan: {plan.files} files, {plan.shards} shards, {plan.events} events")
        proc = InferGNNProcessor(bundle, dataset, job.model.output, list(job.keep), job.model.batch_size)
        return ctx.map_shards(plan, proc)
