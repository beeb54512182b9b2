"""The reference score distribution a model carries, so a scan needs no reference data.

Anomaly scores are only meaningful relative to what "good" data score: an autoencoder's
reconstruction error has no natural scale. ``train_anomaly`` therefore scores the held-out part
of its reference data (events it did not train on, so the table is not biased low) and stores a
quantile table in the model's metadata. From it a scan gets, for every event, its reference tail
probability ``p = P_ref(score >= s)``, and for any statistic a null distribution by drawing
pseudo-lumisections from the table (inverse-CDF sampling).

The table is dense in the upper tail (20 levels per decade of ``1 - F`` down to ``1/n``), where
thresholds at small false-alarm rates live; below ``1/(n + 1)`` nothing is known, so tail
probabilities are floored there and thresholds at rates below ``1/n`` are marked unreliable by
the callers.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _levels(n: int) -> np.ndarray:
    body = np.linspace(0.0, 1.0, 201)
    decades = max(1.0, np.log10(max(n, 10)))
    tail = 1.0 - np.logspace(-1.0, -decades, int(round(20 * (decades - 1))) + 1)
    return np.unique(np.concatenate([body, tail, [1.0]]))


@dataclasses.dataclass
class ReferenceTable:
    """Quantiles of the reference per-event score, and the reference per-feature errors."""

    levels: np.ndarray  # cumulative probabilities, increasing, from 0 to 1
    values: np.ndarray  # score quantiles at those levels (non-decreasing)
    n: int  # reference events behind the table
    feature_error_mean: np.ndarray  # [F] mean per-feature reconstruction error
    feature_error_std: np.ndarray  # [F] its per-event standard deviation

    @classmethod
    def from_scores(cls, scores: np.ndarray, feature_errors: np.ndarray) -> ReferenceTable:
        """``scores`` [n] and ``feature_errors`` [n, F] of held-out reference events."""
        scores = np.asarray(scores, dtype=np.float64)
        ok = np.isfinite(scores)
        scores, feature_errors = scores[ok], np.asarray(feature_errors, dtype=np.float64)[ok]
        if len(scores) < 10:
            raise ValueError(f"a reference needs at least 10 scored events, got {len(scores)}")
        levels = _levels(len(scores))
        values = np.maximum.accumulate(np.quantile(scores, levels))
        return cls(levels, values, len(scores), feature_errors.mean(axis=0), feature_errors.std(axis=0))

    # -- persistence (the model's hepray_model.json) -----------------------------------------
    def to_dict(self) -> dict:
        return {"n": int(self.n), "levels": self.levels.tolist(), "quantiles": self.values.tolist(),
                "feature_error_mean": self.feature_error_mean.tolist(),
                "feature_error_std": self.feature_error_std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> ReferenceTable:
        return cls(np.asarray(d["levels"], float), np.asarray(d["quantiles"], float), int(d["n"]),
                   np.asarray(d["feature_error_mean"], float), np.asarray(d["feature_error_std"], float))

    # -- use ----------------------------------------------------------------------------------
    @property
    def p_min(self) -> float:
        """The smallest tail probability the reference can resolve."""
        return 1.0 / (self.n + 1)

    def cdf(self, scores) -> np.ndarray:
        return np.interp(np.asarray(scores, dtype=np.float64), self.values, self.levels, left=0.0, right=1.0)

    def tail_pvalue(self, scores) -> np.ndarray:
        """``P_ref(score >= s)`` per event, floored at ``1/(n+1)`` (beyond the largest reference
        score the reference says nothing finer)."""
        return np.clip(1.0 - self.cdf(scores), self.p_min, 1.0)

    def threshold(self, rate: float) -> float:
        """The score above which a fraction ``rate`` of reference events lies."""
        return float(np.interp(1.0 - rate, self.levels, self.values))

    def sample(self, rng: np.random.Generator, size) -> np.ndarray:
        """Reference-like scores (inverse-CDF draws from the table), for pseudo-lumisections."""
        return np.interp(rng.random(size), self.levels, self.values)
