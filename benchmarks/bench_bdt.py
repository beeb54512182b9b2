"""BDT training: `hepray run` (kind: train_bdt, direct path) vs a plain xgboost script on the same
data loaded in memory, side by side at ~1M events: wall time, peak memory, AUC (same rows, same
parameters, same split). Each side runs in its own subprocess so peak RSS is its own.

    python benchmarks/bench_bdt.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import write_flat

PARAMS = {"max_depth": 6, "eta": 0.1}
ROUNDS = 200
FEATURES = [f"x{i}" for i in range(16)]

# Two clocks per side. "cold" starts before the imports: `python train.py` pays for importing
# xgboost, scikit-learn (xgboost's wrappers and roc_auc_score) and uproot; `hepray run job.yaml`
# (timed from outside, interpreter start-up included) for hepray, pydantic, uproot, xgboost
# (without its scikit-learn wrappers: hepray.extras.import_xgboost) and matplotlib. "warm" starts
# once the imports are done: what is left is the work itself.
PLAIN = r'''
import time; t0 = time.perf_counter()
import json, resource, sys
import numpy as np, uproot, xgboost as xgb
from sklearn.metrics import roc_auc_score
from hepray.data.loading import _splitmix64   # the same split rule, so both train on the same rows
t_ready = time.perf_counter()
files, feats, params, rounds = json.loads(sys.argv[1])
a = uproot.concatenate([f + ":Events" for f in files], feats + ["label", "run", "luminosityBlock", "event"], library="np")
X = np.column_stack([a[f] for f in feats]); y = a["label"]
h = np.full(len(y), int(__import__("hashlib").sha1(b"data").hexdigest()[:15], 16), dtype=np.uint64)
for k in ("run", "luminosityBlock", "event"):
    h = _splitmix64(h ^ a[k].astype(np.int64).view(np.uint64))
u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
test, val = u < 0.2, (u >= 0.2) & (u < 0.4); train = ~(test | val)
p = {"tree_method": "hist", "objective": "binary:logistic", "eval_metric": "logloss", "seed": 12345, **params}
dtr = xgb.QuantileDMatrix(X[train], y[train]); dva = xgb.QuantileDMatrix(X[val], y[val], ref=dtr)
b = xgb.train(p, dtr, rounds, evals=[(dva, "v")], early_stopping_rounds=20, verbose_eval=False)
b = b[: b.best_iteration + 1]
auc = roc_auc_score(y[test], b.inplace_predict(X[test]))
t1 = time.perf_counter()
print(json.dumps({"seconds": t1 - t0, "seconds_warm": t1 - t_ready, "auc": auc, "trees": b.num_boosted_rounds(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

def job(files, feats, params, rounds, out) -> dict:
    return {"kind": "train_bdt", "name": "bench_bdt", "output": {"dir": out}, "dataset": {"files": files, "shard_events": 250000},
            "features": feats, "label": "label", "rounds": rounds, "params": params, "mode": "direct",
            "weights": {"balance_classes": False}, "shap_events": 0}


# cold: the command a user types, `hepray run job.yaml`, timed from outside (Python start-up and
# every import included, as for `python train.py`); peak RSS of that child process
HEPRAY_CLI = r'''
import json, resource, subprocess, sys, time
job_file, out = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
r = subprocess.run(["hepray", "run", job_file, "--overwrite"], capture_output=True, text=True)
t1 = time.perf_counter()
if r.returncode:
    sys.exit(r.stderr[-3000:])
s = json.load(open(out + "/summary.json"))
print(json.dumps({"seconds": t1 - t0, "auc": s["auc"], "trees": s["trees"], "seconds_load_and_fit": s["seconds_train"],
                  "seconds_evaluate": s["seconds_evaluate"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
'''

# warm: in one Python process with the imports done and Ray up (a cluster, or a second run in
# the same notebook): what is left is the work itself
HEPRAY_WARM = r'''
import json, resource, sys, time
import hepray, xgboost
from hepray.engine.runtime import ensure_ray
job = json.loads(sys.argv[1])
ensure_ray()
t0 = time.perf_counter()
s = hepray.run(job, overwrite=True, quiet=True)
t1 = time.perf_counter()
print(json.dumps({"seconds": t1 - t0, "auc": s["auc"], "trees": s["trees"], "seconds_load_and_fit": s["seconds_train"],
                  "seconds_evaluate": s["seconds_evaluate"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def side(code: str, *args) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *(a if isinstance(a, str) else json.dumps(a) for a in args)],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    d = Path(args.dir or tempfile.mkdtemp(prefix="hepray_bench_bdt_"))
    files = []
    for i in range(4):
        p = d / f"flat_{i}.root"
        if not p.exists():
            write_flat(p, args.events // 4, seed=100 + i)
        files.append(str(p))
    spec = job(files, FEATURES, PARAMS, ROUNDS, str(d / "run"))
    (d / "train_bdt.yaml").write_text(json.dumps(spec))  # JSON is YAML
    plain = side(PLAIN, [files, FEATURES, PARAMS, ROUNDS])
    cold = side(HEPRAY_CLI, str(d / "train_bdt.yaml"), str(d / "run"))
    warm = side(HEPRAY_WARM, spec)
    res = {"events": args.events, "plain": plain, "hepray": cold, "hepray_warm": warm,
           "time_ratio_hepray_over_plain": round(cold["seconds"] / plain["seconds"], 3),
           "time_ratio_warm": round(warm["seconds"] / plain["seconds_warm"], 3),
           # the ROC/score/KS/importance plots and metrics hepray writes and the plain script does not
           "time_ratio_without_evaluation": round((cold["seconds"] - cold["seconds_evaluate"]) / plain["seconds"], 3),
           "memory_ratio_hepray_over_plain": round(cold["peak_rss_mb"] / plain["peak_rss_mb"], 3),
           "auc_difference": round(cold["auc"] - plain["auc"], 5)}
    print(json.dumps(res, indent=1))
    print(f"\ntrain_bdt cold {cold['seconds']:.1f}s / {cold['peak_rss_mb']:.0f} MB driver vs plain {plain['seconds']:.1f}s / "
          f"{plain['peak_rss_mb']:.0f} MB: time x{res['time_ratio_hepray_over_plain']:.2f}, memory "
          f"x{res['memory_ratio_hepray_over_plain']:.2f}, AUC {cold['auc']:.4f} vs {plain['auc']:.4f}")
    print(f"of which evaluation and plots {cold['seconds_evaluate']:.1f}s (the plain script writes none): without it "
          f"x{res['time_ratio_without_evaluation']:.2f}")
    print(f"warm (imports done, Ray up): train_bdt {warm['seconds']:.1f}s vs plain {plain['seconds_warm']:.1f}s: "
          f"time x{res['time_ratio_warm']:.2f}")
    Path("benchmarks/results").mkdir(exist_ok=True)
    Path("benchmarks/results/bdt.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
