"""Workloads, one module each, registered under the job's ``kind:``."""

# Importing a workload module registers it. Heavy libraries are imported inside the workloads,
# so listing kinds stays cheap.
from . import infer, skim, train_bdt  # noqa: E402,F401
from . import generate  # noqa: E402,F401
from .registry import REGISTRY, Registry, register

__all__ = ["REGISTRY", "Registry", "register"]
