"""The one unit of work every stage passes along."""

from __future__ import annotations

import dataclasses
import hashlib
import json


@dataclasses.dataclass(frozen=True)
class Shard:
    """A contiguous entry range of one tree in one file (or, for generation, of one seed).

    ``shard_id`` is a pure function of (file identity, tree, entry range, seed): re-planning the
    same data gives the same ids, so a retried or resumed shard overwrites, never duplicates.
    ``file_id`` is the file's identity (its path and ROOT's UUID), so a file replaced at the same
    path gets new shard ids.
    """

    file: str | None
    tree: str | None
    entry_start: int
    entry_stop: int
    file_id: str = ""
    sample: str = ""
    label: int | None = None
    weight: float = 1.0
    seed: int | None = None
    nbytes: int = 0  # compressed bytes of the selected branches (planning estimate)
    index: int = 0  # position in the plan, for stable ordering of outputs

    @property
    def num_entries(self) -> int:
        return self.entry_stop - self.entry_start

    @property
    def shard_id(self) -> str:
        key = json.dumps(
            [self.file_id or self.file, self.tree, self.entry_start, self.entry_stop, self.seed, self.sample]
        )
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def describe(self) -> str:
        if self.file is None:
            return f"{self.sample or 'generated'}[seed={self.seed}, {self.entry_start}:{self.entry_stop}]"
        return f"{self.file}:{self.tree}[{self.entry_start}:{self.entry_stop}]"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shard_id"] = self.shard_id
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Shard:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})
