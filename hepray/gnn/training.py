"""One torch training in this process (``direct``) or on Ray Train workers (``ray_train``), for
any network whose per-process training is a function.

``setup["process"](setup, checkpoints, rank=, world=, device=, log=) -> (model, FitResult)``
builds the model, its batches and objective and runs :func:`hepray.training.fit`; it must be a
module-level function (it travels to the workers by reference). ``setup["build"](setup)``
rebuilds the bare network on the driver for the weights Ray Train's last checkpoint holds.
Checkpoints go to ``<run_dir>/checkpoints/<tag>`` (direct) or Ray Train's storage
``<run_dir>/ray_train/<tag>``; ``hepray run --resume`` continues from the latest one either way.

The GNN and jet-graph workloads use it; ``TrainClassifier._train`` is the same logic bound to the
MLP and could call this (see the report of issue 6).
"""

from __future__ import annotations

from ..training import (
    DirectoryCheckpoints,
    FitResult,
    read_loop_state,
    read_weights,
    run_torch_trainer,
)


def ray_worker(setup: dict) -> None:
    """Entry point of each Ray Train worker."""
    import torch

    from ..training import RayTrainCheckpoints, worker_context

    torch.set_num_threads(setup["threads"])
    rank, world, device = worker_context()
    setup["process"](setup, RayTrainCheckpoints(), rank=rank, world=world, device=device,
                     log=lambda msg: print(f"[hepray {setup['tag']} rank {rank}] {msg}", flush=True))


def run_training(ctx, setup: dict, *, mode: str, workers: int, keep_checkpoints: int, threads: int,
                 use_gpu: bool = False, cpus_per_worker: float = 1.0):
    """Train once; returns (model with the best weights, FitResult as a dict)."""
    import torch

    tag = setup["tag"]
    if mode == "direct":
        store = DirectoryCheckpoints(ctx.store.local(f"checkpoints/{tag}"), keep=keep_checkpoints)
        if not ctx.resume:
            store.clear()
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            model, res = setup["process"](setup, store, log=lambda m: ctx.log(f"[{tag}] {m}"))
        finally:
            torch.set_num_threads(before)
        return model, res.to_dict()
    result = run_torch_trainer(ray_worker, setup, storage=ctx.store.path("ray_train"), name=tag, num_workers=workers,
                               use_gpu=use_gpu, cpus_per_worker=cpus_per_worker, resume=ctx.resume,
                               keep_checkpoints=keep_checkpoints, address=ctx.address)
    with result.checkpoint.as_directory() as folder:
        weights, state = read_weights(folder, "best"), read_loop_state(folder)
    model = setup["build"](setup)
    model.load_state_dict(weights)
    return model, FitResult.from_state(state).to_dict()


def loop_config(t):
    """:class:`~hepray.training.LoopConfig` from a job's ``training:`` block
    (:class:`hepray.workloads.train_classifier.TrainingSpec`)."""
    from ..training import LoopConfig

    return LoopConfig(epochs=t.epochs, schedule=t.schedule, step_epochs=t.step_epochs, gamma=t.gamma,
                      patience=t.patience, min_delta=t.min_delta, grad_clip=t.grad_clip,
                      checkpoint_every=t.checkpoint_every)
