"""Loading a model artifact for prediction, safely (xgboost JSON/UBJ, torch weights_only).

``ModelBundle`` is built on the driver: it reads the model's bytes once, so actors on other nodes
need no access to the driver's disk, and it pickles small. ``load()`` runs in the actor.

Predictions with an uncertainty (docs/uncertainty.md) come from the same ``load()``: an
ensemble folder (bagging replicas), a stochastic network (``bnn``) or, on request, MC dropout
(``with_uncertainty(mc_dropout=N)``) give per class the mean and the standard deviation
(members' or passes'), and on request each member's score; ``output_names`` names these columns
(``score_mean``, ``score_std``, ``score_m0``...), so every consumer (``kind: infer``,
``infer_gnn``, ``hepray.dask``) writes them without knowing which model it holds. A model's
stored temperature (``calibration``) is applied to its probabilities, per member or per pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from ..extras import import_xgboost
from ..report.metrics import apply_temperature
from .artifact import read_model


MC_ROWS = 262144  # rows (events x passes) per forward pass of the stochastic predictors


@dataclasses.dataclass
class ModelBundle:
    path: str
    meta: dict
    raw: bytes
    n_features: int | None = None  # what the model itself says it takes (xgboost), set by load()
    members: list[ModelBundle] | None = None  # an ensemble's member bundles
    mc_dropout: int = 0  # stochastic forward passes with dropout on (0: off)
    samples: int | None = None  # passes of a stochastic network (bnn); default: its stored count
    with_members: bool = False  # an ensemble also gives each member's scores

    @classmethod
    def read(cls, path: str | Path) -> ModelBundle:
        from .artifact import load_metadata, member_paths

        meta = load_metadata(path)
        if meta["type"] == "ensemble":
            members = []
            for p in member_paths(path, meta):
                m = cls.read(p)
                if m.members:
                    raise ModelLoadError(str(p), "an ensemble member cannot itself be an ensemble")
                members.append(m)
            key = b"".join(hashlib.sha1(m.raw).digest() for m in members)  # identity for caches (hepray.dask)
            bundle = cls(str(path), meta, key, members=members)
            bundle.n_features = members[0].n_features
            return bundle
        meta, f, raw = read_model(path)
        bundle = cls(str(f), meta, raw)
        bundle.load(1)  # fail on the driver, with the file's name, not later in every actor
        return bundle

    def with_uncertainty(self, mc_dropout: int = 0, members: bool = False, samples: int | None = None) -> ModelBundle:
        """This bundle predicting with an uncertainty: ``mc_dropout`` stochastic passes (torch
        models with dropout layers), ``members``: an ensemble's member scores as well,
        ``samples``: passes of a ``bnn``. Checked here, on the driver."""
        if mc_dropout and self.members:
            raise ModelLoadError(self.path, "uncertainty.mc_dropout: an ensemble's spread is its members'; "
                                 "MC dropout is for one network")
        if mc_dropout and self.meta["type"] != "torch":
            raise ModelLoadError(self.path, f"uncertainty.mc_dropout needs a torch network with dropout layers, "
                                 f"this is a {self.meta['type']} model")
        if members and not self.members:
            raise ModelLoadError(self.path, "uncertainty.members: only an ensemble has members")
        out = dataclasses.replace(self, mc_dropout=int(mc_dropout), with_members=bool(members),
                                  samples=samples if samples is not None else self.samples)
        if mc_dropout or samples:
            out.load(1)  # no dropout layers / not stochastic: said now, on the driver
        return out

    @property
    def stochastic(self) -> bool:
        """A network whose every forward pass samples (``bnn``): predicted from several passes."""
        return self.meta["type"] == "torch" and bool((self.meta.get("architecture") or {}).get("stochastic"))

    @property
    def uncertain(self) -> bool:
        """Predictions are (mean, std[, members]) per class rather than one score per class."""
        return bool(self.members) or self.mc_dropout > 0 or self.stochastic

    @property
    def features(self) -> list[str] | None:
        return self.meta.get("features")

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    def load(self, nthread: int = 1):
        """Return a callable ``predict(X: float32[n, F]) -> float32[n, K]`` (K=1 for binary)."""
        kind = self.meta["type"]
        if self.members:
            return _load_ensemble(self, nthread)
        if kind == "xgboost":
            return _load_xgboost(self, nthread)
        if kind == "torch":
            return _load_torch(self, nthread)
        raise ModelLoadError(self.path, f"unknown model type {kind!r}")

    @property
    def matrix_order(self) -> str:
        """The feature-matrix layout to build for ``load()``'s predict: xgboost reads a
        column-major matrix without a copy and predicts from it no slower (2.03 vs 2.05 us/event
        side by side, 100 trees of depth 6, one thread), while filling it is ~10x cheaper (see
        ``feature_matrix``); torch wants rows."""
        if self.members:
            return self.members[0].matrix_order
        return "F" if self.meta["type"] == "xgboost" else "C"

    def output_names(self, prefix: str = "score", n: int | None = None) -> list[str]:
        """Column names of the scores; ``n``: the columns predict gave (multi-output models
        give several even when their task is not multiclass). With an uncertainty: the names
        with ``_mean``, then with ``_std``, then (members on request) ``_m0``, ``_m1``..."""
        if self.uncertain:
            blocks = 2 + (len(self.members) if self.with_members else 0)
            base = self._plain_names(prefix, None if n is None else n // blocks)
            out = [f"{b}_mean" for b in base] + [f"{b}_std" for b in base]
            for i in range(blocks - 2):
                out += [f"{b}_m{i}" for b in base]
            return out
        return self._plain_names(prefix, n)

    def _plain_names(self, prefix: str, n: int | None) -> list[str]:
        if n is None:
            if len(self.classes) > 2 or self.meta.get("task") == "multiclass":
                return [f"{prefix}_{c}" for c in self.classes]
            return [prefix]
        if n == 1:
            return [prefix]
        return [f"{prefix}_{c}" for c in (self.classes if len(self.classes) == n else range(n))]


DEVICE_VAR = "HEPRAY_DEVICE"  # set by the shard actor: "cuda" when Ray gave it a GPU


def device() -> str:
    """Where this process predicts: ``cuda`` if its shard actor was given a GPU and one is
    visible, else ``cpu`` (the fallback: a GPU job on a machine without one runs on CPUs)."""
    if os.environ.get(DEVICE_VAR) != "cuda":
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # xgboost alone: trust Ray's assignment
        return "cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu"


def _load_xgboost(bundle: ModelBundle, nthread: int):
    xgb = import_xgboost()

    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(bundle.raw))  # JSON or UBJ, detected from the bytes
    except xgb.core.XGBoostError as exc:
        raise ModelLoadError(bundle.path, f"not an xgboost JSON/UBJ model ({str(exc).splitlines()[0][:200]})") from None
    booster.set_param({"nthread": nthread, "device": device()})
    n_features = booster.num_features()
    bundle.n_features = n_features or None
    if bundle.features is not None and n_features not in (0, len(bundle.features)):
        raise ModelLoadError(bundle.path, f"model expects {n_features} features, metadata lists {len(bundle.features)}")

    T = _temperature(bundle)

    def predict(X: np.ndarray) -> np.ndarray:
        out = booster.inplace_predict(X, validate_features=False)
        P = np.asarray(out, dtype=np.float32).reshape(len(X), -1)
        return P if T is None else apply_temperature(P, T)

    return predict


def _temperature(bundle: ModelBundle) -> float | None:
    cal = bundle.meta.get("calibration") or {}
    if not cal:
        return None
    if cal.get("method") != "temperature" or not isinstance(cal.get("temperature"), (int, float)) or cal["temperature"] <= 0:
        raise ModelLoadError(bundle.path, f"calibration {cal!r}: expected {{method: temperature, temperature: T > 0}}")
    return float(cal["temperature"])


def _load_ensemble(bundle: ModelBundle, nthread: int):
    """Each member's predictor (each with its own calibration); out: mean, std (over members,
    ddof 0) and, on request, the members, side by side per class."""
    predictors = [m.load(nthread) for m in bundle.members]

    def predict(X) -> np.ndarray:
        P = np.stack([p(X) for p in predictors])  # [members, n, K]
        blocks = [P.mean(axis=0), P.std(axis=0)] + (list(P) if bundle.with_members else [])
        return np.concatenate(blocks, axis=1).astype(np.float32)

    return predict


def _load_torch(bundle: ModelBundle, nthread: int):
    from ..extras import require

    torch = require("torch")
    from . import build_model

    torch.set_num_threads(nthread)
    try:
        state = torch.load(io.BytesIO(bundle.raw), map_location="cpu", weights_only=True)
        model = build_model(bundle.meta["architecture"])
        model.load_state_dict(state)
    except Exception as exc:
        raise ModelLoadError(bundle.path, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    dev = device()
    model.eval().to(dev)
    passes = bundle.mc_dropout
    if passes:
        dropouts = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
        if not dropouts or all(m.p == 0 for m in dropouts):
            raise ModelLoadError(bundle.path, "uncertainty.mc_dropout: the network has no dropout layers (train it "
                                 "with dropout > 0, or use an ensemble)")
        for m in dropouts:
            m.train()  # dropout on at prediction; everything else (batch norm) stays in eval mode
    elif bundle.stochastic:
        passes = int(bundle.samples or bundle.meta["architecture"].get("predict_samples") or 20)
    T = _temperature(bundle)
    pre = bundle.meta.get("preprocessing") or {}
    mean = np.asarray(pre.get("mean", 0.0), dtype=np.float32)
    scale = np.asarray(pre.get("scale", 1.0), dtype=np.float32)
    multiclass = bundle.meta.get("task") == "multiclass"
    arguments = (bundle.meta.get("inputs") or {}).get("arguments")  # padded multi-input nets (GNNs)

    def tensors(X) -> tuple[int, list]:
        if arguments:
            return len(X[arguments[0]]), [torch.from_numpy(np.ascontiguousarray(X[k])).to(dev) for k in arguments]
        return len(X), [torch.from_numpy(np.ascontiguousarray((X - mean) / scale, dtype=np.float32)).to(dev)]

    def probabilities(args) -> np.ndarray:
        logits = model(*args)
        out = torch.softmax(logits, dim=1) if multiclass else torch.sigmoid(logits)
        P = out.cpu().numpy().reshape(len(out), -1)
        return P if T is None else apply_temperature(P, T)

    def predict(X) -> np.ndarray:
        """``X``: float32 [n, F]; for a model whose metadata lists ``inputs.arguments``, a dict
        of arrays by argument name (points/features/mask from ``hepray.gnn.inputs``)."""
        n, args = tensors(X)
        with torch.no_grad():
            if not passes:
                return probabilities(args).reshape(n, -1)
            # N stochastic passes as one batch of N copies of each event (independent dropout
            # masks / weight samples per row), MC_ROWS rows at a time: the cost of N passes
            step = max(1, MC_ROWS // passes)
            chunks = []
            for i in range(0, n, step):
                part = [a[i:i + step] for a in args]
                k = len(part[0])
                P = probabilities([a.repeat(passes, *([1] * (a.dim() - 1))) for a in part]).reshape(passes, k, -1)
                chunks.append(np.concatenate([P.mean(axis=0), P.std(axis=0)], axis=1))
            if not chunks:  # no rows: the right number of (empty) columns
                P = probabilities(args).reshape(0, -1)
                chunks = [np.concatenate([P, P], axis=1)]
            return np.concatenate(chunks).astype(np.float32)

    return predict
