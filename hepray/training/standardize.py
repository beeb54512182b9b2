"""Input standardisation in one distributed pass: each shard's moments from a Ray task, merged.

Networks train badly on raw physics inputs (pT in GeV next to τ ratios in [0, 1]); the mean and
scale must come from the training events only, and computing them must not need the data in one
process. Each task returns the count, mean and sum of squared deviations of its shard, and
:meth:`Moments.merge` combines them exactly (Chan et al.'s parallel update), in any order. The
result is stored with the model as ``preprocessing: {"mean", "scale"}`` (see
``hepray.models.artifact``), so inference applies the same transformation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from ..data.mapper import Mapper, in_process


@dataclasses.dataclass
class Moments:
    """Per-column count, mean and M2 (sum of squared deviations) of a set of rows.

    >>> a, b = Moments.of(np.array([[1.0], [2.0]])), Moments.of(np.array([[3.0], [4.0]]))
    >>> m = a.merge(b)
    >>> float(m.mean[0]), round(float(m.std[0]), 4)
    (2.5, 1.118)
    """

    n: float
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, n_columns: int) -> Moments:
        return cls(0.0, np.zeros(n_columns), np.zeros(n_columns))

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        """Moments of the rows of ``x`` [n, F] (float64 accumulation)."""
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if not len(x):
            return cls.empty(x.shape[1])
        mean = x.mean(axis=0)
        return cls(float(len(x)), mean, ((x - mean) ** 2).sum(axis=0))

    def merge(self, other: Moments) -> Moments:
        n = self.n + other.n
        if n == 0:
            return Moments(0.0, self.mean.copy(), self.m2.copy())
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.n * other.n / n)
        return Moments(n, mean, m2)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1.0))

    def to_preprocessing(self, min_scale: float = 1e-6) -> dict[str, list[float]]:
        """``{"mean": [...], "scale": [...]}`` as the model artifact stores it; constant columns
        get scale 1 so they pass through instead of dividing by zero."""
        scale = np.where(self.std > min_scale, self.std, 1.0)
        return {"mean": self.mean.tolist(), "scale": scale.tolist()}


def merge_all(parts: Iterable[Moments]) -> Moments:
    out = None
    for p in parts:
        out = p if out is None else out.merge(p)
    if out is None:
        raise ValueError("no moments to merge")
    return out


def map_shard_tasks(fn: Callable[..., Any], shards: Iterable, *args, parallel: bool = True,
                    mapper: Mapper | None = None) -> Iterator[tuple[Any, Any]]:
    """Yield ``(shard, fn(shard.to_dict(), *args))`` in plan order, through ``mapper`` (the
    engine's ``map_tasks``: Ray tasks, one CPU each, a bounded window; none given, or
    ``parallel=False``: here, one by one) so the driver's memory stays bounded.

    ``fn`` should return something small (sums, counts), not the events.
    """
    shards = list(shards)
    results = (mapper or in_process)(fn, [s.to_dict() for s in shards], *args, parallel=parallel)
    yield from zip(shards, results)
