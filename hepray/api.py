"""The Python API the CLI is a thin layer over. Two runs in one process work: Ray is started
once and reused, and so are the shard actors of the last run for ``engine.keep_warm_s`` seconds
(``release_workers()`` frees them now); no other state is kept between runs."""

from __future__ import annotations

import os
import sys

from .config import DatasetSpec, JobConfig, load_job
from .data.planning import iter_plan
from .data.reading import read_shard
from .data.shard import Shard
from .engine.context import RunContext, run_dir_of
from .io import rundir
from .io.parts import write_json_atomic


def _as_job(job, registry=None, overrides=None) -> JobConfig:
    if isinstance(job, JobConfig):
        return job.model_copy(update={}) if not overrides else load_job(job.model_dump(), registry, overrides)
    return load_job(job, registry, overrides)


def run(job, *, resume: bool = False, overwrite: bool = False, workers: int | None = None,
        address: str | None = None, registry=None, overrides: dict | None = None, quiet: bool = False) -> dict:
    """Run a job (a path to YAML, a dict or a JobConfig) and return its summary.

    >>> summary = hepray.run("jobs/infer_bdt.yaml")            # doctest: +SKIP
    >>> summary["events_in"] == summary["events_out"]           # doctest: +SKIP
    True
    """
    from .workloads import REGISTRY

    registry = registry or REGISTRY
    job = _as_job(job, registry, overrides)
    workload = registry.get(job.kind)(job)
    run_dir = run_dir_of(job)
    if overwrite:  # every check before anything is deleted: the job, its model's features, the folder
        workload.columns()
        rundir.check_removable(run_dir, job.source)
    with rundir.locked(run_dir):  # one writer per run folder
        if overwrite:
            rundir.clear(run_dir)
        ctx = RunContext(job, resume=resume, workers=workers, address=address, quiet=quiet)
        (ctx.run_dir / "job.yaml").write_text(_job_yaml(job))
        summary = workload.run(ctx) or {}
        summary = {"job": job.name, "kind": job.kind, "run_dir": str(ctx.run_dir), **summary}
        write_json_atomic(ctx.run_dir / "summary.json", summary)
    ctx.log(_one_line(summary))
    return summary


def release_workers() -> int:
    """Free the CPUs held by idle shard actors kept warm for the next run (engine.keep_warm_s);
    returns how many actors there were. Ray itself stays up."""
    from .engine import pool

    return pool.release()


def plan(job_or_dataset, registry=None) -> dict:
    """Plan a job's dataset without running it: files, shards, events, bytes (and the shards)."""
    if isinstance(job_or_dataset, DatasetSpec):
        spec, resolve, extra = job_or_dataset, (lambda p: p), []
    else:
        from .workloads import REGISTRY

        job = _as_job(job_or_dataset, registry)
        workload = (registry or REGISTRY).get(job.kind)(job)
        spec = workload.dataset()
        if spec is None:
            from .errors import ConfigError

            raise ConfigError(job.source, "dataset", f"kind {job.kind!r} reads no dataset, so there is nothing to plan")
        resolve = job.resolve
        extra = workload.columns()
    shards, skipped = [], []
    for s in iter_plan(spec, resolve, "skip", extra=extra):
        (skipped if isinstance(s, dict) else shards).append(s)
    return {"files": len({s.file for s in shards}), "shards": shards, "events": sum(s.num_entries for s in shards),
            "bytes": sum(s.nbytes for s in shards), "skipped": skipped}


class Dataset:
    """A ROOT dataset: files (globs/URLs) or labelled samples, branches, expressions, a cut.

    >>> ds = hepray.Dataset(files="tests/data/real/uproot-Zmumu.root", tree="events",
    ...                     branches=["E1", "E2"], expressions={"Esum": "E1 + E2"}, cut="Esum > 50")
    >>> cols = ds.arrays()                                      # doctest: +SKIP
    """

    def __init__(self, spec: DatasetSpec | None = None, **fields):
        self.spec = spec if spec is not None else DatasetSpec(**fields)

    def plan(self) -> list[Shard]:
        return [s for s in iter_plan(self.spec) if isinstance(s, Shard)]

    def read(self, shard: Shard, extra: list[str] | tuple = ()) -> dict:
        return read_shard(shard, self.spec, extra)[0]

    def iterate(self, extra: list[str] | tuple = ()):
        """Yield (shard, columns) shard by shard: bounded memory, in plan order."""
        for shard in self.plan():
            yield shard, self.read(shard, extra)

    def arrays(self, extra: list[str] | tuple = ()) -> dict:
        """All selected events in memory (for samples that fit): columns concatenated, plus
        ``sample``/``label``/``weight`` per event when the dataset has samples."""
        from .data.columns import concatenate

        return concatenate(self.iterate(extra))


def _job_yaml(job: JobConfig) -> str:
    import yaml

    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)


def _one_line(summary: dict) -> str:
    keys = ("events_in", "events_out", "shards", "shards_failed", "seconds")
    parts = [f"{k}={summary[k]}" for k in keys if k in summary]
    return f"done: {', '.join(parts)} -> {summary['run_dir']}{os.sep}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `hepray` command")
