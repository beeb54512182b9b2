"""Replays of generated jets: many detector-level samples from one Pythia pool, fast.

Pythia makes ~50 QCD jets per core-second here; a data-quality sample with realistic statistics
(hundreds of lumisections of hundreds of jets) needs ~10^5. A replay takes whole events of a
generated pool, turns each by a random azimuth and mirrors it in eta with probability 1/2 (the
physics is symmetric under both; the detector's faults are not, so a replayed jet meets a dead
region or a hot channel anywhere), and passes them through the same detector and the same faults
as ``kind: generate`` (:func:`.producer.detector_level`) with fresh random numbers. Only the
detector step is paid, and the generator-level N-subjettiness is computed once per pool jet.

The price: jets repeat at generator level (each pool jet appears ``n / pool`` times, each time
with another detector response and position), so the sample's generator-level distribution is
the pool's; fluctuations between lumisections are those of drawing from the pool.
"""

from __future__ import annotations

import numpy as np

from .producer import GenJets, _jet_features


def pool_features(pool: GenJets, radius: float) -> dict[str, np.ndarray]:
    """Generator-level features of the pool's jets (rotation changes only phi and eta's sign)."""
    c = pool.const
    return _jet_features(c["px"], c["py"], c["pz"], c["e"], pool.offsets, None, radius)


def replay(pool: GenJets, feats: dict[str, np.ndarray], rng: np.random.Generator, n_events: int,
           first_event: int) -> tuple[GenJets, dict[str, np.ndarray]]:
    """``n_events`` events drawn (with replacement) from the pool's, each turned in azimuth and
    mirrored in eta at random, numbered from ``first_event``; and their generator-level features."""
    ev_ids, first = np.unique(pool.event, return_index=True)
    jets_of = np.split(np.arange(pool.n_jets), first[1:])  # the pool's jets, grouped by event
    pick = rng.integers(0, len(ev_ids), n_events)
    jets = np.concatenate([jets_of[i] for i in pick])
    event = np.repeat(first_event + np.arange(n_events), [len(jets_of[i]) for i in pick])
    rot = rng.uniform(-np.pi, np.pi, n_events)
    flip = rng.random(n_events) < 0.5
    counts = np.diff(pool.offsets)[jets]
    cidx = np.concatenate([np.arange(pool.offsets[j], pool.offsets[j + 1]) for j in jets])
    ev_of_const = np.repeat(event - first_event, counts)
    c = {k: v[cidx] for k, v in pool.const.items()}
    cs, sn = np.cos(rot[ev_of_const]), np.sin(rot[ev_of_const])
    c["px"], c["py"] = c["px"] * cs - c["py"] * sn, c["px"] * sn + c["py"] * cs
    c["pz"] = np.where(flip[ev_of_const], -c["pz"], c["pz"])
    g = GenJets(c, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), event.astype(np.int64),
                pool.rank[jets], pool.truth_dr[jets], n_events, 0.0)
    ev_of_jet = event - first_event
    f = {k: v[jets] for k, v in feats.items()}
    f["phi"] = np.where(f["nconst"] > 0, (f["phi"] + rot[ev_of_jet] + np.pi) % (2 * np.pi) - np.pi, f["phi"])
    for k in ("eta", "rap"):
        f[k] = np.where(flip[ev_of_jet], -f[k], f[k])
    return g, f
