"""Export a trained network for inference outside Python/hepray (C++ CMSSW/Athena, Triton):
TorchScript via tracing and ONNX, plus ``check_export`` to prove the exports compute what the
torch model does before anyone deploys them.

ONNX needs the optional packages ``onnx`` and ``onnxscript`` (torch's default exporter since
2.9); without onnxscript the legacy TorchScript-based exporter is used. ``onnxruntime`` is only
needed by ``check_export``.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..errors import MissingDependency
from ..extras import require

torch = require("torch")
Tensor = torch.Tensor


def _as_tuple(example) -> tuple:
    return tuple(example) if isinstance(example, (tuple, list)) else (example,)


def _first_output(out):
    """Compare/export the first tensor when a model returns several (e.g. a VAE)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def export_torchscript(model: torch.nn.Module, example, path: str | os.PathLike) -> Path:
    """Trace ``model`` (in eval mode) on ``example`` (a tensor or tuple) and save it to ``path``.

    Tracing records one execution path: Python control flow that depends on input values is
    frozen (shapes stay dynamic where the ops allow it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in 2.x
            traced = torch.jit.trace(model, _as_tuple(example), check_trace=False)
        traced.save(str(path))
    finally:
        model.train(was_training)
    return path


def export_onnx(model: torch.nn.Module, example, path: str | os.PathLike,
                input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                dynamic_axes: Sequence[int] = (0,), opset: int | None = None, dynamo: bool | None = None) -> Path:
    """Write ``model`` (eval mode) as one self-contained .onnx file.

    ``dynamic_axes`` are the axes left free in every input (same size across inputs): (0,) for
    the batch, (0, 2) for [B, C, P] particle inputs with a variable P. ``dynamo=None`` picks the torch.export-based exporter when ``onnxscript`` is installed and
    the legacy one otherwise. The example batch should have >= 2 events so the batch axis is not
    specialised to 1.
    """
    require("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = _as_tuple(example)
    if input_names is None:
        input_names = [f"input_{i}" for i in range(len(args))]
    if output_names is None:
        output_names = ["output"]
    if dynamo is None:
        dynamo = importlib.util.find_spec("onnxscript") is not None
    kwargs: dict = {"input_names": list(input_names), "output_names": list(output_names), "dynamo": dynamo,
                    "verbose": False}
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamo:
        kwargs["external_data"] = False
        dims = {ax: torch.export.Dim("batch" if ax == 0 else f"axis{ax}", min=1) for ax in dynamic_axes}
        if dims:
            kwargs["dynamic_shapes"] = tuple(dict(dims) for _ in args)
    elif dynamic_axes:
        names = {ax: "batch" if ax == 0 else f"axis{ax}" for ax in dynamic_axes}
        axes = {name: dict(names) for name in input_names}
        if 0 in names:
            axes.update({name: {0: "batch"} for name in output_names})
        kwargs["dynamic_axes"] = axes
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            torch.onnx.export(model, args, str(path), **kwargs)
    finally:
        model.train(was_training)
    return path


def check_export(model: torch.nn.Module, inputs, torchscript_path: str | os.PathLike | None = None,
                 onnx_path: str | os.PathLike | None = None) -> dict[str, dict]:
    """Run the torch model and each given export on ``inputs``; report max |difference|.

    Returns ``{"torchscript": {"max_abs_diff": ...}, "onnx": {"max_abs_diff": ...}}``; an export
    that cannot be run here (onnxruntime missing) gets ``{"skipped": reason}`` instead.
    """
    args = _as_tuple(inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = _first_output(model(*args)).detach().cpu().numpy()
    finally:
        model.train(was_training)
    report: dict[str, dict] = {}
    if torchscript_path is not None:
        loaded = torch.jit.load(str(torchscript_path), map_location="cpu")
        with torch.no_grad():
            got = _first_output(loaded(*args)).cpu().numpy()
        report["torchscript"] = _diff(reference, got)
    if onnx_path is not None:
        try:
            ort = require("onnxruntime")
        except MissingDependency as exc:
            report["onnx"] = {"skipped": str(exc)}
        else:
            session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            feeds = {inp.name: a.detach().cpu().numpy() for inp, a in zip(session.get_inputs(), args)}
            got = session.run(None, feeds)[0]
            report["onnx"] = _diff(reference, got)
    return report


def _diff(reference, got) -> dict:
    import numpy as np

    if reference.shape != got.shape:
        return {"max_abs_diff": float("inf"), "problem": f"shape {got.shape} != torch's {reference.shape}"}
    return {"max_abs_diff": float(np.max(np.abs(reference - got))) if reference.size else 0.0}
