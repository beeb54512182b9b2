"""A parametric detector: per-class energy resolution, angular smearing and a pT/eta-dependent
reconstruction efficiency, configured in YAML (``detector_default.yaml`` is the default).

Particles that fail reconstruction are flagged (``reco = False``), never dropped, so a model can
learn the efficiency from the files. Every function here is a pure function of arrays and an
explicit ``numpy.random.Generator``: the same seed gives the same detector response.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from pydantic import Field, model_validator

from ..config import Spec
from ..errors import ConfigError

DEFAULT_YAML = Path(__file__).with_name("detector_default.yaml")

# Particle classes written in ``const_class`` (PF-candidate-like) and the detector class that
# measures each: tracker for charged particles, ECAL for photons, HCAL for neutral hadrons.
CHARGED_HADRON, ELECTRON, MUON, PHOTON, NEUTRAL_HADRON = 1, 2, 3, 4, 5
DET_CHARGED, DET_PHOTON, DET_NEUTRAL = 0, 1, 2
DET_INDEX = {"charged": DET_CHARGED, "photon": DET_PHOTON, "neutral_hadron": DET_NEUTRAL}


class Resolution(Spec):
    """sigma_E / E = stochastic / sqrt(E) (+) constant (+) linear * E, added in quadrature.

    The linear term stands for a tracker, whose relative resolution grows with momentum."""

    stochastic: float = Field(0.0, ge=0)
    constant: float = Field(0.0, ge=0)
    linear: float = Field(0.0, ge=0)


class Angular(Spec):
    """Gaussian smearing of eta and phi (absolute widths)."""

    eta: float = Field(0.0, ge=0)
    phi: float = Field(0.0, ge=0)


class Efficiency(Spec):
    """plateau(|eta|) x turn-on(pT), zero beyond ``eta_max``.

    The turn-on is a Gaussian CDF reaching 50 % at ``pt_50`` with width ``pt_width``."""

    barrel: float = Field(1.0, ge=0, le=1)
    endcap: float = Field(1.0, ge=0, le=1)
    barrel_eta: float = Field(1.5, ge=0)
    eta_max: float = Field(2.5, gt=0)
    pt_50: float = Field(0.0, ge=0)
    pt_width: float = Field(0.1, gt=0)


class ClassResponse(Spec):
    resolution: Resolution = Resolution()
    angular: Angular = Angular()
    efficiency: Efficiency = Efficiency()


class DetectorSpec(Spec):
    name: str = "detector"
    charged: ClassResponse
    photon: ClassResponse
    neutral_hadron: ClassResponse

    @model_validator(mode="after")
    def _sane(self):
        for cls in ("charged", "photon", "neutral_hadron"):
            eff = getattr(self, cls).efficiency
            if eff.barrel_eta > eff.eta_max:
                raise ValueError(f"{cls}.efficiency.barrel_eta must not exceed eta_max")
        return self

    def table(self, field: str, attr: str) -> np.ndarray:
        """One parameter for the three detector classes, indexable by a DET_* array."""
        return np.array([getattr(getattr(getattr(self, c), field), attr) for c in ("charged", "photon", "neutral_hadron")])


def load_detector(spec: str | dict | DetectorSpec = "default", resolve=lambda p: p, where: str = "") -> DetectorSpec:
    """``"default"``, a YAML file (resolved with ``resolve``) or a mapping, validated."""
    if isinstance(spec, DetectorSpec):
        return spec
    if isinstance(spec, str):
        path = DEFAULT_YAML if spec == "default" else Path(resolve(spec))
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(where, "detector", f"detector file {str(path)!r} not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), "", f"not valid YAML: {exc}") from None
        where = str(path)
    else:
        data = spec
    from pydantic import ValidationError

    try:
        return DetectorSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(where, f"detector.{loc}" if loc else "detector", err["msg"]) from None


# -- classification ----------------------------------------------------------------------------

def particle_class(pid: np.ndarray, charge: np.ndarray) -> np.ndarray:
    """PDG id and charge -> 1 charged hadron, 2 electron, 3 muon, 4 photon, 5 neutral hadron."""
    apid = np.abs(pid)
    out = np.where(charge != 0, CHARGED_HADRON, NEUTRAL_HADRON).astype(np.int8)
    out[apid == 11] = ELECTRON
    out[apid == 13] = MUON
    out[apid == 22] = PHOTON
    return out


def detector_class(pclass: np.ndarray) -> np.ndarray:
    """Which subdetector measures each particle class (DET_* index)."""
    lut = np.array([DET_NEUTRAL, DET_CHARGED, DET_CHARGED, DET_CHARGED, DET_PHOTON, DET_NEUTRAL], dtype=np.int8)
    return lut[pclass]


# -- response ----------------------------------------------------------------------------------

def relative_resolution(e: np.ndarray, stochastic, constant, linear=0.0) -> np.ndarray:
    """sigma_E/E for energies ``e`` (GeV); parameters may be scalars or per-particle arrays."""
    e = np.maximum(np.asarray(e, dtype=np.float64), 1e-9)
    return np.sqrt(np.square(stochastic) / e + np.square(constant) + np.square(np.multiply(linear, e)))


def lognormal_response(rng: np.random.Generator, rel_sigma: np.ndarray) -> np.ndarray:
    """Multiplicative response with mean 1 and standard deviation ``rel_sigma``.

    Log-normal rather than Gaussian so a 100 % resolution never yields a negative energy."""
    s2 = np.log1p(np.square(rel_sigma))
    return np.exp(rng.standard_normal(np.shape(rel_sigma)) * np.sqrt(s2) - 0.5 * s2)


def efficiency(pt: np.ndarray, eta: np.ndarray, det: np.ndarray, spec: DetectorSpec) -> np.ndarray:
    """Reconstruction probability per particle from its pT, eta and detector class."""
    from scipy.special import ndtr

    aeta = np.abs(eta)
    plateau = np.where(aeta < spec.table("efficiency", "barrel_eta")[det],
                       spec.table("efficiency", "barrel")[det], spec.table("efficiency", "endcap")[det])
    turn_on = ndtr((pt - spec.table("efficiency", "pt_50")[det]) / spec.table("efficiency", "pt_width")[det])
    return np.where(aeta < spec.table("efficiency", "eta_max")[det], plateau * turn_on, 0.0)


def wrap_phi(phi: np.ndarray) -> np.ndarray:
    """Angles into [-pi, pi)."""
    return (np.asarray(phi) + np.pi) % (2 * np.pi) - np.pi


def simulate(rng: np.random.Generator, e, eta, phi, mass, pclass, spec: DetectorSpec) -> dict:
    """Measure particles: smeared energy/eta/phi, and the reconstruction flag.

    Draw order is fixed (flags, then energy, then eta, then phi, one draw per particle each) so
    the response of particle i does not depend on which other particles are present.
    Returns e, eta, phi, pt (measured, mass kept), reco (bool) and det (detector class).
    """
    e = np.asarray(e, dtype=np.float64)
    eta = np.asarray(eta, dtype=np.float64)
    mass = np.asarray(mass, dtype=np.float64)
    det = detector_class(np.asarray(pclass))
    pt_true = np.sqrt(np.maximum(e**2 - mass**2, 0.0)) / np.cosh(eta)
    u = rng.random(e.shape)
    reco = u < efficiency(pt_true, eta, det, spec)
    sigma = relative_resolution(e, spec.table("resolution", "stochastic")[det],
                                spec.table("resolution", "constant")[det], spec.table("resolution", "linear")[det])
    e_m = e * lognormal_response(rng, sigma)
    eta_m = eta + rng.standard_normal(e.shape) * spec.table("angular", "eta")[det]
    phi_m = wrap_phi(np.asarray(phi) + rng.standard_normal(e.shape) * spec.table("angular", "phi")[det])
    e_m = np.maximum(e_m, mass)  # a measured energy below the mass would be unphysical
    return {"e": e_m, "eta": eta_m, "phi": phi_m, "pt": momentum_pt(e_m, mass, eta_m), "reco": reco, "det": det}


def momentum_pt(e: np.ndarray, mass: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """pT of a particle of energy e, mass m at pseudorapidity eta."""
    return np.sqrt(np.maximum(np.square(e) - np.square(mass), 0.0)) / np.cosh(eta)
