"""Shard actors kept warm between runs in one process (a script, a notebook, the demo's chain).

Starting an actor costs 1.5-2 s (a new process importing numpy, uproot, xgboost): on a 2 M event
run that is a third of the time. A finished run parks its actors here, and the next run of the
same shape takes them back. Idle actors still hold their CPUs, so the pool is released

- when a run asks for another shape (CPUs per worker, retries, another Ray session),
- when any other hepray stage asks Ray for CPUs (``runtime.ensure_ray`` without ``keep_pool``),
- after ``engine.keep_warm_s`` idle seconds (a daemon timer),
- by ``hepray.release_workers()``, and with the driver process (actors die with their owner).
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_key: tuple | None = None
_actors: list = []
_timer: threading.Timer | None = None


def acquire(actor_cls, n: int, num_cpus: float, max_retries: int, num_gpus: float = 0) -> tuple[list, tuple]:
    """``n`` actors of ``actor_cls`` (parked ones first), and the key to park them under."""
    import ray

    key = (ray.get_runtime_context().get_session_name(), actor_cls.__qualname__, num_cpus, num_gpus, max_retries)
    global _key, _actors
    with _lock:
        _cancel_timer()
        taken = _actors if _key == key else []
        if _key != key:
            kill(_actors)
        _key, _actors = None, []  # taken out: a run that fails kills them instead of parking
    kill(taken[n:])
    taken = taken[:n]
    return taken + [new_actor(actor_cls, num_cpus, num_gpus) for _ in range(n - len(taken))], key


def new_actor(actor_cls, num_cpus: float, num_gpus: float = 0):
    """A fresh shard actor. Ray does not restart it: a lost actor is replaced by the executor,
    which sends its shards to the actors that are left (a restart on a lost node would wait)."""
    import ray

    return ray.remote(actor_cls).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0,
                                         max_task_retries=0).remote(num_cpus, num_gpus)


def park(actors: list, key: tuple, keep_warm_s: float) -> None:
    """Keep idle ``actors`` for the next run, for at most ``keep_warm_s`` seconds."""
    global _key, _actors, _timer
    if keep_warm_s <= 0:
        kill(actors)
        return
    with _lock:
        _cancel_timer()
        kill(_actors)
        _key, _actors = key, list(actors)
        _timer = threading.Timer(keep_warm_s, release)
        _timer.daemon = True
        _timer.start()


def release() -> int:
    """Kill the parked actors, freeing their CPUs; returns how many there were."""
    global _key, _actors
    with _lock:
        _cancel_timer()
        n = len(_actors)
        kill(_actors)
        _key, _actors = None, []
    return n


def parked() -> int:
    return len(_actors)


def _cancel_timer() -> None:
    global _timer
    if _timer is not None:
        _timer.cancel()
        _timer = None


def kill(actors: list) -> None:
    """Kill ``actors`` (dead ones and handles from an earlier Ray session are skipped)."""
    if not actors:
        return
    import ray

    if not ray.is_initialized():  # Ray was shut down: the actors went with it
        return
    for a in actors:
        try:
            ray.kill(a)
        except Exception:  # already dead, or a handle from an earlier session
            pass
