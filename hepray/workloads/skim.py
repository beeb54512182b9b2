"""``kind: skim``: copy selected branches and derived columns of the events passing the cut."""

from __future__ import annotations

from ..config import DatasetSpec, JobConfig
from ..data.reading import read_shard
from .base import PartData, ShardProcessor, Workload
from .registry import register


class SkimConfig(JobConfig):
    dataset: DatasetSpec


class SkimProcessor(ShardProcessor):
    def __init__(self, dataset: DatasetSpec):
        self.dataset = dataset

    def process(self, shard) -> PartData:
        cols, n_in = read_shard(shard, self.dataset)
        return PartData(cols, n_in)


@register("skim")
class Skim(Workload):
    """Select events and columns into new ROOT/Parquet parts (a skim)."""

    Config = SkimConfig

    def run(self, ctx) -> dict:
        plan = ctx.plan(self.job.dataset)
        ctx.log(f"plan: {plan.files} files, {plan.shards} shards, {plan.events} events")
        return ctx.map_shards(plan, SkimProcessor(self.job.dataset))
