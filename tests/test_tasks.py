"""The engine's two fan-outs' small pieces: ``map_tasks`` (ordered, bounded, in process or on Ray)
and per-shard summaries (returned with each part, added on the driver, kept across --resume)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

import hepray
from hepray.config import DatasetSpec, JobConfig
from hepray.data.reading import read_shard
from hepray.engine import summary as S
from hepray.engine.tasks import map_tasks, window_for
from hepray.errors import DataError
from hepray.workloads import Registry
from hepray.workloads.base import PartData, ShardProcessor, Workload


def _slow_square(x, scale):
    time.sleep(0.05 * (x % 3))  # later items finish first: the order must still be the items'
    return x * x * scale, os.getpid()


def _fail_on(x, bad):
    if x == bad:
        raise DataError(f"item{x}.root", "broken")
    return x


def test_map_tasks_in_process_keeps_order_and_needs_no_ray():
    out = list(map_tasks(_slow_square, range(5), 2, parallel=False))
    assert [v for v, _ in out] == [0, 2, 8, 18, 32]
    assert {p for _, p in out} == {os.getpid()}
    # parallel=None with one item and no Ray on hand: here too (a small job never starts Ray)
    assert [v for v, _ in map_tasks(_slow_square, [3], 1)] == [9]
    with pytest.raises(DataError, match="item2.root: broken"):
        list(map_tasks(_fail_on, range(4), 2, parallel=False))


def test_map_tasks_on_ray_ordered_bounded_and_errors_unwrapped(ray_session):
    items = list(range(12))
    out = list(map_tasks(_slow_square, items, 3, parallel=True, window=3))
    assert [v for v, _ in out] == [3 * x * x for x in items]
    assert os.getpid() not in {p for _, p in out}  # ran in Ray workers
    assert window_for(1) == 2 * 2 and window_for(0.5) == 8  # the one formula (2 CPUs in the test session)
    # a task's DataError arrives as itself, one line, not Ray's wrapper
    with pytest.raises(DataError) as info:
        list(map_tasks(_fail_on, range(6), 4, parallel=True))
    assert info.value.message == "item4.root: broken"
    # parallel=None with Ray on hand and several items: Ray
    assert os.getpid() not in {p for _, p in map_tasks(_slow_square, [1, 2], 1)}


def test_summary_add_encode_decode():
    import hist

    h = hist.Hist.new.Reg(4, 0, 1, name="x").Weight()
    h.fill([0.1, 0.6, 0.6], weight=2.0)
    a = {"n": 3, "sumw": np.array([1.0, 2.0]), "h": h, "ids": [1], "nested": {"k": 1}}
    b = {"n": 4, "sumw": np.array([0.5, 0.5]), "h": h, "ids": [2], "other": 7.5}
    r = S.add(a, b)
    assert r["n"] == 7 and r["sumw"].tolist() == [1.5, 2.5] and r["ids"] == [1, 2] and r["other"] == 7.5
    assert r["h"].values().tolist() == [4.0, 0.0, 8.0, 0.0] and r["nested"] == {"k": 1}
    back = S.decode(json.loads(json.dumps(S.encode(r))))
    assert back["sumw"].dtype == np.float64 and back["sumw"].tolist() == [1.5, 2.5]
    assert isinstance(back["h"], hist.Hist) and back["h"].values().tolist() == [4.0, 0.0, 8.0, 0.0]
    assert back["h"].variances().tolist() == r["h"].variances().tolist()
    assert S.reduce([None, a, None]) is a and S.reduce([]) is None
    with pytest.raises(TypeError, match=r"summary\.bad: .* not object"):
        S.encode({"bad": object()})


class Counting(ShardProcessor):
    """Writes the entries and returns a summary: events, a sum, a histogram."""

    def __init__(self, dataset):
        self.dataset = dataset

    def process(self, shard):
        import hist

        cols, n = read_shard(shard, self.dataset)
        h = hist.Hist.new.Reg(5, 0, 1, name="u").Double()
        h.fill((np.asarray(cols["hepray_entry"]) % 5) / 5 + 0.01)
        return PartData({"hepray_entry": cols["hepray_entry"]}, n,
                        summary={"events": n, "entry_sum": np.array([float(np.sum(cols["hepray_entry"]))]), "h": h})


class CountConfig(JobConfig):
    dataset: DatasetSpec


def _registry():
    reg = Registry()

    @reg.register("count")
    class CountWorkload(Workload):
        Config = CountConfig

        def run(self, ctx):
            out = ctx.map_shards(ctx.plan(self.job.dataset), Counting(self.job.dataset))
            return {"events_in": out["events_in"], "totals": out["summary"]}

    return reg


def test_map_shards_summaries_reduced_on_driver_and_on_resume(ray_session, toy, tmp_path):
    reg = _registry()
    job = {"kind": "count", "dataset": {"files": toy["files"], "shard_events": 5000}, "output": {"dir": str(tmp_path)},
           "engine": {"workers": 2, "progress_every_s": 60}}
    s = hepray.run(job, registry=reg, quiet=True)
    tot = s["totals"]
    assert tot["events"] == 40_000 == s["events_in"]
    assert tot["entry_sum"].tolist() == [2 * sum(range(20_000))]  # each file's entries 0..19999
    assert tot["h"].sum() == 40_000 and tot["h"].values().tolist() == [8000.0] * 5
    man = json.loads((tmp_path / "parts" / "_manifest.json").read_text())
    assert S.decode(man["summary"])["events"] == 40_000
    # --resume with half the markers gone: kept shards' summaries (from their markers) + redone ones
    markers = sorted((tmp_path / "parts" / "_committed").glob("*.json"))
    for m in markers[::2]:
        m.unlink()
    again = hepray.run(job, registry=reg, resume=True, quiet=True)["totals"]
    assert again["events"] == 40_000 and again["entry_sum"].tolist() == tot["entry_sum"].tolist()
    assert again["h"].values().tolist() == [8000.0] * 5
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["totals"]["events"] == 40_000  # the run's summary.json holds the totals too
