"""Starting or joining Ray. No address: a local instance; RAY_ADDRESS or --address: a cluster;
under ``ray job submit`` the driver joins its cluster by itself."""

from __future__ import annotations

import logging
import os


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(ignore_reinit_error=True, logging_level=logging.WARNING, log_to_driver=True)
    if address is None:
        # A local instance: no dashboard (it binds a port and costs seconds), our package on the path.
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    ray.init(address=address, **kwargs)


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))
