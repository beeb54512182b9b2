"""FPGA trigger stage (`kind: fpga`): fidelity at the chosen precision, emulation throughput with 1
and 2 workers vs the float model, the latency/resource estimate, and conifer's xgboost >= 2
disagreement before/after hepray's correction, in one run.

    python benchmarks/bench_fpga.py [--parts tests/data/generated/sample/parts] [--copies 3]

Models:
* MLP 16-64-32-32-3 (QCD / top / W, ReLU): trained here by `kind: train_classifier` on the inputs
  of jobs/fpga_mlp.yaml, then jobs/fpga_mlp.yaml itself (model and samples overridden) with its
  precision scan;
* BDT: the top-vs-QCD xgboost model of jobs/train_bdt.yaml (``--bdt``, default
  runs/demo/train_bdt/model), through jobs/fpga_bdt.yaml with a smaller scan grid.

Throughput: the same job at the chosen precision without scan, ``engine.workers`` 1 then 2, on
``--copies`` copies of the samples (listed as separate samples; 2 shards per copy and process).
Per worker: events / seconds of the batched C call, of one C call per event, of the float model
(torch / xgboost) on the same arrays; aggregate: events / the engine's wall time (reading, actor
start and the per-actor g++ compile included) and events / (wall - compile) as the emulation rate.

conifer before/after: the BDT converted by conifer's own xgboost converter (``correct: false``) and
with hepray's corrections, both compiled and compared with xgboost's margin on the same test
inputs quantised on the firmware's input grid: max |difference|, decision agreement at the
rate budget; and the same for a 3-class model (where the intercept error is large).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_job(name: str) -> dict:
    return yaml.safe_load((ROOT / "jobs" / f"{name}.yaml").read_text())


def samples(job: dict, parts: Path, copies: int = 1) -> list[dict]:
    out = []
    for c in range(copies):
        for s in job["dataset"]["samples"]:
            pattern = Path(s["files"]).name
            out.append({**s, "name": s["name"] + (f"_{c}" if c else ""), "files": str(parts / pattern)})
    return out


def run_job(job: dict) -> tuple[dict, dict, float]:
    import hepray

    t0 = time.perf_counter()
    summary = hepray.run(job, overwrite=True, quiet=True)
    wall = time.perf_counter() - t0
    out = Path(job["output"]["dir"])
    fid = json.loads((out / "fidelity.json").read_text()) if (out / "fidelity.json").exists() else {}
    return summary, fid, wall


def train_mlp(parts: Path, out: Path) -> Path:
    """The 16-64-32-32-3 trigger MLP on the inputs of jobs/fpga_mlp.yaml."""
    import hepray

    fj = load_job("fpga_mlp")
    feats = ["reco_pt", "reco_eta", "reco_mass", "reco_tau1", "reco_tau2", "reco_tau3", "reco_tau21", "reco_tau32",
             "reco_nconst"] + list(fj["dataset"]["expressions"])
    job = {"kind": "train_classifier", "name": "bench_fpga_mlp", "output": {"dir": str(out)},
           "dataset": {**fj["dataset"], "samples": samples(fj, parts)}, "features": feats,
           "classes": ["qcd", "top", "w"], "split": fj["split"], "mode": "direct",
           "model": {"hidden": [64, 32, 32], "activation": "relu"},
           "training": {"epochs": 30, "batch_size": 256, "learning_rate": 0.003, "patience": 6}}
    hepray.run(job, overwrite=True, quiet=True)
    return out / "model"


def fpga_job(name: str, model: Path, parts: Path, out: Path, **over) -> dict:
    job = load_job(name)
    job.update(model={"path": str(model)}, output={"dir": str(out)}, name=f"bench_{name}")
    job["dataset"] = {**job["dataset"], "samples": samples(job, parts, over.pop("copies", 1))}
    for k, v in over.items():
        job[k] = {**job[k], **v} if isinstance(v, dict) and isinstance(job.get(k), dict) else v
    return job


def fidelity_row(summary: dict, fid: dict, wall: float, out: Path) -> dict:
    res = json.loads((out / "resources.json").read_text())
    scan = json.loads((out / "scan.json").read_text()) if (out / "scan.json").exists() else None
    row = {"precision": fid["precision"], "events": fid["events"], "decision_agreement": fid["decision_agreement"],
           "auc_float": fid.get("auc", {}).get("float"), "auc_fixed": fid.get("auc", {}).get("fixed"),
           "auc_drop": fid.get("auc", {}).get("drop"), "argmax_agreement": fid.get("argmax_agreement"),
           "max_abs_diff": fid.get("max_abs_diff"), "passes_tolerance": fid["passes_tolerance"],
           "estimate": res["estimate"], "synthesis": res.get("synthesis"), "job_seconds": round(wall, 1)}
    if scan:
        row["scan"] = [{"precision": r["precision"], "agreement": round(r["fidelity"]["decision_agreement"], 5),
                        "auc_drop": round(r["fidelity"]["auc"]["drop"], 5) if "auc" in r["fidelity"] else None,
                        "passes": r["passes"]} for r in scan["rows"]]
        row["chosen"] = scan["chosen"]
    return row


def throughput(name: str, model: Path, parts: Path, d: Path, precision: str, copies: int, key: str) -> dict:
    out = {}
    for workers in (1, 2):
        job = fpga_job(name, model, parts, d / f"{name}_w{workers}", copies=copies, events="all",
                       scan={"enabled": False}, engine={"workers": workers}, synth="never",
                       **{key: {"precision": precision}})
        job["dataset"]["shard_events"] = 800
        summary, fid, wall = run_job(job)
        t = fid["throughput"]
        compile_s = max(t["compile_s_per_actor"])
        engine_s = summary["seconds"]
        out[f"workers_{workers}"] = {
            "events": t["events"], "per_worker_batched_events_per_s": round(t["batched_events_per_s"]),
            "per_worker_per_event_events_per_s": round(t["per_event_events_per_s"]),
            "per_worker_float_events_per_s": round(t["float_events_per_s"]),
            "engine_seconds": round(engine_s, 2), "compile_s_per_actor": t["compile_s_per_actor"],
            "aggregate_end_to_end_events_per_s": round(t["events"] / engine_s),
            "aggregate_emulation_events_per_s": round(t["events"] / max(engine_s - compile_s, 1e-9)),
        }
    w1, w2 = out["workers_1"], out["workers_2"]
    out["speedup_2_over_1_end_to_end"] = round(w2["aggregate_end_to_end_events_per_s"] / w1["aggregate_end_to_end_events_per_s"], 3)
    out["batched_over_float_per_worker"] = round(w1["per_worker_batched_events_per_s"] / w1["per_worker_float_events_per_s"], 4)
    return out


def conifer_before_after(model: Path, parts: Path, d: Path, precision: str, bdt_over: dict) -> dict:
    """conifer's own converter vs hepray's corrected one, against xgboost's margin."""
    import xgboost as xgb

    from hepray.fpga import fidelity
    from hepray.fpga.artifacts import Artifact, save_xgboost
    from hepray.fpga.bdt import BDTOptions, XGBTrees, auto_input_type, convert_bdt
    from hepray.fpga.emulate import compile_project
    from hepray.fpga.fixed import FixedType

    art = Artifact.read(model)
    booster = art.booster()
    # every reconstructed jet of the samples (the BDT's inputs are plain branches)
    import uproot

    X = np.concatenate([np.column_stack([a[f] for f in art.features]).astype(np.float32)
                        for s in ("ttbar", "qcd") for f_ in sorted(parts.glob(f"{s}_*.root"))
                        for a in [uproot.open(f_)["jets"].arrays(art.features + ["reco_ok"], "reco_ok == 1", library="np")]])
    opts = BDTOptions(**{**bdt_over, "precision": precision})
    score_t = FixedType.parse(precision)
    inp = auto_input_type(XGBTrees.from_booster(booster), score_t) if opts.input_precision == "auto" else FixedType.parse(opts.input_precision)
    Xq = inp.quantize(X).astype(np.float32)
    margin = booster.predict(xgb.DMatrix(Xq), output_margin=True).reshape(len(Xq), -1)
    out = {"binary_demo_bdt": {"events": len(Xq), "input_type": str(inp), "precision": precision}}
    for tag, correct in (("conifer_as_is", False), ("hepray_corrected", True)):
        o = BDTOptions(**{**opts.__dict__, "input_precision": str(inp), "correct": correct})
        t0 = time.perf_counter()
        emu = compile_project(convert_bdt(art, d / f"conifer_{tag}", o))
        e = emu.predict(Xq).reshape(len(Xq), -1)
        thr = fidelity.threshold_at(margin[:, 0], 0.01)
        out["binary_demo_bdt"][tag] = {"max_abs_diff": float(np.abs(e - margin).max()),
                                       "mean_abs_diff": float(np.abs(e - margin).mean()),
                                       "decision_agreement_at_1pct": float(np.mean((e[:, 0] > thr) == (margin[:, 0] > thr))),
                                       "compile_s": round(time.perf_counter() - t0, 1)}
    # 3 classes: xgboost >= 2 stores per-class intercepts as margins, conifer takes their logit
    rng = np.random.default_rng(5)
    Xt = rng.normal(size=(4000, 6)).astype(np.float32)
    yt = np.digitize(Xt[:, 0] + 0.4 * Xt[:, 1] * Xt[:, 2], [-0.5, 0.5])
    b3 = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 3, "eta": 0.3, "nthread": 1, "seed": 1},
                   xgb.DMatrix(Xt[:2500], label=yt[:2500]), 10)
    a3 = Artifact.read(save_xgboost(d / "bdt3" / "model", b3, [f"x{i}" for i in range(6)], ["a", "b", "c"]))
    i3 = "ap_fixed<16,6,AP_TRN,AP_SAT>"
    Xq3 = FixedType.parse(i3).quantize(Xt[2500:]).astype(np.float32)
    m3 = b3.predict(xgb.DMatrix(Xq3), output_margin=True)
    out["three_class_toy"] = {"events": len(Xq3), "intercepts_xgboost": json.loads(b3.save_config())["learner"]
                              ["learner_model_param"]["base_score"]}
    for tag, correct in (("conifer_as_is", False), ("hepray_corrected", True)):
        emu = compile_project(convert_bdt(a3, d / "bdt3" / tag, BDTOptions(precision="ap_fixed<18,8>", input_precision=i3,
                                                                           correct=correct)))
        e = emu.predict(Xq3)
        out["three_class_toy"][tag] = {"max_abs_diff": float(np.nanmax(np.abs(e - m3))) if np.isfinite(e).any() else None,
                                       "nan_outputs": int(np.isnan(e).sum()),
                                       "argmax_agreement": float(np.mean(e.argmax(1) == m3.argmax(1)))}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="tests/data/generated/sample/parts")
    ap.add_argument("--bdt", default="runs/demo/train_bdt/model")
    ap.add_argument("--copies", type=int, default=3, help="copies of the samples for the throughput runs")
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    parts = (ROOT / a.parts).resolve()
    d = Path(a.dir or tempfile.mkdtemp(prefix="hepray_bench_fpga_"))
    res: dict = {"parts": str(parts)}

    mlp = train_mlp(parts, d / "train_mlp")
    job = fpga_job("fpga_mlp", mlp, parts, d / "fpga_mlp", scan={"widths": [10, 12, 14, 16], "integers": [6],
                                                                  "reuse_factors": [1, 4]})
    s, fid, wall = run_job(job)
    res["mlp"] = fidelity_row(s, fid, wall, d / "fpga_mlp")
    res["mlp"]["throughput"] = throughput("fpga_mlp", mlp, parts, d, fid["precision"], a.copies, "hls")

    bdt = (ROOT / a.bdt).resolve()
    bj = load_job("fpga_bdt")
    job = fpga_job("fpga_bdt", bdt, parts, d / "fpga_bdt", scan={"widths": [12, 14, 16], "integers": [6]}, synth="never")
    s, fid, wall = run_job(job)
    res["bdt"] = fidelity_row(s, fid, wall, d / "fpga_bdt")
    res["bdt"]["throughput"] = throughput("fpga_bdt", bdt, parts, d, fid["precision"], a.copies, "bdt")
    res["conifer_xgboost"] = conifer_before_after(bdt, parts, d, fid["precision"], {k: v for k, v in bj["bdt"].items()
                                                                                  if k in ("input_precision", "clock_period", "part")})

    print(json.dumps(res, indent=1, default=str))
    print()
    for name in ("mlp", "bdt"):
        r, t = res[name], res[name]["throughput"]
        est = r["estimate"]
        print(f"{name}: {r['precision']} agreement {r['decision_agreement']:.4f} AUC {r['auc_float']:.4f} -> "
              f"{r['auc_fixed']:.4f} (drop {r['auc_drop']:+.4f}); estimate latency {est.get('latency_ns')} ns, "
              f"DSP {est.get('dsp')}, LUT-ish {est.get('comparators', '-')}")
        print(f"   emulation per worker {t['workers_1']['per_worker_batched_events_per_s']} ev/s batched vs float "
              f"{t['workers_1']['per_worker_float_events_per_s']} ev/s (x{t['batched_over_float_per_worker']}); "
              f"aggregate 1 worker {t['workers_1']['aggregate_emulation_events_per_s']} / 2 workers "
              f"{t['workers_2']['aggregate_emulation_events_per_s']} ev/s (end-to-end x{t['speedup_2_over_1_end_to_end']})")
    c = res["conifer_xgboost"]
    for k in ("binary_demo_bdt", "three_class_toy"):
        print(f"conifer {k}: as is {c[k]['conifer_as_is']} | corrected {c[k]['hepray_corrected']}")
    outdir = ROOT / "benchmarks/results"
    outdir.mkdir(exist_ok=True)
    (outdir / "fpga.json").write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
