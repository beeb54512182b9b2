"""Latency and resources: vendor HLS synthesis when it is on PATH, else an analytic estimate.

Synthesis (``vitis-run``, ``vitis_hls`` or ``vivado_hls``) runs the project's own Tcl with
C simulation off and C synthesis on, then the C-synthesis XML report is parsed. Without the
tools, :func:`estimate` gives a first-order model, always labelled ``"source": "estimate"``:

hls4ml MLP, ``io_parallel``, ``Strategy: Latency``
  - multiplications per Dense layer: nonzero weights (hls4ml drops constant zeros);
  - DSPs: ``ceil(mults / ReuseFactor)``, one DSP48 per product when both operands are at
    least ``DSP_MIN_BITS`` wide (narrower products are mapped to LUTs by the HLS compiler), two
    when a product exceeds the 27x18 DSP48E2 multiplier; the hls4ml tutorial states the RF=1
    rule "each multiplication ... uses 1 DSP" for this very network;
  - cycles per Dense layer: 1 (multiply) + ceil(log2(n_in) / ADDS_PER_CYCLE) (adder tree)
    + (ReuseFactor - 1) (time-multiplexing) + 1 (output register); 1 per activation;
  - initiation interval: the largest ReuseFactor.

conifer BDT (unrolled trees)
  - no DSPs; one comparator per internal node; latency 1 (compare) + 1 (leaf select)
    + ceil(log2(n_trees + 1)) (adder tree over trees and intercept) + 1 (output); II 1.

These are modelling choices to rank configurations, not a substitute for synthesis.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from .fixed import FixedType

DSP_MIN_BITS = 10
ADDS_PER_CYCLE = 3  # adder-tree levels that meet a 5 ns clock per pipeline stage (heuristic)
TOOLS = ("vitis-run", "vitis_hls", "vivado_hls")


def _width(spelling: str | None, default: int = 16) -> int:
    try:
        return FixedType.parse(spelling).width if spelling else default
    except ValueError:
        return default


def _dsp_per_product(a_bits: int, b_bits: int) -> int:
    if min(a_bits, b_bits) < DSP_MIN_BITS:
        return 0
    big, small = max(a_bits, b_bits), min(a_bits, b_bits)
    return 1 if (big <= 27 and small <= 18) else 2


def estimate_mlp(meta: dict) -> dict:
    clock = float(meta["options"].get("clock_period", 5.0))
    layers, cycles, dsp, ii = [], 0, 0, 1
    in_bits = _width(meta["options"].get("precision"))
    for layer in meta["layers"]:
        cls = layer.get("class", "")
        if cls == "Input":
            in_bits = _width(layer.get("result_t"), in_bits)
            continue
        if cls == "Dense":
            n_in, n_out = int(layer["n_in"]), int(layer["n_out"])
            rf = int(layer.get("reuse_factor", 1))
            mults = int(layer.get("n_nonzero_weights", n_in * n_out))
            per = _dsp_per_product(_width(layer.get("weight_t")), in_bits)
            d = math.ceil(mults / rf) * per
            c = 1 + math.ceil(math.log2(max(n_in, 2)) / ADDS_PER_CYCLE) + (rf - 1) + 1
            layers.append({"name": layer["name"], "class": cls, "multiplications": mults, "reuse_factor": rf,
                           "dsp": d, "cycles": c})
            dsp += d
            cycles += c
            ii = max(ii, rf)
            in_bits = _width(layer.get("result_t"), in_bits)
        else:
            layers.append({"name": layer["name"], "class": cls, "dsp": 0, "cycles": 1})
            cycles += 1
            in_bits = _width(layer.get("result_t"), in_bits)
    return {"source": "estimate", "model": "hls4ml io_parallel latency (see hepray.fpga.estimate)",
            "clock_period_ns": clock, "latency_cycles": cycles, "latency_ns": cycles * clock,
            "interval_cycles": ii, "dsp": dsp, "layers": layers}


def estimate_bdt(meta: dict) -> dict:
    clock = float(meta["options"].get("clock_period", 5.0))
    n_trees = int(meta["n_trees"])
    n_out = int(meta["n_outputs"])
    comparators = int(meta["n_nodes"]) - int(meta["n_leaves"])
    cycles = 1 + 1 + math.ceil(math.log2(n_trees + 1)) + 1
    return {"source": "estimate", "model": "conifer unrolled BDT (see hepray.fpga.estimate)",
            "clock_period_ns": clock, "latency_cycles": cycles, "latency_ns": cycles * clock,
            "interval_cycles": 1, "dsp": 0, "comparators": comparators,
            "input_bits": _width(meta.get("input_type")), "adders": n_out * n_trees}


def estimate(meta: dict) -> dict:
    """Analytic latency/resources from a project's ``hepray_fpga.json``."""
    return estimate_mlp(meta) if meta["kind"] == "hls4ml" else estimate_bdt(meta)


# -- synthesis, where the vendor tools exist ---------------------------------------------------------

def hls_tool() -> str | None:
    for tool in TOOLS:
        if shutil.which(tool):
            return tool
    return None


def synthesize(project_dir: str | Path, meta: dict, timeout_s: float = 3600) -> dict | None:
    """Run C synthesis with the first tool on PATH and parse its report; None without tools."""
    tool = hls_tool()
    if tool is None:
        return None
    d = Path(project_dir)
    if meta["kind"] == "hls4ml":
        opts = dict(reset=0, csim=0, synth=1, cosim=0, validation=0, export=0, vsynth=0, fifo_opt=0)
        script = "build_prj.tcl"
    else:
        opts = dict(reset=0, csim=0, synth=1, cosim=0, export=0)
        script = "build_hls.tcl"
    (d / "build_opt.tcl").write_text("array set opt {\n" + "".join(f"    {k} {v}\n" for k, v in opts.items()) + "}\n")
    cmd = ["vitis-run", "--mode", "hls", "--tcl", script] if tool == "vitis-run" else [tool, "-f", script]
    with open(d / "hepray_synth.log", "w") as log:
        res = subprocess.run(cmd, cwd=d, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
    reports = sorted(d.glob("**/syn/report/*_csynth.xml"), key=lambda p: p.stat().st_mtime)
    if res.returncode != 0 or not reports:
        return {"source": "synthesis", "tool": tool, "ok": False, "log": str(d / "hepray_synth.log")}
    return {"source": "synthesis", "tool": tool, "ok": True, **parse_csynth(reports[-1])}


def parse_csynth(path: str | Path) -> dict:
    """Latency, interval, clock and resources from a Vivado/Vitis HLS ``*_csynth.xml``."""
    root = ET.parse(path).getroot()

    def num(node, tag):
        el = node.find(tag) if node is not None else None
        if el is None or el.text is None:
            return None
        try:
            return float(el.text) if "." in el.text else int(el.text)
        except ValueError:
            return None

    perf = root.find("PerformanceEstimates")
    lat = perf.find("SummaryOfOverallLatency") if perf is not None else None
    timing = perf.find("SummaryOfTimingAnalysis") if perf is not None else None
    area = root.find("AreaEstimates")
    res = area.find("Resources") if area is not None else None
    avail = area.find("AvailableResources") if area is not None else None
    out = {
        "latency_cycles": num(lat, "Best-caseLatency"), "latency_cycles_worst": num(lat, "Worst-caseLatency"),
        "interval_cycles": num(lat, "Interval-min"),
        "clock_period_ns": num(timing, "EstimatedClockPeriod"),
        "target_clock_ns": num(root.find("UserAssignments"), "TargetClockPeriod"),
        "dsp": num(res, "DSP") if num(res, "DSP") is not None else num(res, "DSP48E"),
        "lut": num(res, "LUT"), "ff": num(res, "FF"), "bram18": num(res, "BRAM_18K"),
        "available": {k: num(avail, t) for k, t in (("dsp", "DSP"), ("lut", "LUT"), ("ff", "FF"), ("bram18", "BRAM_18K"))},
    }
    if out["latency_cycles"] is not None and out["target_clock_ns"]:
        out["latency_ns"] = out["latency_cycles"] * out["target_clock_ns"]
    return out


def latency_and_resources(project_dir: str | Path, meta: dict, synth: str = "auto") -> dict:
    """``synth``: ``auto`` (synthesise when a tool is on PATH), ``never`` or ``always``
    (fail without a tool). The estimate is always included, for comparison."""
    from ..errors import HeprayError

    out = {"estimate": estimate(meta)}
    if synth == "never":
        return out
    result = synthesize(project_dir, meta)
    if result is None and synth == "always":
        raise HeprayError(f"synth: always, but none of {', '.join(TOOLS)} is on PATH")
    if result is not None:
        out["synthesis"] = result
    return out
