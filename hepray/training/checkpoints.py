"""Where a training loop's checkpoints live: a run-directory folder (one process) or Ray Train's
storage (workers, possibly on other nodes). Same contents either way, so the loop does not care.

A checkpoint is a folder holding ``state.pt`` (tensors only: model, best model, optimizer and
scheduler states, torch RNG; loaded with ``torch.load(weights_only=True)``, never unpickled
code) and ``loop.json`` (epoch, early-stopping counters, history).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..engine.train import RayTrainCheckpoints  # noqa: F401 - Ray Train's store (engine/train.py), re-exported

T = TypeVar("T")
STATE, LOOP = "state.pt", "loop.json"


class CheckpointStore(Protocol):
    def restore(self, read: Callable[[Path], T]) -> T | None:
        """``read(folder)`` on the latest checkpoint, or None when there is none."""

    def save(self, epoch: int, metrics: dict, write: Callable[[Path], None]) -> None:
        """Make a checkpoint: ``write(folder)`` fills a folder (called on rank 0 only)."""


class DirectoryCheckpoints:
    """``root/epoch_0003/`` folders, written to a temporary name and renamed (a crash never
    leaves a half checkpoint that looks complete); the last ``keep`` are kept."""

    def __init__(self, root: str | os.PathLike, keep: int = 2):
        self.root, self.keep = Path(root), max(1, keep)

    def folders(self) -> list[Path]:
        if not self.root.exists():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("epoch_")
                      and (p / LOOP).exists())

    def latest(self) -> Path | None:
        found = self.folders()
        return found[-1] if found else None

    def restore(self, read: Callable[[Path], T]) -> T | None:
        path = self.latest()
        return None if path is None else read(path)

    def save(self, epoch: int, metrics: dict, write: Callable[[Path], None]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"epoch_{epoch:04d}"
        tmp = Path(tempfile.mkdtemp(prefix=".tmp_", dir=self.root))
        write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in self.folders()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def read_loop_state(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``loop.json`` of a checkpoint folder: epoch, best epoch and metric, history."""
    return json.loads((Path(folder) / LOOP).read_text())


def read_weights(folder: str | os.PathLike, which: str = "best") -> dict:
    """A state_dict from a checkpoint folder: ``best`` (early stopping's choice) or ``model``
    (the last epoch's). Loaded with ``weights_only=True``."""
    import torch

    state = torch.load(Path(folder) / STATE, map_location="cpu", weights_only=True)
    return state.get(which) or state["model"]
