"""Training the parameterizations of a pipeline, in one process.

Each is small (a few ten thousand weights, jet-level inputs), so the data sit in memory and one
process trains them in sequence with the shared loop (:func:`hepray.training.torch_loop.fit`:
early stopping on the validation split, best weights kept) and the shared mini-batching
(:class:`hepray.training.batches.ShardBatches`); Ray Train would only add start-up time here.

What each network sees:

- the efficiency MLP: standardised conditions -> target (0/1), plain BCE on every jet;
- a flow or GAN: standardised conditions -> standardised responses, on the jets where the target
  is 1 (a non-reconstructed object has no measurement to learn). Integer columns are
  *dequantised* (uniform noise of ±0.5 added before the transform) so the flow learns a density
  rather than spikes; generation rounds them back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..data.reading import feature_matrix
from ..extras import require
from ..training.batches import ShardBatches
from ..training.standardize import Moments
from ..training.torch_loop import FitResult, LoopConfig, fit
from .config import EfficiencySpec, FitSpec, ParameterizationSpec
from .modules import to_response

torch = require("torch")

Log = Callable[[str], None]


def _loop(model, optimizers, step, train: dict, val: dict | None, spec: FitSpec, seed: int, log: Log,
          val_step=None, patience: bool = True) -> FitResult:
    batches = ShardBatches.from_arrays(train, spec.batch_size, seed=seed)
    val_batches = None
    if val is not None and val_step is not None and len(next(iter(val.values()))):
        val_batches = ShardBatches.from_arrays(val, 8192, shuffle=False)
    config = LoopConfig(epochs=spec.epochs, schedule=spec.schedule, patience=spec.patience if patience else None,
                        grad_clip=spec.grad_clip, restore_best=True)
    return fit(model, optimizers, step, batches, config=config, val_batches=val_batches, val_step=val_step,
               log=log)


def _finite_rows(*arrays: np.ndarray) -> np.ndarray:
    ok = np.ones(len(arrays[0]), bool)
    for a in arrays:
        ok &= np.isfinite(a).reshape(len(a), -1).all(axis=1)
    return ok


def _summary(result: FitResult, t0: float) -> dict:
    best = result.history[result.best_epoch - 1] if result.best_epoch else (result.history[-1] if result.history else {})
    return {"epochs": result.epochs_done, "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
            "seconds": round(time.perf_counter() - t0, 2),
            **{k: float(v) for k, v in best.items() if k.startswith(("val_", "train_")) and isinstance(v, float)}}


def train_efficiency(cols: dict, train: np.ndarray, val: np.ndarray, spec: EfficiencySpec, conditions: list[str],
                     fit_spec: FitSpec, seed: int, log: Log):
    """(MLP, metadata, metrics) of P(``spec.target`` | conditions)."""
    from ..models.mlp import MLP
    from ..training.objectives import Classification

    X = feature_matrix(cols, conditions)
    y = np.asarray(cols[spec.target]).astype(np.float32)
    ok = _finite_rows(X)
    train, val = train & ok, val & ok
    pre = Moments.of(X[train]).to_preprocessing()
    mean, scale = np.asarray(pre["mean"], np.float32), np.asarray(pre["scale"], np.float32)
    Xs = ((X - mean) / scale).astype(np.float32)
    torch.manual_seed(seed)
    mlp = MLP(len(conditions), list(spec.hidden), 1, activation=spec.activation)
    rate = float(np.clip(y[train].mean(), 1e-4, 1 - 1e-4)) if train.any() else 0.5
    with torch.no_grad():  # start at the base rate: with 99 % efficiency, p = 0.5 takes long to unlearn
        mlp[-1].bias.fill_(float(np.log(rate / (1 - rate))))
    opt = torch.optim.Adam(mlp.parameters(), lr=fit_spec.lr, weight_decay=fit_spec.weight_decay)
    objective = Classification()
    w = np.ones(len(y), np.float32)
    t0 = time.perf_counter()
    res = _loop(mlp, opt, objective, {"x": Xs[train], "y": y[train], "w": w[train]},
                {"x": Xs[val], "y": y[val], "w": w[val]}, fit_spec, seed, log, val_step=objective.validate)
    meta = {"task": "binary", "classes": [spec.target], "features": list(conditions), "preprocessing": pre}
    return mlp.eval(), meta, _summary(res, t0)


def training_arrays(cols: dict, rows: np.ndarray, spec: ParameterizationSpec, conditions: list[str],
                    prefix: tuple[str, str], seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(context [n, C], responses [n, D], per-output facts) of the rows ``rows``; integer outputs
    dequantised with a generator seeded by ``seed``."""
    rng = np.random.default_rng([seed, 0xF1A5])
    names = list(spec.outputs)
    refs = [spec.outputs[o].reference_for(o, prefix) for o in names]
    integer = [np.issubdtype(np.asarray(cols[o]).dtype, np.integer) for o in names]
    Y = np.empty((int(rows.sum()), len(names)), np.float64)
    for j, (o, r) in enumerate(zip(names, refs)):
        reco = np.asarray(cols[o], np.float64)[rows]
        if integer[j]:
            reco = reco + rng.uniform(-0.5, 0.5, len(reco))
        Y[:, j] = to_response(spec.outputs[o].transform, reco, np.asarray(cols[r])[rows] if r else None)
    facts = {"outputs": names, "references": refs, "transforms": [spec.outputs[o].transform for o in names],
             "integer": integer}
    return feature_matrix(cols, conditions)[rows], Y, facts


def train_parameterization(cols: dict, train: np.ndarray, val: np.ndarray, spec: ParameterizationSpec,
                           conditions: list[str], prefix: tuple[str, str], fit_spec: FitSpec, seed: int, log: Log):
    """(network, metadata with the ``flashsim`` block, metrics) of one flow or GAN."""
    from ..models import build_model

    C, Y, facts = training_arrays(cols, train | val, spec, conditions, prefix, seed)
    is_train = train[train | val]
    ok = _finite_rows(C, Y)
    dropped = int((~ok).sum())
    c_pre = Moments.of(C[ok & is_train]).to_preprocessing()
    y_pre = Moments.of(Y[ok & is_train]).to_preprocessing()
    Cs = ((C - np.asarray(c_pre["mean"])) / np.asarray(c_pre["scale"])).astype(np.float32)
    Ys = ((Y - np.asarray(y_pre["mean"])) / np.asarray(y_pre["scale"])).astype(np.float32)
    tr = {"c": Cs[ok & is_train], "y": Ys[ok & is_train]}
    va = {"c": Cs[ok & ~is_train], "y": Ys[ok & ~is_train]}
    torch.manual_seed(seed)
    d, n_ctx = Y.shape[1], C.shape[1]
    t0 = time.perf_counter()
    if spec.model == "flow":
        net = build_model({"name": "conditional_flow", "n_features": d, "n_context": n_ctx, **spec.flow.model_dump()})
        opt = torch.optim.Adam(net.parameters(), lr=fit_spec.lr, weight_decay=fit_spec.weight_decay)
        res = _loop(net, opt, lambda m, b: m.loss(b["y"], b["c"]), tr, va, fit_spec, seed, log,
                    val_step=_flow_val_step)
        n_noise = d
    else:
        from ..models.gan import train_step

        g = spec.gan
        net = build_model({"name": "conditional_gan", "n_outputs": d, "n_context": n_ctx, "n_noise": g.n_noise,
                           "generator_hidden": g.generator_hidden, "discriminator_hidden": g.discriminator_hidden,
                           "activation": g.activation, "ema_decay": g.ema_decay})
        opts = {"generator": torch.optim.Adam(net.generator.parameters(), lr=fit_spec.lr, betas=(0.5, 0.9)),
                "discriminator": torch.optim.Adam(net.discriminator.parameters(), lr=fit_spec.lr, betas=(0.5, 0.9))}

        def step(model, b):
            return train_step(model, b["y"], b["c"], opts["generator"], opts["discriminator"],
                              label_smoothing=g.label_smoothing, gp_weight=g.gp_weight,
                              feature_matching=g.feature_matching, n_critic=g.n_critic)

        # GAN losses do not measure sample quality: the epoch kept is the one whose EMA samples are
        # closest (1-D Wasserstein per response) to the validation jets; every epoch runs
        res = _loop(net, opts, step, tr, va, fit_spec, seed, log, val_step=_gan_val_step, patience=False)
        n_noise = g.n_noise
    facts.update(model=spec.model, conditions=list(conditions), n_noise=n_noise, context_preprocessing=c_pre,
                 target_preprocessing=y_pre, dequantized=[o for o, i in zip(facts["outputs"], facts["integer"]) if i])
    meta = {"task": f"flashsim_{spec.model}", "classes": [], "features": list(conditions), "preprocessing": c_pre,
            "flashsim": facts}
    metrics = {**_summary(res, t0), "n_train": len(tr["y"]), "n_validation": len(va["y"]), "dropped_non_finite": dropped}
    return net.eval(), meta, metrics


def _flow_val_step(model, batch: dict) -> dict:
    nll = -model.log_prob(batch["y"], batch["c"])
    return {"loss": float(nll.sum()), "weight": float(len(nll))}


def _gan_val_step(model, batch: dict) -> dict:
    fake = model.generate(batch["c"])
    w1 = (torch.sort(fake, dim=0).values - torch.sort(batch["y"], dim=0).values).abs().mean()
    n = float(len(fake))
    return {"loss": float(w1) * n, "weight": n}
