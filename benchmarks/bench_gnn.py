"""GNN tagging: `kind: train_gnn` (ParticleNet-Lite) vs weaver-core 0.5.3 training the same network
on the same ROOT files, side by side in one run; then the GNN vs a DNN on high-level features
(`kind: train_classifier`) vs the BDT (`kind: train_bdt`) on the same test events, and the same
ParticleNet given the DNN's jet-level features as a `globals` group (constituents + jet features).

    python benchmarks/bench_gnn.py [--parts DIR ...] [--epochs 8] [--threads 1]
    # the tagger comparison with the jet-feature GNN trained to convergence, like the DNN:
    python benchmarks/bench_gnn.py --skip gnn weaver --globals-epochs 12 --globals-schedule cosine \
        --out gnn_converged.json

Data: the top (ttbar) and QCD jets of every ``--parts`` folder that exists (default: the committed
test sample, 1500 jets per process, and ``runs/bench_gnn/generate/parts``, made with
``hepray run jobs/generate.yaml --set output.dir=runs/bench_gnn/generate --set seed=7
--set 'processes=[{name: ttbar, kind: ttbar, n_jets: 25000}, {name: qcd, kind: qcd, n_jets: 25000}]'
--set 'faults=[]' --set generator.jets_per_shard=1000``, where it has finished shards: 50 shards,
50,000 jets in ~25 min on 2 cores).

Same for both trainers: the inputs of jobs/train_gnn.yaml (weaver-style groups, the same
per-constituent variables, only reconstructed constituents, auto-standardisation on 50%),
ParticleNet-Lite (EdgeConv k=7 [32,32,32], k=7 [64,64,64], fusion, FC 128), AdamW at a constant
learning rate, batch size, epochs, ``--threads`` torch threads (1 by default: on a shared 2-core
machine 2 threads run slower than 1), no class reweighting, the best-validation
weights scored on hepray's test split (event-identity hash: weaver's data config selects it with a
`--custom-functions` helper that calls hepray's hash). Training jets: hepray's train split
(50%); weaver keeps the same 70% (train + validation of hepray) and splits it by entry with
``--train-val-split 0.714``, so it trains on as many jets (not the very same ones). Throughput:
training jets / training-loop seconds per epoch, reading and padding included on both sides
(hepray: ``events_per_s``, weaver: its "avg. speed" line); first epoch (which reads the files on
both sides) reported separately from the mean of the later ones. Each side runs alone in its own
subprocess.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SPLIT = {"validation": 0.2, "test": 0.3}
HIGH_LEVEL = ["reco_pt", "reco_eta", "reco_mass", "reco_tau1", "reco_tau2", "reco_tau3", "reco_tau21", "reco_tau32",
              "reco_nconst"]

# -- weaver side: data config, network, split helper --------------------------------------------
WEAVER_DATA = """
selection: (reco_ok == 1) & (hepray_u(run, luminosityBlock, event, label) >= {test})
test_time_selection: (reco_ok == 1) & (hepray_u(run, luminosityBlock, event, label) < {test})
new_variables:
  jet_e: np.sqrt((reco_pt * np.cosh(reco_eta))**2 + reco_mass**2)
  c_pt: const_pt[const_reco]
  c_e: const_e[const_reco]
  c_deta: const_deta[const_reco]
  c_dphi: const_dphi[const_reco]
  c_charge: ak.values_astype(const_charge[const_reco], 'float32')
  c_class: const_class[const_reco]
  const_pt_log: np.log(c_pt)
  const_e_log: np.log(c_e)
  const_logptrel: np.log(c_pt / reco_pt)
  const_logerel: np.log(c_e / jet_e)
  const_deltaR: np.sqrt(c_deta**2 + c_dphi**2)
  const_is_charged: ak.values_astype(c_charge != 0, 'float32')
  const_is_photon: ak.values_astype(c_class == 4, 'float32')
  const_is_nh: ak.values_astype(c_class == 5, 'float32')
  const_mask: ak.ones_like(c_pt)
  is_qcd: label == 0
  is_top: label == 1
preprocess: {{method: auto, data_fraction: 0.5}}
inputs:
  pf_points:
    length: 40
    pad_mode: wrap
    vars: [[c_deta, null], [c_dphi, null]]
  pf_features:
    length: 40
    pad_mode: wrap
    vars:
      - [const_pt_log, auto]
      - [const_e_log, auto]
      - [const_logptrel, auto]
      - [const_logerel, auto]
      - [const_deltaR, auto]
      - [c_deta, null]
      - [c_dphi, null]
      - [c_charge, null]
      - [const_is_charged, null]
      - [const_is_photon, null]
      - [const_is_nh, null]
  pf_mask:
    length: 40
    pad_mode: constant
    vars: [[const_mask, null]]
labels:
  type: simple
  value: [is_qcd, is_top]
observers: [run, luminosityBlock, event, label]
"""

WEAVER_NET = """
import torch
from weaver.nn.model.ParticleNet import ParticleNet


class Wrapper(torch.nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.mod = ParticleNet(**kw)

    def forward(self, points, features, mask):
        return self.mod(points, features, mask)


def get_model(data_config, **kwargs):
    model = Wrapper(input_dims=len(data_config.input_dicts['pf_features']), num_classes=len(data_config.label_value),
                    conv_params=[(7, (32, 32, 32)), (7, (64, 64, 64))], fc_params=[(128, 0.1)],
                    use_fusion=True, use_fts_bn=True, use_counts=True)
    info = {'input_names': list(data_config.input_names), 'output_names': ['softmax'],
            'input_shapes': {k: ((1,) + s[1:]) for k, s in data_config.input_shapes.items()}, 'dynamic_axes': {}}
    return model, info


def get_loss(data_config, **kwargs):
    return torch.nn.CrossEntropyLoss()
"""

# hepray's split value (hepray.data.loading.split_value) for the generated samples: the sample name
# salts the hash; here the sample follows from the label (1: ttbar, 0: qcd)
WEAVER_FUNCS = """
import hashlib
import awkward as ak
import numpy as np
from hepray.data.loading import _splitmix64

_SALT = {{s: int(hashlib.sha1(s.encode()).hexdigest()[:15], 16) for s in ("ttbar", "qcd")}}


def hepray_u(run, luminosityBlock, event, label):
    label = ak.to_numpy(label)
    h = np.where(label == 1, _SALT["ttbar"], _SALT["qcd"]).astype(np.uint64)
    for col in (run, luminosityBlock, event):
        h = _splitmix64(h ^ ak.to_numpy(col).astype(np.int64).view(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
"""


def dataset(parts: list[Path]) -> dict:
    return {"tree": "jets", "cut": "reco_ok == 1", "shard_events": 50000,
            "samples": [{"name": "ttbar", "files": [str(p / "ttbar_*.root") for p in parts], "label": 1},
                        {"name": "qcd", "files": [str(p / "qcd_*.root") for p in parts], "label": 0}]}


def gnn_job(parts: list[Path], out: Path, a, with_globals: bool = False, epochs: int | None = None,
            schedule: str = "none") -> dict:
    job = yaml.safe_load((ROOT / "jobs/train_gnn.yaml").read_text())
    ds = dataset(parts)
    ds["expressions"] = job["dataset"]["expressions"]
    if with_globals:  # the DNN's jet-level features as a flat `globals` group of the same network
        job["inputs"]["jet_globals"] = {"length": None, "vars": HIGH_LEVEL}
        job["network"]["globals"] = "jet_globals"
    job.update(name="bench_gnn", output={"dir": str(out)}, dataset=ds, split=SPLIT, mode="direct", threads=a.threads,
               weights={"balance_classes": False},
               training={"epochs": epochs or a.epochs, "batch_size": a.batch, "learning_rate": a.lr, "schedule": schedule,
                         "weight_decay": 0.01, "patience": None,
                         # every shard in one shuffle window: the files are per process, so windows of
                         # fewer shards than files give one-class batches (measured: AUC 0.930-0.932 with the
                         # default window of 4 shards, 0.940 with all 6 shards in one)
                         "shuffle_window": 64})
    return job


HEPRAY_SIDE = r'''
import json, sys, time
import hepray
job = json.loads(sys.argv[1])
t0 = time.perf_counter()
s = hepray.run(job, overwrite=True, quiet=True)
m = json.load(open(job["output"]["dir"] + "/metrics.json"))
hist = m["training"]["history"]
print(json.dumps({"seconds": time.perf_counter() - t0, "auc": s["auc"], "rejection_at_30": s["rejection_at_30"],
                  "n_test": m["n_test"], "n_train": m["n_train"], "n_val": m["n_validation"], "parameters": m["parameters"],
                  "jets_per_s_epochs": [h["events_per_s"] for h in hist]}))
'''


def run_side(code: str, arg) -> dict:
    r = subprocess.run([sys.executable, "-c", code, json.dumps(arg)], capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(r.stdout[-2000:] + r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_weaver(parts: list[Path], work: Path, a, n_train: int, n_val: int) -> dict:
    """weaver-core on the same files; ``--in-memory`` (as hepray caches) needs the steps per epoch:
    hepray's training / validation jets over the batch size."""
    from sklearn.metrics import roc_auc_score

    from hepray.report.metrics import rejection_at

    work.mkdir(parents=True, exist_ok=True)
    (work / "data.yaml").write_text(WEAVER_DATA.format(test=SPLIT["test"]))
    (work / "net.py").write_text(WEAVER_NET)
    (work / "funcs.py").write_text(WEAVER_FUNCS.format())
    for f in work.glob("data.*.auto.yaml"):  # weaver caches the fitted standardisation next to the config
        f.unlink()
    files = [f"{p}/{s}_*.root" for p in parts for s in ("ttbar", "qcd")]
    trainval = 1 - SPLIT["test"]
    cmd = ["weaver", "--data-train", *files, "--data-test", *files, "--data-config", str(work / "data.yaml"),
           "--network-config", str(work / "net.py"), "--custom-functions", str(work / "funcs.py"),
           "--model-prefix", str(work / "model" / "net"), "--predict-output", str(work / "pred.root"),
           "--num-epochs", str(a.epochs), "--batch-size", str(a.batch), "--start-lr", str(a.lr),
           "--optimizer", "AdamW", "--lr-scheduler", "none", "--gpus", "", "--num-workers", "1",
           "--fetch-step", "1", "--in-memory", "--steps-per-epoch", str(-(-n_train // a.batch)),
           "--steps-per-epoch-val", str(-(-n_val // a.batch)), "--train-val-split", f"{(trainval - SPLIT['validation']) / trainval:.4f}"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env={**__import__("os").environ,
                                                                         "OMP_NUM_THREADS": str(a.threads)})
    seconds = time.perf_counter() - t0
    (work / "weaver.log").write_text(r.stdout + r.stderr)
    if r.returncode:
        raise SystemExit("weaver failed:\n" + (r.stdout + r.stderr)[-4000:])
    log = r.stdout + r.stderr
    # training epochs: the "avg. speed" line followed by "Train AvgLoss" (validation/test lines are not)
    speeds = [float(m) for m in re.findall(r"avg\. speed ([\d.]+) entries/s\)\s*\n[^\n]*Train AvgLoss", log)]
    n_train = [int(m) for m in re.findall(r"Processed (\d+) entries in total[^\n]*\n[^\n]*Train AvgLoss", log)]
    import uproot

    p = uproot.open(work / "pred.root")["Events"].arrays(library="np")
    score = p["score_is_top"]
    y = (p["label"] == 1).astype(int)
    return {"seconds": seconds, "auc": float(roc_auc_score(y, score)), "rejection_at_30": rejection_at(y, score),
            "n_test": int(len(y)), "n_train": n_train[0] if n_train else None, "jets_per_s_epochs": speeds}


def paired_bootstrap(dirs: dict[str, Path], pairs: list[tuple[str, str]], n_boot: int = 1000, seed: int = 0) -> dict:
    """AUC differences on the same test events with their bootstrap spread: every training run
    writes ``test_scores.parquet`` in dataset order, so the rows line up (checked); each resample
    draws the same events for both models."""
    import pyarrow.parquet as pq

    from hepray.report.metrics import auc

    t = {k: pq.read_table(d / "test_scores.parquet").to_pydict() for k, d in dirs.items() if (d / "test_scores.parquet").exists()}
    if not t:
        return {}
    ref = next(iter(t.values()))
    for k, v in t.items():
        assert v["hepray_u"] == ref["hepray_u"] and v["label"] == ref["label"], f"{k}: test events differ"
    y, w = np.asarray(ref["label"]), np.asarray(ref["weight"])
    s = {k: np.asarray(v["score"]) for k, v in t.items()}
    rng = np.random.default_rng(seed)
    boots = [rng.integers(0, len(y), len(y)) for _ in range(n_boot)]
    out = {}
    for a, b in pairs:
        if a not in s or b not in s:
            continue
        d = np.array([auc(y[i], s[a][i], w[i]) - auc(y[i], s[b][i], w[i]) for i in boots])
        out[f"{a} - {b}"] = {"auc_difference": auc(y, s[a], w) - auc(y, s[b], w), "bootstrap_std": float(d.std()),
                             "fraction_positive": float((d > 0).mean())}
    return out


def summarise_speed(v: list[float]) -> dict:
    return {"first_epoch": round(v[0], 1), "later_epochs_mean": round(float(np.mean(v[1:])), 1) if len(v) > 1 else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", nargs="+", default=["tests/data/generated/sample/parts", "runs/bench_gnn/generate/parts"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--dir", default=None)
    # the tagger comparison's GNN with jet features may train longer than the weaver-matched runs
    # (the DNN trains up to 40 epochs with early stopping)
    ap.add_argument("--globals-epochs", type=int, default=None)
    ap.add_argument("--globals-schedule", default="none", choices=["none", "cosine"])
    ap.add_argument("--out", default="gnn.json", help="file name under benchmarks/results")
    ap.add_argument("--skip", nargs="*", default=[], choices=["gnn", "weaver", "globals", "dnn", "bdt"])
    a = ap.parse_args()
    parts = [(ROOT / p).resolve() for p in a.parts]
    parts = [p for p in parts if list(p.glob("ttbar_*.root")) and list(p.glob("qcd_*.root"))]
    d = Path(a.dir or tempfile.mkdtemp(prefix="hepray_bench_gnn_"))
    res: dict = {"parts": {str(p): len([f for f in p.glob("*.root") if f.name[:3] in ("ttb", "qcd")]) for p in parts},
                 "globals_epochs": a.globals_epochs or a.epochs, "globals_schedule": a.globals_schedule,
                 "epochs": a.epochs, "batch_size": a.batch, "learning_rate": a.lr, "threads": a.threads, "split": SPLIT}

    if "gnn" not in a.skip:  # (weaver needs its training counts)
        res["hepray_gnn"] = hep = run_side(HEPRAY_SIDE, gnn_job(parts, d / "gnn", a))
    if "weaver" not in a.skip and "gnn" not in a.skip:
        res["weaver_gnn"] = wv = run_weaver(parts, d / "weaver", a, hep["n_train"], hep["n_val"])
        hs, ws = summarise_speed(hep["jets_per_s_epochs"]), summarise_speed(wv["jets_per_s_epochs"])
        res["throughput"] = {"hepray": hs, "weaver": ws, "ratio_hepray_over_weaver_later_epochs":
                             round(hs["later_epochs_mean"] / ws["later_epochs_mean"], 3) if ws["later_epochs_mean"] else None}
        res["auc_difference_hepray_minus_weaver"] = round(hep["auc"] - wv["auc"], 5)
    if "globals" not in a.skip:
        res["hepray_gnn_globals"] = run_side(HEPRAY_SIDE, gnn_job(parts, d / "gnn_globals", a, with_globals=True,
                                                                  epochs=a.globals_epochs, schedule=a.globals_schedule))

    others = {}
    base = {"dataset": dataset(parts), "features": HIGH_LEVEL, "classes": ["qcd", "top"], "split": SPLIT,
            "weights": {"balance_classes": False}}
    if "dnn" not in a.skip:
        others["dnn"] = {**base, "kind": "train_classifier", "name": "bench_gnn_dnn", "output": {"dir": str(d / "dnn")},
                         "model": {"hidden": [64, 64, 32]}, "mode": "direct",
                         "training": {"epochs": 40, "batch_size": 256, "learning_rate": 0.003, "patience": 8}}
    if "bdt" not in a.skip:
        others["bdt"] = {**base, "kind": "train_bdt", "name": "bench_gnn_bdt", "output": {"dir": str(d / "bdt")},
                         "rounds": 400, "early_stopping_rounds": 30, "mode": "direct", "shap_events": 0,
                         "params": {"max_depth": 4, "eta": 0.1, "subsample": 0.8, "colsample_bytree": 0.8}}
    for name, job in others.items():
        res[name] = run_side(OTHER_SIDE, job)

    res["paired"] = paired_bootstrap({"gnn": d / "gnn", "gnn_globals": d / "gnn_globals", "dnn": d / "dnn", "bdt": d / "bdt"},
                                     [("gnn", "dnn"), ("gnn", "bdt"), ("gnn_globals", "dnn"), ("gnn_globals", "bdt")])
    print(json.dumps(res, indent=1))
    print(f"\nParticleNet-Lite, {a.epochs} epochs, batch {a.batch}:")
    if "weaver_gnn" in res:
        t = res["throughput"]
        print(f"  hepray train_gnn {t['hepray']['later_epochs_mean']} jets/s (first epoch {t['hepray']['first_epoch']}) "
              f"vs weaver-core {t['weaver']['later_epochs_mean']} jets/s (first {t['weaver']['first_epoch']}): "
              f"x{t['ratio_hepray_over_weaver_later_epochs']}")
        print(f"  AUC hepray {hep['auc']:.4f} vs weaver {wv['auc']:.4f} (difference {res['auc_difference_hepray_minus_weaver']:+.4f}),"
              f" test jets {hep['n_test']} vs {wv['n_test']}")
    print("Top vs QCD on the same test events (AUC, background rejection at 30% signal efficiency):")
    for name, key in (("ParticleNet-Lite", "hepray_gnn"), ("  + jet features", "hepray_gnn_globals"),
                      ("DNN high-level", "dnn"), ("BDT high-level", "bdt")):
        if key in res:
            r = res[key]["rejection_at_30"]  # None: no background jet of the test set passes
            r = f"{r:.1f}" if r else f"> {res[key]['n_test'] // 2} (no background passes)"
            print(f"  {name:18s} AUC {res[key]['auc']:.4f}  rejection@30% {r}  test {res[key]['n_test']}")
    for pair, r in res["paired"].items():
        print(f"  AUC {pair}: {r['auc_difference']:+.4f} ± {r['bootstrap_std']:.4f} (bootstrap on the same test events; "
              f"positive in {r['fraction_positive']:.1%} of 1000 resamples)")
    out = ROOT / "benchmarks/results"
    out.mkdir(exist_ok=True)
    (out / a.out).write_text(json.dumps(res, indent=1))


OTHER_SIDE = r'''
import json, sys, time
import hepray
job = json.loads(sys.argv[1])
t0 = time.perf_counter()
s = hepray.run(job, overwrite=True, quiet=True)
m = json.load(open(job["output"]["dir"] + "/metrics.json"))
print(json.dumps({"seconds": time.perf_counter() - t0, "auc": m["auc"], "rejection_at_30": m["rejection_at_30"],
                  "n_test": m["n_test"], "n_train": m["n_train"]}))
'''

if __name__ == "__main__":
    main()
