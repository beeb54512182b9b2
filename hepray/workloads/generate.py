"""``kind: generate``: Pythia 8 + FastJet + a parametric detector, one seed per shard, ROOT parts."""

from __future__ import annotations

import math
import time

from ..data.shard import Shard
from ..generate.config import GenerateConfig, ProcessSpec
from ..generate.detector import DetectorSpec, load_detector
from .base import PartData, ShardProcessor, Workload
from .registry import register


def plan_shards(job: GenerateConfig) -> list[Shard]:
    """N shards per process, each a seed and a block of event numbers.

    Shard ``k`` of a process owns events [k * stride, (k + 1) * stride): its Pythia seed and event
    numbers depend only on (job seed, process name, k), so shards are independent and re-running
    the job reproduces them."""
    from ..generate.pythia import shard_seed

    stride = job.generator.events_stride
    shards, index = [], 0
    for p in job.processes:
        per = _jets_per_shard(job, p)
        for k in range(math.ceil(p.n_jets / per)):
            shards.append(Shard(file=None, tree=None, entry_start=k * stride, entry_stop=(k + 1) * stride,
                                sample=p.name, label=p.label_value, seed=shard_seed(job.seed, p.name, k), index=index))
            index += 1
    return shards


def _jets_per_shard(job: GenerateConfig, p: ProcessSpec) -> int:
    return p.jets_per_shard or job.generator.jets_per_shard


class GenerateProcessor(ShardProcessor):
    """Turns a shard (process, seed, event block) into the columns of one part."""

    def __init__(self, job: GenerateConfig, detector: DetectorSpec):
        self.job, self.detector = job, detector

    def setup(self, num_cpus: int) -> None:
        from ..extras import require
        from ..generate.jets import silence_fastjet_banner
        from ..generate.pythia import import_pythia

        import_pythia()  # fail early, once per actor, with the install line
        require("fastjet")
        silence_fastjet_banner()

    def process(self, shard: Shard) -> PartData:
        from ..generate.producer import ShardTask, produce

        job = self.job
        proc = next(p for p in job.processes if p.name == shard.sample)
        per = _jets_per_shard(job, proc)
        k = shard.entry_start // job.generator.events_stride
        task = ShardTask(proc, k, int(shard.seed), min(per, proc.n_jets - k * per), shard.entry_start)
        t0 = time.perf_counter()
        cols, n_events, _ = produce(job, self.detector, task)
        jets = len(next(iter(cols.values()))) if cols else 0
        return PartData(cols, n_events, summary={"worker_seconds": time.perf_counter() - t0, "jets": jets,
                                                 "events": n_events})


@register("generate")
class Generate(Workload):
    """Generate labelled jet samples: Pythia 8, FastJet and a parametric detector, sharded by seed."""

    Config = GenerateConfig

    def detector(self) -> DetectorSpec:
        job = self.job
        return load_detector(job.detector, job.resolve, job.source)

    def run(self, ctx) -> dict:
        job: GenerateConfig = self.job
        det = self.detector()
        shards = plan_shards(job)
        n_jets = sum(p.n_jets for p in job.processes)
        ctx.log(f"plan: {len(shards)} shards, {n_jets} jets of {', '.join(p.name for p in job.processes)}; "
                f"detector {det.name}")
        ctx.write_json("detector.json", det.model_dump(mode="json"))
        from ..generate.pythia import EVENTS_PER_JET

        # progress counts generated events: estimate them from the measured events per jet
        events = int(sum(p.n_jets * EVENTS_PER_JET[p.kind] for p in job.processes))
        summary = ctx.map_shards(shards, GenerateProcessor(job, det), total=(len(shards), events))
        parts_dir = ctx.store.path("parts")
        summary["generation"] = _throughput(summary.pop("summary"))
        if job.plots:
            summary["physics"] = self.physics(ctx, parts_dir)
        return summary

    def physics(self, ctx, parts_dir) -> dict:
        """Sanity numbers and plots (``<run_dir>/plots``) from the written parts."""
        from ..generate.plots import make_plots, read_parts, summarize

        samples = read_parts(parts_dir)
        pt_range = (self.job.jets.pt_min, self.job.jets.pt_max)
        phys = summarize(samples, pt_range)
        paths = make_plots(samples, ctx.store.local("plots"), pt_range, phys)
        ctx.write_json("plots/physics.json", phys)
        for name, s in phys["samples"].items():
            ctx.log(f"{name}: {s['jets']} jets, mass peak gen {s['mass_peak_gen']:.0f} / reco "
                    f"{s['mass_peak_reco']:.0f} GeV, <tau32> reco {s['mean_tau32_reco']:.3f}")
        if "response" in phys:
            ctx.log(f"pT response {phys['response']['median']:.3f}, resolution {phys['response']['resolution']:.3f}; "
                    f"plots: {', '.join(p.name for p in paths)}")
        return phys


def _throughput(totals: dict | None) -> dict:
    """Jets and events per worker-second (time inside the actors), from the shards' summaries."""
    totals = totals or {}
    seconds, jets, events = (totals.get(k, 0) for k in ("worker_seconds", "jets", "events"))
    if not seconds:
        return {}
    return {"worker_seconds": round(seconds, 2), "jets_per_worker_s": round(jets / seconds, 2),
            "events_per_worker_s": round(events / seconds, 2)}

