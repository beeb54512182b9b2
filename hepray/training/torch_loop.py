"""One torch training loop for every hepray network, in one process or in each Ray Train worker.

The loop owns what every training needs and nothing model-specific: epochs, the learning-rate
schedule, early stopping on a validation metric (keeping the best weights), a checkpoint every
N epochs with everything needed to continue bit for bit (weights, optimizer and scheduler
states, RNG, counters, history), resumption from the latest checkpoint, distributed gradient
averaging, and throughput counters. The model-specific parts are arguments:

- ``step(model, batch) -> Tensor | dict``: a loss tensor (the loop zeroes the gradients,
  back-propagates, clips and steps every optimizer), or a dict of floats when the step updated
  the parameters itself (e.g. ``hepray.models.losses.adnn_step``, which needs two optimizers).
- ``train_batches(epoch)`` / ``val_batches(epoch)``: iterables of dicts of numpy arrays or
  tensors (see :class:`hepray.training.batches.ShardBatches`).
- ``val_step(model, batch) -> dict``: per-batch *sums*, with ``"weight"`` the normaliser; the
  loop reports ``val_<key> = Σ key / Σ weight`` over all ranks and monitors ``config.monitor``.

Under ``torch.distributed`` (Ray Train's TorchTrainer sets it up: gloo on CPU, NCCL on GPU) the
model is wrapped in DistributedDataParallel (``sync="ddp"``); a step that calls the model more
than once per update (ADNN's classifier and penultimate passes) uses ``sync="optimizer"``
instead: gradients are averaged over ranks just before each ``optimizer.step()``. Every rank
must take the same number of steps per epoch (``ShardBatches(steps=...)``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from ..extras import require
from .batches import num_rows, to_torch
from .checkpoints import LOOP, STATE, CheckpointStore

torch = require("torch")
nn = torch.nn


@dataclasses.dataclass
class LoopConfig:
    """Epochs, schedule, early stopping and checkpointing of :func:`fit`.

    ``schedule``: ``cosine`` (to 0 over ``epochs``), ``step`` (×``gamma`` every ``step_epochs``),
    ``plateau`` (×``gamma`` after ``step_epochs`` epochs without improvement) or ``none``.
    ``patience``: stop after this many epochs without an improvement of ``min_delta`` in
    ``monitor`` (None: never stop early).
    """

    epochs: int = 20
    schedule: Literal["none", "cosine", "step", "plateau"] = "cosine"
    step_epochs: int = 10
    gamma: float = 0.5
    patience: int | None = 5
    min_delta: float = 0.0
    monitor: str = "val_loss"
    restore_best: bool = True
    grad_clip: float | None = None
    checkpoint_every: int = 1


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` did: per-epoch history, the best epoch, throughput."""

    history: list[dict]
    best_epoch: int | None
    best_metric: float | None
    epochs_done: int
    resumed_at: list[int]  # epochs after which a run continued from a checkpoint
    stopped_early: bool
    train_seconds: float
    train_events: int

    @classmethod
    def from_state(cls, state: dict) -> FitResult:
        """From a checkpoint's ``loop.json`` (what a Ray Train run leaves for the driver)."""
        return cls(history=state["history"], best_epoch=state["best_epoch"], best_metric=state["best_metric"],
                   epochs_done=state["epoch"], resumed_at=list(state.get("resumed_at", [])),
                   stopped_early=bool(state.get("stopped_early")), train_seconds=state["train_seconds"],
                   train_events=state["train_events"])

    @property
    def events_per_s(self) -> float:
        return self.train_events / self.train_seconds if self.train_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "events_per_s": round(self.events_per_s, 1)}


# -- distributed helpers -------------------------------------------------------------------------
def world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def world_rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def allreduce_sum(values: list[float], device=None) -> list[float]:
    """Sum of ``values`` over ranks (identity in one process)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _average_gradients_before_step(optimizer, args, kwargs):
    """Optimizer step pre-hook: gradients averaged over ranks (a missing one counts as 0)."""
    world = world_size()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= world


def _broadcast_parameters(model: nn.Module):
    for t in list(model.parameters()) + list(model.buffers()):
        torch.distributed.broadcast(t.data, src=0)


# -- schedules -----------------------------------------------------------------------------------
def make_scheduler(optimizer, config: LoopConfig):
    sched = torch.optim.lr_scheduler
    if config.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    if config.schedule == "step":
        return sched.StepLR(optimizer, step_size=config.step_epochs, gamma=config.gamma)
    if config.schedule == "plateau":
        return sched.ReduceLROnPlateau(optimizer, factor=config.gamma, patience=config.step_epochs)
    if config.schedule == "none":
        return None
    raise ValueError(f"unknown schedule {config.schedule!r}; use cosine, step, plateau or none")


# -- the loop ------------------------------------------------------------------------------------
Step = Callable[[Any, dict], Any]


def fit(model: nn.Module, optimizers, step: Step, train_batches: Callable[[int], Iterable], *,
        config: LoopConfig, val_batches: Callable[[int], Iterable] | None = None,
        val_step: Callable[[Any, dict], dict] | None = None, checkpoints: CheckpointStore | None = None,
        sync: Literal["ddp", "optimizer"] = "ddp", device=None, log: Callable[[str], None] | None = None,
        metrics: Callable[[int, dict], dict] | None = None) -> FitResult:
    """Train ``model`` for ``config.epochs`` (minus those a checkpoint already did).

    ``optimizers``: one optimizer or a dict name -> optimizer (all are checkpointed and get the
    schedule). ``metrics(epoch, entry)``: optional extra numbers per epoch (on every rank).
    Returns a :class:`FitResult`; with ``restore_best`` the model ends with the best weights.

    >>> m = nn.Linear(2, 1)
    >>> xs = {"x": torch.randn(64, 2), "y": torch.rand(64)}
    >>> loss = lambda model, b: ((model(b["x"]).squeeze(-1) - b["y"]) ** 2).mean()
    >>> r = fit(m, torch.optim.SGD(m.parameters(), 0.1), loss, lambda e: [xs], config=LoopConfig(epochs=3, patience=None))
    >>> r.epochs_done, len(r.history)
    (3, 3)
    """
    log = log or (lambda msg: None)
    opts = optimizers if isinstance(optimizers, dict) else {"model": optimizers}
    device = torch.device(device or "cpu")
    model.to(device)
    world, rank = world_size(), world_rank()
    runner = model
    if world > 1:
        _broadcast_parameters(model)
        if sync == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            runner = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        else:
            for opt in opts.values():
                opt.register_step_pre_hook(_average_gradients_before_step)
    scheds = {k: make_scheduler(o, config) for k, o in opts.items()}
    scheds = {k: s for k, s in scheds.items() if s is not None}

    state = {"epoch": 0, "best_epoch": None, "best_metric": None, "bad_epochs": 0, "history": [],
             "train_seconds": 0.0, "train_events": 0, "stopped_early": False, "resumed_at": []}
    best_weights = None
    restored = checkpoints.restore(lambda folder: _read(folder, device)) if checkpoints else None
    if restored is not None:
        saved, loop_state = restored
        model.load_state_dict(saved["model"])
        for k, o in opts.items():
            o.load_state_dict(saved["optimizers"][k])
        for k, s in scheds.items():
            s.load_state_dict(saved["schedulers"][k])
        best_weights = saved.get("best")
        torch.set_rng_state(saved["rng"])
        state.update(loop_state)
        state["resumed_at"] = list(state["resumed_at"]) + [state["epoch"]]
        log(f"resumed after epoch {state['epoch']} (best epoch {state['best_epoch']})")

    def save(epoch_done: int, entry: dict):
        def write(folder: Path):
            torch.save({"model": model.state_dict(), "best": best_weights,
                        "optimizers": {k: o.state_dict() for k, o in opts.items()},
                        "schedulers": {k: s.state_dict() for k, s in scheds.items()},
                        "rng": torch.get_rng_state()}, folder / STATE)
            (folder / LOOP).write_text(json.dumps(state, default=float))

        checkpoints.save(epoch_done, entry, write)

    stopped = False
    last_epoch = state["epoch"] if state["stopped_early"] else config.epochs  # a finished run stays finished
    for epoch in range(state["epoch"], last_epoch):
        t0 = time.perf_counter()
        model.train()
        sums: dict[str, list[float]] = {}
        events = 0
        for batch in train_batches(epoch):
            batch = to_torch(batch, device) if not isinstance(next(iter(batch.values())), torch.Tensor) else batch
            out = step(runner, batch)
            if isinstance(out, torch.Tensor):
                for o in opts.values():
                    o.zero_grad(set_to_none=True)
                out.backward()
                if config.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                for o in opts.values():
                    o.step()
                out = {"loss": float(out.detach())}
            for k, v in out.items():
                acc = sums.setdefault(k, [0.0, 0.0])  # every rank must list the same keys
                if v is not None and not math.isnan(v):
                    acc[0] += v
                    acc[1] += 1
            events += num_rows(batch)
        train_s = time.perf_counter() - t0
        keys = sorted(sums)
        reduced = allreduce_sum([sums[k][i] for k in keys for i in (0, 1)] + [events, train_s], device)
        entry: dict[str, Any] = {"epoch": epoch + 1}
        for j, k in enumerate(keys):
            entry[f"train_{k}"] = reduced[2 * j] / max(reduced[2 * j + 1], 1.0)
        events_all, seconds = int(reduced[-2]), reduced[-1] / world
        state["train_seconds"] += seconds
        state["train_events"] += events_all
        entry["events_per_s"] = events_all / seconds if seconds > 0 else 0.0
        if val_batches is not None and val_step is not None:
            entry.update(evaluate(model, val_step, val_batches(epoch), device, prefix="val_"))
        entry["lr"] = next(iter(opts.values())).param_groups[0]["lr"]
        if metrics is not None:
            entry.update(metrics(epoch, entry))
        for s in scheds.values():
            if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau):
                s.step(entry.get(config.monitor, entry.get("train_loss", 0.0)))
            else:
                s.step()
        value = entry.get(config.monitor)
        if value is not None and not math.isnan(value):
            if state["best_metric"] is None or value < state["best_metric"] - config.min_delta:
                state.update(best_metric=value, best_epoch=epoch + 1, bad_epochs=0)
                best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                state["bad_epochs"] += 1
        entry["seconds"] = time.perf_counter() - t0
        state["history"].append(entry)
        state["epoch"] = epoch + 1
        stopped = config.patience is not None and state["bad_epochs"] >= config.patience
        state["stopped_early"] = stopped
        last = stopped or epoch + 1 == config.epochs
        if rank == 0:
            log(_describe(entry))
        if checkpoints is not None and ((epoch + 1) % config.checkpoint_every == 0 or last):
            save(epoch + 1, entry)
        if stopped:
            log(f"early stopping after epoch {epoch + 1}: no {config.monitor} improvement for {config.patience} epochs")
            break
    if config.restore_best and best_weights is not None:
        model.load_state_dict(best_weights)
    return FitResult.from_state(state)


def evaluate(model: nn.Module, val_step: Callable[[Any, dict], dict], batches: Iterable, device=None,
             prefix: str = "") -> dict[str, float]:
    """``Σ key / Σ weight`` of ``val_step``'s per-batch sums over all batches and ranks."""
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for batch in batches:
            if not isinstance(next(iter(batch.values())), torch.Tensor):
                batch = to_torch(batch, device)
            for k, v in val_step(model, batch).items():
                sums[k] = sums.get(k, 0.0) + float(v)
    keys = sorted(sums)
    if world_size() > 1:  # a rank without validation rows must still join the reduction
        gathered: list = [None] * world_size()
        torch.distributed.all_gather_object(gathered, keys)
        keys = sorted(set().union(*gathered))
    reduced = dict(zip(keys, allreduce_sum([sums.get(k, 0.0) for k in keys], device)))
    weight = reduced.pop("weight", 1.0) or 1.0
    return {f"{prefix}{k}": v / weight for k, v in reduced.items()}


def _read(folder: Path, device) -> tuple[dict, dict]:
    saved = torch.load(folder / STATE, map_location=device, weights_only=True)
    saved["rng"] = saved["rng"].cpu()
    return saved, json.loads((folder / LOOP).read_text())


def _describe(entry: dict) -> str:
    parts = [f"epoch {entry['epoch']}"]
    for k, v in entry.items():
        if k != "epoch" and isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
    return " ".join(parts)
