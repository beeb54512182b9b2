"""Flash simulation vs the full chain, side by side in one run, on this machine:

1. full chain: hepray's ``kind: generate`` (Pythia 8 + FastJet + the parametric detector,
   jobs/generate.yaml's settings) making ``--full-jets`` jets per process (ttbar, qcd) -> jets
   per worker-second (time inside the actors, one core each);
2. ``train_flashsim`` on the committed Pythia sample (tests/data/generated/sample, the test's
   settings) -> the two-sample classifier AUC on its held-out test split (0.5 = flash and full
   indistinguishable on the jet features);
3. ``kind: flashsim`` over ``--flash-jets`` generator-level jets (the sample's gen_* columns
   repeated) on Ray -> jets per worker-second, same measure as 1 (reading, generating, writing
   the part); and the pipeline alone in this process on one thread (no I/O).

Prints both rates and their ratio (goal >= 1000x) and the AUC (goal <= 0.55); writes
benchmarks/results/flashsim.json.

    python benchmarks/bench_flashsim.py [--full-jets 150] [--flash-jets 1000000] [--workers 2]
"""

from __future__ import annotations

import argparse
import glob
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "generated" / "sample" / "parts"
CONDITIONS = ["gen_pt", "gen_eta", "gen_phi", "gen_mass", "gen_tau1", "gen_tau21", "gen_tau32", "gen_nconst",
              "dead_region", "miscalibrated", "noisy"]
FLAGS = {"dead_region": "fault == 1", "miscalibrated": "fault == 2", "noisy": "fault == 3"}


def full_chain(hepray, d: Path, n_jets: int, workers: int) -> dict:
    job = yaml.safe_load((ROOT / "jobs" / "generate.yaml").read_text())
    job.update(name="bench_generate", output={"dir": str(d / "generate"), "compression": "zstd:5"},
               engine={"workers": workers, "progress_every_s": 60}, plots=False)
    job["generator"]["jets_per_shard"] = max(1, n_jets // 2)
    job["processes"] = [p | {"n_jets": n_jets} for p in job["processes"] if p["name"] in ("ttbar", "qcd")]
    s = hepray.run(job, overwrite=True, quiet=True)
    return {"jets": s["events_out"], "pythia_events": s["events_in"], "wall_s": s["seconds"], **s["generation"]}


def train(hepray, d: Path) -> tuple[str, dict]:
    job = {"kind": "train_flashsim", "name": "bench_train_flashsim", "seed": 5, "output": {"dir": str(d / "train")},
           "dataset": {"tree": "jets", "expressions": FLAGS, "samples": [
               {"name": p, "files": str(SAMPLE / f"{p}_*.root")} for p in ("ttbar", "qcd", "wqq", "xqq")]},
           "pipeline": {
               "conditions": CONDITIONS, "efficiency": {"target": "reco_ok", "hidden": [32, 32]},
               "parameterizations": [
                   {"name": "kinematics", "model": "flow", "flow": {"n_layers": 3, "hidden": 32},
                    "outputs": {"reco_pt": "log_ratio", "reco_eta": "diff", "reco_phi": "dphi", "reco_mass": "log_ratio"}},
                   {"name": "substructure", "model": "flow", "extra_conditions": ["reco_pt", "reco_mass"],
                    "flow": {"n_layers": 3, "hidden": 32},
                    "outputs": {"reco_tau1": "diff", "reco_tau21": "diff", "reco_tau32": "diff", "reco_nconst": "ratio"}}],
               "derived": {"reco_tau2": "reco_tau21 * reco_tau1", "reco_tau3": "reco_tau32 * reco_tau2",
                           "reco_pass": "reco_ok & (reco_pt >= 550) & (reco_pt < 650) & (abs(reco_eta) < 2.0)"},
               "mantissa_bits": 10},
           "training": {"epochs": 25, "batch_size": 128, "lr": 0.003, "patience": 6},
           "split": {"validation": 0.2, "test": 0.3}}
    t0 = time.perf_counter()
    s = hepray.run(job, overwrite=True, quiet=True)
    m = json.loads((d / "train" / "metrics.json").read_text())
    c2 = m["validation"]["two_sample_test"]
    feats = m["validation"]["features"]
    return s["model"], {
        "train_s": round(time.perf_counter() - t0, 1), "two_sample_auc": c2["auc"],
        "two_sample_null_std": c2.get("auc_null_std"), "two_sample_jets": [c2.get("n_full"), c2.get("n_flash")],
        "max_wasserstein_rel": max(f["wasserstein_rel"] for f in feats.values()),
        "max_correlation_difference": m["validation"]["correlation"]["max_abs_difference"]}


def gen_input(d: Path, n: int, files: int = 2) -> list[str]:
    """``n`` generator-level jets (the sample's gen_* and identity columns, repeated with new event
    numbers) in ``files`` files."""
    import uproot

    src = uproot.concatenate(sorted(glob.glob(str(SAMPLE / "*.root"))), filter_name=["gen_*", "run", "luminosityBlock",
                                                                                      "event", "fault", "label"],
                             library="np")
    m = len(src["event"])
    reps = -(-n // m)
    paths = []
    per = -(-n // files)
    for i in range(files):
        p = d / f"gen_{i}.root"
        paths.append(str(p))
        lo, hi = i * per, min(n, (i + 1) * per)
        idx = np.arange(lo, hi) % m
        cols = {k: v[idx] for k, v in src.items()}
        cols["event"] = np.arange(lo, hi, dtype=np.int64)
        cols["luminosityBlock"] = (cols["event"] // 1000).astype(np.int32)
        with uproot.recreate(p) as f:
            f.mktree("jets", {k: v.dtype for k, v in cols.items()})
            for s in range(0, len(idx), 200_000):
                f["jets"].extend({k: v[s:s + 200_000] for k, v in cols.items()})
    assert reps >= 1
    return paths


def flash(hepray, d: Path, model: str, files: list[str], workers: int) -> dict:
    job = {"kind": "flashsim", "name": "bench_flashsim", "seed": 11, "model": model,
           "dataset": {"tree": "jets", "files": files, "shard_events": 250_000},
           "validation": {"enabled": False}, "engine": {"workers": workers, "progress_every_s": 60}}
    hepray.run({**job, "dataset": {**job["dataset"], "files": files[:1]}, "output": {"dir": str(d / "warm")}},
               overwrite=True, quiet=True)  # Ray and the actors' imports warm
    s = hepray.run({**job, "output": {"dir": str(d / "flash")}}, overwrite=True, quiet=True)
    return {"jets": s["events_out"], "wall_s": s["seconds"], **s["generation"]}


def in_process(model: str, files: list[str], n: int) -> dict:
    """The pipeline alone, one thread, no I/O: ``Pipeline.generate`` on ``n`` jets."""
    import torch
    import uproot

    from hepray.data.expressions import Expression
    from hepray.flashsim.pipeline import PipelineBundle

    torch.set_num_threads(1)
    pipe = PipelineBundle.read(model).load()
    raw = uproot.open(files[0])["jets"].arrays(entry_stop=n, library="np")
    cols = dict(raw)
    for k, v in pipe.expressions.items():
        cols[k] = np.asarray(Expression(v).evaluate(cols))
    pipe.generate({k: v[:1000] for k, v in cols.items()}, 1)  # first call: lazy set-up
    t0 = time.perf_counter()
    out = pipe.generate(cols, 2)
    dt = time.perf_counter() - t0
    return {"jets": len(out["reco_pt"]), "seconds": round(dt, 3), "jets_per_s": round(len(out["reco_pt"]) / dt)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full-jets", type=int, default=150, help="jets per process (ttbar, qcd) of the full chain")
    ap.add_argument("--flash-jets", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    import hepray

    d = Path(args.dir or tempfile.mkdtemp(prefix="hepray_bench_flashsim_"))
    full = full_chain(hepray, d, args.full_jets, args.workers)
    model, quality = train(hepray, d)
    files = gen_input(d, args.flash_jets)
    fl = flash(hepray, d, model, files, args.workers)
    alone = in_process(model, files, min(args.flash_jets, 500_000))
    res = {
        "full_chain": full, "flashsim_engine": fl, "flashsim_pipeline_one_thread": alone, "quality": quality,
        "speedup_per_core": round(fl["jets_per_worker_s"] / full["jets_per_worker_s"]),
        "speedup_pipeline_alone": round(alone["jets_per_s"] / full["jets_per_worker_s"]),
        "goal": {"speedup_per_core": ">= 1000", "two_sample_auc": "<= 0.55"},
        "note": "jets per worker-second: time inside the actors (one core each); the full chain counts the "
                "jets it writes (Pythia events without a jet in the window cost time too)",
    }
    print(json.dumps(res, indent=1))
    print(f"\nfull chain (Pythia 8 + FastJet + detector): {full['jets_per_worker_s']:,.1f} jets/s per core "
          f"({full['jets']} jets) | flashsim on Ray: {fl['jets_per_worker_s']:,.0f} jets/s per core ({fl['jets']:,} jets) "
          f"| x{res['speedup_per_core']:,} (pipeline alone, one thread: {alone['jets_per_s']:,} jets/s, "
          f"x{res['speedup_pipeline_alone']:,})")
    print(f"two-sample classifier AUC (held-out jets, flash vs full): {quality['two_sample_auc']:.3f} "
          f"(null spread {quality['two_sample_null_std']})")
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "flashsim.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
