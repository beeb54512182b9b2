"""``kind: skim``: copy selected branches and derived columns of the events passing the cut."""

from __future__ import annotations

from ..config import DatasetSpec, JobConfig
from ..data.reading import identity_columns, read_shard
from .base import PartData, ShardProcessor, Workload
from .registry import register


class SkimConfig(JobConfig):
    dataset: DatasetSpec
    # the columns written (branches or defined columns) next to the event identity;
    # default: the dataset's branches and every defined column
    keep: list[str] | None = None


class SkimProcessor(ShardProcessor):
    def __init__(self, dataset: DatasetSpec, keep: list[str] | None = None):
        self.dataset, self.keep = dataset, keep

    def process(self, shard) -> PartData:
        cols, n_in = read_shard(shard, self.dataset, extra=self.keep or ())
        if self.keep is not None:
            cols = {k: cols[k] for k in [*identity_columns(cols, self.dataset), *self.keep]}
        return PartData(cols, n_in)


@register("skim")
class Skim(Workload):
    """Select events and columns into new ROOT/Parquet parts (a skim)."""

    Config = SkimConfig

    def run(self, ctx) -> dict:
        plan = ctx.plan(self.job.dataset, extra=self.columns())
        ctx.log(f"plan: {plan.files} files, {plan.shards} shards, {plan.events} events")
        return ctx.map_shards(plan, SkimProcessor(self.job.dataset, self.job.keep))

    def columns(self) -> list[str]:
        return list(self.job.keep or [])
