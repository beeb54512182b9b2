"""The shard executor: a pool of Ray actors, a bounded number of shards in flight.

The driver holds only counters and the refs in flight, so its memory does not grow with the
dataset. Each actor sets up the run's processor once (model loaded once per run, not per shard),
limits its math-library threads to the CPUs Ray gave it, processes a shard and writes its part
itself: arrays never travel back to the driver. Actors stay warm between runs (engine.pool).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import uuid
from collections import deque
from collections.abc import Iterable

from ..data import files
from ..data.shard import Shard
from ..errors import HeprayError
from ..extras import LEAN_XGBOOST
from ..io.parts import as_path, fingerprint, marker_state, part_fingerprint, remove_uncommitted, write_part
from ..models.predict import DEVICE_VAR
from . import pool
from . import summary as summaries
from .ledger import Ledger
from .progress import Progress

KEEP_OPEN = 2  # trees an actor keeps open for its next shards (a NanoAOD tree costs ~0.3 s to open)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_MAX_THREADS")


class ShardWorker:
    """Actor body, kept warm between runs (engine.pool). Each run's settings come with its tasks as
    (token, [ref]): a new token means a new run (or an actor Ray restarted, which lost them), and
    the actor then fetches the processor and sets it up: once per actor and run, not per shard."""

    def __init__(self, num_cpus: float, num_gpus: float = 0):
        # Before any math library starts its thread pool in this process. Set here rather than in a
        # runtime_env, which would make Ray spawn fresh worker processes instead of reusing idle ones.
        for var in THREAD_VARS:
            os.environ[var] = str(max(1, int(num_cpus)))
        # models.predict puts torch on it and gives xgboost device=cuda; Ray has set
        # CUDA_VISIBLE_DEVICES to the GPUs it gave this actor
        os.environ[DEVICE_VAR] = "cuda" if num_gpus > 0 else "cpu"
        os.environ[LEAN_XGBOOST] = "1"  # this process is the actor's alone (extras.import_xgboost)
        self.num_cpus = max(1, int(num_cpus))
        self.token = None

    def _configure(self, token: str, box: list) -> None:
        settings = box[0]
        if not isinstance(settings, tuple):  # an ObjectRef, boxed so Ray does not fetch it per task
            import ray

            settings = ray.get(settings)
        processor, parts_dir, self.fmt, self.tree, self.compression, self.fingerprint = settings
        self.processor, self.parts_dir = processor, as_path(parts_dir)
        files.keep_open(0)  # a new run: handles from the last one may name replaced files
        files.keep_open(KEEP_OPEN)
        self.processor.setup(self.num_cpus)
        self.token = token

    def pid(self) -> int:
        return os.getpid()

    def run(self, shard_dict: dict, token: str, box: list) -> dict:
        """Process one shard and commit its part; ``box`` = [(processor, parts_dir, fmt, tree,
        compression, run fingerprint)] or [a ref to it]. Each call is one attempt, with its own id."""
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
            result = {**base, **getattr(part, "stats", {}), "status": "ok", "n_in": part.n_in, "n_out": n_out,
                      "seconds": round(time.perf_counter() - t0, 4)}
            if getattr(part, "summary", None) is not None:  # kept in the marker: a resumed run adds it too
                result["summary"] = summaries.encode(part.summary)
        except HeprayError as exc:  # data problems: retrying would fail the same way
            return {**base, "status": "failed", "error": exc.message, "n_out": 0}
        except Exception as exc:
            tb = traceback.format_exc(limit=4)
            return {**base, "status": "failed", "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
                    "traceback": tb, "n_out": 0}
        try:  # the commit: a failure here (storage) is worth another attempt
            return write_part(self.parts_dir, shard, cols, fmt=self.fmt, tree=self.tree, compression=self.compression,
                              result=result, fingerprint=part_fingerprint(self.fingerprint, shard))
        except Exception as exc:
            return {**base, "status": "failed", "retry": True, "n_out": 0,
                    "error": f"commit failed: {type(exc).__name__}: {exc}".splitlines()[0][:500]}


def map_shards(shards: Iterable[Shard], processor, parts_dir, *, fmt: str, tree: str, compression: str,
               workers: int, cpus_per_worker: float = 1.0, in_flight: int | None = None, max_retries: int = 2,
               resume: bool | str = False, total: tuple[int, int] | None = None, progress_every_s: float = 5.0,
               label: str = "run", keep_warm_s: float = 0.0, shard_timeout_s: float | None = None,
               restart_timeout_s: float = 180.0, gpus_per_worker: float = 0) -> dict:
    """Run ``processor`` over ``shards`` on ``workers`` actors; return counters, the failed shards'
    records and the ledger of committed ones (engine.ledger: on disk, streamed into the manifest).

    ``total`` = (shards, events) for the progress line and ETA. Results of committed shards are
    read from their markers, so the returned list is complete on --resume too; a committed part
    made by another job (its fingerprint differs) is redone, or with ``resume="strict"`` the
    run is refused before anything runs. A shard running longer than ``shard_timeout_s`` has its
    actor replaced and is tried again (``max_retries``), then reported as failed.

    Losing an actor (its process or its node died) costs the shard it ran one attempt; that shard
    and those queued behind it go to the actors that are left at once, and a replacement actor
    is asked for; it joins when Ray
    can place it (the node is back, an autoscaler added one), so the pool shrinks and grows
    again. Shards only go to actors that have started, so a replacement Ray cannot place holds
    nothing up; with no actor left for ``restart_timeout_s`` the run ends with one line. The
    actors come from, and go back to, the warm pool (``keep_warm_s`` > 0; see engine.pool).
    """
    import ray

    parts_dir = as_path(parts_dir)  # a local Path or a StorePath (s3://...)
    parts_dir.mkdir(parents=True, exist_ok=True)
    run_fp = fingerprint(processor, fmt, tree, compression)
    if resume == "strict":
        if iter(shards) is shards:  # a one-pass iterator: the check must not use it up
            shards = list(shards)
        _refuse_changed(shards, parts_dir, run_fp)
    first, pool_key = pool.acquire(ShardWorker, workers, cpus_per_worker, max_retries, gpus_per_worker)

    def fresh():  # a replacement for a lost actor, of the pool's shape
        return pool.new_actor(ShardWorker, cpus_per_worker, gpus_per_worker)

    # the run's settings (the processor holds config and model bytes) go to the object store once;
    # the driver holds the ref until the end, so a replacement actor can always fetch them
    token = uuid.uuid4().hex
    box = [ray.put((processor, str(parts_dir), fmt, tree, compression, run_fp))]
    per_actor = 1 + (in_flight if in_flight is not None else 1)
    slots = [_Slot(a) for a in first]
    pending: dict = {}  # task ref -> (slot, shard)
    backlog: deque[Shard] = deque()  # shards to run again (their actor was lost), before new ones
    tries: dict[str, int] = {}  # shard id -> attempts lost to timeouts, failed commits, lost actors
    ledger = Ledger()  # finished shards: no per-shard record stays in the driver's memory
    total_summary = [None]  # the processors' per-shard summaries, added as they arrive (engine.summary)
    redone: dict[str, int] = {}  # why committed parts were not kept on --resume
    lost = [0]  # actors lost (process or node died, or replaced after a shard timeout)
    none_since = [time.monotonic()]  # since when no actor has been ready (for restart_timeout_s)
    n_shards, n_events = total or (0, 0)
    prog = Progress(label, n_shards, n_events, progress_every_s)

    def failed(shard: Shard, error: str) -> dict:
        return {"shard_id": shard.shard_id, "index": shard.index, "source": shard.describe(), "status": "failed",
                "n_in": shard.num_entries, "n_out": 0, "sample": shard.sample, "error": error}

    def has_room(room: int) -> bool:
        return any(sl.ready and len(sl.queue) < room for sl in slots)

    def submit(shard: Shard, room: int) -> None:
        # the actor that read this file last, if it has room (its tree is still open), else the least loaded
        free = [sl for sl in slots if sl.ready and len(sl.queue) < room]
        sl = next((x for x in free if x.last_file == shard.file), None) or min(free, key=lambda x: len(x.queue))
        sl.last_file = shard.file
        ref = sl.actor.run.remote(shard.to_dict(), token, box)
        if not sl.queue:
            sl.head_since = time.monotonic()
        sl.queue.append(ref)
        pending[ref] = (sl, shard)

    def forget(ref) -> tuple[_Slot, Shard]:
        sl, shard = pending.pop(ref)
        sl.queue.remove(ref)
        sl.head_since = time.monotonic()
        return sl, shard

    def again(shard: Shard, why: str, hint: str = "") -> None:
        """One more attempt for ``shard``, or its failure when it has had them all."""
        n = tries[shard.shard_id] = tries.get(shard.shard_id, 0) + 1
        if n > max_retries:
            record(failed(shard, f"{why} in {n} attempts{hint}"))
        else:
            backlog.append(shard)

    def replace(sl: _Slot, why: str, hint: str = "") -> None:
        """The slot's actor is gone (or is ended): the shard it ran pays an attempt, those queued
        behind it go back as they were, and a new actor is asked for."""
        for k, ref in enumerate(list(sl.queue)):
            ray.cancel(ref)  # a task queued on a killed actor must not run after all
            shard = forget(ref)[1]
            if k == 0:
                again(shard, why, hint)
            else:
                backlog.appendleft(shard)
        pool.kill([sl.actor])
        lost[0] += 1
        sl.start(fresh())
        print(f"[hepray {label}] worker lost ({why}); {sum(x.ready for x in slots)} of {len(slots)} workers "
              "left, a replacement is asked for", file=sys.stderr, flush=True)

    def add_summary(res: dict) -> None:
        if res.get("status") == "ok" and res.get("summary") is not None:
            total_summary[0] = summaries.add(total_summary[0], summaries.decode(res["summary"]))
        res.pop("summary", None)  # the total is what the run keeps, not one per shard

    def record(res: dict) -> None:
        add_summary(res)
        ledger.add(res)
        prog.update(res.get("n_in", 0) if res["status"] == "ok" else 0, failed=res["status"] != "ok")

    def step() -> None:
        """Wait for one event: a shard's result, a replacement actor that started, or a timeout."""
        event()
        if any(sl.ready for sl in slots):
            none_since[0] = float("inf")
        elif none_since[0] == float("inf"):
            none_since[0] = time.monotonic()

    def event() -> None:
        now = time.monotonic()
        starting = {sl.ready_ref: sl for sl in slots if not sl.ready and sl.actor is not None}
        waits = [restart_timeout_s - (now - none_since[0])] if not any(sl.ready for sl in slots) else []
        if shard_timeout_s:
            waits += [sl.head_since + shard_timeout_s - now for sl in slots if sl.queue]
        wait_s = max(0.0, min(waits)) + 0.05 if waits else None
        done = ray.wait([*pending, *starting], num_returns=1, timeout=wait_s)[0] if pending or starting else []
        now = time.monotonic()
        if not done:
            if not any(sl.ready for sl in slots) and (now - none_since[0] >= restart_timeout_s or not starting):
                raise HeprayError(
                    f"no worker left: {lost[0]} lost (a node died?) and none could start again within "
                    f"engine.restart_timeout_s={restart_timeout_s:g} s; {ledger.ok} shards are done and "
                    "their parts are kept: rerun with --resume when the cluster has CPUs again")
            for sl in [x for x in slots if shard_timeout_s and x.queue and now - x.head_since > shard_timeout_s]:
                replace(sl, f"ran longer than engine.shard_timeout_s={shard_timeout_s:g} s",
                        "; raise it or make the shard smaller")
            return
        ref = done[0]
        if ref in starting:
            sl = starting[ref]
            try:
                ray.get(ref)
                sl.ready, sl.start_failures = True, 0
                if sl.started_late:
                    print(f"[hepray {label}] worker back: {sum(x.ready for x in slots)} of {len(slots)} workers",
                          file=sys.stderr, flush=True)
            except Exception as exc:  # it could not start: ask again, a few times
                sl.start_failures += 1
                why = str(exc).splitlines()[0][:200]
                if sl.start_failures >= 3:
                    sl.actor = None
                    print(f"[hepray {label}] a worker failed to start 3 times ({why}); going on with fewer",
                          file=sys.stderr, flush=True)
                else:
                    sl.start(fresh())
            return
        sl, shard = pending[ref]
        try:
            res = ray.get(ref)
        except ray.exceptions.RayActorError as exc:  # its process or its node died
            replace(sl, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            return
        except Exception as exc:
            forget(ref)
            record(failed(shard, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"))
            return
        forget(ref)
        if not isinstance(res, dict) or "status" not in res:  # never a driver crash
            res = {**failed(shard, f"attempt returned no commit record ({type(res).__name__})"), "retry": True}
        if res.pop("retry", False) and tries.get(shard.shard_id, 0) < max_retries:
            tries[shard.shard_id] = tries.get(shard.shard_id, 0) + 1
            backlog.append(shard)
            return
        record(res)

    def fill(room: int) -> None:
        while backlog and has_room(room):
            submit(backlog.popleft(), room)

    parked, seen = False, 0
    try:
        for shard in shards:
            seen += 1
            if resume:
                state, rec = marker_state(parts_dir, shard.shard_id, part_fingerprint(run_fp, shard))
                if state == "ok":
                    rec = {**rec, "resumed": True}
                    add_summary(rec)
                    ledger.add(rec)
                    prog.skipped += rec.get("n_in", 0)
                    prog.shards += 1
                    continue
                if state != "missing":  # write_part replaces a marker that vouches for nothing
                    redone[state] = redone.get(state, 0) + 1
            # the last ``workers`` shards go only to idle actors: queued behind a busy actor, one of
            # them could keep the run going for a whole shard while another actor sits idle
            room = 1 if n_shards and n_shards - seen < workers else per_actor
            fill(room)
            while backlog or not has_room(room):
                step()
                fill(room)
            submit(shard, room)
        while pending or backlog:
            fill(1 if n_shards else per_actor)  # shards sent back at the end: to idle actors
            if pending or backlog:
                step()
        # actors still starting are parked too (a short run may end before one is up); one Ray
        # cannot place is released with the pool, like any parked actor
        pool.park([sl.actor for sl in slots if sl.actor is not None], pool_key, keep_warm_s)
        parked = True
    finally:
        if not parked:  # interrupted: work may still be in flight on them
            prog.close()
            pool.kill([sl.actor for sl in slots if sl.actor is not None])
    # exactly the manifest's parts stay: a loser's, a dead attempt's or an older job's files go
    remove_uncommitted(parts_dir, *ledger.kept())
    prog.print(final=True)
    return {
        "shards": ledger.shards,
        "shards_ok": ledger.ok,
        "shards_resumed": ledger.resumed,
        "shards_redone": sum(redone.values()),
        "redone": redone,
        "workers_lost": lost[0],
        "events_in": ledger.events_in,
        "events_out": ledger.events_out,
        "seconds": round(time.monotonic() - prog.t0, 3),
        "summary": total_summary[0],
        "failed": sorted(ledger.failed, key=lambda r: r.get("index", 0)),
        "ledger": ledger,
    }


class _Slot:
    """One place in the pool: its actor, whether it has started, the refs queued on it in order."""

    def __init__(self, actor):
        self.queue: list = []
        self.head_since = 0.0  # when the first queued task started (estimate)
        self.started_late = False
        self.start_failures = 0
        self.start(actor, late=False)

    def start(self, actor, late: bool = True) -> None:
        self.actor, self.ready, self.started_late = actor, False, late
        self.ready_ref = actor.pid.remote()  # resolves once Ray has placed and started it
        self.last_file: str | None = None  # an actor keeps the trees it read open (KEEP_OPEN)


def _refuse_changed(shards: Iterable[Shard], parts_dir, run_fp: str) -> None:
    """``--resume --strict``: refuse the run, before anything runs, if any committed part was
    made by another job (its fingerprint differs)."""
    stale = total = 0
    for shard in shards:
        state, _ = marker_state(parts_dir, shard.shard_id, part_fingerprint(run_fp, shard))
        total += state != "missing"
        stale += state == "stale"
    if stale:
        raise HeprayError(f"{parts_dir}: {stale} of {total} committed parts were made by a different job (cut, "
                          "expressions, model or settings changed); resume without --strict to redo them, or "
                          "choose another output.dir")
