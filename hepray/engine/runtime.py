"""Starting or joining Ray. No address: a local instance; RAY_ADDRESS or --address: a cluster;
under ``ray job submit`` the driver joins its cluster by itself."""

from __future__ import annotations

import logging
import os
import sys


def ensure_ray(address: str | None = None, num_cpus: int | None = None, *, keep_pool: bool = False) -> None:
    """Every hepray stage calls this before it asks Ray for CPUs: it also frees the CPUs that idle
    shard actors hold (engine.pool), unless the caller is the shard executor that reuses them."""
    import ray

    if ray.is_initialized():
        if not keep_pool:
            from . import pool

            pool.release()
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(ignore_reinit_error=True, logging_level=logging.WARNING, log_to_driver=True)
    if address is None:
        # A local instance: no dashboard (it binds a port and costs seconds), our package on the path.
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    ray.init(address=address, **kwargs)


def ray_on_hand(address: str | None = None) -> bool:
    """A Ray instance to join is there (this process has one, or an address is given): joining
    costs little, while starting a local instance costs seconds, so small jobs start it only
    when they need it."""
    return ray_initialized() or bool(address or os.environ.get("RAY_ADDRESS"))


def local_cpus() -> int:
    """CPUs this process may use (work done in the driver itself, e.g. a direct xgboost fit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def ray_initialized() -> bool:
    ray = sys.modules.get("ray")  # not imported: not initialized (and no import paid to find out)
    return ray is not None and ray.is_initialized()


def alive_nodes() -> int:
    import ray

    return len([n for n in ray.nodes() if n.get("Alive")])


def dask_on_ray(address: str | None = None):
    """Dask's scheduler set to Ray's (``hepray.dask.on_ray``): the context manager Ray returns."""
    ensure_ray(address)
    from ray.util.dask import enable_dask_on_ray

    return enable_dask_on_ray()
