"""Reading (and, for tests and QAT, writing) the model artifacts the FPGA stage converts.

The format is the one of :mod:`hepray.models.artifact`. The float reference here returns the
*raw* model outputs (torch logits, xgboost margins), because that is what the firmware computes:
hls4ml and conifer stop before the sigmoid/softmax, and a threshold on a logit is the same cut
as a threshold on its sigmoid. ``preprocessing`` is applied in float before the model for both
model types, as the artifact format says; on the trigger path that standardisation belongs to
the upstream input formatting, so the firmware receives standardised inputs.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from ..extras import import_xgboost
from ..models.artifact import load_metadata, read_model, save_metadata


@dataclasses.dataclass
class Artifact:
    """A model folder read into memory: metadata plus the model file's bytes (ships to Ray)."""

    path: str
    meta: dict
    raw: bytes

    @classmethod
    def read(cls, path: str | Path) -> Artifact:
        if load_metadata(path)["type"] == "ensemble":  # one firmware block compiles one network
            raise ModelLoadError(str(path), "an ensemble (bagging replicas): the FPGA stage compiles one model; "
                                 "give one member folder (e.g. member_000) as model.path")
        meta, _, raw = read_model(path)
        return cls(str(path), meta, raw)

    # -- metadata ------------------------------------------------------------------------------
    @property
    def type(self) -> str:
        return self.meta["type"]

    @property
    def features(self) -> list[str]:
        return list(self.meta.get("features") or [])

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    @property
    def multiclass(self) -> bool:
        return self.meta.get("task") == "multiclass" or len(self.classes) > 2

    def standardise(self, X: np.ndarray) -> np.ndarray:
        """``(X - mean) / scale`` in float32, or X itself: the firmware's input."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        pre = self.meta.get("preprocessing")
        if not pre:
            return X
        mean = np.asarray(pre.get("mean", 0.0), dtype=np.float32)
        scale = np.asarray(pre.get("scale", 1.0), dtype=np.float32)
        return np.ascontiguousarray((X - mean) / scale, dtype=np.float32)

    # -- models ----------------------------------------------------------------------------------
    def torch_model(self):
        from ..extras import require

        torch = require("torch")
        from ..models import build_model

        if self.type != "torch":
            raise ModelLoadError(self.path, f"expected a torch model, found {self.type!r}")
        try:
            state = torch.load(io.BytesIO(self.raw), map_location="cpu", weights_only=True)
            model = build_model(self.meta["architecture"])
            model.load_state_dict(state)
        except Exception as exc:
            raise ModelLoadError(self.path, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        return model.eval()

    def booster(self):
        xgb = import_xgboost()

        if self.type != "xgboost":
            raise ModelLoadError(self.path, f"expected an xgboost model, found {self.type!r}")
        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(self.raw))  # JSON or UBJ, detected from the bytes
        except xgb.core.XGBoostError as exc:
            raise ModelLoadError(self.path, f"not an xgboost JSON/UBJ model ({str(exc).splitlines()[0][:200]})") from None
        booster.set_param({"nthread": 1})
        return booster

    def float_reference(self):
        """``f(Z) -> float64[n, K]``: raw outputs (logits / margins) on *standardised* inputs Z."""
        if self.type == "torch":
            from ..extras import require

            torch = require("torch")
            model = self.torch_model()

            def predict(Z: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    out = model(torch.from_numpy(np.ascontiguousarray(Z, dtype=np.float32)))
                return out.numpy().astype(np.float64).reshape(len(Z), -1)

            return predict
        booster = self.booster()
        from .bdt import dmatrix

        def predict_xgb(Z: np.ndarray) -> np.ndarray:
            m = booster.predict(dmatrix(booster, Z), output_margin=True)
            return np.asarray(m, dtype=np.float64).reshape(len(Z), -1)

        return predict_xgb


def save_torch(model_dir: str | Path, model, features: list[str], classes: list[str],
               preprocessing: dict | None = None, extra: dict | None = None) -> Path:
    """Write a ``hepray.models.mlp.MLP`` (or any registered architecture with ``.arch``) as an artifact."""
    from ..extras import require

    torch = require("torch")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), model_dir / "model.pt")
    meta = {"type": "torch", "file": "model.pt", "features": list(features), "classes": list(classes),
            "task": "multiclass" if len(classes) > 2 else "binary", "architecture": dict(model.arch),
            **({"preprocessing": _jsonable_pre(preprocessing)} if preprocessing else {}), **(extra or {})}
    save_metadata(model_dir, meta)
    return model_dir


def save_xgboost(model_dir: str | Path, booster, features: list[str], classes: list[str],
                 preprocessing: dict | None = None, fmt: str = "json", extra: dict | None = None) -> Path:
    """Write an xgboost Booster as an artifact (JSON or UBJ, never pickled)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    name = f"model.{fmt}"
    booster.save_model(model_dir / name)
    meta = {"type": "xgboost", "file": name, "features": list(features), "classes": list(classes),
            "task": "multiclass" if len(classes) > 2 else "binary",
            **({"preprocessing": _jsonable_pre(preprocessing)} if preprocessing else {}), **(extra or {})}
    save_metadata(model_dir, meta)
    return model_dir


def _jsonable_pre(pre: dict) -> dict:
    return {k: np.asarray(v, dtype=np.float64).tolist() for k, v in pre.items()}
