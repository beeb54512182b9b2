"""One Ray instance per test session, and small samples made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
REAL = Path(__file__).parent / "data" / "real"


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from hepray.engine.runtime import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """Two toy ROOT files (4 clusters of 5000 events each) and an xgboost model fitted on them."""
    from hepray.testing import fit_toy_xgboost, write_toy_root

    d = tmp_path_factory.mktemp("toy")
    files = [write_toy_root(d / f"toy_{i}.root", 20_000, seed=i, basket=5_000) for i in range(2)]
    model = fit_toy_xgboost(d / "model", [str(f) for f in files])
    return {"dir": d, "files": [str(f) for f in files], "model": str(model)}


def infer_job(toy, out, **extra) -> dict:
    job = {
        "kind": "infer", "name": "t",
        "dataset": {"files": toy["files"], "tree": "Events", "shard_events": 5000},
        "model": {"path": toy["model"]},
        "output": {"dir": str(out)},
        "engine": {"workers": 2, "progress_every_s": 60},
    }
    for k, v in extra.items():
        if isinstance(v, dict):
            job.setdefault(k, {}).update(v)
        else:
            job[k] = v
    return job
