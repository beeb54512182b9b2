"""Cluster ways in: configs that `ray up`/KubeRay take, a real `ray job submit` to a real Ray
head (token auth, outputs on S3), and parts on object stores with the same exactly-once rules.

The head is started with `ray start --head --block` in its own process group and stopped by
signalling that process only: `ray stop` would stop every Ray instance of this user on the
machine, other test sessions' included.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import uproot
import yaml

import hepray
from hepray.io.parts import COMMITTED, StorePath, as_path, committed, remove_uncommitted, write_part

from .conftest import infer_job
from .raycluster import Node, http_status, pids_mentioning, wait_http

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


# -- configs ------------------------------------------------------------------------------------

RAYJOB_SPEC = {"entrypoint", "runtimeEnvYAML", "submissionMode", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished",
               "activeDeadlineSeconds", "rayClusterSpec", "clusterSelector", "submitterPodTemplate", "submitterConfig",
               "suspend", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "metadata",
               "backoffLimit", "deletionStrategy", "managedBy"}
RAYCLUSTER_SPEC = {"rayVersion", "authOptions", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
                   "workerGroupSpecs", "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions",
                   "upgradeStrategy"}


def test_ray_up_configs_pass_the_checks_ray_up_makes():
    """`ray up` fills a config with its provider's defaults and validates it against Ray's
    schema before touching any machine: the same two calls here."""
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    for name in ("ray-cluster.yaml", "ray-cluster-aws.yaml"):
        cfg = yaml.safe_load((CLUSTER / name).read_text())
        validate_config(prepare_config(copy.deepcopy(cfg)))
        start = " ".join(cfg["head_start_ray_commands"])
        assert "RAY_AUTH_MODE=token" in start and "--dashboard-host=127.0.0.1" in start, name
        assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_runtime_env_is_one_ray_accepts():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)
    assert env["working_dir"] == "." and any(p.startswith("s3fs") for p in env["pip"]["packages"])


def _entrypoint_job(entrypoint: str):
    """The job a `hepray run <file> --set k=v ...` entrypoint would run, validated as the CLI does."""
    from hepray.cli import _overrides

    words = entrypoint.split()
    assert words[:2] == ["hepray", "run"]
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    return hepray.load_job(str(ROOT / words[2]), overrides=_overrides(sets))


def test_kuberay_manifests_use_current_api_and_a_valid_hepray_job():
    import ray

    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert set(job["spec"]) <= RAYJOB_SPEC, set(job["spec"]) - RAYJOB_SPEC
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert set(spec) <= RAYCLUSTER_SPEC, set(spec) - RAYCLUSTER_SPEC
        assert spec["rayVersion"] == ray.__version__ and spec["authOptions"] == {"mode": "token"}
        pods = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
        for c in (c for p in pods for c in p["template"]["spec"]["containers"]):
            assert c["image"] == pods[0]["template"]["spec"]["containers"][0]["image"]
        assert all(isinstance(v, str) for p in pods for v in p["rayStartParams"].values())  # a map of strings
    cfg = _entrypoint_job(job["spec"]["entrypoint"])
    assert cfg.kind == "infer" and cfg.output.dir.startswith("s3://")
    yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    docker = (CLUSTER / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-" in docker


# -- parts on object stores ------------------------------------------------------------------

def _shard(i: int = 0):
    return hepray.Shard("in.root", "Events", 1000 * i, 1000 * (i + 1))


def test_part_on_a_store_counts_only_with_its_marker_and_is_overwritten(tmp_path, s3, monkeypatch):
    """The same exactly-once rules on S3 (moto's server), memory:// and a local directory."""
    cols = {"x": np.arange(1000, dtype=np.float32)}
    kw = dict(fmt="root", tree="t", compression="zstd")
    urls = [f"memory://hepray-test-{secrets.token_hex(4)}/parts", str(tmp_path / "parts")]
    if s3:
        for k, v in s3["env"].items():
            monkeypatch.setenv(k, v)  # what a node's environment gives s3fs: credentials, endpoint
        urls.append(f"s3://{s3['bucket']}/store-test/parts")
    for url in urls:
        d, s = as_path(url), _shard()
        assert isinstance(d, Path if url.startswith("/") else StorePath)
        d.mkdir()
        # an interrupted write on a store: the part is there under its final name, no marker
        (d / f"part_{s.shard_id}.root").write_bytes(b"half a file")
        assert committed(d, s.shard_id) is None
        rec = write_part(d, s, cols, result={"n_in": 1000}, **kw)
        part = d / rec["part"]
        assert rec == committed(d, s.shard_id) and rec["bytes_written"] == part.stat().st_size
        assert uproot.open(io.BytesIO(part.read_bytes()))["t"].arrays(library="np")["x"].sum() == cols["x"].sum()
        # a later rewrite of the same name that did not finish: the marker no longer vouches for it
        part.write_bytes(b"torn")
        assert committed(d, s.shard_id) is None
        rec = write_part(d, s, cols, result={"n_in": 1000}, **kw)  # resume: replaced, one part, one marker
        assert committed(d, s.shard_id) == rec and rec["part"] != part.name  # each attempt its own name
        remove_uncommitted(d, {rec["part"]}, {s.shard_id})  # the run's last step: the half file goes too
        assert [p.name for p in d.glob("*.root")] == [rec["part"]] and len(list(d.glob(f"{COMMITTED}/*.json"))) == 1
        assert not [p for p in d.glob(".*")]  # no temporary files left behind
    if s3:  # seen from another client of the same S3 endpoint
        assert len(s3["fs"].glob(f"{s3['bucket']}/store-test/parts/{COMMITTED}/*.json")) == 1


def test_actor_body_writes_to_a_store(toy):
    """ShardWorker.run (what each Ray actor runs), in this process against memory://."""
    from hepray.data import files
    from hepray.engine.executor import ShardWorker
    from hepray.models.predict import ModelBundle
    from hepray.workloads.infer import InferProcessor

    job = hepray.load_job(infer_job(toy, "unused"))
    shard = hepray.plan(job)["shards"][0]
    proc = InferProcessor(ModelBundle.read(toy["model"]), job.dataset, ["f0", "f1", "f2", "f3"], "score", [], 10**6)
    url = f"memory://hepray-test-{secrets.token_hex(4)}/run/parts"
    try:
        res = ShardWorker(1).run(shard.to_dict(), "run-1", [(proc, url, "root", "hepray", "zstd", "fp")])
    finally:
        files.keep_open(0)  # what an actor keeps open, this test process must not
    assert res["status"] == "ok" and res["n_out"] == shard.num_entries
    assert res == committed(url, shard.shard_id)


def test_job_with_a_file_url_output(ray_session, toy, tmp_path):
    s = hepray.run(infer_job(toy, f"file://{tmp_path}/run"), quiet=True)
    assert s["events_in"] == s["events_out"] == 40_000 and s["run_dir"] == str(tmp_path / "run")
    assert len(list((tmp_path / "run" / "parts" / COMMITTED).glob("*.json"))) == 8


# -- a real Ray head and the Jobs API -----------------------------------------------------------

SAMPLE = ROOT / "tests" / "data" / "generated" / "sample" / "parts"
SAMPLE_FEATURES = ["reco_pt", "reco_eta", "reco_mass", "reco_tau21", "reco_tau32", "reco_nconst"]


def _sample_bdt(model_dir: Path) -> Path:
    """A small top-vs-rest xgboost model on the committed sample, saved as a hepray model folder."""
    import xgboost as xgb

    from hepray.models.artifact import save_metadata

    a = uproot.concatenate(f"{SAMPLE}/*.root:jets", [*SAMPLE_FEATURES, "label"], library="np")
    X = np.column_stack([a[f] for f in SAMPLE_FEATURES]).astype(np.float32)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "seed": 1},
                        xgb.DMatrix(X, (a["label"] == 1).astype(np.float32)), 10)
    model_dir.mkdir(parents=True)
    booster.save_model(model_dir / "model.json")
    save_metadata(model_dir, {"type": "xgboost", "file": "model.json", "features": SAMPLE_FEATURES,
                              "classes": ["top"], "task": "binary"})
    return model_dir


def test_ray_job_submit_to_a_real_head(tmp_path, s3):
    """The Jobs API end to end: a head on loopback with token auth, `ray job submit --working-dir`
    of `hepray run jobs/infer_bdt.yaml` on the committed sample, the driver joining that head by
    itself, parts written by its actors to S3 (moto) or, without s3fs/moto, a local directory."""
    token = secrets.token_hex(32)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    base.update(RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", **(s3["env"] if s3 else {}))
    head_env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    (tmp_path / "token").write_text(token)
    # the submitter as docs/cluster.md says: token mode on, the token read from a file
    client_env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}
    out = f"s3://{s3['bucket']}/infer_bdt" if s3 else str(tmp_path / "out")
    wd = tmp_path / "wd"  # what --working-dir uploads: the job file, its data and its model
    (wd / "jobs").mkdir(parents=True)
    shutil.copy(ROOT / "jobs" / "infer_bdt.yaml", wd / "jobs")
    shutil.copytree(SAMPLE, wd / "data", ignore=shutil.ignore_patterns("_*"))
    _sample_bdt(wd / "model")
    head = Node(head_env, tmp_path / "head.log", head=True, dashboard=True, num_cpus=2)
    try:
        wait_http(f"{head.url}/api/version", token, head.proc, timeout=180)
        # the Jobs API refuses a caller without the token, or with a wrong one
        assert http_status(f"{head.url}/api/jobs/") == 401
        assert http_status(f"{head.url}/api/jobs/", {"Authorization": "Bearer x" * 8}) == 403
        assert http_status(f"{head.url}/api/jobs/", {"Authorization": f"Bearer {token}"}) == 200
        # a client with the token but without RAY_AUTH_MODE=token sends no token and is refused
        no_mode = {k: v for k, v in client_env.items() if k != "RAY_AUTH_MODE"}
        r = subprocess.run(["ray", "job", "list", "--address", head.url], env=no_mode, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode != 0 and "Authentication required" in r.stdout + r.stderr, r.stdout + r.stderr
        r = subprocess.run(["ray", "job", "submit", "--address", head.url, "--working-dir", str(wd), "--",
                            "hepray", "run", "jobs/infer_bdt.yaml", "--set", "dataset.files=data/*.root",
                            "--set", "model.path=model", "--set", f"output.dir={out}", "--set", "engine.workers=2"],
                           env=client_env, capture_output=True, text=True, timeout=400)
        log = r.stdout + r.stderr
        assert r.returncode == 0 and "succeeded" in log, log[-3000:]
        assert re.search(r"done: events_in=5250, events_out=5250", log), log[-3000:]
    finally:
        head.stop()
    assert not pids_mentioning(head.tmp)
    if s3 is None:
        run = Path(out)
        summary = json.loads((run / "summary.json").read_text())
        manifest = json.loads((run / "parts" / "_manifest.json").read_text())
        parts = [(run / "parts" / p["part"]).read_bytes() for p in manifest["parts"]]
        assert len(list((run / "parts" / COMMITTED).glob("*.json"))) == 4
    else:
        fs, prefix = s3["fs"], f"{s3['bucket']}/infer_bdt"
        summary = json.loads(fs.cat(f"{prefix}/summary.json"))
        manifest = json.loads(fs.cat(f"{prefix}/parts/_manifest.json"))
        assert len(fs.glob(f"{prefix}/parts/{COMMITTED}/*.json")) == 4
        parts = [fs.cat(f"{prefix}/parts/{p['part']}") for p in manifest["parts"]]
    assert summary["events_in"] == summary["events_out"] == 5250 and summary["run_dir"] == out
    assert len(parts) == 4
    got = np.sort(np.concatenate([uproot.open(io.BytesIO(b))["hepray"]["reco_pt"].array(library="np") for b in parts]))
    want = np.sort(uproot.concatenate(f"{SAMPLE}/*.root:jets", ["reco_pt"], library="np")["reco_pt"])
    np.testing.assert_array_equal(got, want)  # every jet once: none lost, none twice


# -- the docs ------------------------------------------------------------------------------------

def _blocks(doc: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "docs" / doc).read_text(), flags=re.S)


def test_cluster_docs_rehearsal_uses_the_tested_commands():
    """docs/cluster.md's one-machine rehearsal starts the head and submits as the test above does."""
    text = "\n".join(_blocks("cluster.md", "bash"))
    for flag in ("ray start --head", "--dashboard-host 127.0.0.1", "--num-cpus 2", "--temp-dir",
                 "RAY_AUTH_MODE=token", "ray job submit --address http://127.0.0.1:", "--working-dir",
                 "-- hepray run"):
        assert flag in text, flag


def test_local_docs_example_runs(tmp_path):
    """docs/local.md's Python blocks, in order, as one script (our own file, not user input), run
    in a directory that looks like the repository root (jobs/ and the committed sample linked
    in) by a fresh Python: two runs in one process on one local Ray, then the scores read back."""
    (tmp_path / "tests" / "data").mkdir(parents=True)
    (tmp_path / "tests" / "data" / "generated").symlink_to(ROOT / "tests" / "data" / "generated")
    (tmp_path / "jobs").symlink_to(ROOT / "jobs")
    check = ("import json\nprint('RESULT', json.dumps({'summary': summary, 'auc': trained['auc'], "
             "'n': len(scores), 'means': scores.groupby('label')['score_top'].mean().tolist()}, default=str))")
    (tmp_path / "example.py").write_text("\n".join(_blocks("local.md", "python")) + "\n" + check)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.split("RESULT ", 1)[1])
    summary = res["summary"]
    assert summary["events_in"] == summary["events_out"] == 5250  # every jet of the 4 sample files
    assert summary["run_dir"].endswith("runs/local/infer_bdt") and res["n"] == 5250
    assert res["auc"] > 0.7 and res["means"][0] < res["means"][1]  # qcd-like below top-like jets
    assert len(list((tmp_path / "runs" / "local" / "infer_bdt" / "parts").glob("*.root"))) == 4
