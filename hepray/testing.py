"""Small, deterministic inputs for tests, benchmarks and the demo: ROOT files written with
uproot and an xgboost model fitted on them. Not physics: see ``hepray.generate`` for that."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .extras import import_xgboost


def write_toy_root(path: str | Path, n: int, seed: int = 0, n_features: int = 4, signal: bool | None = None,
                   basket: int = 10_000, compression: str = "zstd", tree: str = "Events", rntuple: bool = False) -> Path:
    """Write ``n`` events with flat features f0..f{k-1}, a jagged ``Jet_pt``, run/lumi/event and
    ``label``; ``basket`` entries per cluster so shards have boundaries to align to. A TTree, or
    an RNTuple with ``rntuple=True``."""
    import awkward as ak
    import uproot

    from .io.parts import _compression

    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with uproot.recreate(path, compression=_compression(compression)) as f:
        for start in range(0, n, basket):
            m = min(basket, n - start)
            label = rng.integers(0, 2, m) if signal is None else np.full(m, int(signal))
            X = rng.normal(size=(m, n_features)).astype(np.float32) + 0.8 * label[:, None]
            njet = rng.poisson(3, m)
            cols = {f"f{i}": X[:, i] for i in range(n_features)}
            cols.update(
                run=np.full(m, 1, np.int32), luminosityBlock=((start + np.arange(m)) // 1000).astype(np.int32),
                event=(seed * 10**9 + start + np.arange(m)).astype(np.int64), label=label.astype(np.int32),
                Jet_pt=ak.unflatten(rng.exponential(30, njet.sum()).astype(np.float32), njet),
            )
            if start == 0 and rntuple:
                f[tree] = cols  # uproot >= 5.7 writes an RNTuple this way
            elif start == 0:
                f.mktree(tree, {k: (v.dtype if isinstance(v, np.ndarray) else v.type.content) for k, v in cols.items()})
                f[tree].extend(cols)
            else:
                f[tree].extend(cols)
    return path


def fit_toy_xgboost(model_dir: str | Path, files: list[str], n_features: int = 4, rounds: int = 20,
                    depth: int = 3, tree: str = "Events") -> Path:
    """Fit an xgboost model on toy files and save it as a hepray model folder (JSON + metadata)."""
    import uproot
    xgb = import_xgboost()

    from .models.artifact import save_metadata

    features = [f"f{i}" for i in range(n_features)]
    arrs = [uproot.open(f)[tree].arrays(features + ["label"], library="np") for f in files]
    X = np.column_stack([np.concatenate([a[k] for a in arrs]) for k in features])
    y = np.concatenate([a["label"] for a in arrs])
    booster = xgb.train({"objective": "binary:logistic", "max_depth": depth, "tree_method": "hist", "nthread": 1,
                         "seed": 1}, xgb.DMatrix(X, y), rounds)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(model_dir / "model.json")
    save_metadata(model_dir, {"type": "xgboost", "file": "model.json", "features": features, "classes": ["signal"],
                              "task": "binary"})
    return model_dir
