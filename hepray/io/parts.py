"""The one way a part is written: to a temporary name, then atomically renamed, then a commit
marker. A part either exists complete under its final name or not at all; writing the same
shard twice replaces it, never duplicates it."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import awkward as ak
import numpy as np

COMMITTED = "_committed"


def part_name(shard, fmt: str) -> str:
    ext = "root" if fmt == "root" else "parquet"
    prefix = shard.sample or "part"
    return f"{prefix}_{shard.shard_id}.{ext}"


def _compression(spec: str):
    import uproot

    name, _, level = spec.partition(":")
    name = name.lower()
    if name == "none":
        return None
    cls = {"zstd": uproot.ZSTD, "lz4": uproot.LZ4, "zlib": uproot.ZLIB, "lzma": uproot.LZMA}[name]
    return cls(int(level) if level else _DEFAULT_LEVEL[name])


_DEFAULT_LEVEL = {"zstd": 5, "lz4": 4, "zlib": 4, "lzma": 6}


def write_root(path: Path, columns: dict, tree: str, compression: str) -> None:
    """A TTree (so it can be a friend of the input): flat columns become plain branches, jagged
    ones get a counter ``n<name>``. ``mktree`` on purpose: uproot 5.7's ``f[name] = data`` writes
    an RNTuple."""
    import uproot

    branches = {k: (v if isinstance(v, ak.Array) and v.ndim > 1 else np.asarray(v)) for k, v in columns.items()}
    with uproot.recreate(path, compression=_compression(compression)) as f:
        if not branches:
            return
        f.mktree(tree, {k: _branch_type(v) for k, v in branches.items()})
        if len(next(iter(branches.values()))):
            f[tree].extend(branches)


def _branch_type(v):
    if isinstance(v, np.ndarray):  # fixed-size arrays per event keep their shape
        return np.dtype((v.dtype, v.shape[1:])) if v.ndim > 1 else v.dtype
    return v.type.content


def write_parquet(path: Path, columns: dict, compression: str) -> None:
    arr = ak.Array({k: (v if isinstance(v, ak.Array) else ak.Array(np.asarray(v))) for k, v in columns.items()})
    codec = compression.split(":")[0].lower()
    ak.to_parquet(arr, path, compression=None if codec == "none" else codec)


def write_part(parts_dir: Path, shard, columns: dict, *, fmt: str, tree: str, compression: str, result: dict) -> Path:
    """Write one shard's part exactly once and its commit marker (holding ``result``) last."""
    parts_dir = Path(parts_dir)
    (parts_dir / COMMITTED).mkdir(parents=True, exist_ok=True)
    final = parts_dir / part_name(shard, fmt)
    tmp = parts_dir / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        if fmt == "root":
            write_root(tmp, columns, tree, compression)
        else:
            write_parquet(tmp, columns, compression)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    result = {**result, "part": final.name, "bytes_written": final.stat().st_size}
    write_json_atomic(parts_dir / COMMITTED / f"{shard.shard_id}.json", result)
    return final


def committed(parts_dir: Path, shard_id: str) -> dict | None:
    """The commit record of a shard, if its part was fully written."""
    marker = Path(parts_dir) / COMMITTED / f"{shard_id}.json"
    try:
        rec = json.loads(marker.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return rec if (Path(parts_dir) / rec["part"]).exists() else None


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_default))
    os.replace(tmp, path)


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
