"""Per-shard summaries: small results a processor returns with each part, reduced on the driver.

coffea's accumulator idea, kept to what JSON can hold: a summary is a number, a numpy array, a
list, a ``hist``/``boost_histogram`` histogram, or a dict of those (nested). Two summaries add
key by key: dicts merge (a key in one only is kept), everything else uses ``+`` (numbers and
arrays sum, lists concatenate, histograms add). ``None`` is the empty summary.

A summary is stored, encoded, in the shard's commit marker: a resumed run reduces the summaries
of the parts it kept with those it made, and no workload re-reads its parts to compute totals.
No pickle: a marker read back from a shared folder can only give data, never code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

ND, HIST = "__ndarray__", "__hist__"


def add(a: Any, b: Any) -> Any:
    """``a`` + ``b`` for summaries (see the module doc); ``None`` on either side is the other."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = dict(a)
        for k, v in b.items():
            out[k] = add(out.get(k), v)
        return out
    if isinstance(a, set) and isinstance(b, set):
        return a | b
    return a + b


def reduce(summaries: Iterable[Any]) -> Any:
    out = None
    for s in summaries:
        out = add(out, s)
    return out


def encode(obj: Any, where: str = "summary") -> Any:
    """A JSON-able form of ``obj``; TypeError naming the field for anything else."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return {ND: obj.tolist(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, Mapping):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{where}: keys must be strings, not {type(bad[0]).__name__} ({bad[0]!r})")
        return {k: encode(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if _is_hist(obj):
        from uhi.io.json import default

        import json

        return {HIST: json.loads(json.dumps(obj, default=default)), "kind": type(obj).__module__.split(".")[0]}
    raise TypeError(f"{where}: a summary holds numbers, arrays, lists, dicts and histograms, "
                    f"not {type(obj).__name__}")


def decode(obj: Any) -> Any:
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if ND in obj:
        return np.asarray(obj[ND], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    if HIST in obj:
        import json

        from uhi.io.json import object_hook

        data = json.loads(json.dumps(obj[HIST]), object_hook=object_hook)
        if obj.get("kind") == "hist":
            import hist

            return hist.Hist(data)
        import boost_histogram as bh

        return bh.Histogram(data)
    return {k: decode(v) for k, v in obj.items()}


def _is_hist(obj) -> bool:
    mod = type(obj).__module__
    return (mod.startswith("hist") or mod.startswith("boost_histogram")) and hasattr(obj, "axes")
