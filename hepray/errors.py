"""All hepray exceptions. One base class; each carries the structured fields its message names.

Errors cross the Ray worker -> driver boundary, so every class pickles through ``__reduce__``
with its constructor arguments (Ray re-raises the original type on the driver).
"""

from __future__ import annotations

import difflib


class HeprayError(Exception):
    """Base class: the message is one line a user can act on."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (HeprayError, (self.message,))


class ConfigError(HeprayError, ValueError):
    """A job file or spec is invalid. ``where`` is the file, ``field`` the dotted path."""

    def __init__(self, where: str, field: str, problem: str):
        self.where, self.field, self.problem = where, field, problem
        loc = f"{where}: " if where else ""
        fld = f"{field}: " if field else ""
        super().__init__(f"{loc}{fld}{problem}")

    def __reduce__(self):
        return (ConfigError, (self.where, self.field, self.problem))


class UnknownKind(ConfigError, KeyError):
    def __init__(self, where: str, kind: str, known: list[str]):
        self.kind, self.known = kind, list(known)
        near = difflib.get_close_matches(kind, self.known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        super().__init__(where, "kind", f"unknown kind {kind!r}{hint}; known kinds: {', '.join(self.known)}")

    def __reduce__(self):
        return (UnknownKind, (self.where, self.kind, self.known))

    def __str__(self):  # KeyError would quote the message
        return self.message


class ExpressionError(ConfigError):
    """An expression or selection uses something outside the safe whitelist."""

    def __reduce__(self):
        return (ExpressionError, (self.where, self.field, self.problem))


class DataError(HeprayError):
    """A file or shard cannot be read. Always names the file (and the shard when known)."""

    def __init__(self, file: str, problem: str, shard: str | None = None, hint: str | None = None):
        self.file, self.problem, self.shard, self.hint = file, problem, shard, hint
        where = f"{file}" + (f" [shard {shard}]" if shard else "")
        msg = f"{where}: {problem}"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)

    def __reduce__(self):
        return (type(self), (self.file, self.problem, self.shard, self.hint))


class InputError(DataError):
    """Data the job cannot use as it asks, found while planning, before any shard runs (a branch
    whose type changes between files, a jagged branch fed as a flat feature, no events at all):
    like an invalid job file, exit 2 and nothing written."""


class BranchNotFound(DataError, KeyError):
    def __init__(self, file: str, branch: str, available: list[str] | tuple = (), shard: str | None = None):
        self.branch, self.available = branch, list(available)
        near = difflib.get_close_matches(branch, self.available, n=3)
        hint = f"did you mean {', '.join(map(repr, near))}?" if near else "check `branches:` against the file"
        DataError.__init__(self, file, f"branch {branch!r} not found", shard, hint)

    def __reduce__(self):
        return (BranchNotFound, (self.file, self.branch, self.available, self.shard))

    def __str__(self):
        return self.message


class TreeNotFound(DataError, KeyError):
    def __init__(self, file: str, tree: str, available: list[str] | tuple = ()):
        self.tree, self.available = tree, list(available)
        hint = f"the file holds: {', '.join(self.available) or 'no trees'}; set `tree:`"
        DataError.__init__(self, file, f"tree {tree!r} not found", None, hint)

    def __reduce__(self):
        return (TreeNotFound, (self.file, self.tree, self.available))

    def __str__(self):
        return self.message


class ModelLoadError(HeprayError):
    def __init__(self, path: str, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: cannot load model: {problem}")

    def __reduce__(self):
        return (ModelLoadError, (self.path, self.problem))


class MissingDependency(HeprayError, ModuleNotFoundError):
    def __init__(self, module: str, extra: str):
        self.module, self.extra = module, extra
        HeprayError.__init__(self, f"{module} is not installed; run: pip install 'hepray[{extra}]'")

    def __reduce__(self):
        return (MissingDependency, (self.module, self.extra))


class ClusterUnreachable(HeprayError):
    """Joining a Ray cluster failed: nothing listens at the address, or it refused this client."""

    def __init__(self, address: str, problem: str):
        self.address, self.problem = address, problem
        super().__init__(f"cannot join the Ray cluster at {address}: {problem}")

    def __reduce__(self):
        return (ClusterUnreachable, (self.address, self.problem))


class JobFailed(HeprayError):
    """A run finished with failed shards (on_error: fail)."""

    def __reduce__(self):
        return (JobFailed, (self.message,))
