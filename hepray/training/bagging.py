"""Bagging (bootstrap aggregation), shared by every trainer: the ``bagging:`` block, replica
seeds, resampling, and the efficiency bands the replicas give.

N replicas of a model are trained on bootstrap resamples of the training rows (drawn with
replacement, each with its own seed), in parallel through the engine's ``ctx.map_tasks``. The
spread of their predictions measures how much the model depends on the finite training sample
(training-sample variance; docs/uncertainty.md). In-memory trainers (BDT) resample indices
(:func:`bootstrap_indices`); streamed trainers (torch on shard batches) weight every event by a
Poisson(1) count (:func:`poisson_counts`), the bootstrap for data seen one shard at a time (the
count of an event in a size-n resample is Binomial(n, 1/n) -> Poisson(1)).

:func:`efficiency_bands` turns the replicas' scores into the central value and spread per bin of
each requested variable, for signal and background at a fixed working point, as numbers and as
band plots.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
from pydantic import Field, model_validator

from ..config import Spec


class BaggingSpec(Spec):
    """``bagging: {models: 8, variables: [reco_pt, reco_eta], bins: 8, working_point: 0.5}``."""

    models: int = Field(0, ge=0)  # 0: no bagging; else the number of bootstrap replicas (>= 2)
    variable: str | None = None  # one variable (kept for older jobs; same as variables: [x])
    variables: list[str] = []  # efficiency bands against each of these columns
    bins: list[float] | int = 8  # an integer: quantile bins of the signal test events
    working_point: float = Field(0.5, gt=0, lt=1)  # signal efficiency of the nominal model's cut
    save: bool = True  # write the replicas as an ensemble model folder (<run>/ensemble)
    # false: replicas one after another in the driver (a serial baseline, debugging)
    parallel: bool = True

    @model_validator(mode="after")
    def _check(self):
        if self.models == 1:
            raise ValueError("models: 1 gives no spread; use 0 (off) or at least 2 replicas")
        if self.variable and self.variable not in self.variables:
            self.variables = [self.variable, *self.variables]
        return self


def replica_seeds(seed: int, models: int) -> list[int]:
    """One seed per replica, distinct from the nominal training's ``seed``."""
    return [seed + 1 + i for i in range(models)]


def bootstrap_indices(n: int, seed: int) -> np.ndarray:
    """n row indices drawn with replacement (an in-memory bootstrap resample)."""
    return np.random.default_rng(seed).integers(0, n, n)


def poisson_counts(n: int, seed: int, key: str) -> np.ndarray:
    """Poisson(1) counts for n rows of one shard (``key``: its identity), a pure function of
    (seed, key): every epoch, process and retry sees the same resample."""
    h = int.from_bytes(hashlib.sha1(f"{seed}|{key}".encode()).digest()[:8], "little")
    return np.random.default_rng([seed, h]).poisson(1.0, n).astype(np.float32)


def edges_for(values: np.ndarray, bins: list[float] | int) -> np.ndarray:
    if isinstance(bins, int):
        e = np.unique(np.quantile(values[np.isfinite(values)], np.linspace(0, 1, bins + 1)))
        return e if len(e) > 1 else np.array([e[0] - 0.5, e[0] + 0.5])
    return np.asarray(bins, dtype=float)


def binned_efficiency(scores: np.ndarray, passed_thr: float, mask: np.ndarray, which: np.ndarray, n_bins: int,
                      w: np.ndarray | None = None) -> np.ndarray:
    """[models, bins] fraction of ``mask`` rows with score > thr per bin (nan: empty bin)."""
    w = np.ones(scores.shape[1]) if w is None else w
    den = np.bincount(which[mask], w[mask], minlength=n_bins)
    out = np.full((len(scores), n_bins), np.nan)
    for i, s in enumerate(scores):
        num = np.bincount(which[mask], w[mask] * (s[mask] > passed_thr), minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i] = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return out


def efficiency_bands(scores: np.ndarray, nominal: np.ndarray, y: np.ndarray, variables: dict[str, np.ndarray],
                     spec: BaggingSpec, plot_dir, model_name: str, w: np.ndarray | None = None) -> dict:
    """Efficiency bands of bootstrap replicas: ``scores`` [models, n] (the signal probability of
    n test events per replica), ``nominal`` [n] the nominal model's, whose cut at
    ``spec.working_point`` signal efficiency every replica is evaluated at; ``variables``:
    name -> [n] values (none: bins of the nominal score). Returns per variable the bin edges and
    for signal and background the mean and standard deviation over replicas per bin; writes
    ``bagging_{signal,background}_efficiency_{variable}.png``."""
    from ..report import plots

    y = np.asarray(y)
    thr = float(np.quantile(nominal[y == 1], 1 - spec.working_point))
    out: dict = {"models": int(len(scores)), "threshold": thr, "working_point": spec.working_point, "variables": {}}
    for var, values in (variables or {"score": nominal}).items():
        values = np.asarray(values, dtype=np.float64)
        edges = edges_for(values[y == 1], spec.bins)
        centers = 0.5 * (edges[1:] + edges[:-1])
        which = np.clip(np.digitize(values, edges) - 1, 0, len(centers) - 1)
        entry: dict = {"edges": edges.tolist()}
        for cls, name in ((1, "signal_efficiency"), (0, "background_efficiency")):
            eff = binned_efficiency(scores, thr, y == cls, which, len(centers), w)
            nom = binned_efficiency(nominal[None], thr, y == cls, which, len(centers), w)[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-nan (empty) bins stay nan
                mean, std = np.nanmean(eff, 0), np.nanstd(eff, 0)
            ok = np.isfinite(mean) & np.isfinite(nom)
            # the nominal model (trained on the whole sample: one more draw of the training) on
            # the same test events, so their statistical noise is common: inside mean ± spread?
            entry[name] = {"mean": mean.tolist(), "std": std.tolist(),
                           "relative_std": (std / np.where(mean > 0, mean, np.nan)).tolist(), "nominal": nom.tolist(),
                           "nominal_coverage": float(np.mean(np.abs(nom[ok] - mean[ok]) <= std[ok])) if ok.any() else None}
            plots.band(centers, mean, mean - std, mean + std, plot_dir / f"bagging_{name}_{var}.png", var,
                       name.replace("_", " "), f"{len(scores)} bootstrap {model_name}s at the nominal "
                       f"{spec.working_point:.0%} WP", band_label="±1σ over bootstrap replicas")
        out["variables"][var] = entry
    return out


def probability_bands(P: np.ndarray, which: np.ndarray, n_bins: int, w: np.ndarray | None = None,
                      truth: np.ndarray | None = None, y: np.ndarray | None = None) -> dict:
    """Per bin (``which``: each event's bin): every replica's mean predicted probability, their
    mean and standard deviation (``P``: [models, n]), against the truth and the ``coverage``
    (fraction of non-empty bins whose truth lies inside mean ± sigma).

    ``truth``: known per-event probabilities (a toy): its bin mean, sigma = the replicas' spread.
    Else ``y``: the observed frequency in the bin, which has a statistical error of its own, so
    sigma = sqrt(replica spread^2 + binomial error^2) with Kish's effective count.
    """
    n = P.shape[1]
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    W = np.bincount(which, w, minlength=n_bins)
    ok = W > 0
    safe = np.where(ok, W, 1.0)
    per_member = np.stack([np.bincount(which, w * p, minlength=n_bins) / safe for p in P])
    mean, spread = per_member.mean(0), per_member.std(0)
    if truth is not None:
        target = np.bincount(which, w * truth, minlength=n_bins) / safe
        sigma = spread
        stat = np.zeros(n_bins)
    else:
        target = np.bincount(which, w * (np.asarray(y) == 1), minlength=n_bins) / safe
        n_eff = W**2 / np.where(ok, np.bincount(which, w * w, minlength=n_bins), 1.0)
        stat = np.sqrt(np.clip(target * (1 - target), 0, None) / np.where(ok, n_eff, 1.0))
        sigma = np.sqrt(spread**2 + stat**2)
    inside = np.abs(target - mean) <= sigma
    return {"mean": np.where(ok, mean, np.nan).tolist(), "std": np.where(ok, spread, np.nan).tolist(),
            "truth": np.where(ok, target, np.nan).tolist(), "stat_error": np.where(ok, stat, np.nan).tolist(),
            "truth_kind": "known probability" if truth is not None else "observed frequency",
            "coverage": float(inside[ok].mean()) if ok.any() else float("nan"), "bins": int(ok.sum())}


def probability_band_plots(P: np.ndarray, variables: dict[str, np.ndarray], spec: BaggingSpec, plot_dir, what: str,
                           w: np.ndarray | None = None, y: np.ndarray | None = None) -> dict:
    """:func:`probability_bands` per variable (quantile bins), each as a band plot
    ``bagging_probability_{variable}.png`` with the observed frequency over it."""
    from ..report import plots

    out = {}
    for var, values in variables.items():
        values = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(values)
        edges = edges_for(values[ok], spec.bins)
        which = np.clip(np.digitize(values[ok], edges) - 1, 0, len(edges) - 2)
        r = probability_bands(P[:, ok], which, len(edges) - 1, None if w is None else w[ok], y=y[ok])
        out[var] = {"edges": edges.tolist(), **r}
        c = 0.5 * (edges[1:] + edges[:-1])
        m, sd = np.asarray(r["mean"]), np.asarray(r["std"])
        plots.band(c, m, m - sd, m + sd, plot_dir / f"bagging_probability_{var}.png", var, what,
                   f"{len(P)} bootstrap replicas: coverage {r['coverage']:.2f} of {r['bins']} bins",
                   band_label="±1σ over replicas", points=(np.asarray(r["truth"]), np.asarray(r["stat_error"]), "observed"))
    return out


def train_replicas(ctx, setup: dict, spec: BaggingSpec, seed: int) -> tuple[list[tuple[dict, dict]], float]:
    """Train ``spec.models`` replicas in parallel through ``ctx.map_tasks`` (one CPU each).

    ``setup`` is the trainer's usual setup dict with ``"process"`` (its
    ``process(setup, checkpoints)``, the same function its direct mode runs) and
    ``"bootstrap"``: a module-level ``bootstrap(setup, seed) -> dict`` giving the setup entries
    that make one replica (resampled arrays, rows with Poisson weights). Each replica also gets
    its own ``job.seed`` (initialisation, shuffling). Returns ([(weights as numpy arrays,
    FitResult dict)] in seed order, wall seconds)."""
    import time

    import torch

    threads = torch.get_num_threads()  # a replica run in this process sets one thread
    t0 = time.perf_counter()
    try:
        out = list(ctx.map_tasks(_replica, replica_seeds(seed, spec.models), setup, parallel=spec.parallel))
    finally:
        torch.set_num_threads(threads)
    return out, time.perf_counter() - t0


def _replica(seed: int, setup: dict) -> tuple[dict, dict]:
    import tempfile

    import torch

    from .checkpoints import DirectoryCheckpoints

    s = {**setup, "job": setup["job"].model_copy(update={"seed": seed})}
    s.update(setup["bootstrap"](s, seed))
    torch.set_num_threads(1)  # one CPU per task: replicas run side by side
    with tempfile.TemporaryDirectory(prefix="hepray-replica-") as d:
        model, res = s["process"](s, DirectoryCheckpoints(d, keep=1))
    return {k: np.array(v.detach().cpu().numpy()) for k, v in model.state_dict().items()}, res.to_dict()


def load_weights(model, weights: dict):
    """``model`` with a replica's numpy weights loaded (eval mode)."""
    import torch

    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    return model.eval()
