"""Heavy optional dependencies behind one place, each with the exact install line."""

from __future__ import annotations

import importlib

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
}


def require(module: str):
    """Import ``module`` or raise MissingDependency naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        raise MissingDependency(top, _EXTRA.get(top, top)) from exc
