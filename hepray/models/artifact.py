"""The model artifact every workload writes and every consumer (infer, fpga, dask) reads.

A model is a folder::

    model/
      hepray_model.json   metadata: type, features, classes, preprocessing, architecture, metrics
      model.json | model.ubj   (type "xgboost")  - loaded by xgboost itself, never pickled
      model.pt                 (type "torch")    - a state_dict, loaded with weights_only=True

``features`` are the input columns in order; ``preprocessing`` (optional) is
``{"mean": [...], "scale": [...]}`` applied as ``(x - mean) / scale`` before the model;
``classes`` names the outputs (binary: one score column); ``calibration`` (optional) is
``{"method": "temperature", "temperature": T}``, applied by every predictor to the model's
probabilities (``metrics.apply_temperature``).

An **ensemble** (bagging replicas) is a folder of model folders::

    ensemble/
      hepray_model.json   type "ensemble", members: ["member_000", ...], features, classes, task
      member_000/         an ordinary model folder (its own metadata, weights, calibration)
      ...

Predictors of an ensemble give the members' mean and standard deviation per class
(``predict.ModelBundle``); nothing in it is pickled either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ModelLoadError
from ..io.parts import StorePath, as_path

METADATA = "hepray_model.json"
FORMAT_VERSION = 1
TYPES = ("xgboost", "torch", "ensemble")
# metadata an ensemble copies from its first member: what consumers read to feed it
SHARED_KEYS = ("features", "classes", "task", "inputs", "expressions", "samples", "dataset_fingerprint")


def save_metadata(model_dir: str | os.PathLike, meta: dict) -> Path:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": FORMAT_VERSION, **meta}
    tmp = model_dir / (METADATA + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=_jsonable))
    os.replace(tmp, model_dir / METADATA)
    return model_dir / METADATA


def load_metadata(path: str | os.PathLike) -> dict:
    """Metadata of a model folder (or of the folder holding a bare model file); a folder on an
    object store (``s3://.../model``) is read in place."""
    if isinstance(as_path(path), StorePath):
        return _load_metadata_store(as_path(path))
    p = Path(path)
    meta_path = p / METADATA if p.is_dir() else p.parent / METADATA
    if not p.exists():
        raise ModelLoadError(str(p), "no such file or folder")
    if not meta_path.exists():
        if p.is_file() and p.suffix in (".json", ".ubj"):  # a bare xgboost model: no metadata
            return {"type": "xgboost", "file": p.name}
        raise ModelLoadError(str(p), f"missing {METADATA}; was it written by hepray?")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(str(meta_path), f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if meta.get("type") not in TYPES:
        raise ModelLoadError(str(meta_path), f"unknown model type {meta.get('type')!r}")
    return meta


def _load_metadata_store(p: StorePath) -> dict:
    meta_path = p / METADATA
    try:
        raw = meta_path.read_bytes()
    except FileNotFoundError:
        if p.name.endswith((".json", ".ubj")) and p.exists():
            return {"type": "xgboost", "file": p.name, "bare": True}
        raise ModelLoadError(str(p), f"missing {METADATA} (no such model folder, or not written by hepray)") from None
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(str(meta_path), f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if meta.get("type") not in TYPES:
        raise ModelLoadError(str(meta_path), f"unknown model type {meta.get('type')!r}")
    return meta


def member_paths(path: str | os.PathLike, meta: dict) -> list:
    """The member folders of an ensemble: names listed in its metadata, each inside the folder."""
    root = as_path(path)
    names = meta.get("members")
    if not isinstance(names, list) or not names:
        raise ModelLoadError(str(root / METADATA), "an ensemble needs `members`: a list of member folder names")
    out = []
    for name in names:
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            raise ModelLoadError(str(root / METADATA), f"member {name!r} must name a folder inside the ensemble")
        out.append(root / name)
    return out


def save_ensemble(ensemble_dir: str | os.PathLike, members: list[str], extra: dict | None = None) -> Path:
    """Write an ensemble's metadata over member folders already written inside ``ensemble_dir``;
    the first member's features, classes, task and inputs are the ensemble's."""
    ensemble_dir = Path(ensemble_dir)
    first = load_metadata(ensemble_dir / members[0])
    for m in members[1:]:
        other = load_metadata(ensemble_dir / m)
        for k in ("features", "classes", "task"):
            if other.get(k) != first.get(k):
                raise ModelLoadError(str(ensemble_dir / m), f"member {k} {other.get(k)!r} differ from {members[0]}'s {first.get(k)!r}")
    meta = {"type": "ensemble", "members": list(members), **{k: first[k] for k in SHARED_KEYS if k in first},
            "member_type": first["type"], **(extra or {})}
    return save_metadata(ensemble_dir, meta)


def model_file(path: str | os.PathLike, meta: dict) -> Path | StorePath:
    """The model's weights file; the metadata's ``file`` must name one inside the model folder."""
    if isinstance(as_path(path), StorePath):
        p = as_path(path)
        if meta.get("bare"):
            return p
        name = meta.get("file")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ModelLoadError(str(p / METADATA), "`file` must name the model's weights file inside the model folder")
        return p / name
    p = Path(path)
    if not p.is_dir():
        return p
    name = meta.get("file")
    if not isinstance(name, str) or not name:
        raise ModelLoadError(str(p / METADATA), "`file` must name the model's weights file")
    f = p / name
    if not Path(os.path.realpath(f)).is_relative_to(os.path.realpath(p)):
        raise ModelLoadError(str(p / METADATA), f"`file` {name!r} points outside the model folder; "
                                                "keep the weights file inside it")
    return f


def read_model(path: str | os.PathLike) -> tuple[dict, Path, bytes]:
    """(metadata, model file, its bytes) of a model folder; the bytes ship to Ray workers."""
    meta = load_metadata(path)
    if meta["type"] == "ensemble":
        raise ModelLoadError(str(path), f"an ensemble of {len(meta.get('members') or [])} models, not one model "
                             "file; read it with ModelBundle.read (kind: infer), or pass one member folder")
    f = model_file(path, meta)
    meta.pop("bare", None)  # a bare model file on a store: known from its name, not stored
    try:
        return meta, f, f.read_bytes()
    except OSError as exc:
        raise ModelLoadError(str(f), exc.strerror or str(exc)) from None


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
