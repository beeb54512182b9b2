"""The ``kind: generate`` job: processes, generator, jets, detector and faults.

Counts are in written jets (what a training set is sized by), so a shard generates events until
it holds ``jets_per_shard`` jets. Event numbers stay unique and reproducible without knowing how
many events that takes: shard ``k`` of a process numbers its events from ``k * events_stride``.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..config import JobConfig, Spec

# Stable integer codes written in the ``process`` branch (a ROOT file holds no enum); new kinds
# get new codes, existing ones never change.
PROCESS_CODES = {"qcd": 0, "ttbar": 1, "wqq": 2, "xqq": 3}
DEFAULT_LABELS = {"qcd": 0, "ttbar": 1, "wqq": 2, "xqq": 3}
FAULT_CODES = {"none": 0, "dead_region": 1, "miscalibration": 2, "noisy": 3}
DETECTOR_CLASSES = ("charged", "photon", "neutral_hadron")

_SETTING = re.compile(r"^[A-Za-z0-9_:()\-]+\s*=\s*[^=\n]+$")


class ProcessSpec(Spec):
    """One sample. ``kind`` picks the Pythia preset, ``name`` names the part files."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    kind: Literal["ttbar", "qcd", "wqq", "xqq"]
    n_jets: int = Field(gt=0)
    label: int | None = None  # default: DEFAULT_LABELS[kind]
    pthat_min: float = Field(500.0, ge=0)
    pthat_max: float = Field(750.0, gt=0)
    mass: float | None = Field(None, gt=0, description="xqq only: the scalar X mass in GeV")
    jets_per_shard: int | None = Field(None, gt=0)  # default: generator.jets_per_shard
    pythia: list[str] = []  # extra Pythia settings, read after the preset

    @field_validator("pythia")
    @classmethod
    def _settings(cls, v):
        for line in v:
            if not _SETTING.match(line.strip()):
                raise ValueError(f"{line!r} is not a Pythia setting of the form 'Key:name = value'")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.pthat_max <= self.pthat_min:
            raise ValueError("pthat_max must be above pthat_min")
        if self.mass is not None and self.kind != "xqq":
            raise ValueError("mass applies to kind xqq only")
        return self

    @property
    def code(self) -> int:
        return PROCESS_CODES[self.kind]

    @property
    def label_value(self) -> int:
        return DEFAULT_LABELS[self.kind] if self.label is None else self.label


class GeneratorSpec(Spec):
    """Collider, sharding and event numbering."""

    sqrts: float = Field(14000.0, gt=0)
    mpi: bool = True  # multi-parton interactions: the underlying event inside the jets
    jets_per_shard: int = Field(500, gt=0)
    events_stride: int = Field(1_000_000, gt=0)  # max events per shard, and event-number gap between shards
    run: int = Field(1, ge=0)
    events_per_lumi: int = Field(100, gt=0)


class JetSpec(Spec):
    """Jet definition and selection, at generator level (so efficiencies have a denominator)."""

    radius: float = Field(0.8, gt=0, le=2.0)
    pt_min: float = Field(550.0, ge=0)
    pt_max: float = Field(650.0, gt=0)
    eta_max: float = Field(2.0, gt=0)
    max_jets: int = Field(2, gt=0)  # leading jets per event considered
    max_constituents: int = Field(100, gt=0)  # stored per jet, highest pT first
    particle_eta_max: float = Field(5.0, gt=0)  # generator acceptance of clustered particles
    match_dr: float | None = Field(None, gt=0)  # signal: truth object within this of the jet; default radius
    containment: bool = True  # signal: its decay quarks within match_dr too
    reco_pt_min: float = Field(200.0, ge=0)  # detector-level jet counts as found (reco_ok) above this
    mantissa_bits: int | None = Field(None, ge=1, le=23)  # round float branches (NanoAOD-style) to shrink files

    @model_validator(mode="after")
    def _check(self):
        if self.pt_max <= self.pt_min:
            raise ValueError("pt_max must be above pt_min")
        return self

    @property
    def match_radius(self) -> float:
        return self.radius if self.match_dr is None else self.match_dr


class _Fault(Spec):
    lumis: list[int] = Field(min_length=1)

    @field_validator("lumis")
    @classmethod
    def _nonneg(cls, v):
        if any(x < 0 for x in v):
            raise ValueError("lumisections are >= 0")
        return sorted(set(v))


class DeadRegion(_Fault):
    """Nothing is reconstructed in an eta-phi rectangle (a dead module)."""

    type: Literal["dead_region"]
    eta: tuple[float, float]
    phi: tuple[float, float]

    @model_validator(mode="after")
    def _ranges(self):
        if not (self.eta[0] < self.eta[1]):
            raise ValueError("eta must be [low, high] with low < high")
        if not (self.phi[0] < self.phi[1]):
            raise ValueError("phi must be [low, high] with low < high (azimuth runs over [-pi, pi])")
        return self


class Miscalibration(_Fault):
    """Measured energies of some detector classes scaled by a constant."""

    type: Literal["miscalibration"]
    scale: float = Field(gt=0)
    classes: list[Literal["charged", "photon", "neutral_hadron"]] = list(DETECTOR_CLASSES)


class NoisyChannel(_Fault):
    """A hot cell adding a spurious neutral deposit (exponential energy) to every event."""

    type: Literal["noisy"]
    eta: float
    phi: float  # wrapped into [-pi, pi)
    energy: float = Field(gt=0, description="mean spurious energy in GeV")


FaultSpec = Annotated[DeadRegion | Miscalibration | NoisyChannel, Field(discriminator="type")]


class GenerateConfig(JobConfig):
    """Pythia 8 + FastJet + a parametric detector, sharded by seed, written as ROOT parts."""

    default_tree: ClassVar[str] = "jets"

    processes: list[ProcessSpec] = Field(min_length=1)
    generator: GeneratorSpec = GeneratorSpec()
    jets: JetSpec = JetSpec()
    detector: str | dict = "default"  # "default", a YAML path (relative to the job) or an inline mapping
    faults: list[FaultSpec] = []
    plots: bool = True  # write PNG sanity plots into <run_dir>/plots

    @model_validator(mode="after")
    def _unique(self):
        names = [p.name for p in self.processes]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"process names must be unique: {sorted(dup)}")
        seen: dict[int, str] = {}
        for f in self.faults:
            for lumi in f.lumis:
                if lumi in seen:
                    raise ValueError(f"lumisection {lumi} has two faults ({seen[lumi]} and {f.type}); give each one fault")
                seen[lumi] = f.type
        return self
