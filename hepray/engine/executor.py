"""The shard executor: a pool of Ray actors, a bounded number of shards in flight.

The driver holds only counters and the refs in flight, so its memory does not grow with the
dataset. Each actor sets up the run's processor once (model loaded once per run, not per shard),
limits its math-library threads to the CPUs Ray gave it, processes a shard and writes its part
itself: arrays never travel back to the driver. Actors stay warm between runs (engine.pool).
"""

from __future__ import annotations

import os
import time
import traceback
import uuid
from collections.abc import Iterable

from ..data import files
from ..data.shard import Shard
from ..errors import HeprayError
from ..extras import LEAN_XGBOOST
from ..io.parts import as_path, committed, write_part
from . import pool
from .progress import Progress

KEEP_OPEN = 2  # trees an actor keeps open for its next shards (a NanoAOD tree costs ~0.3 s to open)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_MAX_THREADS")


class ShardWorker:
    """Actor body, kept warm between runs (engine.pool). Each run's settings come with its tasks as
    (token, [ref]): a new token means a new run (or an actor Ray restarted, which lost them), and
    the actor then fetches the processor and sets it up: once per actor and run, not per shard."""

    def __init__(self, num_cpus: float):
        # Before any math library starts its thread pool in this process. Set here rather than in a
        # runtime_env, which would make Ray spawn fresh worker processes instead of reusing idle ones.
        for var in THREAD_VARS:
            os.environ[var] = str(max(1, int(num_cpus)))
        os.environ[LEAN_XGBOOST] = "1"  # this process is the actor's alone (extras.import_xgboost)
        self.num_cpus = max(1, int(num_cpus))
        self.token = None

    def _configure(self, token: str, box: list) -> None:
        settings = box[0]
        if not isinstance(settings, tuple):  # an ObjectRef, boxed so Ray does not fetch it per task
            import ray

            settings = ray.get(settings)
        processor, parts_dir, self.fmt, self.tree, self.compression = settings
        self.processor, self.parts_dir = processor, as_path(parts_dir)
        files.keep_open(0)  # a new run: handles from the last one may name replaced files
        files.keep_open(KEEP_OPEN)
        self.processor.setup(self.num_cpus)
        self.token = token

    def pid(self) -> int:
        return os.getpid()

    def run(self, shard_dict: dict, token: str, box: list) -> dict:
        """Process one shard and commit its part; ``box`` = [(processor, parts_dir, fmt, tree,
        compression)] or [a ref to it]."""
        shard = Shard.from_dict(shard_dict)
        t0 = time.perf_counter()
        base = {"shard_id": shard.shard_id, "index": shard.index, "source": shard.describe(), "sample": shard.sample,
                "n_in": shard.num_entries, "pid": os.getpid()}
        try:
            if token != self.token:
                self._configure(token, box)
            part = self.processor.process(shard)
            cols = part.columns
            n_out = len(next(iter(cols.values()))) if cols else 0
            result = {**base, "status": "ok", "n_in": part.n_in, "n_out": n_out,
                      "seconds": round(time.perf_counter() - t0, 4)}
            write_part(self.parts_dir, shard, cols, fmt=self.fmt, tree=self.tree, compression=self.compression, result=result)
            return committed(self.parts_dir, shard.shard_id)
        except HeprayError as exc:  # data problems: retrying would fail the same way
            return {**base, "status": "failed", "error": exc.message, "n_out": 0}
        except Exception as exc:
            tb = traceback.format_exc(limit=4)
            return {**base, "status": "failed", "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
                    "traceback": tb, "n_out": 0}


def map_shards(shards: Iterable[Shard], processor, parts_dir, *, fmt: str, tree: str, compression: str,
               workers: int, cpus_per_worker: float = 1.0, in_flight: int | None = None, max_retries: int = 2,
               resume: bool = False, total: tuple[int, int] | None = None, progress_every_s: float = 5.0,
               label: str = "run", keep_warm_s: float = 0.0) -> dict:
    """Run ``processor`` over ``shards`` on ``workers`` actors; return counters and per-shard results.

    ``total`` = (shards, events) for the progress line and ETA. Results of committed shards are
    read from their markers, so the returned list is complete on --resume too. The actors come
    from, and go back to, the warm pool (``keep_warm_s`` > 0; see engine.pool).
    """
    import ray

    parts_dir = as_path(parts_dir)  # a local Path or a StorePath (s3://...)
    parts_dir.mkdir(parents=True, exist_ok=True)
    actors, pool_key = pool.acquire(ShardWorker, workers, cpus_per_worker, max_retries)
    # the run's settings (the processor holds config and model bytes) go to the object store once;
    # the driver holds the ref until the end, so a restarted actor can always fetch them again
    token = uuid.uuid4().hex
    box = [ray.put((processor, str(parts_dir), fmt, tree, compression))]
    per_actor = 1 + (in_flight if in_flight is not None else 1)
    load = [0] * workers
    last_file: list[str | None] = [None] * workers  # an actor keeps the trees it read open (KEEP_OPEN)
    pending: dict = {}  # ref -> (actor index, shard)
    results: list[dict] = []
    n_shards, n_events = total or (0, 0)
    prog = Progress(label, n_shards, n_events, progress_every_s)

    def drain(block_until: int):
        while len(pending) > block_until:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            i, shard = pending.pop(ref)
            load[i] -= 1
            try:
                res = ray.get(ref)
            except Exception as exc:  # actor died more often than retries allow
                res = {"shard_id": shard.shard_id, "index": shard.index, "source": shard.describe(), "status": "failed",
                       "n_in": shard.num_entries, "n_out": 0, "sample": shard.sample,
                       "error": f"worker lost after {max_retries} retries: {str(exc).splitlines()[0][:300]}"}
            results.append(res)
            prog.update(res.get("n_in", 0) if res["status"] == "ok" else 0, failed=res["status"] != "ok")

    parked, seen = False, 0
    try:
        for shard in shards:
            seen += 1
            if resume:
                rec = committed(parts_dir, shard.shard_id)
                if rec is not None:
                    results.append({**rec, "resumed": True})
                    prog.skipped += rec.get("n_in", 0)
                    prog.shards += 1
                    continue
            # the last ``workers`` shards go only to idle actors: queued behind a busy actor, one of
            # them could keep the run going for a whole shard while another actor sits idle
            room = 1 if n_shards and n_shards - seen < workers else per_actor
            drain(workers * room - 1)
            # the actor that read this file last, if it has room (its tree is still open), else the least loaded
            free = [j for j in range(workers) if load[j] < room]
            i = next((j for j in free if last_file[j] == shard.file), min(free, key=load.__getitem__))
            load[i] += 1
            last_file[i] = shard.file
            pending[actors[i].run.remote(shard.to_dict(), token, box)] = (i, shard)
        drain(0)
        pool.park(actors, pool_key, keep_warm_s)
        parked = True
    finally:
        if not parked:  # interrupted: work may still be in flight on them
            pool.kill(actors)
    prog.print(final=True)
    results.sort(key=lambda r: r.get("index", 0))
    return {
        "shards": len(results),
        "shards_ok": sum(r["status"] == "ok" for r in results),
        "shards_resumed": sum(bool(r.get("resumed")) for r in results),
        "events_in": sum(r.get("n_in", 0) for r in results if r["status"] == "ok"),
        "events_out": sum(r.get("n_out", 0) for r in results if r["status"] == "ok"),
        "seconds": round(time.monotonic() - prog.t0, 3),
        "results": results,
    }
