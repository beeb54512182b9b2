"""Shard planning: read only metadata, cut each file at TTree cluster (basket) boundaries.

A shard never splits a cluster, so every basket is decompressed by exactly one worker. Files are
planned in parallel (the engine's tasks) when there are many of them; the plan is streamed to disk
(``plan.jsonl``) so the driver never holds a list that grows with the dataset.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator

from ..config import DatasetSpec, SampleSpec
from ..errors import BranchNotFound, DataError
from .files import expand, open_tree
from .mapper import Mapper, in_process
from .reading import needed_branches
from .shard import Shard

FILES_PER_TASK = 32
PARALLEL_ABOVE = 16  # below this many files, planning in the driver is faster than a Ray task


def cluster_offsets(obj) -> list[int]:
    """Entry offsets of the clusters of a TTree (common to all branches) or an RNTuple."""
    if hasattr(obj, "common_entry_offsets"):
        return list(obj.common_entry_offsets())
    summaries = getattr(obj, "cluster_summaries", None)
    if summaries:
        offs = [int(s.num_first_entry) for s in summaries]
        return offs + [int(summaries[-1].num_first_entry + summaries[-1].num_entries)]
    return [0, int(obj.num_entries)]


def file_identity(f, path: str) -> str:
    """Path + the UUID ROOT writes in every file header: a file replaced at the same path gets new
    shard ids (stale parts are never mistaken for its own), and two copies of one file in a
    dataset stay two files (the UUID alone would merge their parts)."""
    uuid = getattr(f.file, "uuid", None) or ""
    return hashlib.sha1(f"{path}|{uuid}".encode()).hexdigest()[:20]


def _compressed_bytes_per_entry(obj, branches: list[str], file_bytes: int) -> float:
    if obj.num_entries == 0:
        return 0.0
    if not hasattr(obj, "common_entry_offsets"):  # RNTuple: the whole file is the upper bound
        return file_bytes / obj.num_entries
    total = 0
    for name in branches:
        try:
            total += obj[name].compressed_bytes
        except Exception:
            pass
    return total / obj.num_entries


def plan_file(path: str, sample: SampleSpec, tree: str, branches,
              shard_events: int, shard_bytes: int | None) -> list[dict]:
    """Shards of one file, as dicts (cheap to ship back from a Ray task). ``branches``: the
    branches read, or a function of (the tree's branch names, the path) that checks the job's
    names against them and returns the branches read."""
    f, obj = open_tree(path, sample.tree or tree)
    try:
        keys = set(obj.keys())
        if callable(branches):
            branches = branches(keys, path)
        for b in branches:
            if b not in keys:
                raise BranchNotFound(path, b, sorted(keys))
        fid = file_identity(f, path)
        offsets = cluster_offsets(obj)
        per_entry = _compressed_bytes_per_entry(obj, branches, int(getattr(f.file, "fEND", 0)))
    finally:
        f.close()
    shards, start = [], offsets[0]
    for stop in offsets[1:]:
        n = stop - start
        big_enough = n >= shard_events or (shard_bytes is not None and n * per_entry >= shard_bytes)
        if big_enough or stop == offsets[-1]:
            if n > 0:
                shards.append(dict(file=path, tree=sample.tree or tree, entry_start=int(start), entry_stop=int(stop),
                                   file_id=fid, sample=sample.name, label=sample.label, weight=sample.weight,
                                   nbytes=int(n * per_entry)))
            start = stop
    return shards


def _branches_of(spec: DatasetSpec, extra: list[str], keys, path: str) -> list[str]:
    return needed_branches(spec, extra, keys, path)


def _plan_batch(paths, sample, tree, branches, shard_events, shard_bytes, on_error):
    out = []
    for p in paths:
        try:
            out.append(plan_file(p, sample, tree, branches, shard_events, shard_bytes))
        except DataError as exc:
            if on_error == "fail":
                raise
            out.append({"skipped": p, "error": exc.message})
    return out


def iter_plan(spec: DatasetSpec, resolve=lambda p: p, on_error: str = "fail", use_ray: bool | None = None,
              extra: list[str] | tuple = (), mapper: Mapper | None = None) -> Iterator[Shard | dict]:
    """Yield the shards of ``spec`` in a deterministic order (sample, file, entry); files that
    cannot be planned are raised (on_error=fail) or yielded as ``{"skipped": file, "error": msg}``.
    Batches of files are planned through ``mapper`` (the engine's ``map_tasks``; none: here) when
    there are more than ``PARALLEL_ABOVE`` files or ``use_ray`` says so."""
    branches = functools.partial(_branches_of, spec, list(extra))
    mapper = mapper or in_process
    index = 0
    for sample in spec.sample_list():
        files = expand(sample.files, resolve, field=f"dataset.samples[{sample.name}].files" if spec.samples else "dataset.files")
        batches = [files[i:i + FILES_PER_TASK] for i in range(0, len(files), FILES_PER_TASK)]
        args = (sample, spec.tree, branches, spec.shard_events, spec.shard_bytes, on_error)
        parallel = use_ray if use_ray is not None else len(files) > PARALLEL_ABOVE
        # results consumed in order: a deterministic shard order
        for results in mapper(_plan_batch, batches, *args, parallel=parallel, num_cpus=0.5):
            for r in results:
                if isinstance(r, dict):
                    yield r
                    continue
                for d in r:
                    yield Shard(index=index, **d)
                    index += 1
