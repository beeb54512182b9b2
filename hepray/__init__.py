"""hepray: every ML workload of an analysis or trigger/simulation group, on Ray, over ROOT data.

>>> import hepray
>>> summary = hepray.run("jobs/infer_bdt.yaml")     # doctest: +SKIP
"""

from __future__ import annotations

from .api import Dataset, plan, release_workers, run
from .config import DatasetSpec, JobConfig, load_job
from .data.shard import Shard
from .errors import ConfigError, DataError, HeprayError
from .workloads import REGISTRY, register

__version__ = "0.1.0"
__all__ = ["Dataset", "DatasetSpec", "JobConfig", "Shard", "run", "plan", "release_workers", "load_job", "register", "REGISTRY",
           "HeprayError", "ConfigError", "DataError", "__version__"]
