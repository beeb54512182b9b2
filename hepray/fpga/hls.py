"""hls4ml conversion of a small torch MLP artifact into an HLS project (firmware sources).

The project is written, not compiled, here: compiling loads a shared library through ctypes,
and that handle cannot cross processes. The workload ships the written project (a few hundred
kB of C++) to each Ray actor, which compiles it there (:mod:`hepray.fpga.emulate`).

Precision policy, and why: every weight, bias, layer result and the input take ``precision``
(the knob the precision scan turns), while the accumulators stay ``auto``: hls4ml then sizes
them for exact accumulation (e.g. ``fixed<37,17>`` for 16 inputs of ``<16,6>``), as a real design
would; the only rounding left is at the layer outputs, which is also what quantization-aware
training models (:mod:`hepray.fpga.qat`). ``accum: same`` reproduces the uniform
``ap_fixed<16,6>`` everywhere of the original hls4ml jet-tagging paper. Per-layer entries
override either, by hls4ml layer name (``_0``, ``_2``... for ``nn.Sequential`` children).

A batch entry point ``<project>_batch_float(x, y, n)`` is appended to hls4ml's C++ bridge:
hls4ml's own ``predict`` loops over events in Python with one ctypes call each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelLoadError
from ..extras import require
from .artifacts import Artifact
from .fixed import FixedType

PROJECT_META = "hepray_fpga.json"

BATCH_BRIDGE = """
// hepray: batch entry point, so one ctypes call runs a whole array through the C simulation
extern "C" void {name}_batch_float(const float *x, float *y, long n) {{
    for (long i = 0; i < n; ++i) {{
        {name}_float(const_cast<float *>(x + i * {n_in}), y + i * {n_out});
    }}
}}
"""


@dataclasses.dataclass
class HLSOptions:
    """Everything that decides the firmware: type, parallelism, target."""

    precision: str = "ap_fixed<16,6>"
    reuse_factor: int = 1
    accum: str = "auto"  # "auto" (exact, sized by hls4ml), "same" (= precision) or a type
    layers: dict = dataclasses.field(default_factory=dict)  # name -> {"precision": str|dict, "reuse_factor": int}
    backend: str = "Vitis"
    io_type: str = "io_parallel"
    strategy: str = "Latency"
    clock_period: float = 5.0  # ns: 200 MHz, the usual L1 trigger clock in hls4ml studies
    part: str = "xcvu13p-flga2577-2-e"
    project_name: str = "trigger_nn"

    def validate(self) -> HLSOptions:
        FixedType.parse(self.precision)
        if self.accum not in ("auto", "same"):
            FixedType.parse(self.accum)
        if self.reuse_factor < 1:
            raise ConfigError("", "reuse_factor", "must be >= 1")
        if self.io_type != "io_parallel":
            raise ConfigError("", "io_type", "only io_parallel is supported (an MLP on a trigger path)")
        return self


def hls_config(model, n_inputs: int, opts: HLSOptions) -> dict:
    """The hls4ml config dict for ``model`` under ``opts`` (name granularity, explicit types)."""
    hls4ml = require("hls4ml")
    precision = str(FixedType.parse(opts.precision))
    cfg = hls4ml.utils.config_from_pytorch_model(
        model, input_shape=(n_inputs,), granularity="name", backend=opts.backend,
        default_precision=precision, default_reuse_factor=opts.reuse_factor)
    cfg["Model"]["Strategy"] = opts.strategy
    accum = {"auto": "auto", "same": precision}.get(opts.accum, opts.accum)
    for layer in cfg["LayerName"].values():
        prec = layer.get("Precision")
        if not isinstance(prec, dict):
            continue
        for key, value in list(prec.items()):
            if key == "accum":
                prec[key] = accum
            elif value == "auto":
                prec[key] = precision
    for name, override in (opts.layers or {}).items():
        if name not in cfg["LayerName"]:
            raise ConfigError("", f"layers.{name}", f"no such layer; the model has {', '.join(cfg['LayerName'])}")
        layer = cfg["LayerName"][name]
        if "reuse_factor" in override:
            layer["ReuseFactor"] = int(override["reuse_factor"])
        p = override.get("precision")
        if isinstance(p, str):
            layer["Precision"] = {k: (p if k != "accum" else v) for k, v in layer.get("Precision", {}).items()} or {"result": p}
        elif isinstance(p, dict):
            layer.setdefault("Precision", {}).update(p)
    return cfg


def convert_mlp(artifact: Artifact, out_dir: str | Path, opts: HLSOptions) -> Path:
    """Write the HLS project of a torch MLP artifact into ``out_dir``; returns ``out_dir``.

    ``out_dir/hepray_fpga.json`` records what the emulator and the estimate need (sizes, types,
    reuse factors per layer), so neither has to import hls4ml again.
    """
    hls4ml = require("hls4ml")
    opts.validate()
    model = artifact.torch_model()
    arch = artifact.meta.get("architecture", {})
    n_in = int(arch.get("n_inputs") or len(artifact.features))
    n_out = int(arch.get("n_outputs") or 1)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # hls4ml prints its topology per layer
            cfg = hls_config(model, n_in, opts)
            hm = hls4ml.converters.convert_from_pytorch_model(
                model, output_dir=str(out_dir), project_name=opts.project_name, backend=opts.backend,
                io_type=opts.io_type, hls_config=cfg, clock_period=opts.clock_period, part=opts.part)
            hm.write()
    except ConfigError:
        raise
    except Exception as exc:  # e.g. "Unsupported layer SiLU": hls4ml 1.3 has no SiLU
        raise ModelLoadError(artifact.path, f"hls4ml {getattr(hls4ml, '__version__', '')} cannot convert it: "
                             f"{str(exc).splitlines()[0][:200]} (e.g. relu, elu and tanh convert; silu does not)") from None
    bridge = out_dir / f"{opts.project_name}_bridge.cpp"
    bridge.write_text(bridge.read_text() + BATCH_BRIDGE.format(name=opts.project_name, n_in=n_in, n_out=n_out))
    layers = [_layer_summary(layer) for layer in hm.get_layers()]
    meta = {
        "kind": "hls4ml", "project_name": opts.project_name, "n_inputs": n_in, "n_outputs": n_out,
        "options": dataclasses.asdict(opts), "layers": layers,
        "hls4ml_version": getattr(hls4ml, "__version__", "?"),
        "model": {k: artifact.meta.get(k) for k in ("features", "classes", "task", "preprocessing", "architecture")},
    }
    (out_dir / PROJECT_META).write_text(json.dumps(meta, indent=2))
    return out_dir


def _layer_summary(layer) -> dict:
    """Name, class, sizes, reuse factor and types of one hls4ml layer, as plain JSON."""
    out = {"name": layer.name, "class": layer.class_name}
    for key in ("n_in", "n_out", "reuse_factor", "strategy"):
        value = layer.get_attr(key)
        if value is not None:
            out[key] = value if isinstance(value, (int, float, str)) else str(value)
    weight = getattr(layer, "weights", {}).get("weight")
    if weight is not None:  # zeros cost no multiplier: the estimate counts the rest
        data = np.asarray(weight.data)
        out["n_weights"], out["n_nonzero_weights"] = int(data.size), int(np.count_nonzero(data))
    for key in ("weight_t", "bias_t", "accum_t", "result_t"):
        t = layer.get_attr(key)
        if t is not None:
            out[key] = _spell(getattr(t, "precision", t))
    return out


def _spell(precision) -> str:
    """hls4ml's ``fixed<16,6,TRN,WRAP,0>`` -> ``ap_fixed<16,6>`` (the C++ spelling)."""
    text = str(precision)
    try:
        return str(FixedType.parse(text))
    except ValueError:
        return text
