"""The demo's chain of jobs with every path on ``s3://`` (moto's server): generate -> train_bdt ->
infer -> fpga. No step may assume a shared disk: each job reads its inputs (parts, the model)
from the store and writes everything (parts, model, metrics, plots) back to it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import uproot

import hepray

ROOT = Path(__file__).resolve().parents[1]


def _job(name: str, url: str, **overrides) -> dict:
    """A demo job file with its run-folder paths moved under ``url``."""
    import yaml

    job = yaml.safe_load((ROOT / "jobs" / f"{name}.yaml").read_text())
    text = json.dumps(job).replace("runs/demo/", f"{url}/")
    job = json.loads(text)
    job["output"]["dir"] = f"{url}/{job['name'] if name != 'generate' else 'generate'}"
    for k, v in overrides.items():
        node = job
        *head, last = k.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = v
    return job


def test_demo_chain_with_every_path_on_s3(ray_session, s3, monkeypatch):
    if s3 is None:
        pytest.skip("s3fs and moto are not installed")
    from hepray.engine.runtime import ensure_ray

    # every process of the "cluster" gets the store's credentials and endpoint from its environment,
    # as nodes do: a Ray instance started after they are set (restored as it was afterwards)
    ray_session.shutdown()
    for k, v in s3["env"].items():
        monkeypatch.setenv(k, v)
    ensure_ray(num_cpus=2)
    try:
        _chain(s3)
    finally:
        ray_session.shutdown()
        for k in s3["env"]:
            monkeypatch.delenv(k)
        ensure_ray(num_cpus=2)


def _chain(s3):
    fs, url = s3["fs"], f"s3://{s3['bucket']}/demo"
    procs = [{"name": n, "kind": n, "n_jets": 60} for n in ("ttbar", "qcd", "wqq")] + [
        {"name": "xqq", "kind": "xqq", "n_jets": 60, "mass": 150}]
    gen = _job("generate", url, processes=procs, **{"generator.jets_per_shard": 60, "jets.max_constituents": 40,
                                                    "engine.progress_every_s": 60})
    g = hepray.run(gen, quiet=True)
    assert g["shards"] == 4 and g["shards_failed"] == 0 and g["events_out"] == 240
    assert g["generation"]["jets_per_worker_s"] > 0  # from the shards' summaries
    b = hepray.run(_job("train_bdt", url, rounds=20, **{"bagging.models": 2, "bagging.bins": 2}), quiet=True)
    assert b["mode"] == "direct" and b["model"] == f"{url}/train_bdt/model" and b["auc"] > 0.6
    i = hepray.run(_job("infer_bdt", url, **{"engine.workers": 2}), quiet=True)
    assert i["events_in"] == i["events_out"] == 240

    c = hepray.run(_job("train_classifier", url, **{"training.epochs": 2}), quiet=True)
    assert c["model"] == f"{url}/train_classifier/model"
    dq = hepray.run(_job("generate_dq", url, processes=[{"name": "qcd", "kind": "qcd", "n_jets": 60}],
                         **{"generator.jets_per_shard": 30, "output.dir": f"{url}/generate_dq"}), quiet=True)
    assert dq["events_out"] == 60
    a = hepray.run(_job("train_anomaly", url, **{"training.epochs": 2}), quiet=True)  # too few jets: no lumisection models
    s = hepray.run(_job("anomaly_scan", url, **{"engine.workers": 2}), quiet=True)
    assert s["events_in"] == s["events_out"] == 180 and s["lumisections"] > 0
    t = hepray.run(_job("train_flashsim", url, **{"training.epochs": 2}), quiet=True)
    fl = hepray.run(_job("flashsim", url, **{"engine.workers": 2}), quiet=True)
    assert fl["events_in"] == fl["events_out"] == 240 and fl["generation"]["jets_per_worker_s"] > 0
    f = hepray.run(_job("fpga_bdt", url, **{"scan.enabled": False, "engine.workers": 1}), quiet=True)
    assert f["shards_ok"] == f["shards"] and f["decision_agreement"] > 0.5 and f["batched_events_per_s"] > 0

    key = url.removeprefix("s3://")
    for f in ("generate/summary.json", "generate/plots/physics.json", "generate/plots/jet_mass.png",
              "train_bdt/model/hepray_model.json", "train_bdt/model/model.json", "train_bdt/metrics.json",
              "train_bdt/plots/roc.png", "train_bdt/plots/bagging_signal_efficiency.png",
              "infer_bdt/parts/_manifest.json", "infer_bdt/summary.json",
              "train_classifier/model/hepray_model.json", "train_anomaly/model/hepray_model.json",
              "anomaly_scan/lumis.csv", "anomaly_scan/scan.json", "train_flashsim/model",
              "flashsim/parts/_manifest.json", "fpga_bdt/fidelity.json", "fpga_bdt/resources.json", "fpga_bdt/firmware", "fpga_bdt/plots/roc.png"):
        assert fs.exists(f"{key}/{f}"), f
    manifest = json.loads(fs.cat(f"{key}/infer_bdt/parts/_manifest.json"))
    scores = np.concatenate([uproot.open(io.BytesIO(fs.cat(f"{key}/infer_bdt/parts/{p['part']}")))["hepray"]
                             ["score_top"].array(library="np") for p in manifest["parts"]])
    assert len(scores) == 240 and np.all((scores >= 0) & (scores <= 1))
