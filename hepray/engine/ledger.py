"""The driver's record of finished shards, kept off its heap (issue 21: bookkeeping for 10^6
shards): each committed shard's manifest entry is one JSON line in a local temporary file, with
only its plan index and file offset in memory (16 bytes a shard). The manifest is streamed from
it in plan order; the names a run keeps are 8-byte hashes. Failed shards stay in memory: they
are few, and the run's message lists them.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from array import array
from collections.abc import Iterator

import numpy as np

from ..io.parts import _default as json_default  # numpy scalars/arrays, paths: as the manifest writes them

ENTRY = ("index", "shard_id", "source", "sample", "part", "n_in", "n_out", "bytes_written", "sha256", "nonfinite")


def _h(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


class HashSet:
    """``name in s`` for a sorted array of 64-bit name hashes (a false positive only keeps a file)."""

    def __init__(self, hashes: array):
        self._a = np.sort(np.frombuffer(hashes, dtype=np.uint64)) if len(hashes) else np.zeros(0, np.uint64)

    def __contains__(self, name: str) -> bool:
        h = np.uint64(_h(name))
        i = int(np.searchsorted(self._a, h))
        return i < len(self._a) and self._a[i] == h

    def __len__(self) -> int:
        return len(self._a)


class Ledger:
    def __init__(self):
        self._f = tempfile.TemporaryFile("w+b")
        self._index, self._offset = array("q"), array("q")
        self.failed: list[dict] = []
        self.shards = self.ok = self.resumed = self.events_in = self.events_out = 0

    def add(self, rec: dict) -> None:
        self.shards += 1
        if rec.get("status") != "ok":
            self.failed.append(rec)
            return
        self.ok += 1
        self.resumed += bool(rec.get("resumed"))
        self.events_in += rec.get("n_in", 0)
        self.events_out += rec.get("n_out", 0)
        self._index.append(int(rec.get("index", 0)))
        self._offset.append(self._f.tell())
        self._f.write(json.dumps({k: rec.get(k) for k in ENTRY}, default=json_default).encode() + b"\n")

    def parts(self) -> Iterator[dict]:
        """Committed shards' manifest entries in plan order, read back one at a time."""
        self._f.flush()
        index = np.frombuffer(self._index, dtype=np.int64) if len(self._index) else np.zeros(0, np.int64)
        offset = np.frombuffer(self._offset, dtype=np.int64) if len(self._offset) else np.zeros(0, np.int64)
        for k in np.argsort(index, kind="stable"):
            self._f.seek(int(offset[k]))
            yield json.loads(self._f.readline())
        self._f.seek(0, 2)  # appends go on at the end

    def kept(self) -> tuple[HashSet, HashSet]:
        """(part file names, shard ids) of the committed shards: what a run's last step keeps.
        One pass in file order: the order does not matter here."""
        self._f.flush()
        self._f.seek(0)
        parts, ids = array("Q"), array("Q")
        for line in self._f:
            rec = json.loads(line)
            parts.append(_h(rec["part"]))
            ids.append(_h(rec["shard_id"]))
        self._f.seek(0, 2)
        return HashSet(parts), HashSet(ids)

    def close(self) -> None:
        self._f.close()
