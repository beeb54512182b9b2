"""One registry of workloads keyed by the job's ``kind:``."""

from __future__ import annotations

from ..errors import UnknownKind


class Registry:
    def __init__(self):
        self._kinds: dict[str, type] = {}

    def register(self, kind: str):
        """Class decorator: ``@REGISTRY.register("infer")``. A duplicate kind is refused."""

        def deco(cls):
            if kind in self._kinds and self._kinds[kind] is not cls:
                raise ValueError(f"workload kind {kind!r} is already registered by {self._kinds[kind].__module__}")
            cls.kind = kind
            self._kinds[kind] = cls
            return cls

        return deco

    def get(self, kind: str) -> type:
        try:
            return self._kinds[kind]
        except KeyError:
            raise UnknownKind("", kind, self.kinds()) from None

    def kinds(self) -> list[str]:
        return sorted(self._kinds)

    def __contains__(self, kind: str) -> bool:
        return kind in self._kinds


REGISTRY = Registry()
register = REGISTRY.register
