"""Jets as nodes: per-event graphs for per-jet predictions, and the efficiency map they replace.

Analyses parametrise "does this jet pass the tagger working point" with a 2-D (pT, η)
efficiency map filled from simulation. A map cannot see the rest of the event; a graph of the
event's jets (:class:`hepray.models.jetgraph.JetGraphNet`, ΔR edges) can. Here the jets of one
flat ``jets`` tree (one row per jet) are grouped into events by their identity columns and
padded to ``[E, N, F]`` with a ``[E, N]`` mask; :func:`scatter_back` maps per-slot predictions
back to the jet rows, so the graph, a per-jet network and the map are compared jet by jet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


def event_slots(keys: Sequence[np.ndarray], order: np.ndarray | None = None, max_jets: int = 4) -> np.ndarray:
    """Row indices [E, N] of each event's jets (rows with equal ``keys``), sorted by ``order``
    within the event, -1 for empty slots; jets beyond ``max_jets`` are dropped.

    >>> event_slots([np.array([7, 7, 3])], np.array([1, 0, 0]), max_jets=2).tolist()
    [[2, -1], [1, 0]]
    """
    n = len(keys[0]) if len(keys) else 0
    if n == 0:
        return np.zeros((0, max_jets), dtype=np.int64)
    order = np.zeros(n) if order is None else np.asarray(order)
    rows = np.lexsort([order] + [np.asarray(k) for k in reversed(keys)])  # last key is primary
    stacked = np.column_stack([np.asarray(k)[rows] for k in keys])
    new = np.r_[True, (stacked[1:] != stacked[:-1]).any(axis=1)]
    event = np.cumsum(new) - 1
    start = np.flatnonzero(new)
    pos = np.arange(n) - start[event]
    keep = pos < max_jets
    slots = np.full((len(start), max_jets), -1, dtype=np.int64)
    slots[event[keep], pos[keep]] = rows[keep]
    return slots


def gather(values: np.ndarray, slots: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Per-jet ``values`` [n, ...] -> per-slot [E, N, ...], ``fill`` in empty slots."""
    values = np.asarray(values)
    out = values[np.maximum(slots, 0)]
    out[slots < 0] = fill
    return out


def scatter_back(per_slot: np.ndarray, slots: np.ndarray, n: int, fill: float = np.nan) -> np.ndarray:
    """Per-slot [E, N] -> per-jet [n] (``fill`` for jets in no slot, e.g. beyond ``max_jets``)."""
    out = np.full(n, fill, dtype=np.float64)
    used = slots >= 0
    out[slots[used]] = per_slot[used]
    return out


@dataclasses.dataclass
class EfficiencyMap:
    """Pass fraction in (pT, η) bins, as analyses parametrise tagging efficiencies.

    Each bin's efficiency is shrunk towards the overall one with ``prior`` pseudo-jets, so a
    sparsely filled bin never predicts exactly 0 or 1 (which would make the log-loss infinite);
    jets outside the edges use the nearest bin.
    """

    pt_edges: np.ndarray
    eta_edges: np.ndarray
    efficiency: np.ndarray  # [pt bins, eta bins]
    abs_eta: bool = True

    @classmethod
    def fit(cls, pt, eta, passed, weight=None, pt_bins: int | Sequence[float] = 6,
            eta_bins: int | Sequence[float] = 4, abs_eta: bool = True, prior: float = 1.0) -> EfficiencyMap:
        """Integer bins: quantiles of the given jets (every bin filled); lists: explicit edges."""
        pt, eta = np.asarray(pt, np.float64), np.asarray(eta, np.float64)
        eta = np.abs(eta) if abs_eta else eta
        passed = np.asarray(passed, np.float64)
        w = np.ones_like(pt) if weight is None else np.asarray(weight, np.float64)
        pe, ee = _edges(pt, pt_bins), _edges(eta, eta_bins)
        i, j = _bin(pt, pe), _bin(eta, ee)
        shape = (len(pe) - 1, len(ee) - 1)
        total = np.zeros(shape)
        hits = np.zeros(shape)
        np.add.at(total, (i, j), w)
        np.add.at(hits, (i, j), w * passed)
        overall = hits.sum() / max(total.sum(), 1e-12)
        eff = (hits + prior * overall) / (total + prior)
        return cls(pe, ee, eff, abs_eta)

    def predict(self, pt, eta) -> np.ndarray:
        eta = np.abs(eta) if self.abs_eta else np.asarray(eta)
        return self.efficiency[_bin(np.asarray(pt, np.float64), self.pt_edges), _bin(np.asarray(eta, np.float64), self.eta_edges)]

    def to_dict(self) -> dict:
        return {"pt_edges": self.pt_edges.tolist(), "eta_edges": self.eta_edges.tolist(),
                "efficiency": self.efficiency.tolist(), "abs_eta": self.abs_eta}


def _edges(x: np.ndarray, bins) -> np.ndarray:
    if isinstance(bins, int):
        edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1))) if len(x) else np.array([0.0, 1.0])
        return edges if len(edges) > 1 else np.array([edges[0], edges[0] + 1])
    return np.asarray(bins, np.float64)


def _bin(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)


def per_jet_metrics(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> dict:
    """Log-loss, Brier score and AUC of per-jet pass probabilities ``p`` for outcomes ``y``:
    the first two judge calibrated probabilities (what an efficiency map must give), AUC only
    the ranking."""
    from ..report.metrics import auc

    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y, np.float64)
    w = np.ones(len(p)) if w is None else np.asarray(w, np.float64)
    log_loss = -np.average(y * np.log(p) + (1 - y) * np.log1p(-p), weights=w)
    return {"log_loss": float(log_loss), "brier": float(np.average((p - y) ** 2, weights=w)), "auc": auc(y, p, w),
            "jets": int(len(y))}


def nearest_neighbour_dr(eta: np.ndarray, phi: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Per jet [n]: ΔR to the nearest other jet of its event graph (``slots`` from
    :func:`event_slots`); nan for a jet alone in its event or in no slot.

    >>> nearest_neighbour_dr(np.array([0.0, 0.3, 1.0]), np.zeros(3), np.array([[0, 1], [2, -1]])).round(2).tolist()
    [0.3, 0.3, nan]
    """
    e, p, used = gather(eta, slots, np.nan), gather(phi, slots, np.nan), slots >= 0
    dphi = np.mod(p[:, :, None] - p[:, None, :] + np.pi, 2 * np.pi) - np.pi
    dr = np.sqrt((e[:, :, None] - e[:, None, :]) ** 2 + dphi**2)
    n_slots = slots.shape[1]
    dr[:, np.arange(n_slots), np.arange(n_slots)] = np.inf
    dr[~(used[:, :, None] & used[:, None, :])] = np.inf
    nn = dr.min(axis=2)
    nn[~np.isfinite(nn)] = np.nan
    return scatter_back(nn, slots, len(eta))
