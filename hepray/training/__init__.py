"""Shared pieces of every torch training in hepray (classifier, GNN, flash simulation, ...).

- :func:`fit` / :class:`LoopConfig` / :class:`FitResult` (``torch_loop``): the loop - epochs,
  lr schedule, early stopping, checkpoints and resumption, DDP or optimizer-side gradient
  averaging; the model-specific part is a ``step(model, batch)`` callable.
- :class:`ShardBatches`, :func:`common_steps`, :func:`to_torch` (``batches``): mini-batches
  streamed from shards, per rank.
- :class:`Moments`, :func:`map_shard_tasks` (``standardize``): one distributed statistics pass.
- :class:`DirectoryCheckpoints`, :class:`RayTrainCheckpoints`, :func:`read_weights`,
  :func:`read_loop_state` (``checkpoints``).
- :func:`run_torch_trainer`, :func:`worker_context`, :func:`choose_mode` (``distributed``).
- ``objectives`` (Classification, SystematicAware, Adversarial) and ``diagnostics`` import
  torch-heavy helpers; import them from their modules.

Names are imported on first use; the torch ones need ``pip install hepray[torch]``.
"""

from __future__ import annotations

import importlib

# name -> submodule; imported on first use so that Ray tasks needing only ``standardize``
# (numpy) do not pay for importing torch
_EXPORTS = {
    "ShardBatches": "batches", "common_steps": "batches", "partition_shards": "batches", "rank_share": "batches",
    "to_torch": "batches",
    "CheckpointStore": "checkpoints", "DirectoryCheckpoints": "checkpoints", "RayTrainCheckpoints": "checkpoints",
    "read_loop_state": "checkpoints", "read_weights": "checkpoints",
    "choose_mode": "distributed", "run_torch_trainer": "distributed", "worker_context": "distributed",
    "Moments": "standardize", "map_shard_tasks": "standardize", "merge_all": "standardize",
    "FitResult": "torch_loop", "LoopConfig": "torch_loop", "allreduce_sum": "torch_loop", "evaluate": "torch_loop",
    "fit": "torch_loop", "world_rank": "torch_loop", "world_size": "torch_loop",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
