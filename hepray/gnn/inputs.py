"""Jet constituents -> padded ParticleNet inputs, in the reading stage.

A job describes its inputs as weaver-core users write them (``inputs:`` groups of ``vars`` with
``length`` and ``pad_mode``, ``preprocess: {method: auto, data_fraction}``); per-constituent
variables such as log(pT) or pT/pT(jet) are ``dataset.expressions`` (the safe AST evaluator), so
there is no second expression language. :class:`Constituents` holds everything needed to turn
``read_shard``'s columns into network inputs - the fitted padding parameters (weaver-style
auto-standardisation, :mod:`hepray.models.padding`), the constituent selection and which group
feeds which network argument - and is stored in the model's metadata. Training (per-shard
loaders in Ray tasks / Ray Train workers) and inference (``kind: infer_gnn`` actors) call the
same :meth:`Constituents.arrays`, so the two cannot drift apart.

The selection (``constituents:``, e.g. ``const_reco``) matters for generated samples: they keep
particles the detector missed, flagged by ``const_reco``, which a detector-level tagger must
not see. It is a jagged boolean expression applied to every jagged input variable before
padding, after which the highest-pT constituents are kept (they are stored pT-ordered).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

import awkward as ak
import numpy as np
from pydantic import Field

from ..config import Spec
from ..data.expressions import Expression
from ..errors import DataError
from ..models.padding import apply_padding, fit_padding, parse_config

ROLES = ("points", "features", "mask")


class PreprocessSpec(Spec):
    """weaver's ``preprocess:``. ``auto``: a variable given by name only (or with centre
    ``auto``) is standardised with the median and 16/84 percentiles of ``data_fraction`` of the
    training events; ``manual``: such variables stay raw."""

    method: Literal["auto", "manual"] = "auto"
    data_fraction: float = Field(0.2, gt=0, le=1)


class RolesSpec(Spec):
    """Which input group feeds which ParticleNet argument (weaver's names by default)."""

    points: str = "pf_points"
    features: str = "pf_features"
    mask: str | None = "pf_mask"  # None: the padding mask of the features group
    # a flat group (``length: None``) of jet-level variables joined to the pooled particle
    # features before the fully connected layers, as CMS taggers add global jet inputs
    globals: str | None = None


def check_inputs(inputs: Mapping, roles: RolesSpec, method: str = "auto") -> dict:
    """Validate a weaver-style ``inputs`` block against the network roles; returns the parsed
    params (centres possibly still "auto"). Raises ValueError with the offending group."""
    params = parse_config(inputs, auto_standardization=method == "auto")
    groups = params["groups"]
    for role in ROLES:
        name = getattr(roles, role)
        if name is None:
            continue
        if name not in groups:
            raise ValueError(f"network.{role} names input group {name!r}, but `inputs:` has {sorted(groups)}")
        if groups[name]["length"] is None:
            raise ValueError(f"{name}: ParticleNet inputs need a `length` (constituents are padded to it)")
    lengths = {groups[getattr(roles, r)]["length"] for r in ROLES if getattr(roles, r)}
    if len(lengths) > 1:
        raise ValueError(f"points, features and mask groups must share one length, got {sorted(lengths)}")
    if len(groups[roles.points]["vars"]) != 2:
        raise ValueError(f"{roles.points}: points are two coordinates (Δη, Δφ)")
    if roles.globals is not None:
        if roles.globals not in groups:
            raise ValueError(f"network.globals names input group {roles.globals!r}, but `inputs:` has {sorted(groups)}")
        if groups[roles.globals]["length"] is not None:
            raise ValueError(f"{roles.globals}: the globals group holds one value per jet: write `length: null`")
    if roles.mask and groups[roles.mask]["pad_mode"] != "constant":
        raise ValueError(f"{roles.mask}: the mask group must use pad_mode: constant (wrap would unmask padding)")
    return params


@dataclasses.dataclass
class Constituents:
    """Padding parameters + constituent selection + roles: shard columns -> network inputs.

    Small and picklable (it travels to Ray tasks, Train workers and inference actors)."""

    params: dict
    select: str | None = None
    roles: dict = dataclasses.field(default_factory=lambda: {"points": "pf_points", "features": "pf_features",
                                                             "mask": "pf_mask"})

    @classmethod
    def from_config(cls, inputs: Mapping, roles: RolesSpec, method: str = "auto", select: str | None = None):
        return cls(check_inputs(inputs, roles, method), select, roles.model_dump())

    # -- what to read ------------------------------------------------------------------------
    def variables(self) -> list[str]:
        out: list[str] = []
        for group in self.params["groups"].values():
            out += [v["name"] for v in group["vars"] if v["name"] not in out]
        return out

    def columns(self) -> list[str]:
        """Columns ``read_shard`` must provide: the variables and what the selection reads."""
        extra = sorted(Expression(self.select, field="constituents").names) if self.select else []
        return self.variables() + [n for n in extra if n not in self.variables()]

    @property
    def length(self) -> int:
        return int(self.params["groups"][self.roles["features"]]["length"])

    @property
    def n_features(self) -> int:
        return len(self.params["groups"][self.roles["features"]]["vars"])

    @property
    def n_globals(self) -> int:
        g = self.roles.get("globals")
        return len(self.params["groups"][g]["vars"]) if g else 0

    @property
    def arguments(self) -> list[str]:
        """The network's positional inputs, in order (stored with the model for inference)."""
        return list(ROLES) + (["globals"] if self.n_globals else [])

    # -- transformation ----------------------------------------------------------------------
    def selected(self, cols: Mapping, where: str = "") -> dict:
        """The input variables with only the selected constituents (jagged ones filtered)."""
        out = {n: cols[n] for n in self.variables()}
        if not self.select:
            return out
        keep = Expression(self.select, field="constituents").evaluate(cols)
        if not isinstance(keep, ak.Array) or keep.ndim != 2:
            raise DataError(where or "constituents", f"constituents: {self.select!r} must give one boolean per constituent")
        keep = ak.values_astype(ak.fill_none(keep, False), bool)
        for n, col in out.items():
            if isinstance(col, ak.Array) and col.ndim == 2:
                out[n] = col[keep]
        return out

    def fit(self, sample: Mapping, seed: int = 0) -> Constituents:
        """Resolve every "auto" centre/scale on ``sample`` (already a fraction of the training
        events, already selected): the result is what the model stores."""
        return dataclasses.replace(self, params=fit_padding(dict(sample), self.params, fraction=1.0, seed=seed))

    def arrays(self, cols: Mapping, where: str = "") -> dict[str, np.ndarray]:
        """``{"points": [n, 2, P], "features": [n, C, P], "mask": [n, 1, P]}`` float32, plus
        ``"globals": [n, G]`` when the network has a globals group."""
        arrays, masks = apply_padding(self.selected(cols, where), self.params)
        r = self.roles
        if r.get("mask"):
            mask = arrays[r["mask"]][:, :1, :] != 0
        else:
            mask = masks[r["features"]]
        out = {"points": arrays[r["points"]], "features": arrays[r["features"]], "mask": mask.astype(np.float32)}
        if r.get("globals"):
            out["globals"] = arrays[r["globals"]]
        return out

    # -- stored with the model ----------------------------------------------------------------
    def to_meta(self) -> dict:
        return {"padding": self.params, "select": self.select, "roles": dict(self.roles)}

    @classmethod
    def from_meta(cls, meta: Mapping) -> Constituents:
        return cls(meta["padding"], meta.get("select"), dict(meta["roles"]))


def fraction_rows(n: int, fraction: float, seed: int, key: int = 0) -> np.ndarray:
    """A reproducible random subset (boolean mask) of ``n`` rows, ~``fraction`` of them; ``key``
    (e.g. the shard index) decorrelates shards."""
    if fraction >= 1:
        return np.ones(n, dtype=bool)
    return np.random.default_rng([seed, key]).random(n) < fraction

