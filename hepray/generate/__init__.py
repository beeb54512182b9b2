"""Sample production: Pythia 8 events, FastJet jets and a parametric detector.

The numerical kernels (:mod:`.jets`, :mod:`.detector`, :mod:`.faults`) are pure functions of
numpy arrays, testable without Pythia or Ray; :mod:`.producer` turns one seed into the columns
of one part, and ``kind: generate`` (:mod:`hepray.workloads.generate`) shards that over Ray.
Pythia and FastJet are imported only where events are made, so ``import hepray`` stays light.
"""

from __future__ import annotations

from .config import PROCESS_CODES, GenerateConfig
from .detector import DetectorSpec, load_detector

__all__ = ["GenerateConfig", "PROCESS_CODES", "DetectorSpec", "load_detector"]
