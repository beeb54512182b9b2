"""The Python API the CLI is a thin layer over. Two runs in one process work: Ray is started
once and reused, and so are the shard actors of the last run for ``engine.keep_warm_s`` seconds
(``release_workers()`` frees them now); no other state is kept between runs."""

from __future__ import annotations

import os
import sys

from . import config
from .config import DatasetSpec, JobConfig, load_job
from .data.planning import iter_plan
from .data.reading import read_shard
from .data.shard import Shard
from .engine.context import RunContext, run_dir_of
from .engine.tasks import map_tasks
from .io import rundir
from .io.parts import write_json_atomic


def _builtin_registry():
    from .workloads import REGISTRY

    return REGISTRY


config.use_registry(_builtin_registry())  # config.py knows no workloads: it is given them here


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
        from .report.plots import styled

        try:
            with styled(job.report):  # every plot of the run in the job's style and label
                summary = workload.run(ctx) or {}
        finally:  # what the workload wrote locally (models, plots, tables) goes up to a store
            ctx.store.sync()
        summary = {"job": job.name, "kind": job.kind, "run_dir": str(ctx.run_dir), **summary}
        write_json_atomic(ctx.run_dir / "summary.json", summary)
        _write_report(ctx)
    ctx.log(_one_line(summary))
    return summary


def _write_report(ctx) -> None:
    """``report.html`` of the run (report/html.py): into the folder, or uploaded to its store."""
    import html as _html

    from .report import html

    if not ctx.store.remote:
        html.write_report(ctx.run_dir)
        return
    import tempfile
    from pathlib import Path

    # on a store: the small records and empty stand-ins for the images (only their names are
    # needed for the links) in a temporary folder, rendered, and the page uploaded
    fs, key = ctx.store.root._fs()
    with tempfile.TemporaryDirectory(prefix="hepray-report-") as d:
        for name in ("summary.json", "job.yaml", *html.TABLES):
            if ctx.store.exists(name):
                (Path(d) / name).write_bytes(ctx.store.read_bytes(name))
        for f in fs.glob(key.rstrip("/") + "/plots/**"):
            rel = f[len(key.rstrip("/")) + 1:]
            if rel.lower().endswith(html.IMAGES):
                (Path(d) / rel).parent.mkdir(parents=True, exist_ok=True)
                (Path(d) / rel).touch()
        page = html.render(d).replace(_html.escape(str(d)), _html.escape(str(ctx.run_dir)))
    ctx.store.write_bytes("report.html", page.encode())


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
    for s in iter_plan(spec, resolve, "skip", extra=extra, mapper=map_tasks):
        (skipped if isinstance(s, dict) else shards).append(s)
    return {"files": len({s.file for s in shards}), "shards": shards, "events": sum(s.num_entries for s in shards),
            "bytes": sum(s.nbytes for s in shards), "skipped": skipped}


class Dataset:
    """A ROOT dataset: files (globs/URLs) or labelled samples, branches and ordered steps that
    define columns and filter events, chained like RDataFrame's ``Define``/``Filter``
    (docs/analysis.md). Each call returns a new Dataset; ``.spec`` goes into any job's ``dataset:``.

    >>> ds = (hepray.Dataset(files="tests/data/real/Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root")
    ...       .filter("nMuon == 2").filter("Muon.charge[:, 0] != Muon.charge[:, 1]")
    ...       .define("mass", "(Muon[:, 0] + Muon[:, 1]).mass"))
    >>> cols = ds.arrays()                                      # doctest: +SKIP
    """

    def __init__(self, spec: DatasetSpec | None = None, **fields):
        self.spec = spec if spec is not None else DatasetSpec(**fields)

    def _with_step(self, step: dict) -> Dataset:
        from .config import validate

        return Dataset(validate(DatasetSpec, {**self.spec.model_dump(), "steps": [*self.spec.steps, step]}))

    def define(self, name: str, expression, needs: list[str] | None = None) -> Dataset:
        """A new column: an expression (text), or a Python callable of the shard's columns as one
        awkward record array (``needs``: the columns it reads; default: every branch), returning
        one value per event. A callable travels to the Ray actors with the job, like a processor."""
        step = {"define": {name: expression}}
        if needs is not None:
            step["needs"] = list(needs)
        return self._with_step(step)

    def filter(self, expression: str) -> Dataset:
        """Keep the events for which ``expression`` is true; later steps see only those."""
        return self._with_step({"filter": expression})

    def plan(self) -> list[Shard]:
        return [s for s in iter_plan(self.spec, mapper=map_tasks) if isinstance(s, Shard)]

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
