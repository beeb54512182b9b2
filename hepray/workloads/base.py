"""What a workload is: a Config (pydantic) and a ``run(ctx)``; per-shard work is a ShardProcessor."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from ..config import JobConfig

if TYPE_CHECKING:
    from ..data.shard import Shard
    from ..engine.context import RunContext


@dataclasses.dataclass
class PartData:
    """What a processor returns for one shard: the columns to write, how many events it read, and
    an optional ``summary`` (numbers, arrays, histograms, or a dict of those: engine/summary.py)
    that travels back with the part's record and is added over all shards on the driver
    (``map_shards(...)["summary"]``), so a workload never re-reads its parts for totals.

    ``columns`` maps names to equal-length numpy or awkward arrays (jagged allowed in ROOT parts);
    ``stats``, e.g. ``{"nonfinite": {...}}``, is recorded with the shard's commit and manifest entry.
    """

    columns: dict[str, Any]
    n_in: int
    _: dataclasses.KW_ONLY  # summary and stats by name: a dict passed by position went to the wrong one
    summary: Any = None
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)  # into the shard's manifest entry


class ShardProcessor:
    """Runs inside a Ray actor. Built on the driver, put in Ray's object store once per run and
    fetched by each actor, then ``setup()`` once per actor and run (load the model here, not per
    shard) and ``process()`` per shard. Actors outlive runs (engine.pool): keep per-run state on
    the processor, not in module globals.
    Keep heavy state out of ``__init__`` so the pickle stays small."""

    def setup(self, num_cpus: int) -> None:  # noqa: B027 - optional hook
        pass

    def process(self, shard: Shard) -> PartData:
        raise NotImplementedError


class Workload:
    """Subclass, set ``Config``, implement ``run``; register with ``@register("kind")``."""

    kind: ClassVar[str] = ""
    Config: ClassVar[type[JobConfig]] = JobConfig

    def __init__(self, job: JobConfig):
        self.job = job

    def columns(self) -> list[str]:
        """Columns the workload reads beyond ``dataset.branches`` (e.g. a model's features):
        planning checks they exist and counts their bytes."""
        return []

    def dataset(self):
        """The dataset the workload reads (a model may add to the job's, e.g. its expressions)."""
        return getattr(self.job, "dataset", None)

    def run(self, ctx: RunContext) -> dict:
        raise NotImplementedError
