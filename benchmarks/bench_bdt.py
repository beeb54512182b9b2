"""BDT training: `hepray run` (kind: train_bdt, direct path) vs a plain xgboost script on the same
data loaded in memory, side by side at ~1M events, 200 rounds at depth 6 (xgboost's usual) and
4: whole-process wall time (`python train.py` vs `hepray run job.yaml`), peak memory, AUC (same
rows, same parameters, same 30 % test split), hepray's fit and default-evaluation seconds. Each
side runs in its own subprocess so peak RSS is its own; the sides alternate, medians of
--repeats, with the machine's load average printed alongside.

    python benchmarks/bench_bdt.py [--events 1000000] [--depths 6 4] [--repeats 3] [--warm]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from common import HEPRAY_CLI, interleaved, loadavg, median_of, python_side, write_flat

PARAMS = {"max_depth": 6, "eta": 0.1}  # max_depth: each of --depths (xgboost's usual 6, and 4)
ROUNDS = 200
FEATURES = [f"x{i}" for i in range(16)]
SPLIT = (0.3, 0.2)  # test, validation fractions (hepray's event-identity hash on both sides)

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
files, feats, params, rounds, (n_test, n_val) = json.loads(sys.argv[1])
a = uproot.concatenate([f + ":Events" for f in files], feats + ["label", "run", "luminosityBlock", "event"], library="np")
X = np.column_stack([a[f] for f in feats]); y = a["label"]
h = np.full(len(y), int(__import__("hashlib").sha1(b"data").hexdigest()[:15], 16), dtype=np.uint64)
for k in ("run", "luminosityBlock", "event"):
    h = _splitmix64(h ^ a[k].astype(np.int64).view(np.uint64))
u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
test, val = u < n_test, (u >= n_test) & (u < n_test + n_val); train = ~(test | val)
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
    # the default evaluation (ROC, score and KS plots, gain and SHAP rankings, test scores): the
    # job a new user writes
    return {"kind": "train_bdt", "name": "bench_bdt", "output": {"dir": out}, "dataset": {"files": files, "shard_events": 250000},
            "features": feats, "label": "label", "rounds": rounds, "params": params, "mode": "direct",
            "weights": {"balance_classes": False}, "split": {"test": SPLIT[0], "validation": SPLIT[1]}}


def hepray_cli(job_file: str, out: str) -> dict:
    """cold: the command a user types (common.HEPRAY_CLI)."""
    r = python_side(HEPRAY_CLI, job_file, out)
    s = r["summary"]
    return {"seconds": r["seconds"], "auc": s["auc"], "trees": s["trees"], "seconds_load_and_fit": s["seconds_train"],
            "seconds_load": s["seconds_load"], "seconds_evaluate": s["seconds_evaluate"], "peak_rss_mb": r["peak_rss_mb"]}


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


def compare(d: Path, files: list[str], depth: int, repeats: int, warm: bool) -> dict:
    params = {**PARAMS, "max_depth": depth}
    spec = job(files, FEATURES, params, ROUNDS, str(d / f"run_depth{depth}"))
    (d / f"train_bdt_depth{depth}.yaml").write_text(json.dumps(spec))  # JSON is YAML
    sides = {"plain": lambda: python_side(PLAIN, [files, FEATURES, params, ROUNDS, SPLIT]),
             "hepray": lambda: hepray_cli(str(d / f"train_bdt_depth{depth}.yaml"), spec["output"]["dir"])}
    if warm:
        sides["hepray_warm"] = lambda: python_side(HEPRAY_WARM, spec)
    print(f"depth {depth}, {ROUNDS} rounds:", flush=True)
    runs = interleaved(sides, repeats)
    plain, cold = runs["plain"], runs["hepray"]
    med = {n: median_of(r, "seconds") for n, r in runs.items()}
    fit = [r["seconds_load_and_fit"] - r["seconds_load"] for r in cold]
    res = {"depth": depth, "rounds": ROUNDS, "runs": runs, "seconds_plain": med["plain"], "seconds_hepray": med["hepray"],
           "time_ratio_hepray_over_plain": round(med["hepray"] / med["plain"], 3),
           "seconds_hepray_fit": round(float(np.median(fit)), 3), "seconds_hepray_load": median_of(cold, "seconds_load"),
           "seconds_hepray_evaluate": median_of(cold, "seconds_evaluate"),
           # the goal: the default evaluation costs at most 20 % of the fit
           "evaluate_over_fit": round(float(np.median([r["seconds_evaluate"] / f for r, f in zip(cold, fit)])), 3),
           # the ROC/score/KS/importance plots and metrics hepray writes and the plain script does not
           "time_ratio_without_evaluation": round(float(np.median([r["seconds"] - r["seconds_evaluate"] for r in cold]))
                                                  / med["plain"], 3),
           "memory_ratio_hepray_over_plain": round(median_of(cold, "peak_rss_mb") / median_of(plain, "peak_rss_mb"), 3),
           "auc_plain": round(plain[0]["auc"], 5), "auc_hepray": round(cold[0]["auc"], 5),
           "auc_difference": round(cold[0]["auc"] - plain[0]["auc"], 5),
           "trees_plain": plain[0]["trees"], "trees_hepray": cold[0]["trees"]}
    if warm:
        res["seconds_hepray_warm"] = med["hepray_warm"]
        res["time_ratio_warm"] = round(med["hepray_warm"] / median_of(plain, "seconds_warm"), 3)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--depths", type=int, nargs="+", default=[6, 4], help="max_depth of each comparison")
    ap.add_argument("--repeats", type=int, default=3, help="rounds per side (medians), sides interleaved")
    ap.add_argument("--warm", action="store_true", help="also hepray.run in a process with imports done and Ray up")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    d = Path(args.dir or tempfile.mkdtemp(prefix="hepray_bench_bdt_"))
    files = []
    for i in range(4):
        p = d / f"flat_{i}.root"
        if not p.exists():
            write_flat(p, args.events // 4, seed=100 + i)
        files.append(str(p))
    load0 = loadavg()
    res = {"events": args.events, "cpus": os.cpu_count(), "repeats": args.repeats, "loadavg_start": load0,
           "comparisons": [compare(d, files, depth, args.repeats, args.warm) for depth in args.depths],
           "loadavg_end": loadavg()}
    print(json.dumps({**res, "comparisons": [{k: v for k, v in c.items() if k != "runs"} for c in res["comparisons"]]},
                     indent=1))
    print(f"\ntrain_bdt vs the plain script, {args.events} events, {ROUNDS} rounds, median of {args.repeats} interleaved "
          f"whole processes, load {load0[0]:.1f} -> {res['loadavg_end'][0]:.1f} on {os.cpu_count()} CPUs")
    print("depth | plain s | hepray s | ratio | fit s | evaluate s | evaluate/fit | AUC plain | AUC hepray | ratio w/o eval")
    for c in res["comparisons"]:
        print(f"{c['depth']:5d} | {c['seconds_plain']:7.1f} | {c['seconds_hepray']:8.1f} | x{c['time_ratio_hepray_over_plain']:.2f} | "
              f"{c['seconds_hepray_fit']:5.1f} | {c['seconds_hepray_evaluate']:10.2f} | {c['evaluate_over_fit']:12.1%} | "
              f"{c['auc_plain']:.4f} | {c['auc_hepray']:.4f} | x{c['time_ratio_without_evaluation']:.2f}")
    Path("benchmarks/results").mkdir(exist_ok=True)
    Path("benchmarks/results/bdt.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
