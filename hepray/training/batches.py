"""Mini-batches streamed from shards, the same way in one process and in each Ray Train worker.

A training loop asks for ``batches(epoch)`` and gets dicts of numpy arrays. Behind it, each rank
reads its share of the shards (whole shards when there are enough, otherwise every rank reads
all shards and keeps every ``world``-th row), in an order seeded by ``(seed, epoch, rank)``,
with rows shuffled across a window of shards. Memory is one window of shards unless ``cache``
keeps the converted rows after the first epoch (small data: later epochs then read nothing).

The conversion from a shard to arrays is the caller's ``load(shard_dict) -> dict[str, array]``
(flat features for an MLP, padded constituents for a GNN, conditions for a flow), so this module
knows nothing about models. Because the order depends only on the seed and the epoch, a resumed
training sees exactly the batches the interrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

Batch = dict[str, np.ndarray]


def partition_shards(rows: Sequence[int], world: int) -> list[list[int]]:
    """Shard indices per rank, balancing rows (largest shard to the least-loaded rank).

    >>> partition_shards([100, 80, 60, 50], 2)
    [[0, 3], [1, 2]]
    """
    loads = [0] * world
    parts: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(rows)), key=lambda i: -rows[i]):
        r = loads.index(min(loads))
        parts[r].append(i)
        loads[r] += rows[i]
    return [sorted(p) for p in parts]


def rank_share(rows: Sequence[int], world: int, rank: int, groups: Sequence | None = None
               ) -> tuple[list[int], set[int], int]:
    """What rank ``rank`` of ``world`` reads: (shard indices, those of them it strides, its rows).

    Within each group (e.g. a sample: so every rank sees every class and signal model), ranks
    get whole shards when the group has at least two per rank; a smaller group is read by every
    rank, each keeping rows ``rank::world`` of every shard.

    >>> rank_share([10, 10, 10, 10, 5], 2, 1, groups=["a", "a", "a", "a", "b"])
    ([1, 3, 4], {4}, 22)
    """
    groups = list(groups) if groups is not None else [0] * len(rows)
    mine: list[int] = []
    strided: set[int] = set()
    if world == 1:
        return list(range(len(rows))), strided, int(sum(rows))
    for g in dict.fromkeys(groups):
        idx = [i for i, gi in enumerate(groups) if gi == g]
        if len(idx) >= 2 * world:
            mine += [idx[j] for j in partition_shards([rows[i] for i in idx], world)[rank]]
        else:
            mine += idx
            strided.update(idx)
    mine.sort()
    n = sum(len(range(rank, rows[i], world)) if i in strided else rows[i] for i in mine)
    return mine, strided, int(n)


def num_rows(batch: Batch) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def _take(batch: Batch, idx) -> Batch:
    return {k: v[idx] for k, v in batch.items()}


def _concat(parts: list[Batch]) -> Batch:
    parts = [p for p in parts if num_rows(p)]
    if not parts:
        return {}
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class ShardBatches:
    """``batches(epoch)`` -> iterator of dicts of equal-length numpy arrays.

    ``shards``: shard dicts (``Shard.to_dict()``) or anything ``load`` accepts. ``rows``: rows
    ``load`` returns per shard, when known (from a statistics pass): then ranks get whole
    shards where there are enough (see :func:`rank_share`, per ``groups``, e.g. the sample of
    each shard), and :attr:`rows_per_rank` is exact.
    ``steps``: yield exactly this many batches per epoch, wrapping around this rank's data
    (DDP needs every rank to take the same number of steps); ``None``: one pass, last batch
    possibly short unless ``drop_last``.

    >>> b = ShardBatches.from_arrays({"x": np.arange(10.0)}, batch_size=4, shuffle=False)
    >>> [len(x["x"]) for x in b(0)]
    [4, 4, 2]
    """

    def __init__(self, shards: Sequence, load: Callable[[object], Batch], batch_size: int, *,
                 rank: int = 0, world: int = 1, rows: Sequence[int] | None = None, groups: Sequence | None = None,
                 steps: int | None = None, shuffle: bool = True, seed: int = 0, window: int = 4, cache: bool = True, drop_last: bool = False):
        if batch_size <= 0:
            raise ValueError("batch_size must be > 0")
        self.shards, self.load, self.batch_size = list(shards), load, batch_size
        self.rank, self.world, self.steps = rank, world, steps
        self.shuffle, self.seed, self.window, self.cache, self.drop_last = shuffle, seed, max(1, window), cache, drop_last
        self._cache: dict[int, Batch] = {}
        self.groups = list(groups) if groups is not None else [0] * len(self.shards)
        if rows is None:  # sizes unknown: every rank reads every shard and keeps its share of rows
            self.mine, self.rows_per_rank = list(range(len(self.shards))), None
            self.strided = set(self.mine) if world > 1 else set()
        else:
            self.mine, self.strided, self.rows_per_rank = rank_share(rows, world, rank, groups)

    @classmethod
    def from_arrays(cls, arrays: Batch, batch_size: int, **kw) -> ShardBatches:
        """Batches over arrays already in memory (one pseudo-shard)."""
        return cls([None], lambda _: arrays, batch_size, rows=[num_rows(arrays)], cache=False, **kw)

    def _rows(self, i: int) -> Batch:
        if i in self._cache:
            return self._cache[i]
        rows = self.load(self.shards[i])
        if i in self.strided:  # few shards: every rank reads them all, keeps its share of rows
            rows = _take(rows, slice(self.rank, None, self.world))
        if self.cache:
            self._cache[i] = rows
        return rows

    def _windows(self, epoch: int, cycle: int) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, epoch, self.rank, cycle])
        order = self._spread(rng) if self.shuffle else self.mine
        for start in range(0, len(order), self.window):
            rows = _concat([self._rows(i) for i in order[start:start + self.window]])
            n = num_rows(rows)
            if n:
                yield _take(rows, rng.permutation(n)) if self.shuffle else rows

    def _spread(self, rng) -> list[int]:
        """A random shard order in which every group (sample) is spread evenly, so a window
        of a few shards mixes classes even when each sample is its own set of files: the k-th
        of a group's n shards (in random order) sits at (k + u) / n, u uniform in [0, 1)."""
        groups = dict.fromkeys(self.groups[i] for i in self.mine)
        if len(groups) <= 1:
            return [self.mine[i] for i in rng.permutation(len(self.mine))]
        key = {}
        for g in groups:
            idx = [i for i in self.mine if self.groups[i] == g]
            for k, j in enumerate(rng.permutation(len(idx))):
                key[idx[j]] = (k + rng.random()) / len(idx)
        return sorted(self.mine, key=key.__getitem__)

    def __call__(self, epoch: int) -> Iterator[Batch]:
        bs, made, cycle = self.batch_size, 0, 0
        buf: Batch = {}
        while True:
            seen = 0
            for rows in self._windows(epoch, cycle):
                seen += num_rows(rows)
                buf = _concat([buf, rows])
                while num_rows(buf) >= bs:
                    yield _take(buf, slice(0, bs))
                    buf = _take(buf, slice(bs, None))
                    made += 1
                    if self.steps is not None and made >= self.steps:
                        return
            if self.steps is None:
                break
            if not seen:
                raise ValueError(f"rank {self.rank} has no rows to make its {self.steps} batches from")
            cycle += 1
        if num_rows(buf) and not self.drop_last:
            yield buf

    def steps_per_epoch(self) -> int | None:
        if self.steps is not None:
            return self.steps
        if self.rows_per_rank is None:
            return None
        full, rest = divmod(self.rows_per_rank, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)


def common_steps(rows: Sequence[int], world: int, batch_size: int, groups: Sequence | None = None) -> int:
    """Batches per epoch every rank takes: enough for the rank with the most rows to see them
    all once (ranks with fewer wrap around). Same partition rule as :class:`ShardBatches`."""
    most = max(rank_share(rows, world, r, groups)[2] for r in range(world))
    return max(1, -(-most // batch_size))


def to_torch(batch: Batch, device=None) -> dict:
    """numpy batch -> torch tensors on ``device`` (zero-copy on CPU)."""
    import torch

    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    if device is not None and str(device) != "cpu":
        out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
    return out
