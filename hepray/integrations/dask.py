"""hepray from Dask: score a ``dask.dataframe`` or a dask-awkward array (``uproot.dask``) with
any model :class:`~hepray.models.predict.ModelBundle` loads, and train a BDT from a dataframe.

Scoring goes through ``ModelBundle``, the same path as ``kind: infer``: the model's bytes are
read once on the client (Dask workers on other machines need no access to its disk), travel
with the graph, and each worker *process* loads the model once and keeps it (keyed by the
bytes' hash), with its math threads limited, so every later partition only predicts.

Training writes the dataframe's partitions as ROOT files and runs the ``train_bdt`` workload on
them: the same splits, evaluation and model artifact as ``hepray run``, and the model it writes
is what :func:`score` takes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from ..data.reading import _to_column, feature_matrix
from ..errors import ConfigError
from ..io.parts import as_path, remove_tree, staged_file, write_json_atomic, write_root
from ..models.predict import ModelBundle

_CACHE_SIZE = 4  # models kept loaded per worker process
_loaded: OrderedDict[tuple[str, int], Callable] = OrderedDict()
_lock = threading.Lock()
_loads = 0  # models loaded by this process (tests check it stays at one per worker)


@dataclasses.dataclass(frozen=True)
class Model:
    """What travels to the workers: the model's bytes and the key they are cached under."""

    bundle: ModelBundle
    features: tuple[str, ...]
    names: tuple[str, ...]  # output columns (one for a binary model, one per class otherwise)
    nthread: int = 1
    key: str = ""

    @classmethod
    def of(cls, model: str | os.PathLike | ModelBundle | Model, features: list[str] | None = None,
           output: str = "score", nthread: int = 1, mc_dropout: int = 0, members: bool = False) -> Model:
        if isinstance(model, Model):
            return model
        bundle = model if isinstance(model, ModelBundle) else ModelBundle.read(model)
        if mc_dropout or members:
            bundle = bundle.with_uncertainty(mc_dropout, members)
        if (bundle.meta.get("inputs") or {}).get("arguments"):
            raise ConfigError("hepray.dask", "model", f"{bundle.path}: a GNN on jet constituents; hepray.dask "
                              "scores flat-feature models (BDT, classifier, anomaly): use kind: infer for GNNs")
        feats = list(features or bundle.features or [])
        if not feats:
            raise ConfigError("hepray.dask", "features", "the model stores no feature list: pass features=[...]")
        key = hashlib.sha1(bundle.raw + f"|{bundle.mc_dropout}|{bundle.with_members}".encode()).hexdigest()
        return cls(bundle, tuple(feats), tuple(bundle.output_names(output)), max(1, int(nthread)), key)

    def predictor(self) -> Callable[[np.ndarray], np.ndarray]:
        """The loaded model of this worker process: loaded by the first partition, reused after."""
        global _loads
        k = (self.key, self.nthread)
        with _lock:
            fn = _loaded.get(k)
            if fn is None:
                fn = _loaded[k] = _load(self.bundle, self.nthread)
                _loads += 1
                while len(_loaded) > _CACHE_SIZE:
                    _loaded.popitem(last=False)
            else:
                _loaded.move_to_end(k)
        return fn

    def scores(self, cols: dict, where: str) -> np.ndarray:
        X = feature_matrix(cols, list(self.features), where)
        if not len(X):
            return np.zeros((0, len(self.names)), np.float32)
        return self.predictor()(X)


def _load(bundle: ModelBundle, nthread: int) -> Callable[[np.ndarray], np.ndarray]:
    """``predict(X) -> float32[n, K]``: the bundle's own predictor, or for an anomaly model
    (``task: anomaly``) its per-event anomaly score, as ``kind: anomaly_scan`` computes it."""
    if bundle.meta.get("task") != "anomaly":
        return bundle.load(nthread)
    from ..anomaly.scoring import Scorer

    scorer = Scorer.from_bundle(bundle.meta, bundle.raw, nthread)
    return lambda X: np.asarray(scorer(X)[0], np.float32).reshape(len(X), 1)


# -- dask.dataframe ------------------------------------------------------------------------------

def _score_frame(df, model: Model, append: bool, scored: bool = True):
    """One pandas partition -> its score columns (``scored=False``: the empty ``meta``)."""
    import pandas as pd

    if scored:
        cols = {f: df[f].to_numpy(dtype=np.float32, na_value=np.nan) for f in model.features}
        S = model.scores(cols, "dask partition")
    else:
        S = np.zeros((0, len(model.names)), np.float32)
    out = pd.DataFrame(S, index=df.index[: len(S)], columns=list(model.names))
    return pd.concat([df, out], axis=1) if append else out


def _check_columns(have, needed) -> None:
    missing = [f for f in needed if f not in have]
    if missing:
        raise ConfigError("hepray.dask", "features", f"the collection has no column {missing[0]!r} "
                          f"(it has: {', '.join(map(str, list(have)[:20]))})")


def score(collection, model: str | os.PathLike | ModelBundle | Model, *, features: list[str] | None = None,
          output: str = "score", append: bool = True, nthread: int = 1, mc_dropout: int = 0, members: bool = False):
    """Score every row of a Dask collection with a hepray model (lazy: returns a collection).

    ``collection``: a ``dask.dataframe.DataFrame`` (returns it with ``score`` columns appended,
    or only the scores with ``append=False``), or a ``dask_awkward.Array`` of records such as
    ``uproot.dask(...)`` gives (returns a record array of the score fields). ``model``: a model
    folder (any type ``ModelBundle`` loads: xgboost, torch) or a loaded bundle. ``features``
    default to the model's. ``nthread``: math threads per task (Dask already runs one task per
    worker thread, so 1 is right unless workers have spare cores). An ensemble model folder, a
    ``bnn`` or ``mc_dropout=N`` (N stochastic passes of a torch network with dropout) give
    ``<output>_mean`` and ``<output>_std`` per class instead (``members=True``: an ensemble's
    member scores too), as ``kind: infer`` writes them.
    """
    m = Model.of(model, features, output, nthread, mc_dropout, members)
    if type(collection).__module__.startswith("dask_awkward"):
        return _score_awkward(collection, m)
    _check_columns(collection.columns, m.features)
    meta = _score_frame(collection._meta, m, append, scored=False)
    return collection.map_partitions(_score_frame, m, append, meta=meta)


# -- dask-awkward (uproot.dask) ------------------------------------------------------------------

def _score_records(arr, model: Model):
    import awkward as ak

    if ak.backend(arr) == "typetracer":
        # dask-awkward traces the graph to learn which branches to read: say which we need
        for f in model.features:
            ak.typetracer.touch_data(arr[f])
        return _empty_records(model, typetracer=True)
    S = model.scores({f: _to_column(arr[f]) for f in model.features}, "dask-awkward partition")
    return ak.zip({n: S[:, j] for j, n in enumerate(model.names)})


def _empty_records(model: Model, typetracer: bool = False):
    import awkward as ak

    arr = ak.zip({n: np.zeros(0, np.float32) for n in model.names})
    return ak.Array(arr.layout.to_typetracer(forget_length=True)) if typetracer else arr


def _score_awkward(arr, model: Model):
    import dask_awkward as dak

    _check_columns(arr.fields, model.features)
    return dak.map_partitions(_score_records, arr, model, meta=_empty_records(model, typetracer=True),
                              label="hepray-score")


# -- training from a dataframe -------------------------------------------------------------------

def _write_partition(df, path: str, columns: list[str], tree: str) -> int:
    if not len(df):
        return 0
    cols = {c: df[c].to_numpy() for c in columns}
    with staged_file(as_path(path)) as local:
        write_root(local, cols, tree, "zstd")
    return len(df)


def export_root(ddf, out_dir: str | os.PathLike, columns: list[str], tree: str = "Events") -> list[str]:
    """Write each partition of ``ddf`` (``columns`` only) as one ROOT file ``part-NNNNN.root``
    under ``out_dir`` (cleared first), in parallel on the Dask workers; returns the file names.
    ``out_dir`` must be visible to the workers and to the Ray job that reads it."""
    import dask

    out = as_path(out_dir)
    remove_tree(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [str(out / f"part-{i:05d}.root") for i in range(ddf.npartitions)]
    parts = ddf[list(columns)].to_delayed()
    counts = dask.compute(*[dask.delayed(_write_partition)(p, n, list(columns), tree) for p, n in zip(parts, names)])
    return [n for n, c in zip(names, counts) if c]


def train_bdt(ddf, features: list[str], label: str, output_dir: str | os.PathLike, *, weight: str | None = None,
              classes: list[str] | None = None, name: str = "dask_bdt", address: str | None = None,
              quiet: bool = True, **fields: Any) -> dict:
    """Train hepray's BDT (``kind: train_bdt``) on a Dask dataframe; returns the run's summary
    (``summary["model"]`` is the model folder, ready for :func:`score` or ``kind: infer``).

    The partitions are written as ROOT files under ``<output_dir>/input`` by the Dask workers,
    then the workload runs on Ray (a local instance, or ``address``/``RAY_ADDRESS``) with the
    job fields given in ``fields`` (``rounds=``, ``params=``, ``split=``, ``mode=``...).
    ``label`` is an integer class column; ``weight`` an optional per-event weight column.
    """
    from ..api import run

    columns = list(dict.fromkeys([*features, label] + ([weight] if weight else [])))
    _check_columns(ddf.columns, columns)
    run_dir = as_path(output_dir)
    files = export_root(ddf, run_dir / "input", columns)
    if not files:
        raise ConfigError("hepray.dask", "ddf", "the dataframe has no rows")
    job = {"kind": "train_bdt", "name": name, "output": {"dir": str(run_dir)},
           "dataset": {"files": files, "tree": "Events"},
           "features": list(features), "label": label, **fields}
    if classes:
        job["classes"] = list(classes)
    if weight:
        job.setdefault("weights", {})["event"] = weight
    write_json_atomic(run_dir / "dask_input.json", {"files": files, "columns": columns})  # for the record
    return run(job, address=address, quiet=quiet)


# -- Dask on Ray ---------------------------------------------------------------------------------

def on_ray(address: str | None = None):
    """Run Dask graphs on hepray's Ray cluster (Dask-on-Ray), so one cluster serves both:
    ``with hepray.dask.on_ray(): ddf.compute()``. Joins ``address``/``RAY_ADDRESS`` or starts a
    local instance, as ``hepray run`` does."""
    from ..engine.runtime import dask_on_ray

    return dask_on_ray(address)
