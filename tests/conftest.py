"""One Ray instance per test session, and small samples made once per session."""

from __future__ import annotations

import os
import secrets
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


@pytest.fixture()
def s3():
    """A local S3 endpoint (moto) when s3fs and moto are installed, else None (a local dir is used)."""
    try:
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError:
        yield None
        return
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    import fsspec

    fs = fsspec.filesystem("s3", key="testing", secret="testing", endpoint_url=env["AWS_ENDPOINT_URL"],
                           skip_instance_cache=True)
    bucket = f"hepray-test-{secrets.token_hex(4)}"  # moto's state is per process, not per server
    fs.mkdir(bucket)
    yield {"env": env, "fs": fs, "bucket": bucket}
    server.stop()
