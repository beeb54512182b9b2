"""Choosing whether a torch training runs on Ray Train, and on how many workers.

Ray Train itself (TorchTrainer, the worker's rank and device, its checkpoints) lives in
``hepray.engine.train``; the names are re-exported here for the training loop's callers.

Its start costs tens of seconds (measured ~30-40 s for 1-2 workers on a busy 2-core machine,
see docs/classifier.md), so :func:`choose_mode` keeps small trainings in one process.
"""

from __future__ import annotations

from ..engine.train import run_torch_trainer, worker_context  # noqa: F401 - re-exported


def choose_mode(job, events: int, cpus: int, nodes: int = 1) -> tuple[str, int]:
    """(``direct`` or ``ray_train``, Ray Train workers) for a torch training job, given the
    cluster's ``cpus`` and alive ``nodes`` (``ctx.cluster_cpus()``, ``ctx.nodes()``).

    Workers: ``num_workers`` or the cluster's CPUs / ``engine.cpus_per_worker``. ``mode: auto``
    picks Ray Train when the work is spread over nodes or GPUs, or when ``events × epochs``
    exceeds ``auto_ray_train_work`` (where the measured speed-up of several workers pays for
    their start) and there is more than one worker; one process otherwise.
    """
    workers = job.num_workers or max(1, int(cpus / job.engine.cpus_per_worker))
    if job.mode != "auto":
        return job.mode, workers
    if workers > 1 and (nodes > 1 or job.use_gpu or events * job.training.epochs > job.auto_ray_train_work):
        return "ray_train", workers
    return "direct", workers
