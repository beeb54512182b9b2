"""Progress of a run: shards, events, events/s, ETA.

On a terminal (stderr is a TTY) a live ``rich`` bar, redrawn a few times a second; elsewhere (CI,
``ray job submit`` logs, a file) one line at a fixed interval, as before. ``HEPRAY_PROGRESS=line``
or ``=bar`` forces one or the other. Either way the last line printed is the run's total.
"""

from __future__ import annotations

import os
import sys
import time


def _si(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def wants_bar(stream) -> bool:
    forced = os.environ.get("HEPRAY_PROGRESS", "").lower()
    if forced in ("bar", "line"):
        return forced == "bar"
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    def __init__(self, label: str, total_shards: int, total_events: int, every_s: float = 5.0, stream=None,
                 bar: bool | None = None):
        self.label, self.total_shards, self.total_events = label, total_shards, total_events
        self.every_s, self.stream = every_s, stream or sys.stderr
        self.t0 = self.last = time.monotonic()
        self.shards = self.events = self.failed = self.skipped = 0
        self.bar = wants_bar(self.stream) if bar is None else bar
        self._live = None
        if self.bar:
            self._start_bar()

    # -- the live bar ------------------------------------------------------------------------
    def _start_bar(self):
        try:
            from rich.console import Console
            from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeRemainingColumn
        except ImportError:  # rich is a core dependency; a trimmed environment gets the line
            self.bar = False
            return
        console = Console(file=self.stream, force_terminal=True) if not _isatty(self.stream) else Console(
            file=self.stream)
        self._live = Bar(TextColumn(f"[bold]hepray {self.label}"), BarColumn(),
                         TextColumn("shards {task.fields[shards]}"), TextColumn("events {task.fields[events]}"),
                         TextColumn("{task.fields[rate]} ev/s"), TextColumn("{task.fields[failed]}"),
                         TextColumn("ETA"), TimeRemainingColumn(), console=console, refresh_per_second=4,
                         transient=False)
        self._task = self._live.add_task("run", total=max(self.total_events, 1), **self._fields())
        self._live.start()

    def _fields(self) -> dict:
        return {"shards": f"{self.shards}/{self.total_shards}",
                "events": f"{_si(self.events)}/{_si(self.total_events - self.skipped)}",
                "rate": _si(self.rate()), "failed": f"{self.failed} failed" if self.failed else ""}

    def _refresh(self):
        self._live.update(self._task, completed=self.events + self.skipped, **self._fields())

    # -- both --------------------------------------------------------------------------------
    def update(self, events: int, failed: bool = False, force: bool = False):
        self.shards += 1
        self.events += events
        self.failed += int(failed)
        if self._live is not None:
            self._refresh()
            return
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.last = now
            self.print()

    def rate(self) -> float:
        return self.events / max(time.monotonic() - self.t0, 1e-9)

    def line(self, final: bool = False) -> str:
        rate = self.rate()
        left = max(self.total_events - self.events - self.skipped, 0)
        eta = f"ETA {left / rate:.0f}s" if rate > 0 and not final else f"{time.monotonic() - self.t0:.1f}s"
        fail = f", {self.failed} failed" if self.failed else ""
        return (f"[hepray {self.label}] shards {self.shards}/{self.total_shards}{fail} | events "
                f"{_si(self.events)}/{_si(self.total_events - self.skipped)} | {_si(rate)} ev/s | {eta}")

    def print(self, final: bool = False):
        if self._live is not None:
            self._refresh()
            if not final:
                return
            self._live.stop()
            self._live = None
        print(self.line(final), file=self.stream, flush=True)

    def close(self):
        """Stop the bar without the total line (an interrupted run)."""
        if self._live is not None:
            self._live.stop()
            self._live = None


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
