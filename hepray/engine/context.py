"""RunContext: what a workload gets to plan data, map shards and write into its run directory."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..config import DatasetSpec, JobConfig
from ..data.planning import iter_plan
from ..data.shard import Shard
from ..errors import HeprayError, JobFailed
from ..io import rundir
from ..io.parts import COMMITTED, AnyPath, as_path, atomic_writer
from ..io.store import RunStore
from . import executor, tasks
from .summary import encode as encode_summary
from .runtime import alive_nodes, cluster_cpus, cluster_gpus, ensure_ray, ray_initialized, ray_on_hand


WHY_REDONE = {"stale": "made by a different job (fingerprint differs)", "torn": "with a missing or torn part",
              "corrupt": "with a corrupt marker"}


class Plan:
    """A plan streamed to ``plan.jsonl``: iterating re-reads the file, so memory stays flat."""

    def __init__(self, path: AnyPath, shards: int, events: int, nbytes: int, files: int, skipped: list[dict]):
        self.path, self.shards, self.events, self.nbytes, self.files, self.skipped = path, shards, events, nbytes, files, skipped

    def __iter__(self) -> Iterator[Shard]:
        with self.path.open() as f:
            for line in f:
                yield Shard.from_dict(json.loads(line))

    def summary(self) -> dict:
        return {"files": self.files, "shards": self.shards, "events": self.events, "bytes": self.nbytes,
                "skipped_files": self.skipped}


def run_dir_of(job: JobConfig) -> AnyPath:
    """A local absolute Path (workers resolve relative paths against Ray's directory), or a
    StorePath for s3://, gs://, root://... (job.run_dir() is Path-only)."""
    run_dir = as_path(job.output.dir) if job.output.dir else job.run_dir()
    return run_dir.expanduser().absolute() if isinstance(run_dir, Path) else run_dir


class RunContext:
    def __init__(self, job: JobConfig, *, resume: bool = False, workers: int | None = None,
                 address: str | None = None, quiet: bool = False):
        self.job, self.resume, self.address, self.quiet = job, resume, address, quiet
        self.run_dir = run_dir_of(job)
        self.store = RunStore(self.run_dir)  # every read/write under the run folder (io/store.py)
        rundir.create(self.run_dir, job)  # the marker that lets --overwrite delete it later
        self._workers = workers or job.engine.workers
        self.summaries: dict[str, dict] = {}

    # -- logging ---------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[hepray {self.job.name}] {msg}", file=sys.stderr, flush=True)

    def write_json(self, relpath: str, obj) -> AnyPath:
        return self.store.write_json(relpath, obj)

    # -- Ray: workloads ask here, never Ray itself ------------------------------------------
    def workers(self) -> int:
        """Shard actors for map_shards: ``engine.workers`` or the cluster's CPUs / cpus_per_worker."""
        ensure_ray(self.address, keep_pool=True)
        if self._workers:
            return self._workers
        return max(1, int(cluster_cpus() / self.job.engine.cpus_per_worker))

    def _gpus(self) -> float:
        """engine.gpus_per_worker, or 0 with a warning where the cluster has no GPU (the CPU
        fallback: an actor asking for a GPU there would never be placed)."""
        want = self.job.engine.gpus_per_worker
        if want and not cluster_gpus():
            self.log(f"engine.gpus_per_worker={want:g} but the Ray cluster has no GPUs: running on CPUs")
            return 0.0
        return want

    def join(self) -> None:
        """Start or join Ray now (a trainer about to ask for CPUs; frees parked shard actors)."""
        ensure_ray(self.address)

    def on_cluster(self) -> bool:
        """Ray is on hand for this run (started in this process, or an address given): joining
        costs little, while a local instance costs seconds, so small jobs start it only if needed."""
        return ray_on_hand(self.address)

    def cluster_cpus(self, join: bool = True) -> int:
        """The cluster's CPUs (one count for every workload); ``join=False``: 1 without Ray."""
        if join:
            ensure_ray(self.address, keep_pool=True)
        elif not ray_initialized():
            return 1
        return cluster_cpus()

    def nodes(self) -> int:
        """Alive Ray nodes (1 without Ray)."""
        return alive_nodes() if ray_initialized() else 1

    def map_tasks(self, fn, items, *args, **kw):
        """``fn(item, *args)`` per item, in order, as a bounded fan-out (engine/tasks.py): on Ray
        when this run has it (or ``parallel=True``), else in this process."""
        return tasks.map_tasks(fn, items, *args, address=self.address, **kw)

    # -- planning ----------------------------------------------------------------------------
    def plan(self, dataset: DatasetSpec, name: str = "plan", extra: list[str] | tuple = (),
             flat: list[str] | tuple = ()) -> Plan:
        """Plan ``dataset`` into ``<run_dir>/<name>.jsonl`` (shards aligned to clusters); ``flat``:
        columns that must hold one value per event (a model's features)."""
        path = self.run_dir / f"{name}.jsonl"
        shards = events = nbytes = 0
        files: set[str] = set()
        skipped: list[dict] = []
        with atomic_writer(path) as f:
            for s in iter_plan(dataset, self.job.resolve, self.job.engine.on_error, extra=extra, flat=flat,
                               mapper=self.map_tasks):
                if isinstance(s, dict):
                    skipped.append(s)
                    self.log(f"skipped {s['skipped']}: {s['error']}")
                    continue
                f.write(json.dumps(s.to_dict()) + "\n")
                shards += 1
                events += s.num_entries
                nbytes += s.nbytes
                files.add(s.file)
        return Plan(path, shards, events, nbytes, len(files), skipped)

    # -- execution ---------------------------------------------------------------------------
    def map_shards(self, shards: Iterable[Shard], processor, *, name: str = "parts", tree: str | None = None,
                   total: tuple[int, int] | None = None) -> dict:
        """Process ``shards`` on a pool of actors; each part lands in ``<run_dir>/<name>/``.
        Returns counters and ``"summary"``: the processors' per-shard summaries added up
        (engine/summary.py; None if the processor returns none), resumed shards included.

        Raises JobFailed (listing the shards and why) when any shard failed and the job's
        ``engine.on_error`` is ``fail``; with ``skip`` the failures are listed in the manifest.
        """
        parts_dir = self.run_dir / name
        self._guard_existing(parts_dir)
        if total is None and isinstance(shards, Plan):
            total = (shards.shards, shards.events)
        eng, out = self.job.engine, self.job.output
        summary = executor.map_shards(
            shards, processor, parts_dir, fmt=out.format, tree=tree or out.tree, compression=out.compression,
            workers=self.workers(), cpus_per_worker=eng.cpus_per_worker, in_flight=eng.in_flight,
            max_retries=eng.max_retries, resume=self.resume, total=total, progress_every_s=eng.progress_every_s,
            label=self.job.name, keep_warm_s=eng.keep_warm_s, shard_timeout_s=eng.shard_timeout_s,
            restart_timeout_s=eng.restart_timeout_s, gpus_per_worker=self._gpus(),
        )
        if summary["shards_redone"]:
            why = ", ".join(f"{n} {WHY_REDONE[k]}" for k, n in summary["redone"].items())
            self.log(f"resume: {summary['shards_redone']} committed parts redone ({why})")
        failed, ledger = summary["failed"], summary.pop("ledger")
        skipped_files = shards.skipped if isinstance(shards, Plan) else []
        manifest = {
            "job": self.job.name, "kind": self.job.kind, "format": out.format, "tree": tree or out.tree,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **{k: v for k, v in summary.items() if k not in ("failed", "summary")},
            "shards_failed": len(failed),
            "failed": [{k: r.get(k) for k in ("shard_id", "source", "error")} for r in failed],
            "skipped_files": skipped_files,
        }
        if summary["summary"] is not None:  # encoded: the manifest stays JSON
            manifest["summary"] = encode_summary(summary["summary"])
        # the parts' entries stream from the ledger (on disk) into the file, in plan order
        self.store.write_json(f"{name}/_manifest.json", manifest, stream=("parts", ledger.parts()))
        ledger.close()
        summary = {**{k: v for k, v in manifest.items() if k != "parts"}, "summary": summary["summary"]}
        self.summaries[name] = summary
        if failed and self.job.engine.on_error == "fail":
            first = failed[0]
            raise JobFailed(f"{len(failed)} of {manifest['shards']} shards failed; first: {first['error']} "
                            f"(all listed in {parts_dir / '_manifest.json'}; fix the input or set engine.on_error: skip)")
        if failed:
            self.log(f"{len(failed)} shards skipped (engine.on_error: skip), listed in {parts_dir / '_manifest.json'}")
        return summary

    def _guard_existing(self, parts_dir: AnyPath):
        marker_dir = parts_dir / COMMITTED
        if self.resume or not marker_dir.exists():
            return
        n = sum(1 for _ in marker_dir.glob("*.json"))
        if n:
            raise HeprayError(f"{parts_dir} already holds {n} committed parts; pass --resume to finish that run, "
                              f"or --overwrite to start again")

    def clear(self):
        """--overwrite: remove previous outputs of this job (only a folder hepray made)."""
        rundir.check_removable(self.run_dir, self.job.source)
        rundir.clear(self.run_dir)

