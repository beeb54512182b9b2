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
