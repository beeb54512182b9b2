"""Faults injected for real: a Ray worker SIGKILLed mid-run, the driver SIGKILLed mid-run.
Every event must be in the output exactly once, checked by event identifiers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import uproot

import hepray

from .conftest import infer_job
from .slow_workload import REGISTRY

ROOT = Path(__file__).parent.parent


def _events(run_dir: Path) -> dict:
    man = json.loads((run_dir / "parts" / "_manifest.json").read_text())
    arrays = [uproot.open(run_dir / "parts" / p["part"])["hepray"].arrays(["event", "score"], library="np")
              for p in man["parts"]]
    ev = np.concatenate([a["event"] for a in arrays])
    sc = np.concatenate([a["score"] for a in arrays])
    order = np.argsort(ev)
    return {"event": ev[order], "score": sc[order]}


def _expected_events(toy) -> np.ndarray:
    return np.sort(np.concatenate([uproot.open(f)["Events"]["event"].array(library="np") for f in toy["files"]]))


def test_worker_killed_mid_run_loses_nothing(ray_session, toy, tmp_path):
    pid_dir = tmp_path / "pids"
    job = infer_job(toy, tmp_path / "run", kind="slow_infer", delay_s=1.0, pid_dir=str(pid_dir))
    killed = []

    def assassin():
        deadline = time.time() + 120
        while time.time() < deadline:
            pids = sorted(pid_dir.glob("*")) if pid_dir.exists() else []
            if pids:
                time.sleep(0.5)  # let it get into a shard
                pid = int(pids[0].name)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.1)

    t = threading.Thread(target=assassin)
    t.start()
    s = hepray.run(job, registry=REGISTRY, quiet=True)
    t.join()
    assert killed, "no worker was killed"
    assert s["shards_failed"] == 0 and s["events_out"] == 40_000
    out = _events(tmp_path / "run")
    np.testing.assert_array_equal(out["event"], _expected_events(toy))  # each event exactly once
    assert len(list(pid_dir.glob("*"))) >= 3  # the killed actor was restarted in a new process


def test_a_hanging_shard_is_ended_and_retried(ray_session, toy, tmp_path):
    """engine.shard_timeout_s (issue 20 item 5): a shard that hangs in its first attempt has its
    actor replaced and runs again; every event once, nothing failed."""
    pid_dir = tmp_path / "pids"
    job = infer_job(toy, tmp_path / "run", kind="slow_infer", delay_s=0.0, pid_dir=str(pid_dir), hang_index=3,
                    hang_attempts=1, engine={"shard_timeout_s": 4, "keep_warm_s": 0})
    s = hepray.run(job, registry=REGISTRY, quiet=True)
    assert s["shards_failed"] == 0 and s["events_out"] == 40_000 and s["workers_lost"] == 1
    assert len(list((pid_dir / "hang-3").iterdir())) == 2  # two attempts, in two processes
    np.testing.assert_array_equal(_events(tmp_path / "run")["event"], _expected_events(toy))


def test_a_shard_that_always_hangs_fails_after_its_attempts(ray_session, toy, tmp_path):
    pid_dir = tmp_path / "pids"
    job = infer_job(toy, tmp_path / "run", kind="slow_infer", delay_s=0.0, pid_dir=str(pid_dir), hang_index=5,
                    engine={"shard_timeout_s": 3, "max_retries": 1, "on_error": "skip", "keep_warm_s": 0})
    s = hepray.run(job, registry=REGISTRY, quiet=True)
    assert s["shards_failed"] == 1 and s["events_out"] == 35_000, s
    assert "ran longer than engine.shard_timeout_s=3 s in 2 attempts" in s["failed"][0]["error"]
    assert len(list((pid_dir / "hang-5").iterdir())) == 2


def test_driver_killed_then_resume_equals_uninterrupted_run(ray_session, toy, tmp_path):
    ref_job = infer_job(toy, tmp_path / "ref")
    hepray.run(ref_job, quiet=True)
    job = infer_job(toy, tmp_path / "run", kind="slow_infer", delay_s=1.5)
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen([sys.executable, "-m", "tests.slow_workload", str(job_file)], cwd=ROOT, env=env)
    committed = tmp_path / "run" / "parts" / "_committed"
    deadline = time.time() + 180
    while time.time() < deadline and len(list(committed.glob("*.json")) if committed.exists() else []) < 2:
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    done_before = len(list(committed.glob("*.json")))
    assert 2 <= done_before < 8, f"kill landed at {done_before} committed parts"
    s = hepray.run(job, registry=REGISTRY, resume=True, quiet=True)
    assert s["shards_resumed"] == done_before and s["events_out"] == 40_000
    out, ref = _events(tmp_path / "run"), _events(tmp_path / "ref")
    np.testing.assert_array_equal(out["event"], ref["event"])
    np.testing.assert_array_equal(out["score"], ref["score"])
    listed = {p["part"] for p in json.loads((tmp_path / "run" / "parts" / "_manifest.json").read_text())["parts"]}
    assert listed == {p.name for p in (tmp_path / "run" / "parts").glob("*.root")}
