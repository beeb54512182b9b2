"""``RunStore`` (``ctx.store``): the one way a workload reads and writes under its run folder, a
local directory or any fsspec URL (``s3://bucket/run``), with the same code.

- Parts are written by the actors straight into the store (``io.parts``: exactly once there).
- Small records (``write_json``/``read_json``/``write_bytes``) go straight to the store too.
- Folders and files that libraries write themselves (a model folder, matplotlib plots, CSV tables,
  an HLS project, checkpoints) are written into ``local(rel)``: the run folder itself on a local
  disk; on a store, a staging folder on the driver whose files :meth:`sync` uploads, each as one
  whole object, when the run ends (``hepray.run`` calls it, also after a failure).
- Reading anything back (a part, a model) takes a local path only when a library needs one:
  :func:`local_copy` downloads a store object or folder into a temporary folder.

No step assumes a shared disk: a model trained on one machine is read from the store by the next
job on another.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .parts import AnyPath, StorePath, as_path, write_json_atomic


class RunStore:
    def __init__(self, root: str | os.PathLike | StorePath):
        self.root: AnyPath = as_path(root)
        self.remote = isinstance(self.root, StorePath)
        self._staging: Path | None = None

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    # -- names -------------------------------------------------------------------------------
    def path(self, rel: str = "") -> AnyPath:
        """Where ``rel`` lives (a Path, or a StorePath on a store): for reading and for the engine."""
        return self.root / rel if rel else self.root

    def local(self, rel: str = "") -> Path:
        """A local folder path to write ``rel`` into (made, with its parents): the real one on a
        local disk, a staging copy uploaded by :meth:`sync` on a store."""
        if not self.remote:
            base = self.root
        else:
            if self._staging is None:
                self._staging = Path(tempfile.mkdtemp(prefix="hepray-run-"))
            base = self._staging
        p = base / rel if rel else base
        (p.parent if p.suffix else p).mkdir(parents=True, exist_ok=True)
        return p

    def scratch(self) -> Path:
        """A local folder for files no one reads after the run (xgboost's external-memory cache):
        the run folder on a local disk, a temporary folder (never uploaded) on a store."""
        if not self.remote:
            return self.root
        if getattr(self, "_scratch", None) is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="hepray-scratch-"))
        return self._scratch

    # -- small records -----------------------------------------------------------------------
    def write_json(self, rel: str, obj, stream=None) -> AnyPath:
        """``obj`` as JSON at ``rel``; ``stream=(key, items)``: see io.parts.write_json_atomic."""
        path = self.path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, obj, stream)
        return path

    def read_json(self, rel: str):
        return json.loads(self.path(rel).read_bytes())

    def write_bytes(self, rel: str, data: bytes) -> AnyPath:
        path = self.path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def read_bytes(self, rel: str) -> bytes:
        return self.path(rel).read_bytes()

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    # -- staged folders ----------------------------------------------------------------------
    def sync(self) -> int:
        """Upload what was written under :meth:`local` (on a store); returns the files uploaded."""
        if not self.remote or self._staging is None:
            return 0
        n = 0
        for f in sorted(self._staging.rglob("*")):
            if f.is_file():
                (self.root / f.relative_to(self._staging).as_posix()).put(f)
                n += 1
        shutil.rmtree(self._staging, ignore_errors=True)
        self._staging = None
        if getattr(self, "_scratch", None) is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        return n


@contextlib.contextmanager
def local_copy(path: str | os.PathLike | StorePath) -> Iterator[Path]:
    """A local path holding ``path``'s content: the path itself when local; for a store object
    or folder, a download into a temporary folder, removed after the block."""
    p = as_path(path)
    if isinstance(p, Path):
        yield p
        return
    fs, key = p._fs()
    with tempfile.TemporaryDirectory(prefix="hepray-get-") as d:
        target = Path(d) / p.name
        if fs.isdir(key):
            fs.get(key.rstrip("/") + "/", str(target), recursive=True)
        else:
            fs.get_file(key, str(target))
        yield target
