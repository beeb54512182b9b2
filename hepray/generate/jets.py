"""Jets: clustering (FastJet), kinematics and N-subjettiness.

N-subjettiness (Thaler & Van Tilburg, beta = 1) is a pure numpy function of the constituents and
the axes; the axes are exclusive-kT subjets (the usual choice), found with FastJet. Distances
use rapidity and azimuth, as FastJet does.
"""

from __future__ import annotations

import numpy as np

KT_AXES_R = 10.0  # larger than any distance inside a jet: the beam never wins in exclusive kT


def kinematics(px, py, pz, e) -> dict[str, np.ndarray]:
    """pt, eta, phi, rapidity and mass of four-vectors (massless-safe, no warnings)."""
    px, py, pz, e = (np.asarray(a, dtype=np.float64) for a in (px, py, pz, e))
    pt = np.hypot(px, py)
    p = np.sqrt(pt**2 + pz**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.where(pt > 0, np.arcsinh(np.divide(pz, pt, where=pt > 0, out=np.zeros_like(pt))), 0.0)
        num, den = e + pz, e - pz
        rap = np.where((num > 0) & (den > 0), 0.5 * np.log(np.where(num > 0, num, 1.0) / np.where(den > 0, den, 1.0)), eta)
    phi = np.arctan2(py, px)
    mass = np.sqrt(np.maximum(e**2 - p**2, 0.0))
    return {"pt": pt, "eta": eta, "phi": phi, "rap": rap, "mass": mass}


def from_pt_eta_phi_e(pt, eta, phi, e) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(px, py, pz, e) from pt, eta, phi and energy."""
    pt = np.asarray(pt, dtype=np.float64)
    return pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), np.asarray(e, dtype=np.float64)


def delta_phi(a, b) -> np.ndarray:
    return (np.asarray(a) - np.asarray(b) + np.pi) % (2 * np.pi) - np.pi


def delta_r(rap1, phi1, rap2, phi2) -> np.ndarray:
    return np.hypot(np.asarray(rap1) - np.asarray(rap2), delta_phi(phi1, phi2))


def nsubjettiness(pt, rap, phi, axes_rap, axes_phi, r0: float) -> float:
    """tau_N = sum_i pT_i min_k dR(i, axis_k) / (sum_i pT_i * R0) for the N given axes.

    No axes (N = 0) or no constituents give 0."""
    pt = np.asarray(pt, dtype=np.float64)
    if pt.size == 0 or len(axes_rap) == 0:
        return 0.0
    dr = delta_r(np.asarray(rap)[:, None], np.asarray(phi)[:, None], np.asarray(axes_rap)[None, :],
                 np.asarray(axes_phi)[None, :])
    d0 = pt.sum() * r0
    return float((pt * dr.min(axis=1)).sum() / d0) if d0 > 0 else 0.0


def safe_ratio(num, den) -> np.ndarray:
    """num/den, 0 where den is 0 (tau ratios of jets with too few constituents)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _fastjet():
    from ..extras import require

    return require("fastjet")


def silence_fastjet_banner() -> None:
    """FastJet prints its banner on the first clustering of a process (to C stdout); cluster once
    with file descriptor 1 pointed at /dev/null so a pool of actors does not repeat it."""
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            cluster(np.array([1.0]), np.array([0.0]), np.array([0.0]), np.array([1.0]), 0.4, 0.0)
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _pseudojets(px, py, pz, e):
    fastjet = _fastjet()

    out = []
    for i, (a, b, c, d) in enumerate(zip(np.asarray(px).tolist(), np.asarray(py).tolist(), np.asarray(pz).tolist(),
                                         np.asarray(e).tolist())):
        pj = fastjet.PseudoJet(a, b, c, d)
        pj.set_user_index(i)
        out.append(pj)
    return out


def cluster(px, py, pz, e, radius: float, pt_min: float, max_jets: int | None = None) -> list[np.ndarray]:
    """Anti-kT jets above ``pt_min``, hardest first: for each, the indices of its constituents."""
    fastjet = _fastjet()

    if len(px) == 0:
        return []
    cs = fastjet.ClusterSequence(_pseudojets(px, py, pz, e), fastjet.JetDefinition(fastjet.antikt_algorithm, radius))
    jets = fastjet.sorted_by_pt(cs.inclusive_jets(pt_min))
    if max_jets is not None:
        jets = jets[:max_jets]
    return [np.sort(np.fromiter((c.user_index() for c in j.constituents()), dtype=np.int64)) for j in jets]


def exclusive_kt_axes(px, py, pz, e, n: int) -> np.ndarray:
    """The ``n`` exclusive-kT subjets of a set of particles, as an (n, 4) px/py/pz/E array.

    Fewer particles than ``n``: the particles themselves (their tau_n is then 0)."""
    fastjet = _fastjet()

    m = len(px)
    if m <= n:
        return np.column_stack([px, py, pz, e]).astype(np.float64).reshape(m, 4)
    cs = fastjet.ClusterSequence(_pseudojets(px, py, pz, e), fastjet.JetDefinition(fastjet.kt_algorithm, KT_AXES_R))
    return np.array([[j.px(), j.py(), j.pz(), j.e()] for j in cs.exclusive_jets(n)], dtype=np.float64)


def taus(px, py, pz, e, r0: float, n_max: int = 3, axes_fn=exclusive_kt_axes) -> np.ndarray:
    """tau_1..tau_n_max of one jet's constituents (exclusive-kT axes unless ``axes_fn`` given)."""
    out = np.zeros(n_max)
    if len(px) == 0:
        return out
    k = kinematics(px, py, pz, e)
    for n in range(1, n_max + 1):
        if len(px) <= n:
            break  # every particle is its own axis: tau_n = 0
        ax = kinematics(*axes_fn(px, py, pz, e, n).T)
        out[n - 1] = nsubjettiness(k["pt"], k["rap"], k["phi"], ax["rap"], ax["phi"], r0)
    return out


def jet_sums(px, py, pz, e, offsets: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Per-jet four-vector sums of flat constituent arrays split at ``offsets`` (len n_jets + 1),
    counting only constituents where ``mask`` is true."""
    w = np.ones(len(px)) if mask is None else np.asarray(mask, dtype=np.float64)
    counts = np.diff(offsets)
    jet_of = np.repeat(np.arange(len(counts)), counts)
    n = len(counts)
    return tuple(np.bincount(jet_of, weights=np.asarray(a, dtype=np.float64) * w, minlength=n) for a in (px, py, pz, e))


def round_mantissa(x: np.ndarray, bits: int | None) -> np.ndarray:
    """float32 with only ``bits`` mantissa bits kept (round to nearest), as CMS NanoAOD does:
    the zeroed low bits compress away. ``None`` keeps full precision."""
    x = np.asarray(x, dtype=np.float32)
    if bits is None or bits >= 23:
        return x
    drop = 23 - bits
    u = x.view(np.uint32).astype(np.uint64)
    u = (u + (1 << (drop - 1))) & ~np.uint64((1 << drop) - 1)
    out = u.astype(np.uint32).view(np.float32)
    return np.where(np.isfinite(x), out, x)
