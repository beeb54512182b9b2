"""``map_tasks``: the one ordered, bounded fan-out of small functions (planning batches, reading
shards into memory, moments, scan points, bagging members...).

``map_tasks(fn, items, *args)`` yields ``fn(item, *args)`` for each item, in the items' order. On
Ray, each call is a task (``num_cpus`` each) and at most ``window`` run or wait at once, so the
driver holds a bounded number of results however many items there are; ``args`` go to Ray's
object store once, not once per task. In this process (``parallel=False``, or Ray not on hand and
not asked for) the calls run one by one, with no Ray import: small jobs never pay Ray's start.

data/ and training/ call the plain function; workloads call ``ctx.map_tasks`` (the run's address).
``fn`` should return something small (sums, counts, one shard's columns), never a whole dataset.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .runtime import cluster_cpus, ensure_ray, ray_on_hand


def window_for(num_cpus: float = 1.0) -> int:
    """Tasks in flight: twice as many as the cluster can run at once (one waiting behind each
    running one), at least 2. The one formula for every fan-out."""
    return max(2, int(2 * cluster_cpus() / max(num_cpus, 1e-3)))


def map_tasks(fn: Callable[..., Any], items: Iterable, *args, parallel: bool | None = None, num_cpus: float = 1.0,
              window: int | None = None, max_retries: int = 2, address: str | None = None) -> Iterator[Any]:
    """Yield ``fn(item, *args)`` for each of ``items``, in order.

    ``parallel``: True runs on Ray (joining ``address``/RAY_ADDRESS, or starting a local instance);
    False runs here; None (default) runs on Ray only if Ray is on hand (this process has it, or an
    address is given) and there are at least two items. A task's exception is raised here as the
    original exception (a hepray DataError keeps its one-line message). Closing the iterator
    early cancels the tasks still in flight.
    """
    it = iter(items)
    if parallel is None:
        head = list(itertools.islice(it, 2))
        it = itertools.chain(head, it)
        parallel = len(head) > 1 and ray_on_hand(address)
    if not parallel:
        return (fn(item, *args) for item in it)
    return _on_ray(fn, it, args, num_cpus, window, max_retries, address)


def _on_ray(fn, it: Iterator, args: tuple, num_cpus: float, window: int | None, max_retries: int,
            address: str | None) -> Iterator[Any]:
    import ray

    ensure_ray(address)  # also frees CPUs held by parked shard actors (engine.pool)
    remote = ray.remote(num_cpus=num_cpus, max_retries=max_retries)(fn)
    window = window or window_for(num_cpus)
    arg_refs = [ray.put(a) for a in args]  # once, not per task (a model, a spec, the training rows)
    pending: deque = deque()
    try:
        for item in it:
            pending.append(remote.remote(item, *arg_refs))
            if len(pending) >= window:
                yield _get(pending.popleft())
        while pending:
            yield _get(pending.popleft())
    finally:
        for ref in pending:  # the consumer stopped early, or a task failed: nothing left running
            ray.cancel(ref)


def _get(ref):
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None  # the task's own exception, not Ray's wrapper with its traceback text
        raise


def map_shards_tasks(fn: Callable[..., Any], shards: Iterable, *args, **kw) -> Iterator[tuple[Any, Any]]:
    """``(shard, fn(shard.to_dict(), *args))`` in plan order (a shard travels as its dict)."""
    shards = iter(shards)
    submitted: deque = deque()

    def dicts():
        for s in shards:
            submitted.append(s)
            yield s.to_dict()

    for res in map_tasks(fn, dicts(), *args, **kw):
        yield submitted.popleft(), res
