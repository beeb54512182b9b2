"""A dataset's ordered steps: ``define`` new columns and ``filter`` events, applied per shard.

A later step sees only the events that passed the earlier filters, so ``Muon[:, 1]`` after
``filter: "nMuon >= 2"`` is valid. The old ``expressions:`` and ``cut:`` are steps too: the
expressions the cut needs, the cut, then the other expressions.

Names resolve, in this order, to: an earlier definition, an alias, a branch, or a NanoAOD-style
collection (``Jet`` for the ``Jet_*`` branches, like coffea's NanoEvents; a Lorentz vector
through scikit-hep ``vector`` when it has pt/eta/phi/mass or px/py/pz/E). Resolution happens
against a file's branch list, at planning (each name checked, with a did-you-mean) and per
shard, and yields exactly the branches to read: a collection used only as ``Jet.pt`` reads only
``Jet_pt``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable

import awkward as ak
import numpy as np

from ..errors import BranchNotFound, DataError, ExpressionError
from .expressions import VECTOR_PROPERTIES, Expression

ENTRY = "hepray_entry"  # entry number in the source tree: with the source file, the event identity
SLOT = re.compile(r"^(.+)_(\d+)$")  # pad()ed column `jet_pt` is written as jet_pt_0, jet_pt_1, ...
# kinematic fields -> vector record name; the first set a collection has wins
KINEMATICS = ((("pt", "eta", "phi", "mass"), "Momentum4D"), (("px", "py", "pz", "E"), "Momentum4D"),
              (("pt", "eta", "phi"), "Momentum3D"), (("pt", "phi"), "Momentum2D"))


@dataclasses.dataclass
class Step:
    """``define`` (names -> Expression or Python callable, resolved in dependency order within
    the step) or ``filter`` (one Expression). ``field`` is the job path for messages."""

    kind: str
    field: str
    defines: dict = dataclasses.field(default_factory=dict)
    expr: Expression | None = None
    needs: tuple[str, ...] | None = None  # columns a callable reads (None: every branch)


def compile_steps(spec) -> list[Step]:
    """The steps of a DatasetSpec: ``expressions:``/``cut:`` first, then ``steps:``."""
    out: list[Step] = []
    exprs = {n: Expression(t, field=f"dataset.expressions.{n}") for n, t in spec.expressions.items()}
    if spec.cut:
        cut = Expression(spec.cut, field="dataset.cut")
        before, todo = {}, [n for n in cut.names if n in exprs]
        while todo:  # the expressions the cut reads, with those they read in turn
            n = todo.pop()
            if n not in before:
                before[n] = exprs[n]
                todo += [m for m in exprs[n].names if m in exprs]
        if before:
            out.append(Step("define", "dataset.expressions", before))
        out.append(Step("filter", "dataset.cut", expr=cut))
        exprs = {n: e for n, e in exprs.items() if n not in before}
    if exprs:
        out.append(Step("define", "dataset.expressions", exprs))
    for i, st in enumerate(spec.steps):
        field = f"dataset.steps[{i}]"
        if "filter" in st:
            out.append(Step("filter", f"{field}.filter", expr=Expression(st["filter"], field=f"{field}.filter")))
        else:
            defs = {n: t if callable(t) else Expression(t, field=f"{field}.define.{n}") for n, t in st["define"].items()}
            needs = st.get("needs")
            out.append(Step("define", f"{field}.define", defs, needs=None if needs is None else tuple(needs)))
    return out


def defined_names(steps: list[Step]) -> list[str]:
    return [n for st in steps for n in st.defines]


def collection_fields(name: str, keys) -> dict[str, str]:
    """``Jet`` -> {"pt": "Jet_pt", ...} for the branches ``Jet_*`` of the file (empty: no such collection)."""
    prefix = name + "_"
    return {k[len(prefix):]: k for k in keys if k.startswith(prefix) and "/" not in k and "." not in k}


def vector_kind(fields) -> tuple[tuple[str, ...], str | None]:
    for kin, kind in KINEMATICS:
        if all(f in fields for f in kin):
            return kin, kind
    return (), None


def _ordered(defines: dict, known) -> list[str]:
    """Names of one define step in an order where each comes after the names it reads."""
    known, order, pending = set(known), [], dict(defines)
    while pending:
        ready = [n for n, e in pending.items() if callable(e) or not (e.names & pending.keys() - {n})]
        if not ready:
            raise ExpressionError("", "dataset", f"the definitions {sorted(pending)} read each other in a circle")
        for n in ready:
            order.append(n)
            pending.pop(n)
    return order


class Resolver:
    """Checks every name of the steps and extra columns against a file's branches and says which
    branches to read. Errors name the job field, the file and the nearest branch names."""

    def __init__(self, spec, steps: list[Step], keys, file: str = "", shard: str | None = None):
        self.spec, self.steps, self.keys, self.file, self.shard = spec, steps, set(keys), file, shard
        self.attributes = set().union(*(e.attributes for st in steps for e in self._exprs(st)))
        self.read: list[str] = []

    @staticmethod
    def _exprs(st: Step):
        return [st.expr] if st.expr is not None else [e for e in st.defines.values() if not callable(e)]

    def _add(self, branch: str):
        if branch not in self.read:
            self.read.append(branch)

    def _unknown(self, name: str, field: str):
        near = difflib.get_close_matches(name, sorted(self.keys | set(self.defined_before)), n=3)
        hint = f"; did you mean {', '.join(map(repr, near))}?" if near else "; see `hepray plan` and the file's branches"
        where = self.file + (f" [shard {self.shard}]" if self.shard else "")
        raise ExpressionError(where, field, f"unknown name {name!r}: not a branch, collection or earlier define{hint}")

    def name(self, n: str, field: str, whole: bool, attrs=()):
        """Resolve one free name read by an expression in ``field``."""
        if n in self.defined_before or n == ENTRY:
            return
        if n in self.spec.aliases:
            return self._add(self.spec.aliases[n])
        if n in self.keys:
            return self._add(n)
        fields = collection_fields(n, self.keys)
        if not fields:
            self._unknown(n, field)
        kin, _ = vector_kind(fields)
        for a in attrs:  # Jet.ptt: a field the collection does not have
            if a not in fields and not (kin and a in VECTOR_PROPERTIES):
                near = difflib.get_close_matches(a, sorted(fields), n=3)
                hint = f"; did you mean {', '.join(n + '.' + x for x in near)}?" if near else ""
                where = self.file + (f" [shard {self.shard}]" if self.shard else "")
                raise ExpressionError(where, field, f"collection {n!r} has no field {a!r}{hint}")
        wanted = [f for f in fields if f in self.attributes] + (list(kin) if whole else [])
        for f in wanted:
            self._add(fields[f])

    def branches(self, extra=()) -> list[str]:
        self.defined_before: set[str] = set()
        for b in list(self.spec.branches) + [self.spec.aliases.get(a, a) for a in self.spec.aliases]:
            if b not in self.keys:
                raise BranchNotFound(self.file, b, sorted(self.keys), shard=self.shard)
            self._add(b)
        for st in self.steps:
            if st.kind == "define":
                if any(callable(e) for e in st.defines.values()):  # reads what it says it needs, or every branch
                    for n in st.needs if st.needs is not None else sorted(self.keys):
                        self.name(n, st.field, whole=True)
                order = _ordered(st.defines, self.defined_before)
                for n in order:
                    e = st.defines[n]
                    if not callable(e):
                        for m in sorted(e.names):
                            if m not in st.defines or m == n:
                                self.name(m, e.field, m in e.whole, e.fields.get(m, ()))
                self.defined_before |= set(st.defines)
            else:
                for m in sorted(st.expr.names):
                    self.name(m, st.expr.field, m in st.expr.whole, st.expr.fields.get(m, ()))
        for x in extra:
            slot = SLOT.match(x)
            if x in self.defined_before or x == ENTRY or (slot and slot.group(1) in self.defined_before):
                continue
            b = self.spec.aliases.get(x, x)
            if b not in self.keys:
                raise BranchNotFound(self.file, x, sorted(self.keys | self.defined_before), shard=self.shard)
            self._add(b)
        return self.read


class Events(dict):
    """A shard's columns by name; a collection name (``Jet``) is built on first use from the
    ``Jet_*`` columns read, as records with the vector behaviour when it has the kinematics."""

    def __init__(self, columns: dict, branches):
        super().__init__(columns)
        self.branches = set(branches)  # collections are made of branches, never of defined columns

    def __missing__(self, name):
        fields = collection_fields(name, self.branches)
        if not fields:
            raise KeyError(name)
        kin, kind = vector_kind(fields)
        arrays = {f: self[k] for f, k in fields.items()}
        if kind:
            # kinematics in double precision, as ROOT's VecOps do: E^2 - p^2 of float32 inputs
            # loses up to 1 % of a light pair's mass (J/psi at high pT)
            arrays.update({f: ak.values_astype(arrays[f], np.float64) for f in kin})
            import vector

            out = ak.zip(arrays, with_name=kind, behavior=vector.backends.awkward.behavior)
        else:
            out = ak.zip(arrays)
        self[name] = out
        return out


def run_steps(steps: list[Step], cols: dict, n: int, file: str, shard: str | None) -> Events:
    """Apply ``steps`` to the columns of one shard (``n`` events); every failure is one line
    naming the job field, the file and the shard."""
    ev = Events(cols, cols.keys())
    for st in steps:
        if st.kind == "filter":
            mask = _evaluate(st.expr, ev, file, shard)
            if isinstance(mask, ak.Array):
                mask = ak.to_numpy(ak.fill_none(mask, False)) if mask.ndim == 1 and not mask.fields else None
            mask = None if mask is None else np.asarray(mask)
            if mask is None or mask.ndim != 1 or len(mask) != n or mask.dtype != bool:
                raise DataError(file, f"{st.field}: {st.expr.text!r} must give one boolean per event "
                                      "(reduce per-object values with any(), all() or num())", shard=shard)
            n = int(mask.sum())
            ev = Events({k: v[mask] for k, v in ev.items()}, ev.branches)
            continue
        for name in _ordered(st.defines, ev.keys()):
            e = st.defines[name]
            if callable(e):
                value = _call(e, ev, st, name, file, shard)
            else:
                value = _evaluate(e, ev, file, shard)
            field = f"{st.field}.{name}"
            if not isinstance(value, ak.Array) and np.ndim(value) == 0:
                value = np.full(n, value)  # a constant define: one value per event
            if len(value) != n:
                raise DataError(file, f"{field} gives {len(value)} values for {n} events", shard=shard)
            ev[name] = value
    return ev


def _evaluate(expr: Expression, ev: Events, file: str, shard: str | None):
    from .files import _first_line

    try:
        with np.errstate(all="ignore"):
            return expr.evaluate(ev)
    except ExpressionError:
        raise
    except Exception as exc:
        msg = _first_line(exc).split(" (in compiled code")[0]
        hint = None
        if "mask must have the shape" in msg:
            pass
        elif isinstance(exc, IndexError) or "index out of range" in msg or "cannot slice" in msg:
            hint = ("an event has fewer objects than the index asks for: filter first (e.g. `filter: num(Muon) >= 2`) "
                    "or use pad()")
        elif "cannot broadcast" in msg:
            hint = "the arrays combined must have the same objects per event (one collection, or reduce first)"
        raise DataError(file, f"{expr.field} = {expr.text!r} failed: {msg}", shard=shard, hint=hint) from None


def _call(fn: Callable, ev: Events, st: Step, name: str, file: str, shard: str | None):
    from .files import _first_line

    names = list(st.needs) if st.needs is not None else [k for k in ev if not isinstance(ev[k], ak.Record)]
    arrays = {k: ev[k] for k in names}
    try:
        record = ak.zip(arrays, depth_limit=1) if arrays else ak.Array([{}] * 0)
        value = fn(record)
    except Exception as exc:
        raise DataError(file, f"{st.field}.{name} (a Python callable) failed: {_first_line(exc)}", shard=shard) from None
    return value if isinstance(value, ak.Array) else np.asarray(value)


def output_columns(ev: dict, names) -> dict:
    """The columns ``names`` as arrays a part or a feature matrix takes: flat awkward -> numpy
    (missing values, e.g. max() of no objects, as NaN, or -1 for integers), jagged kept, a
    fixed-size (events, n) array as ``name_0 .. name_{n-1}``; collections are not columns."""
    out = {}
    for k in names:
        slot = SLOT.match(k)
        if k not in ev and slot and slot.group(1) in ev:
            base = _expand(slot.group(1), ev[slot.group(1)])
            if k not in base:
                raise KeyError(k)
            out[k] = base[k]
            continue
        v = ev[k]
        if isinstance(v, (ak.Array, ak.Record)) and v.fields:
            raise ValueError(f"{k!r} is a collection, not a column: write one of its fields, e.g. {k}.pt")
        out.update(_expand(k, v))
    return out


def _expand(name: str, v) -> dict:
    if isinstance(v, ak.Array):
        if v.ndim == 1 or _regular(v):
            v = _fill(v)
        else:
            return {name: v}
    v = np.asarray(v)
    if v.ndim == 2:
        return {f"{name}_{i}": np.ascontiguousarray(v[:, i]) for i in range(v.shape[1])}
    return {name: v}


def _regular(v: ak.Array) -> bool:
    t = v.type.content
    return v.ndim == 2 and isinstance(t, ak.types.RegularType)


def _fill(v: ak.Array) -> np.ndarray:
    if isinstance(v.type.content, ak.types.OptionType) or (
            _regular(v) and isinstance(v.type.content.content, ak.types.OptionType)):
        prim = str(ak.type(ak.drop_none(ak.flatten(v, axis=None))).content)
        v = ak.fill_none(v, -1 if prim.startswith(("int", "uint")) else np.nan, axis=None)
    return ak.to_numpy(v)
