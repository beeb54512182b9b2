"""Reading one shard: branches -> derived expressions -> selection -> columns with event identity.

The physical layer (fetching arrays with uproot) is kept apart from the interpretation layer
(expressions, cut, feature matrices), as uproot does with Source/Chunk vs Interpretation.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

from ..config import DatasetSpec
from ..errors import BranchNotFound, ConfigError, DataError
from .expressions import Expression
from .files import _first_line, opened_tree
from .shard import Shard

ENTRY = "hepray_entry"  # entry number in the source tree: with the source file, the event identity
EVENT_ID_CANDIDATES = (("run", "luminosityBlock", "event"), ("run", "lumi", "event"), ("run", "lumisection", "event"),
                       ("runNumber", "lumiBlock", "eventNumber"), ("RunNumber", "LumiBlock", "EventNumber"))


def compile_expressions(spec: DatasetSpec) -> tuple[dict[str, Expression], Expression | None]:
    exprs = {n: Expression(t, field=f"dataset.expressions.{n}") for n, t in spec.expressions.items()}
    cut = Expression(spec.cut, field="dataset.cut") if spec.cut else None
    return exprs, cut


def needed_branches(spec: DatasetSpec, extra: list[str] | tuple = ()) -> list[str]:
    """Branches to read: requested ones, those the expressions and cut use, and ``extra``
    (e.g. model features) that are not themselves expressions."""
    exprs, cut = compile_expressions(spec)
    wanted = list(spec.branches) + list(spec.aliases) + list(extra) + list(spec.event_id or [])
    for e in list(exprs.values()) + ([cut] if cut else []):
        wanted += sorted(e.names)
    out: list[str] = []
    for w in wanted:
        w = spec.aliases.get(w, w)
        if w not in exprs and w != ENTRY and w not in out:
            out.append(w)
    return out


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
    """Read ``shard``: returns (columns, n_in). Columns hold the requested branches, the derived
    expressions, ``extra`` names, the event-identity branches and ``hepray_entry``, after the cut.
    Every error names the file and the shard."""
    exprs, cut = compile_expressions(spec)
    with opened_tree(shard.file, shard.tree, shard.file_id) as (_, obj):
        keys = set(obj.keys())
        id_branches = _event_id_branches(spec, keys)
        names = needed_branches(spec, list(extra) + id_branches)
        for n in names:
            if n not in keys:
                raise BranchNotFound(shard.file, n, sorted(keys), shard=shard.shard_id)
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
    _evaluate(exprs, cols, shard)
    if cut is not None:
        mask = _evaluate_one(cut, cols, shard, "dataset.cut")
        mask = np.asarray(ak.fill_none(mask, False), dtype=bool) if isinstance(mask, ak.Array) else np.asarray(mask, dtype=bool)
        if mask.ndim != 1 or len(mask) != n_in:
            raise ConfigError("", "dataset.cut", f"{spec.cut!r} must give one boolean per event (reduce jagged values with any()/all())")
        cols = {k: v[mask] for k, v in cols.items()}
    keep = set(spec.branches) | set(spec.aliases) | set(exprs) | set(extra) | set(id_branches) | {ENTRY}
    return {k: _to_column(v) for k, v in cols.items() if k in keep}, n_in


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


def _evaluate(exprs: dict[str, Expression], cols: dict, shard: Shard):
    pending = dict(exprs)
    while pending:  # expressions may use earlier ones, in any order
        ready = [n for n, e in pending.items() if e.names <= cols.keys()]
        if not ready:
            missing = {n: sorted(e.names - cols.keys() - pending.keys()) for n, e in pending.items()}
            raise ConfigError("", "dataset.expressions", f"cannot resolve {missing} (circular or unknown names)")
        for n in ready:
            cols[n] = _evaluate_one(pending.pop(n), cols, shard, f"dataset.expressions.{n}")


def _evaluate_one(expr: Expression, cols: dict, shard: Shard, field: str):
    try:
        with np.errstate(all="ignore"):
            return expr.evaluate(cols)
    except Exception as exc:
        raise DataError(shard.file, f"{field} = {expr.text!r} failed: {_first_line(exc)}", shard=shard.shard_id) from None


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
