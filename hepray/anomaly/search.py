"""Event-level search: how much of a signal the model never saw sits above thresholds set at
fixed background rates.

Scores are histogrammed per sample in fine log-spaced bins (200 per decade, 1e-6 to 1e6: a
threshold is placed to ~1% in score), so the efficiencies come from bounded memory however many
events were scanned. Each working point states its precision: a background rate ``r`` measured
on ``N_B`` background events rests on ``k = r N_B`` events, so the threshold itself moves by
about ``1/sqrt(k)`` in rate (shown as the signal efficiency at ``r (1 -/+ 1/sqrt(k))``), and the
efficiency has a binomial interval from the ``N_S`` signal events. Working points with ``k < 10``
are marked ``reliable: false``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .reference import ReferenceTable
from .stats import binomial_interval

EDGES = np.geomspace(1e-6, 1e6, 12 * 200 + 1)
MIN_EVENTS_ABOVE = 10


@dataclasses.dataclass
class ScoreHistograms:
    """Per-sample counts in ``len(EDGES) + 1`` bins: [underflow, EDGES bins..., overflow]."""

    counts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def add(self, sample: str, scores) -> None:
        idx = np.searchsorted(EDGES, np.asarray(scores, dtype=np.float64), side="right")
        h = np.bincount(idx, minlength=len(EDGES) + 1)
        self.counts[sample] = self.counts.get(sample, 0) + h

    def merge(self, other: ScoreHistograms) -> ScoreHistograms:
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        return self

    def total(self, samples: list[str]) -> np.ndarray:
        return sum((self.counts[s] for s in samples if s in self.counts), np.zeros(len(EDGES) + 1, dtype=np.int64))


def _tail_at_edges(h: np.ndarray) -> np.ndarray:
    """Events at or above each edge of EDGES (the bin starting at that edge and all above)."""
    return np.cumsum(h[::-1])[::-1][1:]


def _x() -> np.ndarray:
    return np.log(EDGES)


def _threshold_x(tail_b: np.ndarray, n_above: float) -> float:
    """Log-score where the background tail count crosses ``n_above`` (linear in log-score)."""
    x = _x()
    return float(np.interp(-n_above, -tail_b.astype(np.float64), x))  # tail decreases with x


def tail_fraction(h: np.ndarray, score: float) -> float:
    n = h.sum()
    return float(np.interp(np.log(max(score, EDGES[0])), _x(), _tail_at_edges(h)) / n) if n else float("nan")


def roc_from_histograms(h_sig: np.ndarray, h_bkg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(signal efficiency, background efficiency) at every edge."""
    return _tail_at_edges(h_sig) / max(h_sig.sum(), 1), _tail_at_edges(h_bkg) / max(h_bkg.sum(), 1)


def auc_from_histograms(h_sig: np.ndarray, h_bkg: np.ndarray) -> float:
    """P(signal score > background score), ties within a bin counted half."""
    ns, nb = h_sig.sum(), h_bkg.sum()
    if not ns or not nb:
        return float("nan")
    below = np.concatenate([[0], np.cumsum(h_bkg)[:-1]])
    return float((h_sig * (below + 0.5 * h_bkg)).sum() / (ns * nb))


def efficiency_at_rates(h_sig: np.ndarray, h_bkg: np.ndarray, rates: list[float]) -> list[dict]:
    """Signal efficiency at thresholds placed at background rates measured on ``h_bkg``."""
    x = _x()
    tail_s, tail_b = _tail_at_edges(h_sig).astype(float), _tail_at_edges(h_bkg).astype(float)
    ns, nb = float(h_sig.sum()), float(h_bkg.sum())
    out = []
    for r in rates:
        k = r * nb
        eff = lambda kk: float(np.interp(_threshold_x(tail_b, kk), x, tail_s) / ns)  # noqa: E731
        e = eff(k)
        band = [eff(max(k * (1 - 1 / np.sqrt(k)), 0.0)), eff(k * (1 + 1 / np.sqrt(k)))] if k > 0 else [e, e]
        lo, hi = binomial_interval(int(round(e * ns)), int(ns))
        out.append({"background_rate": r, "threshold": float(np.exp(_threshold_x(tail_b, k))),
                    "signal_efficiency": e, "signal_interval_68": [lo, hi], "threshold_band": band,
                    "background_events_above": k, "signal_events": int(ns), "background_events": int(nb),
                    "reliable": bool(k >= MIN_EVENTS_ABOVE)})
    return out


def efficiency_at_reference(h_sig: np.ndarray, h_bkg: np.ndarray | None, ref: ReferenceTable,
                            rates: list[float]) -> list[dict]:
    """Thresholds from the model's reference table (what a search without labels would use):
    the signal efficiency there, and the background rate actually seen in the scanned data."""
    out = []
    for r in rates:
        t = ref.threshold(r)
        e = tail_fraction(h_sig, t)
        ns = int(h_sig.sum())
        row = {"reference_rate": r, "threshold": t, "signal_efficiency": e,
               "signal_interval_68": list(binomial_interval(int(round(e * ns)), ns)),
               "reliable": bool(r * ref.n >= MIN_EVENTS_ABOVE)}
        if h_bkg is not None and h_bkg.sum():
            rb = tail_fraction(h_bkg, t)
            row["background_rate_measured"] = rb
            row["background_interval_68"] = list(binomial_interval(int(round(rb * h_bkg.sum())), int(h_bkg.sum())))
        out.append(row)
    return out


def search_summary(hists: ScoreHistograms, background: list[str], signals: dict[str, list[str]],
                   ref: ReferenceTable, rates: list[float]) -> dict:
    """Per signal (name -> its samples): AUC, efficiencies at background rates on the scanned
    background, and at the reference-table thresholds."""
    h_b = hists.total(background)
    out = {"background_samples": background, "background_events": int(h_b.sum()), "signals": {}}
    for name, samples in signals.items():
        h_s = hists.total(samples)
        out["signals"][name] = {
            "samples": samples, "events": int(h_s.sum()), "auc": auc_from_histograms(h_s, h_b),
            "at_background_rate": efficiency_at_rates(h_s, h_b, rates),
            "at_reference_threshold": efficiency_at_reference(h_s, h_b, ref, rates),
        }
    return out
