"""Precision scan: every ``ap_fixed<W,I>`` of a grid converted, compiled and scored in parallel.

Each grid point is one Ray task (one process, its own temporary folder: a compiled project
holds a ctypes handle and must not share a process or a directory with another). The task
returns numbers only; the chosen precision's project is re-written by the caller (conversion
is deterministic and takes well under a second), so no task writes into the run directory and
the scan works on a cluster whose workers do not share the driver's disk.

ReuseFactor does not change the arithmetic (the C simulation is bit-identical for any RF), so it
is not a separate compile: each precision's row carries the estimate for every requested RF.

The chosen precision is the narrowest width W whose fidelity passes the tolerance (among
passing points of that width: the best decision agreement, then fewer integer bits). The
narrower points that fail are reported too: they show the tolerance is doing work.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from ..data.mapper import Mapper, in_process
from .artifacts import Artifact
from .fixed import FixedType


@dataclasses.dataclass
class Tolerance:
    """What "no loss" means for the scan (defaults: 99.5% same decisions, AUC drop <= 0.005)."""

    min_agreement: float = 0.995
    max_auc_drop: float = 0.005


def _options_for(kind: str, base: dict, precision: FixedType) -> object:
    if kind == "torch":
        from .hls import HLSOptions

        return HLSOptions(**{**base, "precision": str(precision)})
    from .bdt import BDTOptions

    return BDTOptions(**{**base, "precision": str(precision)})


def evaluate_point(art_path: str, art_meta: dict, art_raw: bytes, base_options: dict, precision: str,
                   Z: np.ndarray, float_out: np.ndarray, labels: np.ndarray | None, fidelity_kw: dict,
                   reuse_factors: list[int]) -> dict:
    """Convert + compile + emulate one precision in a temporary folder; return its numbers."""
    from . import estimate, fidelity
    from .emulate import compile_project

    art = Artifact(art_path, art_meta, art_raw)
    t = FixedType.parse(precision)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hepray-scan-") as tmp:
        opts = _options_for(art.type, base_options, t)
        if art.type == "torch":
            from .hls import convert_mlp

            project = convert_mlp(art, Path(tmp) / "prj", opts)
        else:
            from .bdt import convert_bdt

            project = convert_bdt(art, Path(tmp) / "prj", opts)
        emu = compile_project(project)
        fixed_out = emu.predict(Z)
        meta = emu.meta
    report = fidelity.compare(float_out, fixed_out, labels, **fidelity_kw)
    row = {"precision": str(t), "width": t.width, "integer": t.integer, "compile_s": round(emu.compile_s, 2),
           "seconds": round(time.perf_counter() - t0, 2), "fidelity": report}
    if art.type == "torch":
        row["estimates"] = {str(rf): estimate.estimate_mlp(_with_reuse(meta, rf)) for rf in reuse_factors}
    else:
        row["estimates"] = {"1": estimate.estimate_bdt(meta)}
    return row


def _with_reuse(meta: dict, rf: int) -> dict:
    meta = json.loads(json.dumps(meta))
    for layer in meta["layers"]:
        if layer.get("class") == "Dense":
            layer["reuse_factor"] = rf
    return meta


def choose(rows: list[dict], tol: Tolerance) -> dict:
    """The narrowest passing precision, and the narrower ones that failed."""
    from .fidelity import passes

    for r in rows:
        r["passes"] = passes(r["fidelity"], tol.min_agreement, tol.max_auc_drop)
    ok = [r for r in rows if r["passes"]]
    if not ok:
        return {"chosen": None, "failed_narrower": [r["precision"] for r in rows], "reason": "no grid point passes"}
    width = min(r["width"] for r in ok)
    best = max((r for r in ok if r["width"] == width), key=lambda r: (r["fidelity"]["decision_agreement"], -r["integer"]))
    return {"chosen": best["precision"], "width": width,
            "failed_narrower": [r["precision"] for r in rows if not r["passes"] and r["width"] < width],
            "failed_same_width": [r["precision"] for r in rows if not r["passes"] and r["width"] == width]}


def _evaluate(point, args: tuple, Z, float_out, labels, fidelity_kw: dict, reuse_factors: list) -> dict:
    return evaluate_point(*args, point, Z, float_out, labels, fidelity_kw, reuse_factors)


def run_scan(art: Artifact, Z: np.ndarray, labels: np.ndarray | None, grid: list[FixedType | str], *,
             base_options: dict | None = None, reuse_factors: list[int] | tuple = (1,), tolerance: Tolerance | None = None,
             fidelity_kw: dict | None = None, use_ray: bool = True, log=None, mapper: Mapper | None = None) -> dict:
    """Evaluate ``grid`` on standardised inputs ``Z`` (one task per point through ``mapper``, the
    engine's ``map_tasks``; none given or ``use_ray=False``: here) and choose."""
    tol = tolerance or Tolerance()
    fidelity_kw = dict(fidelity_kw or {})
    base = dict(base_options or {})
    base.pop("precision", None)
    Z = np.ascontiguousarray(Z, dtype=np.float32)
    float_out = art.float_reference()(Z)
    points = sorted({str(FixedType.parse(p)) for p in grid}, key=lambda s: (FixedType.parse(s).width, FixedType.parse(s).integer))
    args = (art.path, art.meta, art.raw, base)
    t0 = time.perf_counter()
    rows = list((mapper or in_process)(_evaluate, points, args, Z, float_out, labels, fidelity_kw,
                                       list(reuse_factors), parallel=use_ray, max_retries=1))
    if log:
        for r in rows:
            f = r["fidelity"]
            auc = f.get("auc", {}).get("drop")
            log(f"scan {r['precision']:>24s}: agreement {f['decision_agreement']:.4f}"
                + (f", AUC drop {auc:+.4f}" if auc is not None else "") + f" ({r['seconds']:.1f} s)")
    return {"tolerance": dataclasses.asdict(tol), "events": len(Z), "seconds": round(time.perf_counter() - t0, 2),
            "reuse_factors": list(reuse_factors), "rows": rows, **choose(rows, tol)}


def plot_scan(result: dict, path: str | Path) -> str:
    from ..report.plots import _plt, _save

    plt = _plt()  # mplhep style of the job's report: block

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for integer in sorted({r["integer"] for r in rows}):
        rs = [r for r in rows if r["integer"] == integer]
        ax.plot([r["width"] for r in rs], [r["fidelity"]["decision_agreement"] for r in rs], "o-", label=f"I = {integer}")
    ax.axhline(result["tolerance"]["min_agreement"], color="grey", ls=":", label="tolerance")
    ax.set_xlabel("total bits W of ap_fixed<W,I>")
    ax.set_ylabel("decision agreement with float")
    if result.get("chosen"):
        ax.set_title(f"chosen: {result['chosen']}")
    ax.legend(fontsize=8)
    _save(fig, path)
    return str(path)
