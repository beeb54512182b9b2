"""How close is flash to full simulation? Pure functions of two column dicts (same jets, one
simulated each way), and the plots of each answer.

- per feature: 1-D Wasserstein distance (also divided by the full simulation's standard
  deviation, comparable across features) and the two-sample Kolmogorov-Smirnov test;
- correlation matrices of the features, full and flash side by side (and their difference);
- efficiency of the target flag in bins of generator-level variables, full vs flash;
- a classifier two-sample test (C2ST): a BDT tries to tell flash from full jets on the
  detector-level features, its cross-validated ROC AUC is reported (0.5: indistinguishable), with
  the standard deviation that AUC would have if the two were identical (Mann-Whitney null) so a
  number like 0.52 can be read against the sample size;
- downstream: a trained classifier's ROC on flash and on full jets.

Features are compared on the jets that are reconstructed in each sample (``target`` true), as an
analysis would see them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..extras import import_xgboost
from ..report import metrics
from . import plots


def _finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)]


def feature_distances(full: dict, flash: dict, features: list[str]) -> dict[str, dict]:
    """Per feature: ``wasserstein``, ``wasserstein_rel`` (over full's std), ``ks`` statistic and p-value."""
    from scipy.stats import wasserstein_distance

    out = {}
    for f in features:
        a, b = _finite(full[f]), _finite(flash[f])
        if not len(a) or not len(b):
            continue
        w = float(wasserstein_distance(a, b))
        sd = float(np.std(a))
        ks = metrics.ks(a, b)
        out[f] = {"wasserstein": w, "wasserstein_rel": w / sd if sd > 0 else None, "ks": ks["statistic"],
                  "ks_pvalue": ks["pvalue"], "mean_full": float(np.mean(a)), "mean_flash": float(np.mean(b))}
    return out


def correlation(cols: dict, features: list[str]) -> np.ndarray:
    """Pearson correlation matrix of ``features`` (rows with a non-finite value dropped)."""
    X = np.column_stack([np.asarray(cols[f], dtype=np.float64) for f in features])
    X = X[np.isfinite(X).all(axis=1)]
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.corrcoef(X, rowvar=False)
    return np.nan_to_num(np.atleast_2d(c))


def efficiency_curve(x: np.ndarray, passed: np.ndarray, edges: np.ndarray) -> dict:
    """Fraction passing per bin of ``x`` with its binomial standard error."""
    x, passed = np.asarray(x, dtype=np.float64), np.asarray(passed, dtype=bool)
    which = np.digitize(x, edges) - 1
    n = np.bincount(which[(which >= 0) & (which < len(edges) - 1)], minlength=len(edges) - 1).astype(float)
    k = np.bincount(which[(which >= 0) & (which < len(edges) - 1) & passed], minlength=len(edges) - 1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        eff = k / n
        err = np.sqrt(eff * (1 - eff) / n)
    return {"edges": edges.tolist(), "n": n.tolist(), "efficiency": eff.tolist(), "error": err.tolist()}


def auc_null_std(n0: int, n1: int) -> float:
    """Standard deviation of the ROC AUC of a random score (Mann-Whitney U under the null)."""
    return math.sqrt((n0 + n1 + 1) / (12.0 * n0 * n1)) if n0 and n1 else float("nan")


def two_sample_test(full: np.ndarray, flash: np.ndarray, seed: int, folds: int = 5, rounds: int = 200,
                    depth: int = 3, nthread: int = 1) -> dict:
    """Cross-validated AUC of an xgboost classifier separating ``flash`` (label 1) from ``full`` rows.

    When both have the same number of rows they are taken as pairs (row i simulated both ways)
    and a pair always lands in the same fold, so the classifier never sees the twin of a test jet.
    Returns ``auc``, ``auc_null_std``, ``scores`` (out-of-fold, for plots) and the labels.
    """
    xgb = import_xgboost()

    X = np.vstack([full, flash]).astype(np.float32)
    y = np.concatenate([np.zeros(len(full)), np.ones(len(flash))])
    rng = np.random.default_rng([seed, 0xC25])
    if len(full) == len(flash):
        fold_of_pair = rng.permutation(len(full)) % folds
        fold = np.concatenate([fold_of_pair, fold_of_pair])
    else:
        fold = rng.permutation(len(X)) % folds
    scores = np.zeros(len(X))
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": depth, "eta": 0.05,
              "subsample": 0.8, "colsample_bytree": 0.8, "min_child_weight": 5, "nthread": nthread, "seed": seed}
    for k in range(folds):
        test = fold == k
        booster = xgb.train(params, xgb.DMatrix(X[~test], y[~test]), rounds)
        scores[test] = booster.predict(xgb.DMatrix(X[test]))
    return {"auc": metrics.auc(y, scores), "auc_null_std": auc_null_std(len(full), len(flash)),
            "n_full": len(full), "n_flash": len(flash), "folds": folds, "rounds": rounds, "depth": depth,
            "scores": scores, "labels": y}


def _matrix(cols: dict, features: list[str], mask: np.ndarray) -> np.ndarray:
    return np.column_stack([np.asarray(cols[f], dtype=np.float64)[mask] for f in features])


def compare(full: dict, flash: dict, *, features: list[str], target: str | None, efficiency_vs: list[str],
            out_dir: Path, seed: int, bins: int = 10, c2st_folds: int = 5, nthread: int = 1) -> dict:
    """Every comparison of this module, with plots in ``out_dir``; returns the numbers."""
    out_dir = Path(out_dir)
    n = len(full[features[0]])
    ok_full = np.asarray(full[target], bool) if target else np.ones(n, bool)
    ok_flash = np.asarray(flash[target], bool) if target else np.ones(n, bool)
    full_ok = {f: np.asarray(full[f])[ok_full] for f in features}
    flash_ok = {f: np.asarray(flash[f])[ok_flash] for f in features}
    result: dict = {"jets": n, "reconstructed_full": int(ok_full.sum()), "reconstructed_flash": int(ok_flash.sum())}
    result["features"] = feature_distances(full_ok, flash_ok, features)
    plots.feature_grid(full_ok, flash_ok, features, result["features"], out_dir / "features.png")
    c_full, c_flash = correlation(full_ok, features), correlation(flash_ok, features)
    result["correlation"] = {"full": c_full.tolist(), "flash": c_flash.tolist(),
                             "max_abs_difference": float(np.max(np.abs(c_full - c_flash)))}
    plots.correlation_pair(c_full, c_flash, features, out_dir / "correlations.png")
    if target:
        result["efficiency"] = {"full": float(ok_full.mean()), "flash": float(ok_flash.mean())}
        for var in efficiency_vs:
            x = np.asarray(full[var], dtype=np.float64)
            edges = np.quantile(x[np.isfinite(x)], np.linspace(0, 1, bins + 1))
            edges = np.unique(edges)
            curves = {"full simulation": efficiency_curve(x, ok_full, edges),
                      "flash simulation": efficiency_curve(x, ok_flash, edges)}
            result["efficiency"][var] = curves
            plots.efficiency_curves(curves, var, target, out_dir / f"efficiency_{var}.png")
    both = ok_full & ok_flash  # pairs: a jet reconstructed in both samples
    c2st = two_sample_test(_matrix(full, features, both), _matrix(flash, features, both), seed, folds=c2st_folds,
                           nthread=nthread)
    scores, labels = c2st.pop("scores"), c2st.pop("labels")
    result["two_sample_test"] = c2st
    plots.c2st(scores, labels, c2st, out_dir / "two_sample_test.png")
    return result


def downstream(full: dict, flash: dict, predict: Callable[[np.ndarray], np.ndarray], features: list[str], *,
               label: str, signal: list[int], background: list[int], target: str | None, out_dir: Path,
               name: str = "classifier") -> dict:
    """A classifier trained on full simulation, evaluated on full and on flash jets: AUCs, ROC
    curves overlaid and score distributions."""
    from ..report import plots as report_plots

    curves, dists, out = {}, {}, {}
    for tag, cols in (("full", full), ("flash", flash)):
        y_all = np.asarray(cols[label])
        keep = np.isin(y_all, signal + background)
        if target:
            keep &= np.asarray(cols[target], bool)
        X = np.column_stack([np.asarray(cols[f], dtype=np.float32)[keep] for f in features])
        s = np.asarray(predict(X)).reshape(len(X), -1)[:, 0]
        y = np.isin(y_all[keep], signal).astype(int)
        out[tag] = {**metrics.binary_summary(y, s), "signal": int(y.sum()), "background": int((1 - y).sum())}
        tpr, fpr, _ = metrics.roc(y, s)
        curves[f"{tag} simulation (AUC {out[tag]['auc']:.3f})"] = (tpr, fpr)
        dists.update({f"{tag}: signal": s[y == 1], f"{tag}: background": s[y == 0]})
    out["auc_difference"] = out["flash"]["auc"] - out["full"]["auc"]
    report_plots.roc_curves(curves, Path(out_dir) / "downstream_roc.png", f"{name}: flash vs full simulation")
    report_plots.score_distributions(dists, Path(out_dir) / "downstream_scores.png", f"{name} score")
    return out
