"""Per-event anomaly scores of a trained (variational) autoencoder, in numpy in and out.

One object serves the training job (calibrating the reference on held-out events) and the scan's
actors (scoring shards), so both score exactly alike: standardise with the stored mean/scale,
score in batches without gradients, and give each event its score and per-feature squared
reconstruction errors (in standardised units, so features compare).
"""

from __future__ import annotations

import io

import numpy as np

from ..extras import require

SCORE_KINDS = ("recon", "kl", "elbo")


class Scorer:
    """``scorer(X) -> (score float32[n], errors float32[n, F])`` for raw feature matrices."""

    def __init__(self, model, mean: np.ndarray, scale: np.ndarray, kind: str = "recon", batch_size: int = 65536):
        self.model, self.kind, self.batch_size = model.eval(), kind, batch_size
        self.mean = np.asarray(mean, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)

    @classmethod
    def from_bundle(cls, meta: dict, raw: bytes, nthread: int = 1, batch_size: int = 65536) -> Scorer:
        """Rebuild the network from the stored architecture and load its state_dict with
        ``weights_only=True`` (no pickled code); ``raw`` are the bytes of ``model.pt``."""
        torch = require("torch")
        from ..models import build_model

        torch.set_num_threads(nthread)
        model = build_model(meta["architecture"])
        model.load_state_dict(torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True))
        pre = meta.get("preprocessing") or {}
        kind = (meta.get("anomaly") or {}).get("score", "recon")
        return cls(model, pre.get("mean", 0.0), pre.get("scale", 1.0), kind, batch_size)

    def standardise(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, dtype=np.float32) - self.mean) / self.scale

    def __call__(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Events with a non-finite feature score +inf (broken inputs are the most anomalous)
        and count 0 error for those features."""
        Z = self.standardise(X)
        finite = np.isfinite(Z)
        scores, errors = self.score_standardised(np.where(finite, Z, 0.0).astype(np.float32))
        bad = ~finite.all(axis=1)
        scores[bad] = np.inf
        errors[~finite] = 0.0
        return scores, errors

    def score_standardised(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores of already standardised, finite inputs."""
        torch = require("torch")
        scores = np.empty(len(Z), dtype=np.float32)
        errors = np.empty(Z.shape, dtype=np.float32)
        with torch.no_grad():
            for i in range(0, len(Z), self.batch_size):
                x = torch.from_numpy(Z[i:i + self.batch_size])
                err = self.model.per_feature_error(x)
                errors[i:i + len(x)] = err.numpy()
                if self.kind == "recon":
                    scores[i:i + len(x)] = err.mean(dim=-1).numpy()
                else:
                    scores[i:i + len(x)] = self.model.score(x, kind=self.kind).numpy()
        return scores, errors
