"""Starting or joining Ray. No address: a local instance; RAY_ADDRESS or --address: a cluster;
under ``ray job submit`` the driver joins its cluster by itself."""

from __future__ import annotations

import logging
import os
import socket
import sys

from ..errors import ClusterUnreachable


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
        # A local instance: no dashboard (it binds a port and costs seconds). Ray 2.60's servers
        # listen on every interface whatever node address is given (no bind option), so the
        # token is what keeps other machines out: Ray turns it on for a new local instance
        # unless RAY_AUTH_MODE says otherwise. hepray does not set the variable itself: this
        # process has read Ray's config already, and its mode would then differ from the instance's.
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
            logging.getLogger("hepray").warning(
                "RAY_AUTH_MODE=disabled: this local Ray instance listens on every network interface "
                "without a token; anyone who can reach this machine can run code in it")
        ray.init(**kwargs)
        return
    _check_listening(address)
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:  # Ray logs the cause (e.g. InvalidAuthToken) above its own message
        raise ClusterUnreachable(address, _refused_hint()) from exc


def _gcs_host_port(address: str) -> tuple[str, int] | None:
    """host and port of a ``host:port`` GCS address (``auto``, ``ray://`` and URLs: None)."""
    if address in ("auto", "local") or "://" in address:
        return None
    host, _, port = address.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def _check_listening(address: str) -> None:
    """One line at once when nothing listens at ``address`` (Ray itself retries for a minute)."""
    hp = _gcs_host_port(address)
    if hp is None:
        return
    try:
        socket.create_connection(hp, timeout=5).close()
    except OSError as exc:
        raise ClusterUnreachable(address, f"nothing answers there ({exc.strerror or exc}); check RAY_ADDRESS or "
                                          "--address (host:port of the head's GCS, 6379 by default) and that "
                                          "the head is running") from None


def _refused_hint() -> str:
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return ("the head refused the connection; a cluster with token authentication needs "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) set to its token")
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        return ("the head refused the connection; set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the "
                "cluster's token (RAY_AUTH_MODE=token is set, the token came from ~/.ray/auth_token)")
    return ("the head refused the connection or its token; check that RAY_AUTH_TOKEN (or the file "
            "RAY_AUTH_TOKEN_PATH names) holds the token the cluster was started with")


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


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


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
