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
