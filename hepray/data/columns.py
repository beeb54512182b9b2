"""Column dictionaries: the in-memory form of a shard's events."""

from __future__ import annotations

import awkward as ak
import numpy as np

# per-event columns added from the shard's sample; prefixed so they never shadow a user branch
# (generated samples have a `label` branch of their own)
SAMPLE, LABEL, WEIGHT = "hepray_sample", "hepray_label", "hepray_weight"


def num_rows(cols: dict) -> int:
    return len(next(iter(cols.values()))) if cols else 0


def concatenate(shard_columns) -> dict:
    """Concatenate (shard, columns) pairs into one column dict, adding per-event ``hepray_sample``
    (index into the list of sample names, kept in ``cols['__samples__']``), ``hepray_label`` and
    ``hepray_weight`` from the shard's sample."""
    chunks, samples = [], []
    for shard, cols in shard_columns:
        n = num_rows(cols)
        if shard.sample not in samples:
            samples.append(shard.sample)
        cols = dict(cols)
        cols[SAMPLE] = np.full(n, samples.index(shard.sample), dtype=np.int16)
        cols[LABEL] = np.full(n, -1 if shard.label is None else shard.label, dtype=np.int32)
        cols[WEIGHT] = np.full(n, shard.weight, dtype=np.float32)
        chunks.append(cols)
    if not chunks:
        return {"__samples__": samples}
    out = {}
    for k in chunks[0]:
        vals = [c[k] for c in chunks]
        out[k] = ak.concatenate(vals) if any(isinstance(v, ak.Array) for v in vals) else np.concatenate(vals)
    out["__samples__"] = samples
    return out
