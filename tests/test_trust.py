"""No run can delete, mix or silently corrupt data (issue 20): --overwrite deletes only what hepray
made, parts are valid only for the job that made them, one writer per run folder, commits that
can be checked (``hepray verify``)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

import hepray
from hepray.io import rundir

from .conftest import infer_job

ROOT = Path(__file__).parent.parent


def _tree_state(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def _cli(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "hepray.cli", *args], capture_output=True, text=True, cwd=cwd, env=env)


# -- --overwrite deletes only what hepray made ---------------------------------------------------

def _foreign(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "thesis.tex").write_text("years of work")
    (d / "sub").mkdir(exist_ok=True)
    (d / "sub" / "data.root").write_bytes(b"x" * 100)
    return d


def test_overwrite_refuses_home(toy, tmp_path, monkeypatch):
    home = _foreign(tmp_path / "home")
    monkeypatch.setenv("HOME", str(home))
    before = _tree_state(tmp_path)
    with pytest.raises(hepray.ConfigError, match=r"output.dir: --overwrite refuses to delete .*: it is the home folder"):
        hepray.run(infer_job(toy, "~"), overwrite=True, quiet=True)
    assert _tree_state(tmp_path) == before


def test_overwrite_refuses_cwd_and_its_parents(toy, tmp_path, monkeypatch):
    top = _foreign(tmp_path / "top")
    work = top / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = _tree_state(tmp_path)
    for out in (".", "..", str(top)):
        with pytest.raises(hepray.ConfigError, match="working directory or one of its parents"):
            hepray.run(infer_job(toy, out), overwrite=True, quiet=True)
    # name: ".." used to give runs/.. = the working directory; the name is now refused at load
    with pytest.raises(hepray.ConfigError, match="name: '..' is not a valid name"):
        hepray.run({**infer_job(toy, "x"), "name": "..", "output": {}}, overwrite=True, quiet=True)
    assert _tree_state(tmp_path) == before


def test_overwrite_refuses_root_and_a_folder_hepray_did_not_make(toy, tmp_path):
    with pytest.raises(hepray.ConfigError, match="it is the filesystem root"):
        rundir.check_removable(Path("/"))
    foreign = _foreign(tmp_path / "foreign")
    before = _tree_state(tmp_path)
    job = tmp_path / "job.json"
    job.write_text(json.dumps(infer_job(toy, str(foreign))))
    r = _cli("run", "--overwrite", str(job), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "hepray did not make it (no .hepray-run marker)" in r.stderr
    assert _tree_state(tmp_path) == {**before, "job.json": job.read_bytes()}


def test_overwrite_refuses_a_bucket_root():
    import fsspec

    bucket = f"hepray-test-{secrets.token_hex(4)}"
    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"/{bucket}/other/object", b"someone else's")
    with pytest.raises(hepray.ConfigError, match="it is a bucket root"):
        rundir.check_removable(hepray.io.parts.as_path(f"memory://{bucket}"))
    assert fs.cat_file(f"/{bucket}/other/object") == b"someone else's"


def test_overwrite_checks_the_job_before_deleting(ray_session, toy, tmp_path):
    run = tmp_path / "run"
    hepray.run(infer_job(toy, run), quiet=True)
    assert (run / rundir.RUN_MARKER).exists()
    before = _tree_state(run)
    with pytest.raises(hepray.ConfigError, match="model.features"):  # not the model's features
        hepray.run(infer_job(toy, run, model={"features": ["f0", "f1", "f2", "nope"]}), overwrite=True, quiet=True)
    assert _tree_state(run) == before
    s = hepray.run(infer_job(toy, run), overwrite=True, quiet=True)  # hepray's own folder: deleted and redone
    assert s["events_out"] == 40_000 and (run / rundir.RUN_MARKER).exists()


# -- one writer per run folder ---------------------------------------------------------------

def test_second_run_into_a_locked_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    with rundir.locked(run) as me:
        held = json.loads((run / rundir.LOCK).read_text())
        assert held["pid"] == os.getpid() and held["token"] == me["token"]
        with pytest.raises(hepray.HeprayError, match=rf"{run} is in use by another run \(host .*, pid {os.getpid()}"):
            with rundir.locked(run):
                pass
    assert not (run / rundir.LOCK).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (run / rundir.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "token": "old"}))
    with rundir.locked(run) as me:
        assert json.loads((run / rundir.LOCK).read_text())["token"] == me["token"]
    (run / rundir.LOCK).write_text(json.dumps({"host": "another-node", "pid": 1, "token": "x"}))
    with pytest.raises(hepray.HeprayError, match="host another-node, pid 1"):  # cannot tell from here: refused
        with rundir.locked(run):
            pass


def test_lock_on_an_object_store_is_a_conditional_create(s3, monkeypatch):
    urls = [f"memory://hepray-test-{secrets.token_hex(4)}/run"]
    if s3:
        for k, v in s3["env"].items():
            monkeypatch.setenv(k, v)
        urls.append(f"s3://{s3['bucket']}/lock-test-{secrets.token_hex(4)}")
    for url in urls:
        with rundir.locked(hepray.io.parts.as_path(url)):
            with pytest.raises(hepray.HeprayError, match="in use by another run"):
                with rundir.locked(hepray.io.parts.as_path(url)):
                    pass
        with rundir.locked(hepray.io.parts.as_path(url)):  # released: free again
            pass


# -- durable and checkable commits -----------------------------------------------------------

def test_verify_finds_every_bad_part_and_a_corrupt_marker(ray_session, toy, tmp_path):
    run = tmp_path / "run"
    hepray.run(infer_job(toy, run), quiet=True)
    r = _cli("verify", str(run))
    assert r.returncode == 0 and r.stdout.strip() == f"8 parts good in {run}", r.stdout + r.stderr
    parts = run / "parts"
    man = json.loads((parts / "_manifest.json").read_text())["parts"]
    flipped, truncated, gone, bad_marker = (parts / p["part"] for p in man[:4])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the checksum sees it
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-10])
    gone.unlink()
    marker = parts / "_committed" / f"{man[3]['shard_id']}.json"
    marker.write_bytes(b"\xff\xfe\x00garbage")  # not UTF-8: a UnicodeDecodeError before
    (parts / "stray_0.root").write_bytes(b"x")
    r = _cli("verify", str(run))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.strip().splitlines()
    assert sorted(lines) == sorted([
        f"{flipped}: checksum differs from the commit marker (the file changed or is corrupt)",
        f"{truncated}: {truncated.stat().st_size} bytes, the commit marker says {man[1]['bytes_written']}",
        f"{gone}: missing",
        f"{marker}: corrupt commit marker (not JSON)",
        f"{parts / 'stray_0.root'}: not in the manifest",
    ]), lines
    assert r.stderr.strip() == f"hepray: 5 problems among 8 parts in {run}"
    # the markers hold size and checksum; the manifest repeats them
    rec = json.loads((parts / "_committed" / f"{man[4]['shard_id']}.json").read_text())
    assert rec["bytes_written"] == man[4]["bytes_written"] > 0 and len(rec["sha256"]) == 64 == len(man[4]["sha256"])


def test_verify_of_a_folder_that_is_no_run(tmp_path):
    r = _cli("verify", str(tmp_path))
    assert r.returncode == 1 and r.stdout.strip() == f"{tmp_path}: no parts folder with a _manifest.json (not a hepray run folder?)"


def test_part_and_its_folder_are_fsynced_around_the_rename(tmp_path, monkeypatch):
    import numpy as np

    from hepray.data.shard import Shard
    from hepray.io import parts as P

    synced, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(a, b):
        synced.append(f"rename -> {Path(b).name}")
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    shard = Shard(file="f.root", tree="Events", entry_start=0, entry_stop=3, file_id="x", sample="s")
    rec = P.write_part(tmp_path, shard, {"a": np.arange(3.0)}, fmt="parquet", tree="t", compression="zstd",
                       result={"n_in": 3})
    part, d = str(tmp_path / rec["part"]), str(tmp_path)
    i = synced.index(f"rename -> {rec['part']}")
    assert Path(synced[i - 1]).name.startswith(f".{rec['part']}.") and synced[i + 1] == d  # bytes, rename, folder
    assert synced[-2].startswith(str(tmp_path / "_committed")) and synced[-1] == str(tmp_path / "_committed")
    assert rec["sha256"] == P.sha256_file(part) and rec["bytes_written"] == os.path.getsize(part)


def test_a_commit_that_fails_is_a_retried_attempt_not_a_driver_crash(ray_session, toy, tmp_path):
    from hepray.engine.executor import map_shards
    from hepray.io.parts import committed

    from .slow_workload import FlakyCommit

    (tmp_path / "flags").mkdir()
    (tmp_path / "flags2").mkdir()
    shards = hepray.plan(infer_job(toy, tmp_path / "x"))["shards"][:3]
    s = map_shards(shards, FlakyCommit(str(tmp_path / "flags")), tmp_path / "parts", fmt="root", tree="t",
                   compression="zstd", workers=2, max_retries=1)
    assert s["shards_ok"] == 3 and s["events_out"] == 15_000
    assert all(committed(tmp_path / "parts", sh.shard_id) for sh in shards)
    s = map_shards(shards, FlakyCommit(str(tmp_path / "flags2")), tmp_path / "parts2", fmt="root", tree="t",
                   compression="zstd", workers=2, max_retries=0)
    assert s["shards_ok"] == 0 and all(r["error"].startswith("commit failed: ") for r in s["failed"]), [r["error"] for r in s["failed"]]
    assert not list((tmp_path / "parts2" / "_committed").glob("*"))
