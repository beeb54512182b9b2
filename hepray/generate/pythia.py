"""Pythia 8 set-up per process, seeds per shard, and what is read back from each event.

Pythia is imported lazily (``hepray.extras.require``), inside the Ray actor that generates.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import HeprayError, MissingDependency
from .config import GeneratorSpec, ProcessSpec

SEED_MAX = 900_000_000  # Pythia's Random:seed must lie in [1, 900000000]
NEUTRINOS = (12, 14, 16)
HADRONIC_W = ["24:onMode = off", "24:onIfAny = 1 2 3 4 5"]
DEFAULT_X_MASS = 150.0

PRESETS: dict[str, list[str]] = {
    "qcd": ["HardQCD:all = on"],
    "ttbar": ["Top:gg2ttbar = on", "Top:qqbar2ttbar = on", *HADRONIC_W],
    "wqq": ["WeakDoubleBoson:ffbar2WW = on", *HADRONIC_W],
    # a boosted scalar recoiling against a jet; Pythia's h0 with its mass moved, decaying to quarks
    # (a Yukawa-like scalar: mostly b bbar). A resonance no tagger was trained on.
    "xqq": ["HiggsSM:gg2Hg(l:t) = on", "HiggsSM:qg2Hq(l:t) = on", "HiggsSM:qqbar2Hg(l:t) = on",
            "25:onMode = off", "25:onIfAny = 1 2 3 4 5"],
}
# Generated events per selected jet with the default window (550-650 GeV, |eta| < 2, pT-hat
# 500-750 GeV, 14 TeV), measured: only for the progress line's ETA, never for physics.
EVENTS_PER_JET = {"qcd": 1.4, "ttbar": 2.4, "wqq": 1.5, "xqq": 3.7}
# the truth object a signal jet must match, and what it decays to
TRUTH_ID = {"ttbar": 6, "wqq": 24, "xqq": 25}


def shard_seed(job_seed: int, process: str, index: int) -> int:
    """Pythia seed of shard ``index`` of ``process``: a pure function of its arguments, so the
    same job and seed regenerate the same files, and shards never share a random stream."""
    digest = hashlib.sha256(f"hepray-generate/{job_seed}/{process}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % SEED_MAX + 1


def settings(process: ProcessSpec, gen: GeneratorSpec, seed: int) -> list[str]:
    """The Pythia settings of one shard: quiet, seeded, the process preset, then the job's lines."""
    if not 1 <= seed <= SEED_MAX:
        raise ValueError(f"Pythia seed {seed} outside [1, {SEED_MAX}]")
    lines = [
        "Print:quiet = on",
        f"Beams:eCM = {gen.sqrts:g}",
        "Random:setSeed = on",
        f"Random:seed = {seed}",
        f"PhaseSpace:pTHatMin = {process.pthat_min:g}",
        f"PhaseSpace:pTHatMax = {process.pthat_max:g}",
        f"PartonLevel:MPI = {'on' if gen.mpi else 'off'}",
        *PRESETS[process.kind],
    ]
    if process.kind == "xqq":
        lines.append(f"25:m0 = {process.mass or DEFAULT_X_MASS:g}")
    return lines + list(process.pythia)


def make_pythia(lines: list[str]):
    """An initialised Pythia; an unknown setting or a failed init is a one-line error."""
    pythia = import_pythia().Pythia("", False)  # no banner
    for line in lines:
        if not pythia.readString(line):
            raise HeprayError(f"Pythia refused the setting {line!r}")
    if not pythia.init():
        raise HeprayError("Pythia failed to initialise (check the process settings and the pT-hat window)")
    return pythia


def import_pythia():
    """The ``pythia8mc`` module, or MissingDependency naming the ``generate`` extra."""
    import importlib

    try:
        return importlib.import_module("pythia8mc")
    except ModuleNotFoundError as exc:
        raise MissingDependency("pythia8mc", "generate") from exc


class ChargeTable:
    """Particle charges by PDG id, looked up once per id."""

    def __init__(self, particle_data):
        self.pd, self.cache = particle_data, {}

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty(len(ids), dtype=np.int8)
        for i, pid in enumerate(ids.tolist()):
            q = self.cache.get(pid)
            if q is None:
                q = self.cache[pid] = int(round(self.pd.charge(pid)))
            out[i] = q
        return out


def final_particles(event, eta_max: float) -> dict[str, np.ndarray]:
    """Visible final-state particles of a Pythia event (no neutrinos, |eta| < eta_max)."""
    rows = []
    for p in event:
        if p.isFinal() and p.idAbs() not in NEUTRINOS:
            rows.append((p.px(), p.py(), p.pz(), p.e(), p.m(), p.id()))
    a = np.array(rows, dtype=np.float64).reshape(-1, 6)
    pt = np.hypot(a[:, 0], a[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(np.where(pt > 0, a[:, 2] / np.where(pt > 0, pt, 1.0), np.sign(a[:, 2]) * 1e9))
    keep = np.abs(eta) < eta_max
    a = a[keep]
    return {"px": a[:, 0], "py": a[:, 1], "pz": a[:, 2], "e": a[:, 3], "m": a[:, 4], "pid": a[:, 5].astype(np.int32)}


def truth_objects(process_record, kind: str) -> list[dict]:
    """The hard-process objects a signal jet must match (top, W or X) and their decay quarks,
    from Pythia's process record (parton level, before the shower).

    Each: ``p4`` (px, py, pz, E) and ``partons`` (list of p4): b q q' for a top, q q' for W/X."""
    target = TRUTH_ID.get(kind)
    if target is None:
        return []

    def p4(q):
        return (q.px(), q.py(), q.pz(), q.e())

    def quarks(i):
        out = []
        for d in process_record[i].daughterList():
            dq = process_record[d]
            if dq.idAbs() == 24 and kind == "ttbar":
                out += quarks(d)
            elif 1 <= dq.idAbs() <= 5:
                out.append(p4(dq))
        return out

    objs = []
    for i in range(process_record.size()):
        q = process_record[i]
        if q.idAbs() == target and q.status() < 0 and not any(
                process_record[d].idAbs() == target for d in q.daughterList()):  # its last copy: it decayed
            objs.append({"p4": p4(q), "partons": quarks(i)})
    return objs
