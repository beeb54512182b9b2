"""The progress display: a live rich bar on a terminal, the one-line log elsewhere."""

from __future__ import annotations

import io

from hepray.engine.progress import Progress, wants_bar


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_line_when_not_a_terminal(monkeypatch):
    monkeypatch.delenv("HEPRAY_PROGRESS", raising=False)
    out = io.StringIO()
    p = Progress("job", 4, 4000, every_s=0.0, stream=out)
    assert not p.bar
    for _ in range(4):
        p.update(1000)
    p.print(final=True)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and "\x1b[" not in out.getvalue()  # no escape codes in a log
    assert lines[-1].startswith("[hepray job] shards 4/4 | events 4.00k/4.00k")


def test_bar_on_a_terminal(monkeypatch):
    monkeypatch.delenv("HEPRAY_PROGRESS", raising=False)
    out = _Tty()
    assert wants_bar(out)
    p = Progress("job", 3, 3000, stream=out)
    assert p.bar
    for _ in range(3):
        p.update(1000)
    p.print(final=True)
    text = out.getvalue()
    assert "\x1b[" in text and "shards 3/3" in text and "ev/s" in text and "ETA" in text  # drawn by rich
    assert "[hepray job] shards 3/3 |" in text.rstrip().splitlines()[-1]  # and the total line last


def test_forced_by_environment(monkeypatch):
    monkeypatch.setenv("HEPRAY_PROGRESS", "line")
    assert not wants_bar(_Tty())
    monkeypatch.setenv("HEPRAY_PROGRESS", "bar")
    assert wants_bar(io.StringIO())
