"""One progress line: shards, events, events/s, ETA. Printed to stderr at a fixed interval."""

from __future__ import annotations

import sys
import time


def _si(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


class Progress:
    def __init__(self, label: str, total_shards: int, total_events: int, every_s: float = 5.0, stream=None):
        self.label, self.total_shards, self.total_events = label, total_shards, total_events
        self.every_s, self.stream = every_s, stream or sys.stderr
        self.t0 = self.last = time.monotonic()
        self.shards = self.events = self.failed = self.skipped = 0

    def update(self, events: int, failed: bool = False, force: bool = False):
        self.shards += 1
        self.events += events
        self.failed += int(failed)
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.last = now
            self.print()

    def rate(self) -> float:
        return self.events / max(time.monotonic() - self.t0, 1e-9)

    def print(self, final: bool = False):
        rate = self.rate()
        left = max(self.total_events - self.events - self.skipped, 0)
        eta = f"ETA {left / rate:.0f}s" if rate > 0 and not final else f"{time.monotonic() - self.t0:.1f}s"
        fail = f", {self.failed} failed" if self.failed else ""
        print(f"[hepray {self.label}] shards {self.shards}/{self.total_shards}{fail} | events "
              f"{_si(self.events)}/{_si(self.total_events - self.skipped)} | {_si(rate)} ev/s | {eta}",
              file=self.stream, flush=True)
