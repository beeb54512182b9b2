"""The one way a part is written, on a local disk or on any store fsspec writes to.

Each attempt at a shard writes its part under its own name (``<sample>_<shard id>_<attempt>``),
fsync'ed and atomically renamed into place on a local disk, uploaded whole to an object store.
Then it commits by CREATING the shard's marker ``_committed/<shard id>.json``, exclusively
(``O_EXCL`` link locally, ``If-None-Match: *`` on a store): the marker names the part, its
size, its sha256, the attempt and the fingerprint of everything that made it (the job). Of a
retried and a zombie attempt of one shard only the first to create the marker counts; the
other removes its own part. A marker whose part is gone, torn or made by another job
(fingerprint) does not count and is replaced. Readers, ``--resume`` and ``hepray verify``
trust only parts a marker vouches for; a run's last step removes every other part file.

Run directories are :class:`pathlib.Path` for local paths (and ``file://`` URLs) and
:class:`StorePath` for other URLs; both support the few path operations the engine uses, so
``run_dir / "parts"`` reads the same for ``/scratch/x`` and ``s3://bucket/x``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import types
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import awkward as ak
import numpy as np

COMMITTED = "_committed"


def part_name(shard, fmt: str, attempt: str = "") -> str:
    ext = "root" if fmt == "root" else "parquet"
    prefix = shard.sample or "part"
    return f"{prefix}_{shard.shard_id}{'_' + attempt if attempt else ''}.{ext}"


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

        # fsspec caches filesystem instances by their arguments; an S3 endpoint taken from the
        # environment is not one of them, so a long-lived process (a warm actor, a test session)
        # would keep talking to the endpoint it saw first. Passing it makes it part of the key.
        opts = {}
        if self.url.startswith(("s3://", "s3a://")) and os.environ.get("AWS_ENDPOINT_URL"):
            opts["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
        return url_to_fs(self.url, **opts)

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
        _fsync(tmp)  # the bytes on disk before the name points at them, and the name after
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike | StorePath) -> Iterator[IO[str]]:
    """Write a text file that readers see whole or not at all (streamed: memory stays flat)."""
    with staged_file(as_path(path)) as local, open(local, "w") as f:
        yield f


# -- parts and their commit markers ----------------------------------------------------------

def fingerprint(*objs) -> str:
    """A stable hash of what determines a part: the processor (its dataset spec after defaults,
    expressions, cut, settings, the model's bytes...) and the output settings. Job configs count
    without their name, output folder and engine settings (those do not change a part)."""
    h = hashlib.sha256()
    seen: set[int] = set()

    def feed(o) -> None:
        if isinstance(o, (str, int, float, bool, type(None))):
            h.update(f"{type(o).__name__}:{o!r};".encode())
        elif isinstance(o, (bytes, bytearray, memoryview)):
            h.update(b"bytes:" + hashlib.sha256(o).digest())
        elif isinstance(o, np.ndarray):
            h.update(f"nd:{o.dtype}:{o.shape}:".encode() + hashlib.sha256(np.ascontiguousarray(o)).digest())
        elif isinstance(o, np.generic):
            feed(o.item())
        elif isinstance(o, (Path, StorePath)):
            feed(str(o))
        elif id(o) in seen:
            h.update(b"cycle;")
        else:
            # only objects being fed now count as a cycle: a finished temporary's id is reused
            # by the next one, and remembering it would skip that one's content silently
            seen.add(id(o))
            try:
                feed_container(o)
            finally:
                seen.discard(id(o))

    def feed_container(o) -> None:
        from pydantic import BaseModel

        from ..config import JobConfig

        h.update(f"<{type(o).__qualname__}>".encode())
        if isinstance(o, JobConfig):
            d = o.model_dump(mode="json", exclude={"name", "engine", "source"})
            d.get("output", {}).pop("dir", None)
            feed(d)
        elif isinstance(o, BaseModel):
            feed(o.model_dump(mode="json"))
        elif isinstance(o, dict):
            for k in sorted(o, key=repr):
                feed(k)
                feed(o[k])
        elif isinstance(o, (list, tuple)):
            for x in o:
                feed(x)
        elif isinstance(o, (set, frozenset)):
            for x in sorted(o, key=repr):
                feed(x)
        elif dataclasses.is_dataclass(o):
            feed({f.name: getattr(o, f.name) for f in dataclasses.fields(o)})
        elif isinstance(o, types.CodeType):  # a function's own bytecode and constants
            feed((o.co_code, o.co_consts, o.co_names))
        elif isinstance(o, types.FunctionType):
            # name alone would give two lambdas (or one edited between runs) one fingerprint
            feed(f"{o.__module__}.{o.__qualname__}")
            feed((o.__code__, o.__defaults__, o.__kwdefaults__))
            feed([_cell(c) for c in o.__closure__ or ()])
            g = o.__globals__  # module constants it reads (a cut value edited between runs)
            feed([(n, g[n]) for n in o.__code__.co_names
                  if isinstance(g.get(n), (int, float, str, bool, np.ndarray))])
        elif isinstance(o, functools.partial):
            feed((o.func, o.args, o.keywords))
        elif callable(o) and hasattr(o, "__qualname__"):
            feed(f"{getattr(o, '__module__', '')}.{o.__qualname__}")
        elif hasattr(o, "__dict__"):
            feed(vars(o))
        else:
            feed(repr(o))

    for o in objs:
        feed(o)
    return h.hexdigest()[:32]


def _cell(c):
    try:
        return c.cell_contents
    except ValueError:  # a closure cell not yet assigned
        return None


def part_fingerprint(run_fingerprint: str, shard) -> str:
    """The run's fingerprint joined with the shard's identity (file identity, tree, entry range)."""
    return hashlib.sha256(f"{run_fingerprint}:{shard.shard_id}".encode()).hexdigest()[:32]


def sha256_file(path: AnyPath) -> str:
    if isinstance(path, StorePath):
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def marker_path(parts_dir: AnyPath, shard_id: str) -> AnyPath:
    return parts_dir / COMMITTED / f"{shard_id}.json"


def write_part(parts_dir: str | os.PathLike | StorePath, shard, columns: dict, *, fmt: str, tree: str,
               compression: str, result: dict, fingerprint: str = "", attempt: str | None = None) -> dict:
    """Write one shard's part under this attempt's own name, then commit it by creating its marker
    (holding ``result``, size, sha256, attempt, fingerprint). Returns the marker's record: ours,
    or, if another attempt of the same shard and job committed first, that one (ours removed)."""
    parts_dir = as_path(parts_dir)
    (parts_dir / COMMITTED).mkdir(parents=True, exist_ok=True)
    attempt = attempt or uuid.uuid4().hex[:8]
    final = parts_dir / part_name(shard, fmt, attempt)
    with staged_file(final) as local:
        if fmt == "root":
            write_root(local, columns, tree, compression)
        else:
            write_parquet(local, columns, compression)
        size = local.stat().st_size
        digest = sha256_file(local)
    # the part is in place (renamed, or uploaded under its final name): now, and only now, commit
    rec = {**result, "part": final.name, "bytes_written": size, "sha256": digest, "attempt": attempt,
           "fingerprint": fingerprint}
    marker = marker_path(parts_dir, shard.shard_id)
    data = json.dumps(rec, indent=1, default=_default).encode()
    for _ in range(2):
        if _create_exclusive(marker, data):
            return rec
        state, old = marker_state(parts_dir, shard.shard_id, fingerprint)
        if state == "ok":  # another attempt of this shard and job won: it counts, ours goes
            if old["part"] != final.name:
                final.unlink(missing_ok=True)
            return old
        # a marker that vouches for nothing (its part gone or torn, corrupt, another job's): replace it
        marker.unlink(missing_ok=True)
        if old and isinstance(old.get("part"), str) and old["part"] != final.name and "/" not in old["part"]:
            (parts_dir / old["part"]).unlink(missing_ok=True)
    final.unlink(missing_ok=True)
    raise OSError(f"could not commit {marker}: another attempt keeps replacing it")


def _create_exclusive(path: AnyPath, data: bytes) -> bool:
    """Create ``path`` holding ``data`` only if it does not exist; readers see it whole or not at
    all (a local file is linked into place, ``link`` fails if the name exists; a store object is
    one conditional PUT)."""
    if isinstance(path, StorePath):
        fs, p = path._fs()
        try:
            with fs.open(p, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        except OSError as exc:  # S3 answers 412 Precondition Failed
            if "412" in str(exc) or "Precondition" in str(exc):
                return False
            raise
        return True
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        _fsync(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def read_marker(path: AnyPath) -> dict | None:
    """A marker's record; None if missing. Raises ValueError (one line) if it is not a record."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        rec = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{path}: corrupt commit marker (not JSON)") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("part"), str):
        raise ValueError(f"{path}: corrupt commit marker (no part named)")
    return rec


def marker_state(parts_dir: AnyPath, shard_id: str, fingerprint: str | None = None) -> tuple[str, dict | None]:
    """(state, record) of a shard's marker: ``missing``, ``corrupt``, ``stale`` (made by another
    job: its fingerprint differs), ``torn`` (its part is gone or has another size) or ``ok``."""
    parts_dir = as_path(parts_dir)
    try:
        rec = read_marker(marker_path(parts_dir, shard_id))
    except ValueError:
        return "corrupt", None
    if rec is None:
        return "missing", None
    if fingerprint is not None and rec.get("fingerprint", "") != fingerprint:
        return "stale", rec
    try:
        size = (parts_dir / rec["part"]).stat().st_size
    except (FileNotFoundError, NotADirectoryError):
        return "torn", rec
    return ("ok" if rec.get("bytes_written", size) == size else "torn"), rec


def committed(parts_dir: str | os.PathLike | StorePath, shard_id: str, fingerprint: str | None = None) -> dict | None:
    """The commit record of a shard if its part was fully written (and, given ``fingerprint``,
    by the same job): the marker exists and the part it names is there with its recorded size."""
    state, rec = marker_state(parts_dir, shard_id, fingerprint)
    return rec if state == "ok" else None


def remove_uncommitted(parts_dir: str | os.PathLike | StorePath, keep_parts: set[str], keep_markers: set[str]) -> int:
    """The last step of a run: remove every part file and marker in ``parts_dir`` that this run
    did not commit (a loser's or a dead attempt's part, a stale job's), so a glob over the folder
    sees exactly the manifest's parts. Returns how many files went."""
    parts_dir = as_path(parts_dir)
    n = 0
    for p in parts_dir.glob("*"):
        if p.name.endswith((".root", ".parquet")) and p.name not in keep_parts:
            p.unlink(missing_ok=True)
            n += 1
    for m in (parts_dir / COMMITTED).glob("*.json"):
        if m.name[:-5] not in keep_markers:
            m.unlink(missing_ok=True)
            n += 1
    return n


def write_json_atomic(path: str | os.PathLike | StorePath, obj, stream: tuple[str, Iterable] | None = None) -> None:
    """``obj`` as JSON, whole or not at all. ``stream=(key, items)`` adds ``obj[key] = list(items)``
    written item by item, so a manifest of 10^6 parts never sits in memory as one list."""
    with atomic_writer(path) as f:
        if stream is None:
            f.write(json.dumps(obj, indent=1, default=_default))
            return
        key, items = stream
        head = json.dumps(obj, indent=1, default=_default)[:-1].rstrip()  # without its closing brace
        f.write(head + (",\n" if obj else "\n") + f" {json.dumps(key)}: [")
        for k, item in enumerate(items):
            f.write(("," if k else "") + "\n  " + json.dumps(item, default=_default))
        f.write("\n ]\n}")


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, StorePath)):
        return str(o)
    if hasattr(o, "axes") and hasattr(o, "view"):  # a hist/boost_histogram (a run's summary): UHI's JSON form
        from uhi.io.json import default

        return default(o)
    raise TypeError(type(o).__name__)
