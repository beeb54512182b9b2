"""``kind: train_anomaly``: an autoencoder (or VAE) trained on reference "good" data, streamed
shard by shard, saved with everything a scan needs to judge new data on its own.

Steps:

1. one pass over the reference shards: per-feature mean/scale from the training split (running
   sums), events with non-finite features dropped and counted; the data are kept in memory for
   the epochs when they fit ``training.cache_mb``, otherwise re-read shard by shard each epoch
   (shard order and events within a shard shuffled) - bounded memory either way;
2. mini-batch Adam on the model's own loss, early stopping on the validation split (by the
   identity hash ``SPLIT``, never by file order), best epoch kept. Deterministic: shards in a
   fixed order, weights, batch order and VAE noise seeded from ``seed``, torch on
   ``training.threads`` (default 1) threads - the same job gives the same ``model.pt`` bytes;
3. the reference table: the held-out events (validation + test, which the weights never saw)
   are scored and their score quantiles and per-feature error moments stored in the artifact,
   so a scan can turn scores into tail probabilities and thresholds without the reference data.

The artifact is the usual model folder (``hepray_model.json`` + ``model.pt`` state_dict) with
``type: torch``, ``task: anomaly``, ``architecture``, ``preprocessing`` and ``anomaly``.

The loop is a compact single-process one on purpose: the shared Ray Train loop
(``hepray/training/``) did not exist when this was written; unify when it does.
"""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Iterator
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from ..config import DatasetSpec, JobConfig, Spec
from ..data.loading import SPLIT, iter_columns
from ..data.reading import feature_matrix
from ..errors import ConfigError
from .base import Workload
from .registry import register
from .train_common import SplitSpec


class ArchSpec(Spec):
    type: Literal["autoencoder", "vae"] = "autoencoder"
    hidden: list[int] = [32, 16]
    latent: int = Field(3, gt=0)
    activation: Literal["relu", "tanh", "elu", "silu", "leakyrelu"] = "relu"
    beta: float = Field(1.0, ge=0)  # vae: weight of the KL term
    score: Literal["recon", "kl", "elbo"] = "recon"  # vae: which per-event score the scan uses

    @model_validator(mode="after")
    def _score_needs_vae(self):
        if self.type == "autoencoder" and self.score != "recon":
            raise ValueError("score kl/elbo needs type: vae")
        return self

    def arch(self, n_inputs: int) -> dict:
        a = {"name": self.type, "n_inputs": n_inputs, "hidden": list(self.hidden), "latent": self.latent,
             "activation": self.activation}
        return {**a, "beta": self.beta} if self.type == "vae" else a


class FitSpec(Spec):
    epochs: int = Field(60, gt=0)
    batch_size: int = Field(256, gt=0)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int | None = Field(8, gt=0)  # epochs without validation improvement; null: run all
    threads: int = Field(1, gt=0)  # torch threads of the driver (small dense nets gain little from more)
    cache_mb: float = Field(1024.0, ge=0)  # reference data up to this size stay in memory across epochs


class MapSpec(Spec):
    """A profile map of the classical method: ``w`` averaged per cell of an ``x`` x ``y`` grid."""

    x: str
    y: str
    w: str
    bins: tuple[int, int] = (10, 16)


class LumiModelSpec(Spec):
    """Per-lumisection models (hepray/anomaly/dqm.py), trained on pseudo-lumisections of the
    reference's good events and calibrated on held-out ones (docs/anomaly.md)."""

    enabled: bool = True
    variables: list[str] | None = None  # monitored variables; default: the model's features
    bins: int = Field(20, ge=2)  # equal-probability reference bins per variable (+ 2 outside its range)
    test: Literal["chi2", "ks"] = "chi2"  # classical: per-variable test against the reference
    combine: Literal["min_p", "fisher"] = "min_p"  # classical: over variables
    min_expected: float = Field(5.0, gt=0)  # chi2: bins merged until this many expected events
    events: tuple[int, int] = (50, 2000)  # pseudo-lumisection sizes, log-uniform (cover the scanned ones)
    train_lumis: int = Field(2000, ge=50)
    calibration_lumis: int = Field(1000, ge=10)
    check_lumis: int = Field(1000, ge=10)
    hidden: list[int] = [64, 16]
    latent: int = Field(4, gt=0)
    epochs: int = Field(200, gt=0)
    min_events: int = Field(200, ge=20)  # fewer reference events in a split: no lumisection models
    maps: list[MapSpec] = []  # classical: profile maps next to the per-variable histograms

    @field_validator("events")
    @classmethod
    def _sizes(cls, v):
        if not (0 < v[0] <= v[1]):
            raise ValueError("must be [low, high] with 0 < low <= high")
        return v


class TrainAnomalyConfig(JobConfig):
    dataset: DatasetSpec
    features: list[str] = Field(min_length=1)
    model: ArchSpec = ArchSpec()
    training: FitSpec = FitSpec()
    split: SplitSpec = SplitSpec(validation=0.25, test=0.25)
    reference_max_events: int = Field(1_000_000, gt=0)  # held-out events scored for the reference table
    lumi: LumiModelSpec = LumiModelSpec()

    @model_validator(mode="after")
    def _lumi_variables(self):
        bad = [v for v in (self.lumi.variables or []) if v not in self.features]
        if bad:
            raise ValueError(f"lumi.variables: {bad} are not among features")
        bad = [v for m in self.lumi.maps for v in (m.x, m.y, m.w) if v not in self.features]
        if bad:
            raise ValueError(f"lumi.maps: {bad} are not among features")
        return self


class ReferenceStream:
    """The reference events split three ways, standardised, from memory or re-read per epoch."""

    def __init__(self, shards: list, job: TrainAnomalyConfig, log):
        self.shards, self.job = shards, job
        cache: list[tuple[np.ndarray, np.ndarray]] | None = []
        n, s1, s2, size, dropped = 0, 0.0, 0.0, 0, 0
        for X, u, bad in self._read(shards):  # pass 1: moments of the training split
            train = X[self._masks(u)[0]].astype(np.float64)
            n, s1, s2 = n + len(train), s1 + train.sum(0), s2 + (train ** 2).sum(0)
            size, dropped = size + X.nbytes + u.nbytes, dropped + bad
            if cache is not None and size <= job.training.cache_mb * 1e6:
                cache.append((X, u))
            else:
                cache = None
        if n < 2:
            raise ConfigError(job.source, "dataset", f"only {n} training events after the cut and split")
        self.cache = cache
        self.mean = s1 / n
        self.scale = np.sqrt(np.maximum(s2 / n - self.mean ** 2, 0.0))
        self.scale[self.scale < 1e-12] = 1.0  # a constant feature: centred, never divided by 0
        self.counts = {"n_train": n, "dropped_non_finite": dropped}
        log(f"reference: {n} training events, {dropped} dropped (non-finite features); "
            f"{'cached in memory' if cache is not None else 'streamed per epoch'}")

    def _read(self, shards) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        feats = list(self.job.features)
        for shard, cols in iter_columns(shards, self.job.dataset, feats):
            X = feature_matrix(cols, feats, shard.file)
            ok = np.isfinite(X).all(axis=1)
            yield X[ok], np.asarray(cols[SPLIT])[ok], int((~ok).sum())

    def raw(self, max_events: int) -> dict[str, np.ndarray]:
        """Unstandardised events of each split (``train``, ``validation``, ``test``), at most
        ``max_events`` each: the pools of the lumisection models' pseudo-lumisections."""
        out: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
        raw = self.cache if self.cache is not None else ((X, u) for X, u, _ in self._read(self.shards))
        for X, u in raw:
            for name, m in zip(("train", "validation", "test"), self._masks(u)):
                have = sum(len(x) for x in out[name])
                if have < max_events:
                    out[name].append(X[m][: max_events - have])
        F = len(self.job.features)
        return {k: np.concatenate(v) if v else np.zeros((0, F)) for k, v in out.items()}

    def _masks(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sp = self.job.split
        test = u < sp.test
        val = (u >= sp.test) & (u < sp.test + sp.validation)
        return ~(test | val), val, test

    def standardised(self, part: str, shards: list | None = None) -> Iterator[np.ndarray]:
        """Chunks of ``train``, ``validation`` or ``heldout`` (validation + test) events."""
        raw = self.cache if self.cache is not None else ((X, u) for X, u, _ in self._read(shards or self.shards))
        for X, u in raw:
            tr, val, test = self._masks(u)
            m = {"train": tr, "validation": val, "heldout": val | test}[part]
            if m.any():
                yield ((X[m] - self.mean) / self.scale).astype(np.float32)

    def train_batches(self, rng: np.random.Generator, batch_size: int) -> Iterator[np.ndarray]:
        """One epoch of shuffled mini-batches: globally when cached, else shard order and the
        events within each shard."""
        if self.cache is not None:
            X = np.concatenate(list(self.standardised("train")))
            chunks = [X]
        else:
            chunks = self.standardised("train", [self.shards[i] for i in rng.permutation(len(self.shards))])
        for X in chunks:
            idx = rng.permutation(len(X))
            for i in range(0, len(X), batch_size):
                yield X[idx[i:i + batch_size]]


def fit(model, stream: ReferenceStream, spec: FitSpec, seed: int, log) -> tuple[list[dict], int]:
    """Adam on ``model.loss``; early stopping on the validation loss. Returns the per-epoch
    history and the best epoch, whose weights the model holds on return."""
    import torch

    torch.manual_seed(seed)  # the VAE's sampling noise
    rng = np.random.default_rng(seed)  # the batch order
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    best, best_epoch, best_state, history, bad = np.inf, 0, None, [], 0
    for epoch in range(1, spec.epochs + 1):
        model.train()
        tot = n = 0.0
        for xb in stream.train_batches(rng, spec.batch_size):
            x = torch.from_numpy(xb)
            loss = model.loss(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot, n = tot + loss.item() * len(x), n + len(x)
        model.eval()
        vt = vn = 0.0
        with torch.no_grad():
            for xv in stream.standardised("validation"):
                vt, vn = vt + float(model.loss(torch.from_numpy(xv))) * len(xv), vn + len(xv)
        val = vt / vn if vn else tot / max(n, 1)  # no validation events: the training loss decides
        history.append({"epoch": epoch, "train_loss": tot / max(n, 1), "validation_loss": val})
        if val < best:
            best, best_epoch, best_state, bad = val, epoch, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if spec.patience and bad >= spec.patience:
                break
    if best_state is None:
        raise ConfigError("", "training", "the loss is not finite from the first epoch: lower training.lr "
                          "or check the features for huge values")
    log(f"trained {len(history)} epochs, best {best_epoch} (validation loss {best:.4g})")
    model.load_state_dict(best_state)
    model.eval()
    return history, best_epoch


@register("train_anomaly")
class TrainAnomaly(Workload):
    """Train an autoencoder/VAE on reference data; store standardisation and the reference table."""

    Config = TrainAnomalyConfig

    def columns(self) -> list[str]:
        return list(self.job.features)

    def run(self, ctx) -> dict:
        import torch

        from ..anomaly.plots import loss_curve, score_distributions
        from ..anomaly.reference import ReferenceTable
        from ..anomaly.scoring import Scorer
        from ..anomaly.search import ScoreHistograms
        from ..models import build_model
        from ..models.artifact import save_metadata

        job: TrainAnomalyConfig = self.job
        torch.set_num_threads(job.training.threads)
        plan = ctx.plan(job.dataset, extra=list(job.features))
        ctx.log(f"plan: {plan.files} files, {plan.shards} shards, {plan.events} events")
        t0 = time.perf_counter()
        # a fixed order of shards (hence of cached events and batches), whatever the planner's
        shards = sorted(plan, key=lambda s: (s.sample or "", s.file or "", s.entry_start))
        stream = ReferenceStream(shards, job, ctx.log)
        torch.manual_seed(job.seed)  # before the weights are initialised: same seed, same model
        model = build_model(job.model.arch(len(job.features)))
        history, best_epoch = fit(model, stream, job.training, job.seed, ctx.log)
        fit_s = time.perf_counter() - t0

        # the reference table, from events the weights never saw
        scorer = Scorer(model, stream.mean, stream.scale, job.model.score)
        scores, errors, n_ref = [], [], 0
        for Z in stream.standardised("heldout"):
            Z = Z[: job.reference_max_events - n_ref]
            s, e = scorer.score_standardised(Z)
            scores.append(s)
            errors.append(e)
            n_ref += len(Z)
            if n_ref >= job.reference_max_events:
                break
        if n_ref < 10:
            raise ConfigError(job.source, "split", f"only {n_ref} held-out events for the reference table; "
                              "raise split.validation/test or give more data")
        ref = ReferenceTable.from_scores(np.concatenate(scores), np.concatenate(errors))

        mdir = ctx.store.local("model")
        mdir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        (mdir / "model.pt").write_bytes(buf.getvalue())
        quantiles = {q: ref.threshold(1 - q) for q in (0.5, 0.9, 0.99, 0.999)}
        result = {
            "n_reference_heldout": ref.n, "epochs": len(history), "best_epoch": best_epoch,
            "validation_loss": history[best_epoch - 1]["validation_loss"], "seconds_train": round(fit_s, 3),
            "reference_quantiles": {str(q): v for q, v in quantiles.items()}, **stream.counts,
        }
        lumi_meta = self._lumi_model(stream, ctx.log)
        if lumi_meta is not None:
            meta_lumi = {"lumi": lumi_meta}
            result["lumi_model"] = {"calibration_lumis": len(lumi_meta["calibration"]["classical"]),
                                    "seconds": lumi_meta["seconds"], **lumi_meta["autoencoder_fit"]}
        else:
            meta_lumi = {}
        save_metadata(mdir, {
            "type": "torch", "file": "model.pt", "task": "anomaly", "features": list(job.features), "classes": [],
            "architecture": model.arch, "preprocessing": {"mean": stream.mean, "scale": stream.scale},
            "anomaly": {"score": job.model.score, "reference": ref.to_dict(),
                        "reference_events": "validation + test split of the training dataset", **meta_lumi},
            "metrics": result,
        })
        hist = ScoreHistograms()
        hist.add("reference (histogram)", np.concatenate(scores))
        loss_curve(history, ctx.store.local("plots") / "loss.png")
        score_distributions(ref, hist.counts, ctx.store.local("plots") / "reference_scores.png")
        ctx.write_json("metrics.json", {**result, "history": history})
        return {"events_in": plan.events, **result, "model": str(ctx.store.path("model"))}

    def _lumi_model(self, stream: ReferenceStream, log) -> dict | None:
        """The per-lumisection models' block of the artifact, or None (disabled, or too few
        reference events in a split to calibrate them: said in the log)."""
        from ..anomaly.dqm import build_lumi_model

        job: TrainAnomalyConfig = self.job
        ls = job.lumi
        if not ls.enabled:
            return None
        t0 = time.perf_counter()
        pools = stream.raw(max_events=2_000_000)
        small = {k: len(v) for k, v in pools.items() if len(v) < ls.min_events}
        if small:
            log(f"lumisection models skipped: {small} reference events in these splits, lumi.min_events is {ls.min_events}")
            return None
        variables = list(ls.variables or job.features)
        names = variables + [f for f in job.features if f not in variables]
        cols = [job.features.index(v) for v in names]
        pools = {k: v[:, cols] for k, v in pools.items()}
        maps = [{"cols": tuple(names.index(v) for v in (m.x, m.y, m.w)), "names": (m.x, m.y, m.w), "bins": tuple(m.bins)}
                for m in ls.maps]
        out = build_lumi_model(pools, variables, maps=maps, bins=ls.bins, test=ls.test, combine=ls.combine,
                               min_expected=ls.min_expected, sizes=tuple(ls.events), n_train=ls.train_lumis,
                               n_calibration=ls.calibration_lumis, n_check=ls.check_lumis, ae_hidden=tuple(ls.hidden),
                               ae_latent=ls.latent, ae_epochs=ls.epochs, seed=job.seed, log=log)
        out["seconds"] = round(time.perf_counter() - t0, 3)
        return out
