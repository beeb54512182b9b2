"""hepray.dask on a real distributed.LocalCluster (2 worker processes, 1 thread each)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("dask_awkward")

import dask.dataframe as dd  # noqa: E402
import pandas as pd  # noqa: E402
import uproot  # noqa: E402
import xgboost as xgb  # noqa: E402

import hepray.dask  # noqa: E402
from hepray.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["f0", "f1", "f2", "f3"]


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def frame(toy):
    df = pd.concat([uproot.open(f)["Events"].arrays(FEATURES + ["label", "event"], library="pd") for f in toy["files"]],
                   ignore_index=True)
    booster = xgb.Booster(model_file=f"{toy['model']}/model.json")
    expected = booster.inplace_predict(df[FEATURES].to_numpy(np.float32))
    return df, expected


def _loads(client) -> dict:
    import hepray.integrations.dask as m

    return client.run(lambda: m._loads)


def test_score_dataframe_matches_the_model_and_loads_it_once_per_worker(client, toy, frame):
    df, expected = frame
    ddf = dd.from_pandas(df, npartitions=8)
    before = _loads(client)
    scored = hepray.dask.score(ddf, toy["model"])
    assert list(scored.columns) == [*df.columns, "score"] and scored._meta["score"].dtype == np.float32
    for _ in range(2):  # a second graph reuses the loaded model
        out = scored.compute()
        np.testing.assert_allclose(out["score"].to_numpy(), expected, rtol=1e-6)
        assert out.index.equals(df.index)
    loads = {w: n - before.get(w, 0) for w, n in _loads(client).items()}
    assert sum(loads.values()) >= 1 and max(loads.values()) == 1, loads  # once per worker process, not per partition
    only = hepray.dask.score(ddf, toy["model"], append=False, output="bdt")
    assert list(only.columns) == ["bdt"] and only.npartitions == 8
    with pytest.raises(ConfigError, match="no column 'f3'"):
        hepray.dask.score(ddf.drop(columns=["f3"]), toy["model"])


def test_score_uproot_dask_reads_only_the_features(client, toy, frame):
    import dask_awkward as dak
    import uproot

    events = uproot.dask({f: "Events" for f in toy["files"]}, step_size=5_000)
    scores = hepray.dask.score(events, toy["model"])
    assert scores.fields == ["score"]
    (cols,) = dak.necessary_columns(scores).values()
    assert sorted(cols) == FEATURES  # Jet_pt, label, event... never read
    np.testing.assert_allclose(scores.score.compute().to_numpy(), frame[1], rtol=1e-6)


def test_dask_on_ray_gives_the_same_scores(ray_session, toy, frame):
    df, expected = frame
    with hepray.dask.on_ray():
        out = hepray.dask.score(dd.from_pandas(df, npartitions=4), toy["model"], append=False).compute()
    np.testing.assert_allclose(out["score"].to_numpy(), expected, rtol=1e-6)


def test_docs_examples_run(tmp_path):
    """docs/dask.md's Python blocks, in order, as one script (a fresh process: its own Dask and
    Ray), then what they wrote: a BDT trained from the dataframe that separates the classes."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "dask.md").read_text(), flags=re.S)
    script = "if __name__ == '__main__':\n" + textwrap.indent("\n".join(blocks), "    ")
    (tmp_path / "example.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test AUC:" in r.stdout and (tmp_path / "runs" / "dask_bdt" / "model" / "hepray_model.json").exists()
    auc = float(re.search(r"test AUC: ([0-9.]+)", r.stdout).group(1))
    assert auc > 0.8, r.stdout  # the toy classes are separated by 0.8 sigma in every feature
    assert len(list((tmp_path / "runs" / "dask_bdt" / "input").glob("part-*.root"))) == 8


def _torch_model(d: Path, net, meta: dict) -> str:
    """A torch model folder as hepray's training workloads write it (weights + architecture)."""
    import torch

    from hepray.models.artifact import save_metadata

    d.mkdir(parents=True)
    torch.save(net.state_dict(), d / "model.pt")
    save_metadata(d, {"type": "torch", "file": "model.pt", "features": FEATURES, "architecture": net.arch, **meta})
    return str(d)


def test_score_torch_classifier_and_anomaly_models(client, frame, tmp_path):
    """A torch classifier (as train_classifier writes) and an autoencoder (as train_anomaly writes):
    the scores equal what the same model gives in-process (`kind: infer`'s and the anomaly scan's
    predictors). A GNN on constituents is refused in one line."""
    torch = pytest.importorskip("torch")
    from hepray.anomaly.scoring import Scorer
    from hepray.models.autoencoder import AutoEncoder
    from hepray.models.mlp import MLP
    from hepray.models.predict import ModelBundle

    df, _ = frame
    X = df[FEATURES].to_numpy(np.float32)
    ddf = dd.from_pandas(df, npartitions=4)
    torch.manual_seed(1)
    pre = {"preprocessing": {"mean": [0.4] * 4, "scale": [1.2] * 4}}
    clf = _torch_model(tmp_path / "clf", MLP(4, [8], 1), {"classes": ["signal"], "task": "binary", **pre})
    ae = _torch_model(tmp_path / "ae", AutoEncoder(4, [8], 2), {"classes": [], "task": "anomaly", **pre,
                                                                  "anomaly": {"score": "recon"}})
    got = hepray.dask.score(ddf, clf, append=False, output="nn").compute()
    want = ModelBundle.read(clf).load(1)(X)[:, 0]
    np.testing.assert_allclose(got["nn"].to_numpy(), want, rtol=1e-5)
    assert 0 < want.min() < want.max() < 1
    got = hepray.dask.score(ddf, ae, append=False, output="anomaly").compute()
    bundle = ModelBundle.read(ae)
    want = Scorer.from_bundle(bundle.meta, bundle.raw)(X)[0]
    np.testing.assert_allclose(got["anomaly"].to_numpy(), want, rtol=1e-5)
    assert (want > 0).all()  # a reconstruction error, not a sigmoid of the decoder's output
    gnn = ModelBundle("gnn/model.pt", {"type": "torch", "features": None, "inputs": {"arguments": ["points"]}}, b"")
    with pytest.raises(ConfigError, match="GNN on jet constituents.*use kind: infer"):
        hepray.dask.score(ddf, gnn)
