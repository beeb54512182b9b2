"""Shard planning: read only metadata, cut each file at TTree cluster (basket) boundaries.

A shard never splits a cluster, so every basket is decompressed by exactly one worker. Files are
planned in parallel (the engine's tasks) when there are many of them; the plan is streamed to disk
(``plan.jsonl``) so the driver never holds a list that grows with the dataset.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator

import numpy as np

from ..config import DatasetSpec, SampleSpec
from ..errors import BranchNotFound, DataError, InputError
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


def branch_types(obj, branches) -> dict[str, str]:
    """C++ type names of the branches read (``float``, ``float[]``, ``float[3]``...); an RNTuple's
    fields by their awkward type."""
    out = {}
    for b in branches:
        br = obj[b]
        out[b] = str(getattr(br, "typename", None) or getattr(br, "type_name", None) or "")
    return out


def check_flat(path: str, obj, names, types: dict[str, str]) -> None:
    """A branch fed as a feature (one value per event) must not be jagged or a fixed-size array:
    refused here, naming file and branch, rather than a shard failing later."""
    for name in names:
        t = types.get(name)
        if not t or not hasattr(obj, "common_entry_offsets"):  # a defined column, or an RNTuple field
            continue
        interp = getattr(obj[name], "interpretation", None)
        inner = getattr(interp, "inner_shape", None)
        if inner:
            n = int(np.prod(inner))
            raise InputError(path, f"branch {name!r} holds {n} values per event ({t}) where one value per event "
                             "is expected", hint=f"pick one in `expressions:` (e.g. {name}[:, 0])")
        if inner is None and not _is_scalar(interp):
            raise InputError(path, f"branch {name!r} is jagged ({t}) where one value per event is expected",
                             hint=f"reduce it in `expressions:` (e.g. first({name}), num({name}))")


def _is_scalar(interp) -> bool:
    import uproot

    return isinstance(interp, uproot.AsDtype)


def plan_file(path: str, sample: SampleSpec, tree: str, branches,
              shard_events: int, shard_bytes: int | None, flat=()) -> tuple[list[dict], dict[str, str]]:
    """Shards of one file, as dicts (cheap to ship back from a Ray task), and the types of the
    branches read. ``branches``: the branches read, or a function of (the tree's branch names,
    the path) that checks the job's names against them and returns the branches read. ``flat``:
    names that must hold one value per event (a model's features). A tree with no events is
    refused (InputError), so that it is listed, not silently left out."""
    tree = sample.tree or tree
    f, obj = open_tree(path, tree)
    try:
        keys = set(obj.keys())
        if callable(branches):
            branches = branches(keys, path)
        for b in branches:
            if b not in keys:
                raise BranchNotFound(path, b, sorted(keys))
        types = branch_types(obj, branches)
        check_flat(path, obj, [n for n in flat if n in types], types)
        if obj.num_entries == 0:
            raise InputError(path, f"tree {tree!r} has no events", hint="remove the file from `files:`")
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
                shards.append(dict(file=path, tree=tree, entry_start=int(start), entry_stop=int(stop),
                                   file_id=fid, sample=sample.name, label=sample.label, weight=sample.weight,
                                   nbytes=int(n * per_entry)))
            start = stop
    return shards, types


def _branches_of(spec: DatasetSpec, extra: list[str], keys, path: str) -> list[str]:
    return needed_branches(spec, extra, keys, path)


def _plan_batch(paths, sample, tree, branches, shard_events, shard_bytes, on_error, flat=()):
    out = []
    for p in paths:
        try:
            out.append(plan_file(p, sample, tree, branches, shard_events, shard_bytes, flat))
        except InputError as exc:
            # a file with no events loses nothing: listed, and only an error if no file has any
            empty = exc.problem.endswith("has no events")
            if on_error == "fail" and not empty:
                raise
            out.append({"skipped": p, "error": exc.message, "empty": empty, "exc": exc})
        except DataError as exc:
            if on_error == "fail":
                raise
            out.append({"skipped": p, "error": exc.message})
    return out


class _Types:
    """The type of every branch read, as the first file has it: a later file with another type
    would give parts of mixed types (or silently converted values)."""

    def __init__(self):
        self.first: dict[str, tuple[str, str]] = {}

    def check(self, path: str, types: dict[str, str]) -> None:
        for b, t in types.items():
            t0, f0 = self.first.setdefault(b, (t, path))
            if t != t0:
                raise InputError(path, f"branch {b!r} is {t} here but {t0} in {f0}",
                                 hint="convert the files to one type, or read them as separate jobs")


def iter_plan(spec: DatasetSpec, resolve=lambda p: p, on_error: str = "fail", use_ray: bool | None = None,
              extra: list[str] | tuple = (), flat: list[str] | tuple = (),
              mapper: Mapper | None = None) -> Iterator[Shard | dict]:
    """Yield the shards of ``spec`` in a deterministic order (sample, file, entry); files that
    cannot be planned are raised (on_error=fail) or yielded as ``{"skipped": file, "error": msg}``.
    A file with no events is always yielded as skipped; if no file has any, that is an error.
    ``flat``: columns that must hold one value per event (a model's features). Batches of files
    are planned through ``mapper`` (the engine's ``map_tasks``; none: here) when there are more
    than ``PARALLEL_ABOVE`` files or ``use_ray`` says so."""
    branches = functools.partial(_branches_of, spec, list(extra))
    mapper = mapper or in_process
    flat = [spec.aliases.get(n, n) for n in flat]
    types, empty = _Types(), None
    index = 0
    for sample in spec.sample_list():
        files = expand(sample.files, resolve, field=f"dataset.samples[{sample.name}].files" if spec.samples else "dataset.files")
        batches = [files[i:i + FILES_PER_TASK] for i in range(0, len(files), FILES_PER_TASK)]
        args = (sample, spec.tree, branches, spec.shard_events, spec.shard_bytes, on_error, flat)
        parallel = use_ray if use_ray is not None else len(files) > PARALLEL_ABOVE
        # results consumed in order: a deterministic shard order
        for results in mapper(_plan_batch, batches, *args, parallel=parallel, num_cpus=0.5):
            for r in results:
                if isinstance(r, dict):
                    exc = r.pop("exc", None)
                    if r.pop("empty", False) and empty is None:
                        empty = exc
                    yield r
                    continue
                shard_dicts, file_types = r
                if shard_dicts:
                    try:
                        types.check(shard_dicts[0]["file"], file_types)
                    except InputError as exc:
                        if on_error == "fail":
                            raise
                        yield {"skipped": shard_dicts[0]["file"], "error": exc.message}
                        continue
                for d in shard_dicts:
                    yield Shard(index=index, **d)
                    index += 1
    if index == 0 and empty is not None:
        raise InputError(empty.file, empty.problem, hint="no file of the dataset has any: nothing to do")

