"""Deep classifier (kind: train_classifier), side by side in one run:

1. training throughput (events/s of the training loop, from the fit history) on flat synthetic
   events: direct (one process), Ray Train with 1 worker and with 2 DDP workers (gloo), plus the
   wall time of each job (Ray Train adds its start-up);
2. AUC of the MLP vs hepray's train_bdt on the same features and the same test events
   (top vs QCD, the committed Pythia sample; both use the hash split of the event identity);
3. ADNN (ttbar and xqq signal domains vs QCD): adversary accuracy, fresh-probe accuracy, KS
   between the domains' scores and AUC, for alpha = 0 and the chosen alpha.

    python benchmarks/bench_classifier.py [--events 100000] [--epochs 3] [--alpha 5]

Writes benchmarks/results/classifier.json. With ``--vs-plain`` it runs only the whole-process
comparison a new user makes: `hepray run job.yaml` (16-64-32-32-1, ``mode: direct``, batch 1024,
the default evaluation, attribution and export) vs a plain torch script (uproot -> numpy ->
the same MLP, optimizer and schedule -> AUC on the same 30 % test split), sides interleaved,
medians of --repeats, with hepray's own per-stage seconds and the load average:

    python benchmarks/bench_classifier.py --vs-plain [--events 1000000] [--epochs 3] [--repeats 3]

Writes benchmarks/results/classifier_vs_plain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import HEPRAY_CLI, interleaved, loadavg, median_of, python_side, write_flat

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


# the script a physicist writes: read, standardise, the same MLP (ELU), AdamW and cosine schedule as
# hepray's defaults, batch 1024, AUC on the test rows of the same event-identity split
PLAIN = r'''
import time; t0 = time.perf_counter()
import json, sys
import numpy as np, torch, uproot
from sklearn.metrics import roc_auc_score
from hepray.data.loading import _splitmix64   # the same split rule, so both train on the same rows
files, feats, epochs, batch, (n_test, n_val) = json.loads(sys.argv[1])
a = uproot.concatenate([f + ":Events" for f in files], feats + ["label", "run", "luminosityBlock", "event"], library="np")
X = np.column_stack([a[f] for f in feats]).astype(np.float32); y = a["label"].astype(np.float32)
h = np.full(len(y), int(__import__("hashlib").sha1(b"data").hexdigest()[:15], 16), dtype=np.uint64)
for k in ("run", "luminosityBlock", "event"):
    h = _splitmix64(h ^ a[k].astype(np.int64).view(np.uint64))
u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
test = u < n_test; train = u >= n_test + n_val
mu, sd = X[train].mean(0), X[train].std(0)
X = (X - mu) / sd
torch.manual_seed(1)
net = torch.nn.Sequential(torch.nn.Linear(len(feats), 64), torch.nn.ELU(), torch.nn.Linear(64, 32), torch.nn.ELU(),
                          torch.nn.Linear(32, 32), torch.nn.ELU(), torch.nn.Linear(32, 1))
opt = torch.optim.AdamW(net.parameters(), 3e-3)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
xt, yt = torch.from_numpy(X[train]), torch.from_numpy(y[train])
t_fit = time.perf_counter()
for epoch in range(epochs):
    perm = torch.randperm(len(yt))
    for i in range(0, len(yt), batch):
        j = perm[i:i + batch]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt[j])[:, 0], yt[j])
        opt.zero_grad(); loss.backward(); opt.step()
    sched.step()
t_fit = time.perf_counter() - t_fit
with torch.no_grad():
    s = torch.sigmoid(net(torch.from_numpy(X[test]))[:, 0]).numpy()
auc = roc_auc_score(y[test], s)
print(json.dumps({"seconds": time.perf_counter() - t0, "seconds_fit": t_fit, "auc": auc}))
'''

def hepray_cli(job_file: str, out: str) -> dict:
    r = python_side(HEPRAY_CLI, job_file, out)
    m = json.loads((Path(out) / "metrics.json").read_text())
    return {"seconds": r["seconds"], "auc": m["auc"], **{"seconds_" + k: v for k, v in r["stages"].items()}}


def vs_plain(d: Path, events: int, epochs: int, repeats: int) -> dict:
    files = []
    for i in range(4):
        p = d / f"plain_flat_{i}.root"
        if not p.exists():
            write_flat(p, events // 4, seed=100 + i)
        files.append(str(p))
    feats, batch, split = [f"x{i}" for i in range(16)], 1024, (0.3, 0.2)
    out = str(d / "run_vs_plain")
    job = {"kind": "train_classifier", "name": "bench_clf_plain", "output": {"dir": out},
           "dataset": {"files": files, "shard_events": 250000}, "features": feats, "label": "label", "seed": 1,
           "mode": "direct", "model": {"hidden": [64, 32, 32]}, "split": {"test": split[0], "validation": split[1]},
           "weights": {"balance_classes": False}, "training": {"epochs": epochs, "batch_size": batch}}
    (d / "train_classifier.yaml").write_text(json.dumps(job))  # JSON is YAML
    load0 = loadavg()
    runs = interleaved({"plain": lambda: python_side(PLAIN, [files, feats, epochs, batch, split]),
                        "hepray": lambda: hepray_cli(str(d / "train_classifier.yaml"), out)}, repeats)
    plain, cold = runs["plain"], runs["hepray"]
    stages = sorted({k for r in cold for k in r if k.startswith("seconds_")})
    res = {"events": events, "epochs": epochs, "batch_size": batch, "repeats": repeats, "cpus": os.cpu_count(),
           "loadavg_start": load0, "loadavg_end": loadavg(), "runs": runs,
           "seconds_plain": median_of(plain, "seconds"), "seconds_plain_fit": median_of(plain, "seconds_fit"),
           "seconds_hepray": median_of(cold, "seconds"), **{f"hepray_{k}": median_of(cold, k) for k in stages},
           "auc_plain": round(plain[0]["auc"], 5), "auc_hepray": round(cold[0]["auc"], 5)}
    res["time_ratio_hepray_over_plain"] = round(res["seconds_hepray"] / res["seconds_plain"], 3)
    after = [k for k in ("seconds_load_evaluation_events", "seconds_evaluate", "seconds_attribution", "seconds_export")
             if k in stages]
    # the goal: evaluation, attribution and export together at most 20 % of the fit
    res["evaluate_over_fit"] = round(float(np.median([sum(r.get(k, 0) for k in after) / r["seconds_train"]
                                                      for r in cold])), 3)
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
    print(f"\ntrain_classifier vs a plain torch script, {events} events, {epochs} epochs, batch {batch}, median of "
          f"{repeats} interleaved whole processes, load {load0[0]:.1f} -> {res['loadavg_end'][0]:.1f} on "
          f"{os.cpu_count()} CPUs: hepray {res['seconds_hepray']:.1f}s vs plain {res['seconds_plain']:.1f}s "
          f"(x{res['time_ratio_hepray_over_plain']:.2f}), AUC {res['auc_hepray']:.4f} vs {res['auc_plain']:.4f}")
    print("hepray stages (s): " + ", ".join(f"{k.removeprefix('seconds_')} {res['hepray_' + k]:.2f}" for k in stages)
          + f"; plain fit {res['seconds_plain_fit']:.2f}; evaluation/fit {res['evaluate_over_fit']:.1%}")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=None, help="default 100000; with --vs-plain 1000000")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=5.0)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--vs-plain", action="store_true", help="only the whole-process comparison with a plain torch script")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.vs_plain:
        d = Path(args.dir or tempfile.mkdtemp(prefix="hepray_bench_clf_plain_"))
        res = vs_plain(d, args.events or 1_000_000, args.epochs, args.repeats)
        (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
        (ROOT / "benchmarks" / "results" / "classifier_vs_plain.json").write_text(json.dumps(res, indent=1))
        return
    from hepray.engine.runtime import ensure_ray

    ensure_ray(num_cpus=2)
    d = Path(args.dir or tempfile.mkdtemp(prefix="hepray_bench_clf_"))
    res = {"load_average": os.getloadavg(), "cpus": os.cpu_count(),
           "throughput": throughput(d, args.events or 100_000, args.epochs), "mlp_vs_bdt": mlp_vs_bdt(d), "adnn": adnn(d, args.alpha)}
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
