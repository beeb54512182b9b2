"""Heavy optional dependencies behind one place, each with the exact install line."""

from __future__ import annotations

import importlib
import os
import sys

from .errors import MissingDependency

_EXTRA = {
    "torch": "torch",
    "pythia8": "generate",
    "pythia8mc": "generate",
    "fastjet": "generate",
    "hls4ml": "fpga",
    "conifer": "fpga",
    "dask": "dask",
    "dask_awkward": "dask",
    "distributed": "dask",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "s3fs": "s3",
    "pyhf": "fit",
}


def require(module: str):
    """Import ``module`` or raise MissingDependency naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        raise MissingDependency(top, _EXTRA.get(top, top)) from exc


LEAN_XGBOOST = "HEPRAY_LEAN_XGBOOST"


def import_xgboost():
    """xgboost, imported without its scikit-learn estimator wrappers in hepray's own processes.

    ``xgboost.compat`` imports ``sklearn.base`` when scikit-learn is installed: 1.4-1.7 s of a
    2 s import, paid by every CLI run and every inference actor, for wrappers hepray never uses.
    Where ``HEPRAY_LEAN_XGBOOST=1`` (set by the ``hepray`` command and in hepray's actors) and
    neither module is loaded yet, scikit-learn is hidden during that one import. Elsewhere (a
    notebook) xgboost is imported as usual, so ``XGBClassifier`` stays a scikit-learn estimator.
    """
    if "xgboost" in sys.modules or "sklearn" in sys.modules or os.environ.get(LEAN_XGBOOST) != "1":
        return importlib.import_module("xgboost")
    sys.modules["sklearn"] = None  # `import sklearn...` raises ImportError, which xgboost.compat expects
    try:
        return importlib.import_module("xgboost")
    finally:
        del sys.modules["sklearn"]
