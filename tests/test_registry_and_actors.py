"""A workload from a test's own registry (no global state): proves setup runs once per actor,
math threads are capped at the actor's CPUs, and a duplicate kind is refused."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import uproot

import hepray
from hepray.config import DatasetSpec, JobConfig
from hepray.data.reading import read_shard
from hepray.workloads import Registry
from hepray.workloads.base import PartData, ShardProcessor, Workload

from .conftest import infer_job


class Probe(ShardProcessor):
    def __init__(self, dataset):
        self.dataset, self.setups = dataset, 0

    def setup(self, num_cpus):
        self.setups += 1

    def process(self, shard):
        cols, n = read_shard(shard, self.dataset)
        k = len(cols["hepray_entry"])
        return PartData({"hepray_entry": cols["hepray_entry"], "pid": np.full(k, os.getpid()),
                         "setups": np.full(k, self.setups), "omp": np.full(k, int(os.environ.get("OMP_NUM_THREADS", "0")))}, n)


class ProbeConfig(JobConfig):
    dataset: DatasetSpec


def make_registry():
    reg = Registry()

    @reg.register("probe")
    class ProbeWorkload(Workload):
        Config = ProbeConfig

        def run(self, ctx):
            return ctx.map_shards(ctx.plan(self.job.dataset), Probe(self.job.dataset))

    return reg


def test_setup_once_per_actor_and_threads_capped(ray_session, toy, tmp_path):
    reg = make_registry()
    job = {"kind": "probe", "dataset": {"files": toy["files"], "shard_events": 5000}, "output": {"dir": str(tmp_path)},
           "engine": {"workers": 2, "progress_every_s": 60}}
    s = hepray.run(job, registry=reg, quiet=True)
    assert s["shards"] == 8
    man = json.loads((tmp_path / "parts" / "_manifest.json").read_text())
    a = [uproot.open(tmp_path / "parts" / p["part"])["hepray"].arrays(library="np") for p in man["parts"]]
    pids = np.concatenate([x["pid"] for x in a])
    assert set(np.concatenate([x["setups"] for x in a]).tolist()) == {1}  # never re-loaded per shard
    assert len(set(pids.tolist())) <= 2  # two actors did all eight shards
    assert set(np.concatenate([x["omp"] for x in a]).tolist()) == {1}  # 1 CPU per actor -> 1 thread


def test_unknown_and_duplicate_kinds():
    reg = make_registry()
    with pytest.raises(hepray.ConfigError, match="unknown kind 'infer'.*known kinds: probe"):
        hepray.load_job({"kind": "infer"}, registry=reg)
    with pytest.raises(ValueError, match="already registered"):
        @reg.register("probe")
        class Other(Workload):
            pass


def test_progress_line_shows_rate_and_eta(ray_session, toy, tmp_path, capsys):
    hepray.run(infer_job(toy, tmp_path, engine={"progress_every_s": 0.001}))
    err = capsys.readouterr().err
    assert "ev/s" in err and "ETA" in err and "shards 8/8" in err


def _pids(run_dir) -> set[int]:
    man = json.loads((run_dir / "parts" / "_manifest.json").read_text())
    return {int(p) for part in man["parts"] for p in uproot.open(run_dir / "parts" / part["part"])["hepray"]["pid"].array(library="np")}


def test_actors_kept_warm_between_runs_then_released(ray_session, toy, tmp_path):
    """A second run in one process reuses the first run's actors (setup runs again, once, for the
    new run); release_workers() and any other stage asking Ray for CPUs free them."""
    from hepray.engine import pool
    from hepray.engine.runtime import ensure_ray

    reg = make_registry()

    def job(out, **engine):
        return {"kind": "probe", "dataset": {"files": toy["files"], "shard_events": 5000}, "output": {"dir": str(out)},
                "engine": {"workers": 2, "progress_every_s": 60, **engine}}

    hepray.run(job(tmp_path / "a"), registry=reg, quiet=True)
    assert pool.parked() == 2
    hepray.run(job(tmp_path / "b"), registry=reg, quiet=True)
    assert _pids(tmp_path / "b") == _pids(tmp_path / "a")  # the same two processes
    man = json.loads((tmp_path / "b" / "parts" / "_manifest.json").read_text())
    setups = np.concatenate([uproot.open(tmp_path / "b" / "parts" / p["part"])["hepray"]["setups"].array(library="np") for p in man["parts"]])
    assert set(setups.tolist()) == {1}  # the new run's processor, set up once per actor

    ensure_ray()  # what Ray Train, planning and reading tasks call first
    assert pool.parked() == 0
    hepray.run(job(tmp_path / "c"), registry=reg, quiet=True)
    assert not _pids(tmp_path / "c") & _pids(tmp_path / "b")  # fresh actors
    assert hepray.release_workers() == 2 and pool.parked() == 0
    hepray.run(job(tmp_path / "d", keep_warm_s=0), registry=reg, quiet=True)
    assert pool.parked() == 0  # keep_warm_s: 0 turns the pool off


def test_trees_kept_open_only_when_asked(toy):
    """Actors keep the trees they read open for their next shard; elsewhere every read closes
    its file, and a handle that saw an error is dropped."""
    from hepray.data import files

    spec = DatasetSpec(files=toy["files"], shard_events=5000)
    shards = hepray.Dataset(spec).plan()
    try:
        files.keep_open(2)
        a, _ = read_shard(shards[0], spec, ["f0"])
        b, _ = read_shard(shards[1], spec, ["f0"])  # the same file, through the kept handle
        assert len(files._kept) == 1
        assert np.array_equal(b["hepray_entry"], np.arange(shards[1].entry_start, shards[1].entry_stop))
        with pytest.raises(hepray.DataError, match="nope"):
            read_shard(shards[0], spec, ["nope"])
        assert len(files._kept) == 0  # dropped after the error
    finally:
        files.keep_open(0)
    read_shard(shards[0], spec, ["f0"])
    assert len(files._kept) == 0


def test_column_major_feature_matrix_equals_row_major():
    from hepray.data.reading import feature_matrix

    cols = {f"x{i}": np.random.default_rng(i).normal(size=1000).astype(np.float32) for i in range(5)}
    C, F = feature_matrix(cols, list(cols)), feature_matrix(cols, list(cols), order="F")
    assert F.flags.f_contiguous and C.flags.c_contiguous and np.array_equal(C, F)
