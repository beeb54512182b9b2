"""One shard of generation: a seed in, the columns of one part out.

Events are generated until the shard holds its quota of jets. Jets are selected at generator
level (pT window, |eta|, the leading ``max_jets``, and for signal a matched truth object), then
every constituent goes through the detector; the detector-level jet is the sum of its
reconstructed constituents (plus any noisy-channel deposit), so each generator-level jet has
exactly one detector-level partner and nothing is silently lost.
"""

from __future__ import annotations

import dataclasses
import time

import awkward as ak
import numpy as np

from ..errors import HeprayError
from . import faults as F
from .config import GenerateConfig, ProcessSpec
from .detector import NEUTRAL_HADRON, DetectorSpec, momentum_pt, particle_class, simulate
from .jets import (
    cluster,
    delta_phi,
    delta_r,
    from_pt_eta_phi_e,
    jet_sums,
    kinematics,
    round_mantissa,
    safe_ratio,
    taus,
)
from .pythia import ChargeTable, final_particles, make_pythia, settings, truth_objects

MAX_FAILED_EVENTS = 1000


@dataclasses.dataclass
class ShardTask:
    """What one shard generates: a process, its index, its seed and its jet quota."""

    process: ProcessSpec
    index: int
    seed: int
    n_jets: int
    first_event: int  # event numbers are first_event + i

    @property
    def is_signal(self) -> bool:
        return self.process.kind != "qcd"


@dataclasses.dataclass
class GenJets:
    """Selected generator-level jets: flat constituent arrays split by ``offsets``, and per-jet
    event number, rank in the event and distance to the matched truth object (-1: none)."""

    const: dict[str, np.ndarray]
    offsets: np.ndarray
    event: np.ndarray
    rank: np.ndarray
    truth_dr: np.ndarray
    n_events: int
    seconds: float

    @property
    def n_jets(self) -> int:
        return len(self.event)


def match_truth(jet_eta: float, jet_phi: float, truth: list[dict], radius: float, containment: bool) -> float:
    """Distance to the closest truth object within ``radius`` (with its decay quarks inside too
    when ``containment``), or -1 when none qualifies."""
    best = -1.0
    for obj in truth:
        k = kinematics(*np.array([obj["p4"]] + obj["partons"]).T)
        dr = delta_r(k["eta"], k["phi"], jet_eta, jet_phi)
        if dr[0] >= radius or (containment and np.any(dr[1:] >= radius)):
            continue
        if best < 0 or dr[0] < best:
            best = float(dr[0])
    return best


def generate_jets(job: GenerateConfig, task: ShardTask) -> GenJets:
    """Run Pythia for one shard until ``task.n_jets`` jets pass the selection."""
    t0 = time.perf_counter()
    js, gen = job.jets, job.generator
    pythia = make_pythia(settings(task.process, gen, task.seed))
    charges = ChargeTable(pythia.particleData)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("px", "py", "pz", "e", "m", "pid", "charge")}
    counts, events, ranks, drs = [], [], [], []
    i = failed = 0
    while len(events) < task.n_jets and i < gen.events_stride:
        if not pythia.next():
            failed += 1
            if failed > MAX_FAILED_EVENTS:
                raise HeprayError(f"Pythia failed {failed} events in shard {task.index} of {task.process.name}")
            continue
        event_number = task.first_event + i
        i += 1
        p = final_particles(pythia.event, js.particle_eta_max)
        if len(p["px"]) == 0:
            continue
        truth = truth_objects(pythia.process, task.process.kind) if task.is_signal else []
        for rank, idx in enumerate(cluster(p["px"], p["py"], p["pz"], p["e"], js.radius, js.pt_min, js.max_jets)):
            k = kinematics(p["px"][idx].sum(), p["py"][idx].sum(), p["pz"][idx].sum(), p["e"][idx].sum())
            if not (js.pt_min <= k["pt"] < js.pt_max and abs(k["eta"]) < js.eta_max):
                continue
            dr = -1.0
            if task.is_signal:
                dr = match_truth(float(k["eta"]), float(k["phi"]), truth, js.match_radius, js.containment)
                if dr < 0:
                    continue  # signal jets must contain their top / W / X, as in the reference datasets
            for key in ("px", "py", "pz", "e", "m", "pid"):
                parts[key].append(p[key][idx])
            parts["charge"].append(charges(p["pid"][idx]))
            counts.append(len(idx))
            events.append(event_number)
            ranks.append(rank)
            drs.append(dr)
            if len(events) == task.n_jets:
                break
    const = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in parts.items()}
    const["pid"] = const["pid"].astype(np.int32)
    const["charge"] = const["charge"].astype(np.int8)
    return GenJets(const, np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64),
                   np.asarray(events, dtype=np.int64), np.asarray(ranks, dtype=np.int32),
                   np.asarray(drs, dtype=np.float64), i, time.perf_counter() - t0)


def _jet_features(px, py, pz, e, offsets, mask, radius) -> dict[str, np.ndarray]:
    """pt, eta, phi, mass, tau1..3, tau21, tau32, nconst of each jet from its masked constituents."""
    sums = jet_sums(px, py, pz, e, offsets, mask)
    k = kinematics(*sums)
    n = len(offsets) - 1
    t = np.zeros((n, 3))
    mask = np.ones(len(px), bool) if mask is None else mask
    for j in range(n):
        s = slice(offsets[j], offsets[j + 1])
        m = mask[s]
        if m.any():
            t[j] = taus(px[s][m], py[s][m], pz[s][m], e[s][m], radius)
    jet_of = np.repeat(np.arange(n), np.diff(offsets))
    nconst = np.bincount(jet_of[mask], minlength=n)
    empty = nconst == 0
    return {"pt": k["pt"], "eta": np.where(empty, 0.0, k["eta"]), "phi": np.where(empty, 0.0, k["phi"]),
            "rap": k["rap"], "mass": k["mass"], "tau1": t[:, 0], "tau2": t[:, 1], "tau3": t[:, 2],
            "tau21": safe_ratio(t[:, 1], t[:, 0]), "tau32": safe_ratio(t[:, 2], t[:, 1]), "nconst": nconst}


def detector_level(job: GenerateConfig, detector: DetectorSpec, task: ShardTask, g: GenJets,
                   gen_features: dict | None = None) -> dict:
    """Columns of one part from the generator-level jets: detector response, faults, features.
    ``gen_features``: the generator-level jet features when already known (a replay of the same
    jets, hepray/generate/replay.py), so their N-subjettiness is not recomputed."""
    js, gen = job.jets, job.generator
    c, off = g.const, g.offsets
    counts = np.diff(off)
    jet_of = np.repeat(np.arange(g.n_jets), counts)
    gk = kinematics(c["px"], c["py"], c["pz"], c["e"])
    gj = gen_features if gen_features is not None else _jet_features(c["px"], c["py"], c["pz"], c["e"], off, None, js.radius)

    lumi = g.event // gen.events_per_lumi
    fidx = F.lumi_fault_index(lumi, job.faults)
    fidx_c = fidx[jet_of]
    pclass = particle_class(c["pid"], c["charge"])

    rng = np.random.default_rng([task.seed, 0xDE7])
    m = simulate(rng, c["e"], gk["eta"], gk["phi"], c["m"], pclass, detector)
    reco = F.apply_dead_regions(m["reco"], gk["eta"], gk["phi"], fidx_c, job.faults)
    e_m = F.apply_miscalibration(m["e"], m["det"], fidx_c, job.faults)
    pt_m = momentum_pt(e_m, c["m"], m["eta"])
    noise = F.noise_deposits(np.random.default_rng([task.seed, 0x9015E]), g.event, gj["rap"], gj["phi"], fidx,
                             job.faults, js.radius)

    # detector-level constituents: every generator constituent (measured if reconstructed, its true
    # values otherwise, flagged), then the spurious deposits; per jet, highest stored pT first
    nn = len(noise["jet"])
    cjet = np.concatenate([jet_of, noise["jet"]])
    cols = {
        "pt": np.concatenate([np.where(reco, pt_m, gk["pt"]), noise["e"] / np.cosh(noise["eta"])]),
        "eta": np.concatenate([np.where(reco, m["eta"], gk["eta"]), noise["eta"]]),
        "phi": np.concatenate([np.where(reco, m["phi"], gk["phi"]), noise["phi"]]),
        "e": np.concatenate([np.where(reco, e_m, c["e"]), noise["e"]]),
        "mass": np.concatenate([c["m"], np.zeros(nn)]),
        "charge": np.concatenate([c["charge"], np.zeros(nn, np.int8)]),
        "class": np.concatenate([pclass, np.full(nn, NEUTRAL_HADRON, np.int8)]),
        "reco": np.concatenate([reco, np.ones(nn, bool)]),
        "gen_pt": np.concatenate([gk["pt"], np.zeros(nn)]),
    }
    order = np.lexsort((-cols["pt"], cjet))
    cols = {k: v[order] for k, v in cols.items()}
    cjet = cjet[order]
    ccounts = np.bincount(cjet, minlength=g.n_jets)
    coff = np.concatenate([[0], np.cumsum(ccounts)])

    px, py, pz, e = from_pt_eta_phi_e(cols["pt"], cols["eta"], cols["phi"], cols["e"])
    rj = _jet_features(px, py, pz, e, coff, cols["reco"], js.radius)
    has_reco = rj["nconst"] > 0
    reco_ok = has_reco & (rj["pt"] >= js.reco_pt_min)
    reco_pass = reco_ok & (rj["pt"] >= js.pt_min) & (rj["pt"] < js.pt_max) & (np.abs(rj["eta"]) < js.eta_max)

    # constituents relative to the detector-level axis (the generator one when nothing was reconstructed)
    axis_eta = np.where(has_reco, rj["eta"], gj["eta"])
    axis_phi = np.where(has_reco, rj["phi"], gj["phi"])
    pos = np.arange(len(cjet)) - coff[cjet]
    keep = pos < js.max_constituents
    kept = np.minimum(ccounts, js.max_constituents)
    bits = js.mantissa_bits

    def jag(values, dtype=np.float32):
        v = values[keep]
        v = round_mantissa(v, bits) if dtype == np.float32 else v.astype(dtype)
        return ak.unflatten(v, kept)

    def f32(x):
        return round_mantissa(x, bits)

    out = {
        "run": np.full(g.n_jets, gen.run, np.int32),
        "luminosityBlock": lumi.astype(np.int32),
        "event": g.event.astype(np.int64),
        "jet_rank": g.rank.astype(np.int32),
        "process": np.full(g.n_jets, task.process.code, np.int32),
        "label": np.full(g.n_jets, task.process.label_value, np.int32),
        "truth_dr": f32(g.truth_dr),
        "fault": F.fault_codes(fidx, job.faults),
    }
    for level, feats in (("gen", gj), ("reco", rj)):
        for name in ("pt", "eta", "phi", "mass", "tau1", "tau2", "tau3", "tau21", "tau32"):
            out[f"{level}_{name}"] = f32(feats[name])
        out[f"{level}_nconst"] = feats["nconst"].astype(np.int32)
    out["reco_ok"] = reco_ok
    out["reco_pass"] = reco_pass
    out["n_const"] = kept.astype(np.int32)
    out["const_pt"] = jag(cols["pt"])
    out["const_deta"] = jag(cols["eta"] - axis_eta[cjet])
    out["const_dphi"] = jag(delta_phi(cols["phi"], axis_phi[cjet]))
    out["const_e"] = jag(cols["e"])
    out["const_charge"] = jag(cols["charge"], np.int8)
    out["const_class"] = jag(cols["class"], np.int8)
    out["const_reco"] = jag(cols["reco"], np.bool_)
    out["const_gen_pt"] = jag(cols["gen_pt"])
    return out


def produce(job: GenerateConfig, detector: DetectorSpec, task: ShardTask) -> tuple[dict, int, float]:
    """Columns, events generated and seconds spent for one shard."""
    g = generate_jets(job, task)
    t0 = time.perf_counter()
    cols = detector_level(job, detector, task, g)
    return cols, g.n_events, g.seconds + time.perf_counter() - t0
