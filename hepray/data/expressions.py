"""Derived columns and selections from user text, without Python ``eval``.

The text is parsed with ``ast`` and walked by a small interpreter that knows only arithmetic,
comparisons, boolean logic, indexing (constant indices and slices, boolean masks, per-event
indices), a whitelist of numpy/awkward functions with a fixed number of arguments each, fields of
collections (``Jet.pt``) and a fixed list of scikit-hep ``vector`` properties and methods
(``(Muon[:, 0] + Muon[:, 1]).mass``, ``a.deltaR(b)``). Anything else (other attributes, calls of
other names, lambdas, comprehensions, strings) is refused at validation time, before any file is
opened; so are texts, nestings and constant exponents too large to evaluate quickly.

>>> e = Expression("sqrt(px**2 + py**2)")
>>> sorted(e.names)
['px', 'py']
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Mapping

import awkward as ak
import numpy as np

from ..errors import ExpressionError

# Limits that keep evaluation bounded: a job is text from a user, and a shard must not hang or
# exhaust the interpreter on it (the walk recurses once per nesting level).
MAX_TEXT = 4000  # characters
MAX_DEPTH = 60  # nesting levels of the syntax tree
MAX_EXPONENT = 1000  # |constant exponent| of **
MAX_PAD = 1000  # slots of pad(); combinations of at most 4 objects
PAIR_FIELDS = ("first", "second", "third", "fourth")  # fields of combinations(x, n)


def _is_jagged(x) -> bool:
    return isinstance(x, ak.Array) and x.ndim > 1


def _jagged(fn):
    """Reduce over the objects of each event for jagged input; flat input is returned as is."""

    def reducer(x):
        return fn(x, axis=1) if _is_jagged(x) else x

    return reducer


def _count(x):
    if not _is_jagged(x):
        raise ValueError("num() needs a collection or a jagged array (one list per event)")
    return ak.num(x, axis=1)


def _first(x):
    return ak.firsts(x, axis=1) if _is_jagged(x) else x


def _arg(fn):
    def arg(x):
        if not _is_jagged(x):
            raise ValueError(f"{fn.__name__}() needs a jagged array (one list per event)")
        return fn(x, axis=1)

    return arg


def _sort(x, by=None):
    """Descending: by ``x`` itself, or by the key ``by`` (e.g. ``sort(Jet, Jet.pt)``)."""
    if not _is_jagged(x):
        raise ValueError("sort() needs a jagged array or collection")
    if by is None:
        return ak.sort(x, axis=1, ascending=False)
    return x[ak.argsort(by, axis=1, ascending=False)]


def _pad(x, n, fill=None):
    """The first ``n`` objects of each event, missing ones as ``fill`` (None: left missing, written
    as NaN): a fixed-size (events, n) array, written as columns ``name_0 .. name_{n-1}``."""
    if not _is_jagged(x):
        raise ValueError("pad() needs a jagged array or collection")
    out = ak.to_regular(ak.pad_none(x, n, axis=1, clip=True), axis=1)
    return out if fill is None else ak.fill_none(out, fill, axis=1)


def _combinations(x, n):
    """Every unordered n-tuple of the objects of each event, with fields ``first``, ``second``..."""
    if not _is_jagged(x):
        raise ValueError("combinations() needs a collection or jagged array")
    return ak.combinations(x, n, axis=1, fields=list(PAIR_FIELDS[:n]))


def _where(cond, a, b):
    return ak.where(cond, a, b) if any(isinstance(v, ak.Array) for v in (cond, a, b)) else np.where(cond, a, b)


# name -> (function, allowed numbers of arguments)
FUNCTIONS = {
    **{n: (f, (1,)) for n, f in {
        "abs": np.abs, "sqrt": np.sqrt, "log": np.log, "log10": np.log10, "log1p": np.log1p, "exp": np.exp,
        "sin": np.sin, "cos": np.cos, "tan": np.tan, "arcsin": np.arcsin, "arccos": np.arccos,
        "arctan": np.arctan, "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh, "isfinite": np.isfinite,
        "num": _count, "count": _count, "first": _first,
        "sum": _jagged(ak.sum), "max": _jagged(ak.max), "min": _jagged(ak.min), "mean": _jagged(ak.mean),
        "any": _jagged(ak.any), "all": _jagged(ak.all), "argmax": _arg(ak.argmax), "argmin": _arg(ak.argmin),
    }.items()},
    "arctan2": (np.arctan2, (2,)), "minimum": (np.minimum, (2,)), "maximum": (np.maximum, (2,)),
    "where": (_where, (3,)), "sort": (_sort, (1, 2)), "pad": (_pad, (2, 3)), "combinations": (_combinations, (2,)),
}
# arguments that must be integer constants: (function, position) -> allowed range
_INT_ARGS = {("pad", 1): (1, MAX_PAD), ("combinations", 1): (2, len(PAIR_FIELDS))}
CONSTANTS = {"pi": np.pi, "e": np.e, "inf": np.inf}

# scikit-hep vector: what a Lorentz-vector collection offers beyond its fields
VECTOR_PROPERTIES = frozenset({
    "pt", "eta", "phi", "mass", "rapidity", "energy", "E", "px", "py", "pz", "p", "theta", "mt", "Et", "rho",
    "tau", "beta", "gamma",
})
VECTOR_METHODS = {"deltaR": 1, "deltaR2": 1, "deltaphi": 1, "deltaeta": 1, "dot": 1}
# attributes of awkward arrays: never reachable from user text (they would leak the array API)
_AWKWARD_ATTRS = frozenset(a for a in dir(ak.Array) + dir(ak.Record) if not a.startswith("_")) - VECTOR_PROPERTIES

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
    ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor,
}
_UNOPS = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert, ast.Not: np.logical_not}
_CMPOPS = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_FLOAT_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _depth(tree) -> int:
    """Nesting depth, without recursion (the tree may be deeper than Python's stack)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            break
        stack.extend((c, d + 1) for c in ast.iter_child_nodes(node))
    return deepest


def has_vector(x) -> bool:
    """Whether ``x`` is (a collection of) scikit-hep vector records."""
    import vector  # noqa: F401 - registers nothing globally; the behaviour travels with the array

    return isinstance(x, (ak.Array, ak.Record)) and (x.layout.purelist_parameter("__record__") or "").startswith(
        ("Momentum", "Vector"))


class Expression:
    """A validated expression. ``names`` lists the free names it reads (branches, collections,
    earlier definitions); ``attributes`` the field/property names it takes with ``.``."""

    def __init__(self, text: str, where: str = "", field: str = "expression"):
        self.text, self.where, self.field = str(text), where, field
        if len(self.text) > MAX_TEXT:
            self._error(f"is {len(self.text)} characters long; the limit is {MAX_TEXT}")
        try:
            tree = ast.parse(self.text.strip(), mode="eval")
        except SyntaxError as exc:
            self._error(f"cannot parse {self._short()}: {exc.msg}")
        except (RecursionError, MemoryError, ValueError):
            self._error(f"cannot parse {self._short()}: nested too deeply")
        if _depth(tree) > MAX_DEPTH:
            self._error(f"{self._short()} is nested more than {MAX_DEPTH} levels deep; split it into several defines")
        self._tree = tree.body
        self.names: set[str] = set()
        self.attributes: set[str] = set()
        self.whole: set[str] = set()  # names used other than as `name.field` (a whole collection)
        self.fields: dict[str, set[str]] = {}  # name -> the fields taken directly from it
        try:
            self._check(self._tree)
        except (RecursionError, MemoryError):
            self._error(f"{self._short()} is too complex to check; split it into several defines")

    def _short(self) -> str:
        return repr(self.text if len(self.text) <= 80 else self.text[:77] + "...")

    def _error(self, problem: str):
        raise ExpressionError(self.where, self.field, problem) from None

    def _refuse(self, node, what):
        self._error(
            f"{what} is not allowed in {self._short()}; use names, numbers, + - * / ** comparisons, & | ~, "
            f"[masks, indices, slices], collection fields, vector properties ({', '.join(sorted(VECTOR_PROPERTIES))}), "
            f"methods ({', '.join(VECTOR_METHODS)}) and: {', '.join(sorted(FUNCTIONS))}",
        )

    # -- validation ------------------------------------------------------------------------------
    def _check(self, node):
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, bool)):
                self._refuse(node, f"constant {node.value!r}")
        elif isinstance(node, ast.Name):
            if node.id.startswith("__"):
                self._refuse(node, f"the name {node.id!r}")
            if node.id not in CONSTANTS:
                self.names.add(node.id)
                self.whole.add(node.id)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                self._refuse(node, f"operator {type(node.op).__name__}")
            self._check(node.left)
            self._check(node.right)
            if isinstance(node.op, ast.Pow) and self._constant(node.right) is not None:
                b = self._constant(node.right)
                if not abs(b) <= MAX_EXPONENT:
                    self._error(f"the exponent {b:.4g} in {self._short()} is too large (at most {MAX_EXPONENT})")
            self._constant(node)  # constant arithmetic that overflows is refused now, not in a shard
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNOPS:
                self._refuse(node, f"operator {type(node.op).__name__}")
            self._check(node.operand)
        elif isinstance(node, ast.BoolOp):
            for v in node.values:
                self._check(v)
        elif isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in _CMPOPS:
                    self._refuse(node, f"comparison {type(op).__name__}")
            self._check(node.left)
            for c in node.comparators:
                self._check(c)
        elif isinstance(node, ast.Call):
            self._check_call(node)
        elif isinstance(node, ast.Attribute):
            self._check_attribute(node.attr)
            if isinstance(node.value, ast.Name) and node.value.id not in CONSTANTS:  # Jet.pt reads only Jet_pt
                if node.value.id.startswith("__"):
                    self._refuse(node, f"the name {node.value.id!r}")
                self.names.add(node.value.id)
                self.fields.setdefault(node.value.id, set()).add(node.attr)
            else:
                self._check(node.value)
        elif isinstance(node, ast.Subscript):
            self._check(node.value)
            if self._constant_index(node.slice) is None:
                self._check(node.slice)  # a mask or per-event index: any expression
        else:
            self._refuse(node, type(node).__name__)

    def _check_attribute(self, attr: str):
        if attr.startswith("_") or attr in _AWKWARD_ATTRS:
            self._refuse(None, f"the attribute {attr!r}")
        self.attributes.add(attr)

    def _check_call(self, node: ast.Call):
        if node.keywords:
            self._refuse(node, "keyword arguments")
        if isinstance(node.func, ast.Attribute) and node.func.attr in VECTOR_METHODS:
            name, counts = node.func.attr, (VECTOR_METHODS[node.func.attr],)
            self._check(node.func.value)
        elif isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
            name, counts = node.func.id, FUNCTIONS[node.func.id][1]
        else:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            self._refuse(node, f"calling {name!r}")
        if len(node.args) not in counts or any(isinstance(a, ast.Starred) for a in node.args):
            want = " or ".join(map(str, counts))
            self._error(f"{name}() takes {want} argument{'s' if counts != (1,) else ''}, "
                        f"not {len(node.args)}, in {self._short()}")
        for i, a in enumerate(node.args):
            if (name, i) in _INT_ARGS:
                lo, hi = _INT_ARGS[name, i]
                v = a.value if isinstance(a, ast.Constant) else None
                if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
                    self._error(f"argument {i + 1} of {name}() must be an integer from {lo} to {hi} in {self._short()}")
            self._check(a)

    def _constant(self, node):
        """The value of a subtree of only number constants, computed in floats (which cannot hang
        or grow without bound, unlike Python ints); None if it reads names. Overflow is refused."""
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self._constant(node.operand)
            return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.BinOp) and type(node.op) in _FLOAT_OPS:
            a, b = self._constant(node.left), self._constant(node.right)
            if a is None or b is None:
                return None
            try:
                v = _FLOAT_OPS[type(node.op)](a, b)
            except ZeroDivisionError:
                self._error(f"division by zero in {self._short()}")
            except OverflowError:
                v = math.inf
            if isinstance(v, complex) or not math.isfinite(v):
                self._error(f"the constant {ast.unparse(node)} in {self._short()} is out of range")
            return v
        return None

    @staticmethod
    def _constant_index(node):
        """A constant index (int, slice of ints, or a tuple of them) as a Python object, else None."""
        if isinstance(node, ast.Tuple):
            parts = [Expression._constant_index(p) for p in node.elts]
            return None if any(p is None for p in parts) else tuple(parts)
        if isinstance(node, ast.Slice):
            vals = [Expression._constant_index(b) if b is not None else "none" for b in (node.lower, node.upper, node.step)]
            if any(v is None or isinstance(v, (tuple, slice)) for v in vals):
                return None
            return slice(*(None if v == "none" else v for v in vals))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            v = Expression._constant_index(node.operand)
            return -v if isinstance(v, int) else None
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        return None

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, columns: Mapping):
        """Evaluate over ``columns`` (a mapping of name -> numpy or awkward array)."""
        try:
            return self._eval(self._tree, columns)
        except (RecursionError, MemoryError) as exc:
            self._error(f"{self._short()} is too large to evaluate ({type(exc).__name__}); split it into several defines")

    def _eval(self, node, cols):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            return cols[node.id]
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](self._eval(node.left, cols), self._eval(node.right, cols))
        if isinstance(node, ast.UnaryOp):
            return _UNOPS[type(node.op)](self._eval(node.operand, cols))
        if isinstance(node, ast.BoolOp):
            combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = self._eval(node.values[0], cols)
            for v in node.values[1:]:
                out = combine(out, self._eval(v, cols))
            return out
        if isinstance(node, ast.Compare):
            left, out = self._eval(node.left, cols), None
            for op, comp in zip(node.ops, node.comparators):
                right = self._eval(comp, cols)
                r = _CMPOPS[type(op)](left, right)
                out = r if out is None else np.logical_and(out, r)
                left = right
            return out
        if isinstance(node, ast.Call):
            args = [self._eval(a, cols) for a in node.args]
            if isinstance(node.func, ast.Attribute):  # a vector method, e.g. a.deltaR(b)
                obj = self._eval(node.func.value, cols)
                if not (has_vector(obj) and has_vector(args[0])):
                    raise ValueError(f".{node.func.attr}() needs Lorentz vectors on both sides "
                                     "(collections with pt, eta, phi, mass)")
                return getattr(obj, node.func.attr)(args[0])
            return FUNCTIONS[node.func.id][0](*args)
        if isinstance(node, ast.Attribute):
            return _attribute(self._eval(node.value, cols), node.attr)
        if isinstance(node, ast.Subscript):
            value = self._eval(node.value, cols)
            index = self._constant_index(node.slice)
            if index is not None:
                return value[index]
            return _select(value, self._eval(node.slice, cols))
        raise AssertionError("validated tree holds only whitelisted nodes")

    def __repr__(self):
        return f"Expression({self.text!r})"


def _attribute(value, attr: str):
    """A field of a collection (``Jet.pt``) or a whitelisted vector property (``p4.mass``)."""
    fields = value.fields if isinstance(value, (ak.Array, ak.Record)) else []
    if attr in fields:
        return value[attr]
    if attr in VECTOR_PROPERTIES and has_vector(value):
        return getattr(value, attr)
    what = f"fields: {', '.join(fields)}" if fields else "it is not a collection"
    raise ValueError(f"no field {attr!r} ({what})")


def _select(value, index):
    """``value[index]`` for a computed index: a boolean mask (per event or per object), or one
    integer per event into jagged ``value`` (e.g. ``Jet_pt[argmax(Jet_eta)]``; None when missing)."""
    if isinstance(index, ak.Array):
        kind = ak.type(ak.drop_none(index)).content
        while hasattr(kind, "content"):
            kind = kind.content
        prim = getattr(kind, "primitive", "")
        if prim.startswith(("int", "uint")) and index.ndim == 1 and _is_jagged(value):
            return ak.firsts(value[ak.singletons(index)], axis=1)
        if prim == "bool" and index.ndim <= (value.ndim if isinstance(value, ak.Array) else 1):
            if len(index) != len(value) or (index.ndim > 1 and not ak.all(ak.num(index, axis=1) == ak.num(value, axis=1))):
                raise ValueError("a mask must have the shape of what it selects (one boolean per event, or per "
                                 "object of the same collection)")
            return value[ak.fill_none(index, False)]
        raise ValueError(f"an index must be a boolean mask or one integer per event, not {ak.type(index)}")
    index = np.asarray(index)
    if index.dtype != bool:
        raise ValueError(f"an index must be a boolean mask or one integer per event, not {index.dtype}")
    return value[index]
