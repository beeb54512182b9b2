"""Derived columns and selections from user text, without Python ``eval``.

The text is parsed with ``ast`` and walked by a small interpreter that knows only arithmetic,
comparisons, boolean logic, constant indexing and a whitelist of numpy/awkward functions. Anything
else (attributes, calls of other names, lambdas, comprehensions, strings) is refused at
validation time, before any file is opened.

>>> e = Expression("sqrt(px**2 + py**2)")
>>> sorted(e.names)
['px', 'py']
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Mapping

import awkward as ak
import numpy as np

from ..errors import ExpressionError


def _first(x):
    return ak.firsts(x, axis=-1)


def _count(x):
    return ak.num(x, axis=-1)


def _jagged(fn):
    """Reduce over the innermost axis for jagged input; elementwise-safe for flat input."""

    def reducer(x):
        if isinstance(x, ak.Array) and x.ndim > 1:
            return fn(x, axis=-1)
        return x

    return reducer


FUNCTIONS = {
    "abs": np.abs, "sqrt": np.sqrt, "log": np.log, "log10": np.log10, "log1p": np.log1p,
    "exp": np.exp, "sin": np.sin, "cos": np.cos, "tan": np.tan, "arctan2": np.arctan2,
    "arcsin": np.arcsin, "arccos": np.arccos, "arctan": np.arctan,
    "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh,
    "minimum": np.minimum, "maximum": np.maximum, "where": np.where, "isfinite": np.isfinite,
    "num": _count, "count": _count, "first": _first,
    "sum": _jagged(ak.sum), "max": _jagged(ak.max), "min": _jagged(ak.min), "mean": _jagged(ak.mean),
    "any": _jagged(ak.any), "all": _jagged(ak.all),
}
CONSTANTS = {"pi": np.pi, "e": np.e, "inf": np.inf}

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


class Expression:
    """A validated expression over branch names. ``names`` lists the branches it reads."""

    def __init__(self, text: str, where: str = "", field: str = "expression"):
        self.text, self.where, self.field = str(text), where, field
        try:
            tree = ast.parse(self.text.strip(), mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(where, field, f"cannot parse {self.text!r}: {exc.msg}") from None
        self._tree = tree.body
        self.names: set[str] = set()
        self._check(self._tree)

    def _refuse(self, node, what):
        raise ExpressionError(
            self.where, self.field,
            f"{what} is not allowed in {self.text!r}; use branch names, numbers, + - * / ** "
            f"comparisons, & | ~, and: {', '.join(sorted(FUNCTIONS))}",
        )

    def _check(self, node):
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, bool)):
                self._refuse(node, f"constant {node.value!r}")
        elif isinstance(node, ast.Name):
            if node.id.startswith("__"):
                self._refuse(node, f"the name {node.id!r}")
            if node.id not in CONSTANTS:
                self.names.add(node.id)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                self._refuse(node, f"operator {type(node.op).__name__}")
            self._check(node.left)
            self._check(node.right)
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
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                self._refuse(node, f"calling {name!r}")
            if node.keywords:
                self._refuse(node, "keyword arguments")
            for a in node.args:
                self._check(a)
        elif isinstance(node, ast.Subscript):
            self._check(node.value)
            self._check_index(node.slice)
        else:
            self._refuse(node, type(node).__name__)

    def _check_index(self, node):
        parts = node.elts if isinstance(node, ast.Tuple) else [node]
        for p in parts:
            if isinstance(p, ast.Slice):
                for b in (p.lower, p.upper, p.step):
                    if b is not None and not (isinstance(b, ast.Constant) and isinstance(b.value, int)):
                        self._refuse(p, "a non-integer slice bound")
            elif isinstance(p, ast.UnaryOp) and isinstance(p.op, ast.USub) and isinstance(p.operand, ast.Constant):
                continue
            elif not (isinstance(p, ast.Constant) and isinstance(p.value, int)):
                self._refuse(p, "an index that is not an integer constant")

    def evaluate(self, columns: Mapping):
        """Evaluate over ``columns`` (a mapping of name -> numpy or awkward array)."""
        return self._eval(self._tree, columns)

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
            return FUNCTIONS[node.func.id](*(self._eval(a, cols) for a in node.args))
        if isinstance(node, ast.Subscript):
            return self._eval(node.value, cols)[self._index(node.slice)]
        raise AssertionError("validated tree holds only whitelisted nodes")

    def _index(self, node):
        if isinstance(node, ast.Tuple):
            return tuple(self._index(p) for p in node.elts)
        if isinstance(node, ast.Slice):
            vals = [None if b is None else b.value for b in (node.lower, node.upper, node.step)]
            return slice(*vals)
        if isinstance(node, ast.UnaryOp):
            return -node.operand.value
        return node.value

    def __repr__(self):
        return f"Expression({self.text!r})"
