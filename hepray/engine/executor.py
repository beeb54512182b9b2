"""The shard executor: a pool of Ray actors, a bounded number of shards in flight.

The driver holds only counters and the refs in flight, so its memory does not grow with the
dataset. Each actor sets up its processor once (model loaded once, not per shard), limits its
math-library threads to the CPUs Ray gave it, processes a shard and writes its part itself:
arrays never travel back to the driver.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Iterable

from ..data.shard import Shard
from ..errors import HeprayError
from ..extras import LEAN_XGBOOST
from ..io.parts import as_path, committed, write_part
from .progress import Progress

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_MAX_THREADS")


class ShardWorker:
    """Actor body. Restarted by Ray if its process dies; setup then runs again, lazily."""

    def __init__(self, processor, parts_dir: str, fmt: str, tree: str, compression: str, num_cpus: float):
        # Before any math library starts its thread pool in this process. Set here rather than in a
        # runtime_env, which would make Ray spawn fresh worker processes instead of reusing idle ones.
        for var in THREAD_VARS:
            os.environ[var] = str(max(1, int(num_cpus)))
        os.environ[LEAN_XGBOOST] = "1"  # this process is the actor's alone (extras.import_xgboost)
        self.processor, self.parts_dir = processor, as_path(parts_dir)
        self.fmt, self.tree, self.compression = fmt, tree, compression
        self.num_cpus = max(1, int(num_cpus))
        self.ready = False

    def pid(self) -> int:
        return os.getpid()

    def run(self, shard_dict: dict) -> dict:
        shard = Shard.from_dict(shard_dict)
        t0 = time.perf_counter()
        base = {"shard_id": shard.shard_id, "index": shard.index, "source": shard.describe(), "sample": shard.sample,
                "n_in": shard.num_entries, "pid": os.getpid()}
        try:
            if not self.ready:
                self.processor.setup(self.num_cpus)
                self.ready = True
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
               label: str = "run") -> dict:
    """Run ``processor`` over ``shards`` on ``workers`` actors; return counters and per-shard results.

    ``total`` = (shards, events) for the progress line and ETA. Results of committed shards are
    read from their markers, so the returned list is complete on --resume too.
    """
    import ray

    parts_dir = as_path(parts_dir)  # a local Path or a StorePath (s3://...)
    parts_dir.mkdir(parents=True, exist_ok=True)
    Actor = ray.remote(ShardWorker).options(num_cpus=cpus_per_worker, max_restarts=-1, max_task_retries=max_retries)
    # the processor travels inline with each actor's constructor (it holds only config and model
    # bytes), so a restarted actor can always rebuild it
    actors = [Actor.remote(processor, str(parts_dir), fmt, tree, compression, cpus_per_worker) for _ in range(workers)]
    per_actor = 1 + (in_flight if in_flight is not None else 1)
    load = [0] * workers
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

    try:
        for shard in shards:
            if resume:
                rec = committed(parts_dir, shard.shard_id)
                if rec is not None:
                    results.append({**rec, "resumed": True})
                    prog.skipped += rec.get("n_in", 0)
                    prog.shards += 1
                    continue
            drain(workers * per_actor - 1)
            i = min(range(workers), key=load.__getitem__)
            load[i] += 1
            pending[actors[i].run.remote(shard.to_dict())] = (i, shard)
        drain(0)
    finally:
        for a in actors:
            ray.kill(a)
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
