"""``hepray.dask``: score Dask dataframes and dask-awkward arrays with hepray models, train a
BDT from a Dask dataframe, run Dask graphs on Ray. See docs/dask.md."""

from __future__ import annotations

from .integrations.dask import Model, export_root, on_ray, score, train_bdt

__all__ = ["Model", "export_root", "on_ray", "score", "train_bdt"]
