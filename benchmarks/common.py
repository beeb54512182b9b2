"""Helpers shared by the benchmarks: timing, peak memory of a process tree, sample making."""

from __future__ import annotations

import os
import resource
import threading
import time
from pathlib import Path

import numpy as np


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process in MB (from /proc, Linux)."""
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRSS:
    """Samples this process's RSS every 50 ms: the peak during a block."""

    def __enter__(self):
        self.peak, self._stop = rss_mb(), False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_flat(path: Path, n: int, n_branches: int = 16, seed: int = 0, basket: int = 100_000, codec: str = "zstd"):
    """``n`` events of ``n_branches`` float32 branches x0.., a label, run/event numbers."""
    import uproot

    from hepray.io.parts import _compression

    rng = np.random.default_rng(seed)
    with uproot.recreate(path, compression=_compression(codec)) as f:
        for start in range(0, n, basket):
            m = min(basket, n - start)
            y = rng.integers(0, 2, m)
            cols = {f"x{i}": (rng.normal(size=m) + 0.3 * y * (i % 3)).astype(np.float32) for i in range(n_branches)}
            cols.update(label=y.astype(np.int32), run=np.ones(m, np.int32),
                        luminosityBlock=((start + np.arange(m)) // 1000).astype(np.int32),
                        event=np.arange(start, start + m, dtype=np.int64))
            if start == 0:
                f.mktree("Events", {k: v.dtype for k, v in cols.items()})
            f["Events"].extend(cols)
    return path


def timed(fn, *a, **k):
    t0 = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t0


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages (/proc/loadavg): say how busy the machine was."""
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def interleaved(sides: dict, repeats: int) -> dict[str, list]:
    """Run each side (name -> callable returning a dict with ``seconds``) ``repeats`` times,
    alternating the order each round, so drifting load on a shared machine hits all sides alike."""
    names, out = list(sides), {n: [] for n in sides}
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            res = sides[n]()
            res["loadavg"] = loadavg()
            out[n].append(res)
            print(f"  round {r + 1} {n}: {res['seconds']:.1f}s (load {res['loadavg'][0]:.1f})", flush=True)
    return out


def median_of(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return float(np.median(vals)) if vals else None


# `hepray run job.yaml` as a user types it, timed from outside (interpreter start-up and every
# import included, as for `python train.py`): wall seconds, peak RSS of that child process, its
# summary.json and the per-stage seconds of its metrics.json (where the workload writes them)
HEPRAY_CLI = r'''
import json, resource, subprocess, sys, time
job_file, out = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
r = subprocess.run([sys.executable, "-m", "hepray.cli", "run", job_file, "--overwrite"], capture_output=True, text=True)
t1 = time.perf_counter()
if r.returncode:
    sys.exit(r.stderr[-3000:])
m = json.load(open(out + "/metrics.json"))
print(json.dumps({"seconds": t1 - t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "summary": json.load(open(out + "/summary.json")), "stages": m.get("seconds", {})}))
'''


def python_side(code: str, *args) -> dict:
    """Run ``code`` in a fresh interpreter with ``args`` (non-strings as JSON); its last stdout
    line, parsed as JSON."""
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code, *(a if isinstance(a, str) else json.dumps(a) for a in args)],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])
