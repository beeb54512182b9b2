"""Jagged (awkward) per-particle variables -> fixed-size padded arrays + masks, weaver-style.

The configuration mirrors weaver-core's ``inputs:`` block, one entry per input group::

    {"pf_points":   {"length": 64, "pad_mode": "wrap", "vars": [["part_deta", None], ["part_dphi", None]]},
     "pf_features": {"length": 64, "vars": ["part_pt_log", ["part_e_log", 1.7, 0.7],
                                            ["part_charge", None], ["part_d0", "auto", None, -3, 3]]},
     "jet_globals": {"length": None, "vars": [["jet_pt", "auto"]]}}

A variable is a name or ``[name, center, scale, clip_min, clip_max, pad_value]`` (weaver's
order; missing entries default to "auto"-or-None, 1, -5, 5, 0). The transform is
``clip((x - center) * scale, min, max)``; ``center=None`` leaves the variable raw (unclipped,
as in weaver); ``center="auto"`` is fitted: centre = median, scale = 1/max(p84 - p50, p50 - p16).

``fit_padding`` resolves every "auto" on a random fraction of the events and returns a JSON-able
dict to store with the model; ``apply_padding`` uses only that dict, so training and inference
see identical inputs. Groups come out channels-first, [N, C, length] float32, with masks
[N, 1, length] bool (True = real entry). ``pad_mode="wrap"`` repeats the event's own entries
cyclically (weaver instead fills with entries from other events of the batch; per-event wrap is
reproducible and independent of batching); events with no entries are filled with pad_value.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import awkward as ak
import numpy as np

FORMAT = "hepray.padding/1"
_DEFAULTS = {"scale": 1.0, "min": -5.0, "max": 5.0, "pad_value": 0.0}


def _parse_var(v, auto_standardization: bool) -> dict:
    default_center = "auto" if auto_standardization else None
    if isinstance(v, str):
        return {"name": v, "center": default_center, **_DEFAULTS}
    if isinstance(v, Mapping):
        out = {"center": default_center, **_DEFAULTS, **v}
        if "name" not in out:
            raise ValueError(f"variable {v!r} has no name")
        return out
    v = list(v)
    if not v or not isinstance(v[0], str) or len(v) > 6:
        raise ValueError(f"variable must be a name or [name, center, scale, min, max, pad_value], got {v!r}")
    keys = ["name", "center", "scale", "min", "max", "pad_value"]
    out = {"name": v[0], "center": default_center, **_DEFAULTS}
    out.update({k: x for k, x in zip(keys[1:], v[1:])})
    if out["scale"] is None:  # weaver's [name, "auto", None]: scale fitted together with the centre
        out["scale"] = 1.0
    return out


def parse_config(config: Mapping, auto_standardization: bool = True) -> dict:
    """Normalise a weaver-style ``inputs`` config to the params layout (centres may be "auto")."""
    groups = {}
    for group, spec in config.items():
        length = spec.get("length")
        pad_mode = str(spec.get("pad_mode", "constant")).lower()
        if pad_mode not in ("constant", "wrap"):
            raise ValueError(f"{group}: pad_mode must be constant or wrap, got {pad_mode!r}")
        if length is not None and int(length) < 1:
            raise ValueError(f"{group}: length must be >= 1 or None")
        if not spec.get("vars"):
            raise ValueError(f"{group}: no vars")
        groups[group] = {"length": None if length is None else int(length), "pad_mode": pad_mode,
                         "vars": [_parse_var(v, auto_standardization) for v in spec["vars"]]}
        for var in groups[group]["vars"]:
            c = var["center"]
            if c is not None and c != "auto" and not isinstance(c, (int, float)):
                raise ValueError(f"{group}.{var['name']}: center must be a number, 'auto' or None")
    return {"format": FORMAT, "groups": groups}


def _n_events(events) -> int:
    if isinstance(events, Mapping):
        return len(next(iter(events.values())))
    return len(events)


def _take(events, idx: np.ndarray):
    if isinstance(events, Mapping):
        return {k: v[idx] for k, v in events.items()}
    return events[idx]


def auto_standardization_params(values: np.ndarray) -> tuple[float, float]:
    """weaver's ``auto``: (median, 1 / max(p84 - p50, p50 - p16)); NaN counted as 0."""
    a = np.nan_to_num(np.asarray(values, dtype=np.float64))
    if a.size == 0:
        return 0.0, 1.0
    low, center, high = np.percentile(a, [16, 50, 84])
    spread = max(high - center, center - low)
    return float(center), float(1.0 / spread) if spread > 0 else 1.0


def fit_padding(events, config: Mapping, fraction: float = 0.1, seed: int = 0,
                auto_standardization: bool = True) -> dict:
    """Params with every "auto" centre/scale computed on a random ``fraction`` of the events.

    ``events``: an awkward record array or a mapping name -> awkward/numpy array. ``config`` may
    be a weaver-style inputs block or params from an earlier fit (re-fitting only the autos).
    """
    params = (copy.deepcopy(dict(config)) if isinstance(config, Mapping) and config.get("format") == FORMAT
              else parse_config(config, auto_standardization))
    n = _n_events(events)
    if not 0 < fraction <= 1:
        raise ValueError("fraction must be in (0, 1]")
    subset = events
    if fraction < 1 and n:
        pick = np.flatnonzero(np.random.default_rng(seed).random(n) < fraction)
        if pick.size:
            subset = _take(events, pick)
    for group in params["groups"].values():
        for var in group["vars"]:
            if var["center"] == "auto":
                flat = ak.to_numpy(ak.flatten(ak.fill_none(ak.Array(subset[var["name"]]), 0), axis=None))
                var["center"], var["scale"] = auto_standardization_params(flat)
    return params


def _transform(values: np.ndarray, var: dict) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64))
    if var["center"] is None:
        return values
    return np.clip((values - var["center"]) * var["scale"], var["min"], var["max"])


def _pad(flat: np.ndarray, counts: np.ndarray, length: int, mode: str, pad_value: float) -> np.ndarray:
    """Flat values + per-event counts -> [N, length], truncating long events."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    pos = np.arange(length)
    if mode == "wrap":
        src = pos[None, :] % np.maximum(counts, 1)[:, None]
        fill = np.broadcast_to((counts > 0)[:, None], (len(counts), length))
    else:
        src = np.broadcast_to(pos[None, :], (len(counts), length))
        fill = pos[None, :] < counts[:, None]
    if flat.size == 0:
        return np.full((len(counts), length), pad_value, dtype=np.float32)
    idx = np.where(fill, starts[:, None] + src, 0)
    return np.where(fill, flat[idx], pad_value).astype(np.float32)


def apply_padding(events, params: Mapping) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(arrays, masks): arrays[group] [N, C, length] float32 (or [N, C] for ``length: None``),
    masks[group] [N, 1, length] bool for the padded groups."""
    if params.get("format") != FORMAT:
        raise ValueError("params must come from fit_padding (or parse_config with no 'auto' left)")
    arrays: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for gname, group in params["groups"].items():
        length, channels, counts_ref = group["length"], [], None
        for var in group["vars"]:
            if var["center"] == "auto":
                raise ValueError(f"{gname}.{var['name']}: standardisation not fitted; run fit_padding first")
            col = ak.fill_none(ak.Array(events[var["name"]]), 0)
            if length is None:
                if col.ndim != 1:
                    raise ValueError(f"{gname}.{var['name']}: jagged variable in a group with length None")
                channels.append(_transform(ak.to_numpy(col), var).astype(np.float32))
                continue
            if col.ndim != 2:
                raise ValueError(f"{gname}.{var['name']}: expected one list per event, got ndim={col.ndim}")
            counts = ak.to_numpy(ak.num(col, axis=1)).astype(np.int64)
            if counts_ref is None:
                counts_ref = counts
            elif not np.array_equal(counts, counts_ref):
                raise ValueError(f"{gname}.{var['name']}: list lengths differ from the group's first variable")
            flat = _transform(ak.to_numpy(ak.flatten(col, axis=1)), var)
            channels.append(_pad(flat, counts, length, group["pad_mode"], var["pad_value"]))
        arrays[gname] = np.stack(channels, axis=1)
        if length is not None:
            masks[gname] = (np.arange(length)[None, :] < counts_ref[:, None])[:, None, :]
    return arrays, masks


def to_torch(arrays: Mapping[str, np.ndarray]) -> dict:
    """numpy dict -> torch tensors (no copy), for feeding ``ParticleNet(points, features, mask)``."""
    from ..extras import require

    torch = require("torch")
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
