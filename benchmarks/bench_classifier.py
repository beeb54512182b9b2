"""Deep classifier (kind: train_classifier), side by side in one run:

1. training throughput (events/s of the training loop, from the fit history) on flat synthetic
   events: direct (one process), Ray Train with 1 worker and with 2 DDP workers (gloo), plus the
   wall time of each job (Ray Train adds its start-up);
2. AUC of the MLP vs hepray's train_bdt on the same features and the same test events
   (top vs QCD, the committed Pythia sample; both use the hash split of the event identity);
3. ADNN (ttbar and xqq signal domains vs QCD): adversary accuracy, fresh-probe accuracy, KS
   between the domains' scores and AUC, for alpha = 0 and the chosen alpha.

    python benchmarks/bench_classifier.py [--events 100000] [--epochs 3] [--alpha 5]

Writes benchmarks/results/classifier.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import write_flat

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "generated" / "sample" / "parts"
JET = ["reco_pt", "reco_eta", "reco_mass", "reco_tau1", "reco_tau2", "reco_tau3", "reco_tau21", "reco_tau32",
       "reco_nconst"]
QUIET = {"attribution": {"events": 0}, "export": {"torchscript": False, "onnx": False}}


def run(job: dict, out: Path) -> tuple[dict, dict, float]:
    import hepray

    t0 = time.perf_counter()
    s = hepray.run({**job, "output": {"dir": str(out)}}, overwrite=True, quiet=True)
    return s, json.loads((out / "metrics.json").read_text()), time.perf_counter() - t0


def pythia(samples) -> dict:
    return {"tree": "jets", "cut": "reco_ok == 1",
            "samples": [{"name": n, "files": str(SAMPLE / f"{n}_*.root"), "label": lab} for n, lab in samples]}


def throughput(d: Path, events: int, epochs: int) -> dict:
    files = []
    for i in range(2):
        p = d / f"flat_{i}.root"
        if not p.exists():
            write_flat(p, events // 2, seed=200 + i, basket=max(1000, events // 8))
        files.append(str(p))
    base = {"kind": "train_classifier", "name": "bench_clf", "dataset": {"files": files, "shard_events": events // 8},
            "features": [f"x{i}" for i in range(16)], "label": "label", "seed": 1,
            "model": {"hidden": [64, 64, 32]}, "training": {"epochs": epochs, "batch_size": 256, "patience": None},
            **QUIET}
    out = {}
    for name, extra in (("direct", {"mode": "direct"}), ("ray_train_1", {"mode": "ray_train", "num_workers": 1}),
                        ("ray_train_2", {"mode": "ray_train", "num_workers": 2})):
        s, m, wall = run({**base, **extra}, d / name)
        hist = m["training"]["history"]
        steady = hist[1:] or hist  # epoch 1 reads the shards; later epochs use the cached rows
        out[name] = {"events_per_s": round(sum(h["events_per_s"] for h in steady) / len(steady), 1),
                     "events_per_s_epoch1": round(hist[0]["events_per_s"], 1), "job_wall_s": round(wall, 1),
                     "auc": round(m["auc"], 4), "n_train": m["n_train"]}
        print(f"{name:12s} {out[name]['events_per_s']:>10.0f} events/s (epoch 1: {out[name]['events_per_s_epoch1']:.0f}),"
              f" job {wall:.1f}s, AUC {m['auc']:.4f}", flush=True)
    out["speedup_2_over_1_workers"] = round(out["ray_train_2"]["events_per_s"] / out["ray_train_1"]["events_per_s"], 3)
    out["events"], out["epochs"] = events, epochs
    return out


def mlp_vs_bdt(d: Path) -> dict:
    ds = pythia((("ttbar", 1), ("qcd", 0)))
    split = {"validation": 0.2, "test": 0.3}
    _, mb, wb = run({"kind": "train_bdt", "name": "bench_bdt", "dataset": ds, "features": JET, "split": split,
                     "rounds": 400, "early_stopping_rounds": 30, "params": {"max_depth": 4, "eta": 0.1},
                     "shap_events": 0}, d / "bdt")
    _, mc, wc = run({"kind": "train_classifier", "name": "bench_mlp", "dataset": ds, "features": JET, "split": split,
                     "mode": "direct", "training": {"epochs": 40, "batch_size": 128, "patience": 8}, **QUIET},
                    d / "mlp")
    assert mb["n_test"] == mc["n_test"], "not the same test events"
    res = {"n_test": mc["n_test"], "auc_mlp": round(mc["auc"], 4), "auc_bdt": round(mb["auc"], 4),
           "auc_difference_mlp_minus_bdt": round(mc["auc"] - mb["auc"], 4),
           "rejection_at_50_mlp": mc.get("rejection_at_50"), "rejection_at_50_bdt": mb.get("rejection_at_50"),
           "job_wall_s_mlp": round(wc, 1), "job_wall_s_bdt": round(wb, 1)}
    print(f"top vs QCD on {res['n_test']} test jets: MLP AUC {res['auc_mlp']:.4f} vs BDT {res['auc_bdt']:.4f} "
          f"(difference {res['auc_difference_mlp_minus_bdt']:+.4f})", flush=True)
    return res


def adnn(d: Path, alpha: float) -> dict:
    _, m, wall = run({"kind": "train_classifier", "name": "bench_adnn", "seed": 1,
                      "dataset": pythia((("ttbar", 1), ("xqq", 1), ("qcd", 0))), "features": JET, "mode": "direct",
                      "model": {"hidden": [32, 32]}, "training": {"epochs": 15, "batch_size": 128, "patience": None},
                      "adversarial": {"domains": ["ttbar", "xqq"], "alpha": alpha, "probe_epochs": 30}, **QUIET},
                     d / "adnn")
    a = m["adversarial"]
    keys = ("auc", "adversary_accuracy", "probe_accuracy", "probe_accuracy_scores", "ks_domains_max")
    res = {"chance": round(a["chance"], 4), "job_wall_s": round(wall, 1),
           f"alpha_{alpha:g}": {k: round(a[k], 4) for k in keys},
           "alpha_0": {k: round(a["reference"][k], 4) for k in keys}}
    for name in ("alpha_0", f"alpha_{alpha:g}"):
        r = res[name]
        print(f"ADNN {name:9s} adversary accuracy {r['adversary_accuracy']:.3f} (chance {res['chance']:.3f}), "
              f"probe on scores {r['probe_accuracy_scores']:.3f}, KS(ttbar, xqq) {r['ks_domains_max']:.3f}, "
              f"AUC {r['auc']:.4f}", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=5.0)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    from hepray.engine.runtime import ensure_ray

    ensure_ray(num_cpus=2)
    d = Path(args.dir or tempfile.mkdtemp(prefix="hepray_bench_clf_"))
    res = {"load_average": os.getloadavg(), "cpus": os.cpu_count(),
           "throughput": throughput(d, args.events, args.epochs), "mlp_vs_bdt": mlp_vs_bdt(d), "adnn": adnn(d, args.alpha)}
    res["load_average_end"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    t = res["throughput"]
    print(f"\ntraining events/s: 1 worker {t['ray_train_1']['events_per_s']:.0f}, 2 workers "
          f"{t['ray_train_2']['events_per_s']:.0f} (x{t['speedup_2_over_1_workers']:.2f}), direct "
          f"{t['direct']['events_per_s']:.0f}; MLP vs BDT AUC {res['mlp_vs_bdt']['auc_mlp']:.4f} vs "
          f"{res['mlp_vs_bdt']['auc_bdt']:.4f}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "classifier.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
