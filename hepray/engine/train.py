"""Ray Train, behind three functions: the only place hepray's trainings touch ``ray.train``.

- :func:`run_torch_trainer`: a torch training function on Ray Train's TorchTrainer (DDP);
- :func:`worker_context` and :class:`RayTrainCheckpoints`: what that function uses inside a worker;
- :func:`fit_xgboost` : xgboost on Ray Train's XGBoostTrainer (train_bdt ``mode: distributed``).

Ray Train starts a controller and one actor per worker, sets up ``torch.distributed`` (gloo on
CPU, NCCL when ``use_gpu``) and keeps checkpoints in ``storage/name``. Starting a new trainer
with the same storage and name continues from its latest checkpoint (Ray Train v2's way of
resuming; ``resume_from_checkpoint`` is deprecated), so ``--resume`` keeps that folder and a
fresh run removes it. For a multi-node cluster the storage must be shared (NFS, S3, ...): it may
be a local path or an fsspec URL (``s3://bucket/run/ray_train``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from .runtime import ensure_ray

T = TypeVar("T")


def _storage(storage) -> str:
    """Ray Train's storage_path: an absolute local path, or the URL as it is."""
    s = os.fspath(storage) if not hasattr(storage, "url") else storage.url
    return s if "://" in s else str(Path(s).resolve())


def _remove(storage: str, name: str) -> None:
    from ..io.parts import as_path, remove_tree

    remove_tree(as_path(storage) / name)


def run_torch_trainer(worker: Callable[[dict], None], config: dict, *, storage, name: str,
                      num_workers: int, use_gpu: bool = False, cpus_per_worker: float = 1.0,
                      resume: bool = False, keep_checkpoints: int = 2, max_failures: int = 0,
                      address: str | None = None):
    """``worker(config)`` on ``num_workers`` Ray Train workers; returns the ``ray.train.Result``
    (its ``checkpoint`` is the last one reported). Raises the workers' error if training failed.

    ``max_failures``: how often a failed worker group restarts from the latest checkpoint.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ensure_ray(address)  # frees CPUs held by parked shard actors
    storage = _storage(storage)
    if not resume:
        _remove(storage, name)
    trainer = TorchTrainer(
        worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage,
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


class RayTrainCheckpoints:
    """Checkpoints reported to Ray Train (``ray.train.report``): rank 0 attaches the folder,
    the other ranks report the metrics only (every rank must report, it is a barrier).
    ``ray.train.get_checkpoint()`` gives the latest one back after a worker failure or when a
    run with the same storage path and name is started again (``--resume``)."""

    def restore(self, read: Callable[[Path], T]) -> T | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as folder:
            return read(Path(folder))

    def save(self, epoch: int, metrics: dict, write: Callable[[Path], None]) -> None:
        import ray.train

        metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}
        if ray.train.get_context().get_world_rank() != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def fit_xgboost(train: tuple[np.ndarray, np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray, np.ndarray],
                params: dict, rounds: int, early_stopping_rounds: int | None, *, num_workers: int, storage,
                name: str = "xgb", address: str | None = None):
    """An xgboost Booster trained by Ray Train's XGBoostTrainer on ``num_workers`` workers (one
    CPU each), each given its part of the ``(X, y, w)`` training rows."""
    import pyarrow as pa
    import ray.data
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.xgboost import RayTrainReportCallback, XGBoostTrainer

    ensure_ray(address)
    n_feat = train[0].shape[1]

    def frame(X, y, w):
        d = {f"x{i}": X[:, i] for i in range(n_feat)}
        d.update(y=y, w=w)
        return ray.data.from_arrow(pa.table(d))

    def train_fn(config):
        from hepray.extras import import_xgboost

        xgb = import_xgboost()
        shard = ray.train.get_dataset_shard("train").materialize().to_pandas()
        v = ray.train.get_dataset_shard("validation").materialize().to_pandas()
        cols = [f"x{i}" for i in range(n_feat)]
        dtrain = xgb.DMatrix(shard[cols].to_numpy(), shard["y"].to_numpy(), weight=shard["w"].to_numpy())
        dval = xgb.DMatrix(v[cols].to_numpy(), v["y"].to_numpy(), weight=v["w"].to_numpy())
        xgb.train(config["params"], dtrain, config["rounds"], evals=[(dval, "validation")],
                  early_stopping_rounds=config["early"], verbose_eval=False,
                  callbacks=[RayTrainReportCallback(frequency=0, checkpoint_at_end=True)])

    trainer = XGBoostTrainer(
        train_fn, train_loop_config={"params": {**params, "nthread": 1}, "rounds": rounds, "early": early_stopping_rounds},
        scaling_config=ScalingConfig(num_workers=num_workers, resources_per_worker={"CPU": 1}),
        datasets={"train": frame(*train), "validation": frame(*val)},
        run_config=RunConfig(name=name, storage_path=_storage(storage)),
    )
    result = trainer.fit()
    return RayTrainReportCallback.get_model(result.checkpoint)
