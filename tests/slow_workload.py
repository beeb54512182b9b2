"""An infer workload slowed down per shard, in its own registry, so fault tests can strike mid-run.
Importable by a subprocess driver (``python -m tests.slow_workload job.json``)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from hepray.workloads import Registry
from hepray.workloads.infer import Infer, InferConfig, InferProcessor

REGISTRY = Registry()


class SlowConfig(InferConfig):
    delay_s: float = 0.5
    pid_dir: str = ""
    hang_index: int = -1  # the shard of this index hangs (forever, or only in its first attempts)
    hang_attempts: int = 10**6


class SlowProcessor(InferProcessor):
    def __init__(self, *a, delay_s: float, pid_dir: str, hang_index: int = -1, hang_attempts: int = 10**6):
        super().__init__(*a)
        self.delay_s, self.pid_dir = delay_s, pid_dir
        self.hang_index, self.hang_attempts = hang_index, hang_attempts

    def setup(self, num_cpus):
        super().setup(num_cpus)
        if self.pid_dir:
            Path(self.pid_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.pid_dir) / str(os.getpid())).touch()

    def process(self, shard):
        time.sleep(self.delay_s)
        if shard.index == self.hang_index:
            tries = Path(self.pid_dir) / f"hang-{shard.index}"
            tries.mkdir(parents=True, exist_ok=True)
            (tries / str(os.getpid())).touch()
            if len(list(tries.iterdir())) <= self.hang_attempts:
                time.sleep(3600)
        return super().process(shard)


@REGISTRY.register("slow_infer")
class SlowInfer(Infer):
    Config = SlowConfig

    def run(self, ctx):
        import hepray.workloads.infer as infer_mod

        job = self.job
        original = infer_mod.InferProcessor
        infer_mod.InferProcessor = lambda *a: SlowProcessor(*a, delay_s=job.delay_s, pid_dir=job.pid_dir,
                                                            hang_index=job.hang_index, hang_attempts=job.hang_attempts)
        try:
            return super().run(ctx)
        finally:
            infer_mod.InferProcessor = original


if __name__ == "__main__":
    import hepray

    from hepray.errors import HeprayError

    job = json.loads(Path(sys.argv[1]).read_text())
    try:
        hepray.run(job, registry=REGISTRY, resume="--resume" in sys.argv, quiet=True)
    except HeprayError as exc:  # as the CLI ends
        sys.exit(f"hepray: error: {exc.message}")


class FlakyCommit:
    """A processor whose first attempt at each shard hands write_part columns of unequal length,
    so that attempt's commit fails (and writes no marker); later attempts are good."""

    def __init__(self, flags: str):
        self.flags = flags

    def setup(self, num_cpus):
        pass

    def process(self, shard):
        import numpy as np

        from hepray.workloads.base import PartData

        flag = Path(self.flags) / shard.shard_id
        first = not flag.exists()
        flag.touch()
        n = shard.num_entries
        return PartData({"a": np.arange(n, dtype=np.float32), "b": np.zeros(n - 1 if first else n)}, n)
