"""Reading one shard: branches -> steps (defines and filters) -> columns with event identity.

The physical layer (fetching arrays with uproot) is kept apart from the interpretation layer
(steps, feature matrices), as uproot does with Source/Chunk vs Interpretation.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

from ..config import DatasetSpec
from ..errors import DataError
from .files import _first_line, opened_tree
from .shard import Shard
from .steps import ENTRY, SLOT, Resolver, compile_steps, defined_names, output_columns, run_steps

EVENT_ID_CANDIDATES = (("run", "luminosityBlock", "event"), ("run", "lumi", "event"), ("run", "lumisection", "event"),
                       ("runNumber", "lumiBlock", "eventNumber"), ("RunNumber", "LumiBlock", "EventNumber"))


def needed_branches(spec: DatasetSpec, extra: list[str] | tuple = (), keys=None, file: str = "",
                    shard: str | None = None) -> list[str]:
    """Branches to read from a tree with branches ``keys``: the requested ones, those the steps
    read (a collection's fields only as used), and ``extra`` (e.g. model features) that are not
    defined columns. Every name is checked here: an unknown one is an error naming the job field
    and the nearest branches. Without ``keys``, the plain names (no collections) are listed."""
    steps = compile_steps(spec)
    if keys is None:
        defined = set(defined_names(steps))
        names = list(spec.branches) + [spec.aliases.get(a, a) for a in spec.aliases] + list(extra)
        names += [n for st in steps for e in Resolver._exprs(st) for n in sorted(e.names)]
        return list(dict.fromkeys(n for n in names if n not in defined and n != ENTRY and not _is_slot(n, defined)))
    return Resolver(spec, steps, keys, file, shard).branches(list(extra) + list(spec.event_id or []))


def _is_slot(name: str, defined) -> bool:
    m = SLOT.match(name)
    return bool(m and m.group(1) in defined)


def is_defined(spec: DatasetSpec, name: str) -> bool:
    """Whether ``name`` is a column the dataset's steps define (or a slot ``x_0`` of a pad()ed ``x``)."""
    defined = set(defined_names(compile_steps(spec)))
    return name in defined or _is_slot(name, defined)


def _event_id_branches(spec: DatasetSpec, keys) -> list[str]:
    if spec.event_id is not None:
        return list(spec.event_id)
    for cand in EVENT_ID_CANDIDATES:
        if all(c in keys for c in cand):
            return list(cand)
    return []


def _to_column(x):
    """Flat awkward arrays become numpy (cheap, and what xgboost/torch want); jagged stay awkward."""
    if isinstance(x, ak.Array):
        try:
            return ak.to_numpy(x)
        except (ValueError, TypeError):
            return x
    return np.asarray(x)


def read_shard(shard: Shard, spec: DatasetSpec, extra: list[str] | tuple = ()) -> tuple[dict, int]:
    """Read ``shard``: returns (columns, n_in). Columns hold the requested branches, every defined
    column, ``extra`` names, the event-identity branches and ``hepray_entry``, after the steps
    (defines and filters, in order). Every error names the file and the shard."""
    steps = compile_steps(spec)
    with opened_tree(shard.file, shard.tree, shard.file_id) as (_, obj):
        keys = set(obj.keys())
        id_branches = _event_id_branches(spec, keys)
        names = needed_branches(spec, list(extra) + id_branches, keys, shard.file, shard.shard_id)
        try:
            arrays = _fetch(obj, names, shard.entry_start, shard.entry_stop)
        except Exception as exc:
            raise DataError(shard.file, f"cannot read entries {shard.entry_start}:{shard.entry_stop} ({_first_line(exc)})",
                            shard=shard.shard_id, hint="the file may be truncated or corrupt; set engine.on_error: skip to continue without it") from None
    n_in = len(next(iter(arrays.values()))) if arrays else shard.num_entries
    if n_in != shard.num_entries:
        raise DataError(shard.file, f"read {n_in} entries, expected {shard.num_entries}", shard=shard.shard_id,
                        hint="the file changed after planning; re-plan the job")
    cols: dict = {n: arrays[n] for n in names}
    for alias, branch in spec.aliases.items():
        if branch in cols:
            cols[alias] = cols.pop(branch)
    cols[ENTRY] = np.arange(shard.entry_start, shard.entry_stop, dtype=np.int64)
    ev = run_steps(steps, cols, n_in, shard.file, shard.shard_id)
    keep = list(dict.fromkeys([*spec.branches, *spec.aliases, *extra, *id_branches, ENTRY]))
    for name in defined_names(steps):
        v = ev[name]
        if name not in keep and not (isinstance(v, (ak.Array, ak.Record)) and v.fields):  # collections are not columns
            keep.append(name)
    try:
        return output_columns(ev, keep), n_in
    except (KeyError, ValueError) as exc:
        raise DataError(shard.file, f"column {_first_line(exc)}", shard=shard.shard_id) from None


def _fetch(obj, names: list[str], start: int, stop: int) -> dict:
    """Branches by full path -> arrays. One ``arrays()`` call (so remote reads are coalesced);
    uproot names its fields by the last path component, which we map back to the full path."""
    if not names:
        return {}
    if not hasattr(obj, "common_entry_offsets"):  # RNTuple returns collection parents too
        arrays = obj.arrays(names, entry_start=start, entry_stop=stop)
        return {n: arrays[n] for n in names}
    leaf = {n: obj[n].name for n in names}
    if len(set(leaf.values())) < len(leaf):  # two branches share a leaf name: read one by one
        return {n: obj[n].array(entry_start=start, entry_stop=stop) for n in names}
    arrays = obj.arrays(filter_name=names, entry_start=start, entry_stop=stop, how=dict)
    # a field uproot renamed (e.g. "ArrayF32[10]" -> "ArrayF32") is read on its own
    return {n: arrays[leaf[n]] if leaf[n] in arrays else obj[n].array(entry_start=start, entry_stop=stop) for n in names}


def feature_matrix(cols: dict, features: list[str], where: str = "", order: str = "C") -> np.ndarray:
    """Stack flat feature columns into an (n, F) float32 matrix; a jagged feature is an error.

    ``order="F"`` (column-major) fills each column with one contiguous copy: 0.014 against
    0.17 us/event for 16 features, and xgboost predicts from it no slower."""
    out = np.empty((len(cols[features[0]]) if features else 0, len(features)), dtype=np.float32, order=order)
    for i, name in enumerate(features):
        col = cols[name]
        if isinstance(col, ak.Array):
            raise DataError(where or "features", f"feature {name!r} is jagged; reduce it in `expressions:` (e.g. first({name}), num({name}))")
        out[:, i] = col
    return out


def identity_columns(cols: dict, spec: DatasetSpec) -> list[str]:
    """The columns that identify an event in an output part: the event-id branches and the entry."""
    return _event_id_branches(spec, cols.keys()) + [ENTRY]
