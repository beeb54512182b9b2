"""Workloads, one module each, registered under the job's ``kind:``."""

# Importing a workload module registers it. Heavy libraries are imported inside the workloads,
# so listing kinds stays cheap.
from . import (  # noqa: E402,F401  # noqa: E402,F401  # noqa: E402,F401
    anomaly_scan,
    anomaly_train,
    flashsim,  # noqa: E402,F401
    fpga,  # noqa: E402,F401
    generate,  # noqa: E402,F401
    infer,
    infer_gnn,
    skim,
    templates,
    train_bdt,
    train_classifier,  # noqa: E402,F401
    train_gnn,
    train_jetgraph,
)
from .registry import REGISTRY, Registry, register

__all__ = ["REGISTRY", "Registry", "register"]
