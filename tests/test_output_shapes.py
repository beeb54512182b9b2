"""Every model shape writes every output format (issue 20 item 9): binary (xgboost), multi-class
(softmax torch MLP) and multi-output (two sigmoid outputs) into ROOT and Parquet parts, scores
checked per event id against the model run directly (torch / xgboost outside hepray)."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import uproot

import hepray

from .conftest import infer_job

FEATURES = ["f0", "f1", "f2", "f3"]


def _torch_model(d, n_outputs: int, task: str, classes: list[str]):
    import torch

    from hepray.models import build_model
    from hepray.models.artifact import save_metadata

    arch = {"name": "mlp", "n_inputs": 4, "hidden": [8], "n_outputs": n_outputs}
    torch.manual_seed(n_outputs)
    net = build_model(arch)
    d.mkdir(parents=True)
    torch.save(net.state_dict(), d / "model.pt")
    save_metadata(d, {"type": "torch", "file": "model.pt", "features": FEATURES, "classes": classes, "task": task,
                      "architecture": arch, "preprocessing": {"mean": [0.1] * 4, "scale": [2.0] * 4}})

    def oracle(X):
        with torch.no_grad():
            z = net(torch.from_numpy((X - 0.1) / 2.0))
            return (torch.softmax(z, 1) if task == "multiclass" else torch.sigmoid(z)).numpy()
    return d, oracle


def _xgb_oracle(path):
    import xgboost as xgb

    b = xgb.Booster()
    b.load_model(str(path / "model.json"))
    return lambda X: b.predict(xgb.DMatrix(X)).reshape(len(X), -1)


SHAPES = {"binary": ["score"], "multiclass": ["score_a", "score_b", "score_c"], "multioutput": ["score_0", "score_1"]}


@pytest.mark.parametrize("fmt", ["root", "parquet"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_model_shape_in_every_format(ray_session, toy, tmp_path, fmt, shape):
    from pathlib import Path

    if shape == "binary":
        model, oracle = Path(toy["model"]), _xgb_oracle(Path(toy["model"]))
    elif shape == "multiclass":
        model, oracle = _torch_model(tmp_path / "m", 3, "multiclass", ["a", "b", "c"])
    else:
        model, oracle = _torch_model(tmp_path / "m", 2, "multilabel", [])
    files = toy["files"][:1]
    job = infer_job(toy, tmp_path / "run", dataset={"files": files}, model={"path": str(model)}, output={"format": fmt})
    s = hepray.run(job, quiet=True)
    assert s["shards_failed"] == 0 and s["events_out"] == 20_000
    man = json.loads((tmp_path / "run" / "parts" / "_manifest.json").read_text())
    parts = [tmp_path / "run" / "parts" / p["part"] for p in man["parts"]]
    cols = SHAPES[shape]
    if fmt == "root":
        got = ak.concatenate([uproot.open(p)["hepray"].arrays(["event", *cols]) for p in parts])
    else:
        got = ak.concatenate([ak.from_parquet(p) for p in parts])
    assert sorted(f for f in got.fields if f.startswith("score")) == cols
    src = uproot.open(files[0])["Events"].arrays([*FEATURES, "event"], library="np")
    want = oracle(np.column_stack([src[f] for f in FEATURES]).astype(np.float32))
    order = np.argsort(np.asarray(got["event"]))
    np.testing.assert_array_equal(np.asarray(got["event"])[order], src["event"])
    for j, c in enumerate(cols):
        np.testing.assert_allclose(np.asarray(got[c])[order], want[:, j], rtol=1e-5, atol=1e-6)
