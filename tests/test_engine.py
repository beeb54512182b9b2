"""The core engine end to end on a real local Ray instance and real ROOT files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import uproot
import xgboost as xgb

import hepray
from hepray.errors import ConfigError, JobFailed

from .conftest import infer_job


def _read_parts(run_dir, name="parts"):
    man = json.loads((run_dir / name / "_manifest.json").read_text())
    arrays = [uproot.open(run_dir / name / p["part"])["hepray"].arrays(library="np") for p in man["parts"]]
    return man, {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}


def test_infer_scores_every_event_once_and_match_xgboost(ray_session, toy, tmp_path):
    summary = hepray.run(infer_job(toy, tmp_path / "run"), quiet=True)
    assert summary["events_in"] == summary["events_out"] == 40_000
    assert summary["shards"] == 8 and summary["shards_failed"] == 0
    man, out = _read_parts(tmp_path / "run")
    # every (file, entry) exactly once, identified by the event number, not counts alone
    assert len(np.unique(out["event"])) == 40_000
    ref = []
    booster = xgb.Booster(model_file=f"{toy['model']}/model.json")
    for f in toy["files"]:
        a = uproot.open(f)["Events"].arrays(["f0", "f1", "f2", "f3", "event"], library="np")
        ref.append((a["event"], booster.inplace_predict(np.column_stack([a[k] for k in ("f0", "f1", "f2", "f3")]))))
    ev = np.concatenate([r[0] for r in ref])
    sc = np.concatenate([r[1] for r in ref])
    order = np.argsort(out["event"])
    np.testing.assert_allclose(out["score"][order], sc[np.argsort(ev)], rtol=1e-6)


def test_shards_align_to_clusters_and_ids_are_stable(toy):
    p1 = hepray.plan({"kind": "infer", "dataset": {"files": toy["files"], "shard_events": 7000},
                      "model": {"path": toy["model"]}})
    p2 = hepray.plan({"kind": "infer", "dataset": {"files": list(reversed(toy["files"])), "shard_events": 7000},
                      "model": {"path": toy["model"]}})  # another order: the same ids
    # clusters are 5000 entries: a 7000 target gives 10000-entry shards that never split a cluster
    assert {s.num_entries for s in p1["shards"]} == {10_000}
    assert all(s.entry_start % 5000 == 0 for s in p1["shards"])
    assert {s.shard_id for s in p1["shards"]} == {s.shard_id for s in p2["shards"]}
    assert p1["events"] == 40_000 and p1["bytes"] > 0


def test_resume_does_only_missing_shards_and_never_duplicates(ray_session, toy, tmp_path):
    job = infer_job(toy, tmp_path / "run")
    hepray.run(job, quiet=True)
    parts = tmp_path / "run" / "parts"
    committed = sorted((parts / "_committed").glob("*.json"))
    # simulate an interruption: two parts never committed
    for marker in committed[:2]:
        rec = json.loads(marker.read_text())
        (parts / rec["part"]).unlink()
        marker.unlink()
    with pytest.raises(hepray.HeprayError, match="--resume"):
        hepray.run(job, quiet=True)
    s = hepray.run(job, resume=True, quiet=True)
    assert s["shards_resumed"] == 6 and s["events_out"] == 40_000
    assert len(list(parts.glob("*.root"))) == 8
    _, out = _read_parts(tmp_path / "run")
    assert len(out["event"]) == len(np.unique(out["event"])) == 40_000


def test_parquet_output_and_cut_and_expressions(ray_session, toy, tmp_path):
    import awkward as ak

    job = infer_job(toy, tmp_path / "run", output={"format": "parquet"},
                    dataset={"expressions": {"nj": "num(Jet_pt)", "lead": "max(Jet_pt)"}, "cut": "(nj >= 2) & (f0 > -1)"},
                    keep=["nj", "lead"])
    s = hepray.run(job, quiet=True)
    man = json.loads((tmp_path / "run" / "parts" / "_manifest.json").read_text())
    arr = ak.concatenate([ak.from_parquet(tmp_path / "run" / "parts" / p["part"]) for p in man["parts"]])
    ref = 0
    for f in toy["files"]:
        a = uproot.open(f)["Events"].arrays(["Jet_pt", "f0"])
        ref += int(ak.sum((ak.num(a.Jet_pt) >= 2) & (a.f0 > -1)))
    assert s["events_in"] == 40_000 and s["events_out"] == len(arr) == ref
    assert ak.all(arr.nj >= 2) and set(arr.fields) >= {"score", "nj", "lead", "event", "hepray_entry"}


def test_two_runs_in_one_process(ray_session, toy, tmp_path):
    a = hepray.run(infer_job(toy, tmp_path / "a"), quiet=True)
    b = hepray.run(infer_job(toy, tmp_path / "b"), quiet=True)
    assert a["events_out"] == b["events_out"] == 40_000


def test_corrupt_file_fails_naming_it_or_is_skipped(ray_session, toy, tmp_path):
    bad = tmp_path / "truncated.root"
    data = open(toy["files"][0], "rb").read()
    bad.write_bytes(data[: len(data) // 2])
    files = [toy["files"][1], str(bad)]
    with pytest.raises((JobFailed, hepray.DataError), match="truncated.root"):
        hepray.run(infer_job(toy, tmp_path / "f", dataset={"files": files}), quiet=True)
    s = hepray.run(infer_job(toy, tmp_path / "s", dataset={"files": files}, engine={"on_error": "skip"}), quiet=True)
    man = json.loads((tmp_path / "s" / "parts" / "_manifest.json").read_text())
    listed = [f["source"] for f in man["failed"]] + [f["skipped"] for f in man["skipped_files"]]
    assert any("truncated.root" in x for x in listed)
    assert s["events_out"] >= 20_000  # the good file is complete
    assert not list((tmp_path / "s" / "parts").glob(".*.tmp"))  # nothing half-written


def test_missing_branch_names_file_and_suggests(ray_session, toy, tmp_path):
    job = infer_job(toy, tmp_path / "r", model={"feature_map": {"f3": "f_3"}})
    with pytest.raises(hepray.DataError, match=r"toy_0.root.*.f_3. not found.*did you mean 'f3'"):
        hepray.run(job, quiet=True)


@pytest.mark.parametrize("bad, field", [
    ({"dataset": {"files": "x.root", "shard_events": 0}}, "dataset.shard_events"),
    ({"dataset": {"files": "x.root", "cut": "__import__('os').system('echo hi')"}}, "dataset.cut"),
    ({"dataset": {"files": "x.root", "expressions": {"a": "x.__class__"}}}, "dataset.expressions.a"),
    ({"dataset": {"files": "x.root"}, "engine": {"wrkers": 2}}, "engine.wrkers"),
    ({"dataset": {"files": "x.root"}, "output": {"format": "csv"}}, "output.format"),
    ({"dataset": {}}, "dataset"),
])
def test_bad_job_is_one_line_naming_field(tmp_path, bad, field):
    job = {"kind": "infer", "model": {"path": "m.json"}, "output": {"dir": str(tmp_path / "out")}, **bad}
    path = tmp_path / "job.yaml"
    import yaml

    path.write_text(yaml.safe_dump(job))
    with pytest.raises(ConfigError) as exc:
        hepray.load_job(path)
    assert str(path) in exc.value.message and field in exc.value.message and "\n" not in exc.value.message
    r = subprocess.run([sys.executable, "-m", "hepray.cli", "run", str(path)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_kind_lists_known(tmp_path):
    with pytest.raises(ConfigError, match="unknown kind 'infr'.*did you mean 'infer'"):
        hepray.load_job({"kind": "infr"})


def test_model_that_is_not_xgboost_is_refused(toy, tmp_path):
    bad = tmp_path / "m"
    bad.mkdir()
    (bad / "model.json").write_text('{"not": "a model"}')
    (bad / "hepray_model.json").write_text('{"type": "xgboost", "file": "model.json", "features": ["f0"]}')
    job = infer_job(toy, tmp_path / "r", model={"path": str(bad)})
    with pytest.raises(hepray.errors.ModelLoadError, match="model.json: cannot load model"):
        hepray.run(job, quiet=True)


def test_many_files_planned_by_ray_tasks_match_driver_planning(ray_session, toy, tmp_path):
    from hepray.config import DatasetSpec
    from hepray.data.planning import iter_plan
    from hepray.engine.tasks import map_tasks

    for i in range(40):  # 40 names for the two toy files: above the parallel-planning threshold
        (tmp_path / f"f{i:02d}.root").symlink_to(toy["files"][i % 2])
    spec = DatasetSpec(files=[f"file://{tmp_path}/f*.root"], shard_events=10_000)
    par = list(iter_plan(spec, use_ray=True, mapper=map_tasks))
    seq = list(iter_plan(spec, use_ray=False))
    assert [s.shard_id for s in par] == [s.shard_id for s in seq]
    assert len(par) == 80 and len({s.shard_id for s in par}) == 80  # copies of one file stay distinct
    assert sum(s.num_entries for s in par) == 40 * 20_000


def test_gpus_per_worker_falls_back_to_cpus_without_a_gpu(ray_session, toy, tmp_path, capsys):
    """engine.gpus_per_worker (issue 21 item 5) on a cluster without GPUs: one warning line and
    the same scores as a CPU run (an actor asking Ray for a GPU here would never be placed)."""
    import numpy as np
    import uproot

    assert not ray_session.cluster_resources().get("GPU")
    cpu = hepray.run(infer_job(toy, tmp_path / "cpu", output={"format": "root"}), quiet=True)
    gpu = hepray.run(infer_job(toy, tmp_path / "gpu", engine={"gpus_per_worker": 1}), quiet=False)
    assert "engine.gpus_per_worker=1 but the Ray cluster has no GPUs: running on CPUs" in capsys.readouterr().err
    assert gpu["events_out"] == cpu["events_out"] == 40_000

    def scores(run):
        a = uproot.concatenate(f"{run}/parts/*.root:hepray", ["event", "score"], library="np")
        return a["score"][np.argsort(a["event"])]
    np.testing.assert_array_equal(scores(tmp_path / "gpu"), scores(tmp_path / "cpu"))


def test_device_is_cpu_unless_a_gpu_was_given_and_is_visible(monkeypatch):
    from hepray.models.predict import DEVICE_VAR, device

    monkeypatch.delenv(DEVICE_VAR, raising=False)
    assert device() == "cpu"
    monkeypatch.setenv(DEVICE_VAR, "cuda")  # Ray gave a GPU, but torch sees none on this machine
    import torch

    assert device() == ("cuda" if torch.cuda.is_available() else "cpu")
