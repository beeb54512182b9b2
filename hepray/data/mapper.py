"""The task mapper that data/ and training/ receive: ``mapper(fn, items, *args, parallel=...,
num_cpus=...)`` yields ``fn(item, *args)`` in order. The engine passes its own (``ctx.map_tasks``
or ``engine.tasks.map_tasks``: Ray tasks, bounded window); without one, calls run here, one by
one. This keeps data/ and training/ free of the engine and of Ray."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

Mapper = Callable[..., Iterator[Any]]


def in_process(fn: Callable[..., Any], items: Iterable, *args, **_options) -> Iterator[Any]:
    """The mapper without Ray: ``parallel``, ``num_cpus`` and the like are ignored."""
    return (fn(item, *args) for item in items)
