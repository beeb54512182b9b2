"""Bad input gets one clear line and loses nothing: a corpus of malformed job files, and damaged
data files (truncated, zeroed basket bytes, missing tree or branch, wrong type, empty, vanishing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hepray

from .conftest import infer_job

BAD_JOBS = sorted((Path(__file__).parent / "data" / "bad_jobs").glob("*.yaml"))


def test_corpus_is_big_enough():
    assert len(BAD_JOBS) >= 20


@pytest.mark.parametrize("path", BAD_JOBS, ids=lambda p: p.stem)
def test_malformed_job_is_one_line_exit_2_nothing_written(path, tmp_path):
    expect = path.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(hepray.ConfigError) as exc:
        hepray.load_job(path)
    msg = exc.value.message
    assert expect in msg and str(path) in msg and "\n" not in msg
    r = subprocess.run([sys.executable, "-m", "hepray.cli", "run", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == f"hepray: error: {msg}"
    assert list(tmp_path.iterdir()) == []  # no run directory, nothing written
    assert not Path("/tmp/pwned").exists()


def _damaged(toy, tmp_path, kind: str) -> str:
    src = toy["files"][0]
    dst = tmp_path / f"{kind}.root"
    data = bytearray(Path(src).read_bytes())
    if kind == "truncated":
        data = data[: len(data) // 3]
    elif kind == "zeroed":  # zero the payload of f0's second basket; header and directory intact
        import uproot

        seek = int(uproot.open(src)["Events"]["f0"].member("fBasketSeek")[1])
        data[seek + 120: seek + 2000] = bytes(1880)
    elif kind == "empty":
        data = bytearray()
    dst.write_bytes(bytes(data))
    return str(dst)


@pytest.mark.parametrize("kind", ["truncated", "zeroed", "empty"])
def test_damaged_file_fails_naming_it_then_skip_completes(ray_session, toy, tmp_path, kind):
    bad = _damaged(toy, tmp_path, kind)
    files = [toy["files"][1], bad]
    with pytest.raises(hepray.HeprayError, match=f"{kind}.root"):
        hepray.run(infer_job(toy, tmp_path / "fail", dataset={"files": files}), quiet=True)
    s = hepray.run(infer_job(toy, tmp_path / "skip", dataset={"files": files}, engine={"on_error": "skip"}), quiet=True)
    man = json.loads((tmp_path / "skip" / "parts" / "_manifest.json").read_text())
    reasons = [f["error"] for f in man["failed"]] + [f["error"] for f in man["skipped_files"]]
    assert reasons and all(kind + ".root" in r or "cannot" in r for r in reasons)
    assert s["events_out"] >= 20_000  # the good file is all there
    assert not list((tmp_path / "skip" / "parts").glob(".*.tmp"))


def test_missing_tree_names_file_and_trees(ray_session, toy, tmp_path):
    p = hepray.plan(infer_job(toy, tmp_path, dataset={"tree": "Evnts"}))  # plan lists every unreadable file
    assert len(p["skipped"]) == 2 and "tree 'Evnts' not found; the file holds: Events" in p["skipped"][0]["error"]
    with pytest.raises(hepray.errors.TreeNotFound, match=r"toy_0.root: tree 'Evnts' not found; the file holds: Events"):
        hepray.run(infer_job(toy, tmp_path / "r", dataset={"tree": "Evnts"}), quiet=True)


def test_wrong_type_feature_is_named(toy, tmp_path):
    job = infer_job(toy, tmp_path / "r", model={"feature_map": {"f3": "Jet_pt"}})
    with pytest.raises(hepray.errors.InputError, match=r"toy_0.root: branch 'Jet_pt' is jagged \(float\[\]\) where one"):
        hepray.run(job, quiet=True)  # refused while planning: no Ray, no shard
    assert not (tmp_path / "r" / "parts").exists()


def test_file_vanishing_mid_run(ray_session, toy, tmp_path):
    from .slow_workload import REGISTRY

    files = [str(tmp_path / f"v{i}.root") for i in range(2)]
    for f, src in zip(files, toy["files"]):
        shutil.copy(src, f)
    job = infer_job(toy, tmp_path / "run", kind="slow_infer", delay_s=0.3, dataset={"files": files},
                    engine={"on_error": "skip", "workers": 1})
    # plan first (both files exist), then remove one before its shards run
    import threading
    import time

    def remove_later():
        while not (tmp_path / "run" / "parts" / "_committed").exists():
            time.sleep(0.05)
        os.remove(files[1])

    t = threading.Thread(target=remove_later)
    t.start()
    s = hepray.run(job, registry=REGISTRY, quiet=True)
    t.join()
    man = json.loads((tmp_path / "run" / "parts" / "_manifest.json").read_text())
    assert man["failed"] and all("v1.root" in f["error"] and "not found" in f["error"] for f in man["failed"])
    assert s["events_out"] == 20_000 + 5_000 * (4 - len(man["failed"]))


# -- the bad-data corpus: each fault one line naming the file and branch, nothing outside the run folder changed

BAD_DATA = sorted(p for p in (Path(__file__).parent / "data" / "bad_data").iterdir() if (p / "job.yaml").exists())


def _state(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", BAD_DATA, ids=lambda p: p.name)
def test_bad_data_is_one_line_naming_file_and_branch(case, tmp_path):
    head = (case / "job.yaml").read_text().splitlines()
    expect, code = head[0].removeprefix("# expect: "), int(head[1].removeprefix("# exit: "))
    work = tmp_path / case.name
    shutil.copytree(case, work)
    shutil.copytree(case.parent / "model", work / "model")
    before = _state(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    r = subprocess.run([sys.executable, "-m", "hepray.cli", "run", "job.yaml"], capture_output=True, text=True,
                       cwd=work, env=env, timeout=300)
    errors = [line for line in r.stderr.splitlines() if line.startswith("hepray: error: ")]
    assert r.returncode == code and len(errors) == 1 and expect in errors[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    after = {k: v for k, v in _state(tmp_path).items() if not k.startswith(f"{case.name}/run/")}
    assert after == before  # the inputs, the model, the job: untouched
    run = work / "run"
    written = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) if run.exists() else []
    if code == 2:  # refused while planning: no shard ran, no part written
        assert not [w for w in written if w.endswith((".root", ".parquet"))] and "parts/_manifest.json" not in written


BAD = Path(__file__).parent / "data" / "bad_data"


def test_nonfinite_inputs_counted_per_shard(ray_session, tmp_path):
    case = BAD / "06_nan_in_a_feature"
    job = hepray.load_job(case / "job.yaml", overrides={"engine.on_nonfinite": "count", "output.dir": str(tmp_path / "run"),
                                                        "dataset.files": str(case / "a.root"), "model.path": str(BAD / "model")})
    s = hepray.run(job, quiet=True)
    assert s["events_out"] == 200 and s["shards_failed"] == 0
    man = json.loads((tmp_path / "run" / "parts" / "_manifest.json").read_text())
    assert [p["nonfinite"] for p in man["parts"]] == [{"f1": 1}, {"f1": 2}]


def test_an_empty_file_among_good_ones_is_listed_not_fatal(toy, tmp_path):
    files = [toy["files"][0], str(BAD / "05_empty_tree" / "a.root")]
    p = hepray.plan(infer_job(toy, tmp_path, dataset={"files": files}))
    assert p["events"] == 20_000 and [s["skipped"] for s in p["skipped"]] == [files[1]]
    assert p["skipped"][0]["error"] == f"{files[1]}: tree 'Events' has no events; remove the file from `files:`"


def test_a_file_name_with_brackets_is_read_as_a_literal_path(toy, tmp_path):
    literal, lookalike = tmp_path / "run[1].root", tmp_path / "run1.root"
    shutil.copy(toy["files"][0], literal)
    p = hepray.plan(infer_job(toy, tmp_path, dataset={"files": [str(literal)]}))
    assert p["files"] == 1 and p["shards"][0].file == str(literal)  # was: "pattern matched no files"
    shutil.copy(toy["files"][1], lookalike)  # what the glob run[1].root matches
    p = hepray.plan(infer_job(toy, tmp_path, dataset={"files": [str(literal)]}))
    assert [s.file for s in p["shards"]] == [str(literal)] * 4
    p = hepray.plan(infer_job(toy, tmp_path, dataset={"files": [str(tmp_path / "run[0-9].root")]}))
    assert {s.file for s in p["shards"]} == {str(lookalike)}  # a real pattern still globs
