"""The one way a part is written, on a local disk or on any store fsspec writes to.

Local (POSIX) directories: the part goes to a temporary name, is atomically renamed, then its
commit marker is written. Object stores (``s3://``, ``gs://``, ``memory://``, ``root://``...)
have no atomic rename, so the part is uploaded under its final name and the marker is written
LAST: the marker is the commit. Readers and ``--resume`` trust only parts whose marker exists
and names their size; a part without one is simply overwritten. Either way writing the same
shard twice replaces it, never duplicates it.

Run directories are :class:`pathlib.Path` for local paths (and ``file://`` URLs) and
:class:`StorePath` for other URLs; both support the few path operations the engine uses, so
``run_dir / "parts"`` reads the same for ``/scratch/x`` and ``s3://bucket/x``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

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
    # contiguous: per-class score columns are strided slices of one matrix ("ndarray is not contiguous")
    arr = ak.Array({k: (v if isinstance(v, ak.Array) else ak.Array(np.ascontiguousarray(v))) for k, v in columns.items()})
    codec = compression.split(":")[0].lower()
    ak.to_parquet(arr, path, compression=None if codec == "none" else codec)


# -- where outputs live ----------------------------------------------------------------------

class StorePath:
    """A file or directory on an fsspec filesystem, named by its URL, with the few pathlib
    operations the engine uses. It pickles as its URL, so an actor on another node opens the
    same store with that node's own credentials (environment, instance role, fsspec config)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def _fs(self):
        from fsspec.core import url_to_fs

        return url_to_fs(self.url)  # filesystem instances are cached by fsspec

    def __truediv__(self, name: str | os.PathLike) -> StorePath:
        return StorePath(f"{self.url}/{os.fspath(name).strip('/')}")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"StorePath({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, StorePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> StorePath:
        return StorePath(self.url.rsplit("/", 1)[0])

    def exists(self) -> bool:
        fs, p = self._fs()
        return fs.exists(p)

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        """Object stores have no directories (a no-op there); stores that do get them made."""
        fs, p = self._fs()
        fs.makedirs(p, exist_ok=exist_ok)

    def open(self, mode: str = "r") -> IO:
        fs, p = self._fs()
        return fs.open(p, mode)

    def read_bytes(self) -> bytes:
        fs, p = self._fs()
        return fs.cat_file(p)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        fs, p = self._fs()
        fs.pipe_file(p, data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def put(self, local: str | os.PathLike) -> None:
        """Upload a local file to this name (one whole object: readers never see half of it)."""
        fs, p = self._fs()
        fs.put_file(os.fspath(local), p)

    def glob(self, pattern: str) -> list[StorePath]:
        fs, p = self._fs()
        base = p.rstrip("/")
        return [self / m[len(base):] for m in fs.glob(f"{base}/{pattern}")]

    def stat(self) -> types.SimpleNamespace:
        fs, p = self._fs()
        return types.SimpleNamespace(st_size=fs.size(p))

    def unlink(self, missing_ok: bool = False) -> None:
        fs, p = self._fs()
        try:
            fs.rm_file(p)
        except FileNotFoundError:
            if not missing_ok:
                raise


AnyPath = Path | StorePath  # what as_path() returns


def as_path(p: str | os.PathLike | StorePath) -> AnyPath:
    """Local paths and ``file://`` URLs become :class:`Path` (POSIX rename is atomic there);
    every other URL, chained ones (``simplecache::s3://...``) included, a :class:`StorePath`."""
    if isinstance(p, (Path, StorePath)):
        return p
    s = os.fspath(p)
    if "://" not in s and "::" not in s:
        return Path(s)
    protocol, _, rest = s.partition("://")
    if protocol in ("file", "local"):
        return Path(rest)
    return StorePath(s)


def remove_tree(path: AnyPath) -> None:
    """Delete a directory and everything under it (``--overwrite``), local or on a store."""
    path = as_path(path)
    if isinstance(path, Path):
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        fs, p = path._fs()
        fs.rm(p, recursive=True)


@contextlib.contextmanager
def staged_file(path: AnyPath) -> Iterator[Path]:
    """A local file to write ``path``'s content into, published only if the block succeeds:
    renamed into place on a local disk (atomic), uploaded whole to a store (no rename there)."""
    if isinstance(path, StorePath):
        with tempfile.TemporaryDirectory(prefix="hepray-") as d:
            local = Path(d) / path.name
            yield local
            path.put(local)
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike | StorePath) -> Iterator[IO[str]]:
    """Write a text file that readers see whole or not at all (streamed: memory stays flat)."""
    with staged_file(as_path(path)) as local, open(local, "w") as f:
        yield f


# -- parts and their commit markers ----------------------------------------------------------

def write_part(parts_dir: str | os.PathLike | StorePath, shard, columns: dict, *, fmt: str, tree: str,
               compression: str, result: dict) -> AnyPath:
    """Write one shard's part exactly once and its commit marker (holding ``result``) last."""
    parts_dir = as_path(parts_dir)
    (parts_dir / COMMITTED).mkdir(parents=True, exist_ok=True)
    final = parts_dir / part_name(shard, fmt)
    with staged_file(final) as local:
        if fmt == "root":
            write_root(local, columns, tree, compression)
        else:
            write_parquet(local, columns, compression)
        size = local.stat().st_size
    # the part is in place (renamed, or uploaded under its final name): now, and only now, commit
    write_json_atomic(parts_dir / COMMITTED / f"{shard.shard_id}.json",
                      {**result, "part": final.name, "bytes_written": size})
    return final


def committed(parts_dir: str | os.PathLike | StorePath, shard_id: str) -> dict | None:
    """The commit record of a shard if its part was fully written: the marker exists and the
    part it names is there with the size it recorded (an object store never shows half an
    object, but a later unfinished rewrite of the same name must not pass either)."""
    parts_dir = as_path(parts_dir)
    try:
        rec = json.loads((parts_dir / COMMITTED / f"{shard_id}.json").read_text())
        size = (parts_dir / rec["part"]).stat().st_size
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None
    return rec if rec.get("bytes_written", size) == size else None


def write_json_atomic(path: str | os.PathLike | StorePath, obj) -> None:
    with atomic_writer(path) as f:
        f.write(json.dumps(obj, indent=1, default=_default))


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, StorePath)):
        return str(o)
    raise TypeError(type(o).__name__)
