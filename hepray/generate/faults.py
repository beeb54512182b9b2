"""Detector faults on chosen lumisections, recorded as truth in the ``fault`` branch.

0 none, 1 dead eta-phi region (nothing reconstructed there), 2 miscalibrated energy scale,
3 noisy channel (a spurious neutral deposit per event). Pure functions of arrays; the fault
objects are the job's ``faults:`` entries (see :mod:`.config`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import FAULT_CODES
from .detector import DET_INDEX, wrap_phi
from .jets import delta_phi


def lumi_fault_index(lumi: np.ndarray, faults: Sequence) -> np.ndarray:
    """For each lumisection, the index of its fault in ``faults``, or -1."""
    lumi = np.asarray(lumi)
    out = np.full(lumi.shape, -1, dtype=np.int64)
    for i, f in enumerate(faults):
        out[np.isin(lumi, f.lumis)] = i
    return out


def fault_codes(index: np.ndarray, faults: Sequence) -> np.ndarray:
    """Fault indices (-1 none) to the integer codes written in the files."""
    lut = np.array([FAULT_CODES[f.type] for f in faults] + [0], dtype=np.int32)
    return lut[np.asarray(index)]  # -1 picks the trailing 0


def in_region(eta, phi, eta_range, phi_range) -> np.ndarray:
    eta, phi = np.asarray(eta), np.asarray(phi)
    return (eta >= eta_range[0]) & (eta < eta_range[1]) & (phi >= phi_range[0]) & (phi < phi_range[1])


def apply_dead_regions(reco, eta, phi, index, faults: Sequence) -> np.ndarray:
    """Particles inside the dead region of their event's fault are not reconstructed."""
    reco = np.array(reco, dtype=bool)
    for i, f in enumerate(faults):
        if f.type == "dead_region":
            sel = np.asarray(index) == i
            reco[sel & in_region(eta, phi, f.eta, f.phi)] = False
    return reco


def apply_miscalibration(e, det, index, faults: Sequence) -> np.ndarray:
    """Measured energies scaled where their event's fault miscalibrates their detector class."""
    e = np.array(e, dtype=np.float64)
    for i, f in enumerate(faults):
        if f.type == "miscalibration":
            classes = [DET_INDEX[c] for c in f.classes]
            sel = (np.asarray(index) == i) & np.isin(det, classes)
            e[sel] *= f.scale
    return e


def noise_deposits(rng: np.random.Generator, jet_event, jet_rap, jet_phi, jet_index_fault, faults: Sequence,
                   radius: float) -> dict[str, np.ndarray]:
    """Spurious deposits of noisy channels: one per affected event (exponential energy, at the
    channel's eta/phi), given to the nearest jet of that event within ``radius``.

    Returns flat arrays: jet (index into the jets), e, eta, phi (massless deposits)."""
    jet_event = np.asarray(jet_event)
    out = {"jet": [], "e": [], "eta": [], "phi": []}
    for i, f in enumerate(faults):
        if f.type != "noisy":
            continue
        jets = np.flatnonzero(np.asarray(jet_index_fault) == i)
        events = np.unique(jet_event[jets])
        energies = rng.exponential(f.energy, size=len(events))
        for ev, energy in zip(events, energies):
            cand = jets[jet_event[jets] == ev]
            dr = np.hypot(np.asarray(jet_rap)[cand] - f.eta, delta_phi(np.asarray(jet_phi)[cand], f.phi))
            k = int(np.argmin(dr))
            if dr[k] < radius:
                out["jet"].append(cand[k])
                out["e"].append(energy)
                out["eta"].append(f.eta)
                out["phi"].append(float(wrap_phi(f.phi)))
    return {"jet": np.asarray(out["jet"], dtype=np.int64), **{k: np.asarray(out[k], dtype=np.float64) for k in ("e", "eta", "phi")}}
