"""Running a training function on Ray Train's TorchTrainer, and choosing whether to.

Ray Train starts a controller and one actor per worker, sets up ``torch.distributed`` (gloo on
CPU, NCCL when ``use_gpu``) and keeps checkpoints in ``storage/name``. Starting a new trainer
with the same storage and name continues from its latest checkpoint (Ray Train v2's way of
resuming; ``resume_from_checkpoint`` is deprecated), so ``--resume`` keeps that folder and a
fresh run removes it. For a multi-node cluster the storage must be shared (NFS, S3, ...).

That start costs tens of seconds (measured ~30-40 s for 1-2 workers on a busy 2-core machine,
see docs/classifier.md), so :func:`choose_mode` keeps small trainings in one process.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path


def run_torch_trainer(worker: Callable[[dict], None], config: dict, *, storage: str | Path, name: str,
                      num_workers: int, use_gpu: bool = False, cpus_per_worker: float = 1.0,
                      resume: bool = False, keep_checkpoints: int = 2, max_failures: int = 0):
    """``worker(config)`` on ``num_workers`` Ray Train workers; returns the ``ray.train.Result``
    (its ``checkpoint`` is the last one reported). Raises the workers' error if training failed.

    ``max_failures``: how often a failed worker group restarts from the latest checkpoint.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = Path(storage).resolve()
    if not resume:
        shutil.rmtree(storage / name, ignore_errors=True)
    trainer = TorchTrainer(
        worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result


def worker_context() -> tuple[int, int, object]:
    """(rank, world size, torch device) inside a Ray Train worker."""
    import ray.train
    from ray.train.torch import get_device

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size(), get_device()


def choose_mode(job, events: int) -> tuple[str, int]:
    """(``direct`` or ``ray_train``, Ray Train workers) for a torch training job.

    Workers: ``num_workers`` or the cluster's CPUs / ``engine.cpus_per_worker``. ``mode: auto``
    picks Ray Train when the work is spread over nodes or GPUs, or when ``events × epochs``
    exceeds ``auto_ray_train_work`` (where the measured speed-up of several workers pays for
    their start) and there is more than one worker; one process otherwise.
    """
    import ray

    from ..engine.runtime import cluster_cpus

    workers = job.num_workers or max(1, int(cluster_cpus() / job.engine.cpus_per_worker))
    if job.mode != "auto":
        return job.mode, workers
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    if workers > 1 and (nodes > 1 or job.use_gpu or events * job.training.epochs > job.auto_ray_train_work):
        return "ray_train", workers
    return "direct", workers
