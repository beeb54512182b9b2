"""A run folder: made by hepray (a marker says so), written by one run at a time (a lock).

``--overwrite`` deletes only folders hepray made (the marker ``.hepray-run`` is there) and never
``/``, the home folder, the working directory or one of its parents, or a bucket root. The lock
``.hepray-lock`` names the host and pid of the run holding it: a lock whose process is gone
(same host) is stale and taken over; on object stores the lock is a conditional create
(``If-None-Match: *``), so two drivers cannot both get it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError, HeprayError
from .parts import AnyPath, StorePath, _create_exclusive, as_path

RUN_MARKER = ".hepray-run"
LOCK = ".hepray-lock"


def create(run_dir: AnyPath, job) -> None:
    """Make the run folder; a folder hepray makes (or finds empty) gets the marker."""
    new = all(c.name == LOCK for c in _children(run_dir))  # absent, empty, or only our lock
    run_dir.mkdir(parents=True, exist_ok=True)
    if new:
        (run_dir / RUN_MARKER).write_text(json.dumps({"job": job.name, "kind": job.kind,
                                                      "created": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def check_removable(run_dir: AnyPath, where: str = "") -> None:
    """Refuse (ConfigError: exit 2) to let ``--overwrite`` delete anything hepray did not make."""
    why = None
    if isinstance(run_dir, StorePath):
        _, path = run_dir._fs()
        if "/" not in path.strip("/"):
            why = "it is a bucket root"
    else:
        p = Path(os.path.realpath(run_dir))
        cwd = Path(os.path.realpath(os.getcwd()))
        if p == Path(p.anchor):
            why = "it is the filesystem root"
        elif p == Path(os.path.realpath(os.path.expanduser("~"))):
            why = "it is the home folder"
        elif cwd == p or cwd.is_relative_to(p):
            why = "it is the working directory or one of its parents"
    if why is None and run_dir.exists() and _children(run_dir) and not (run_dir / RUN_MARKER).exists():
        why = f"hepray did not make it (no {RUN_MARKER} marker)"
    if why:
        raise ConfigError(where, "output.dir", f"--overwrite refuses to delete {run_dir}: {why}; "
                                               "choose another output.dir or delete it yourself")


def clear(run_dir: AnyPath) -> None:
    """Delete a run folder's contents (after :func:`check_removable`), keeping our lock and marker."""
    from .parts import remove_tree

    keep = {LOCK, RUN_MARKER}
    for child in _children(run_dir):
        if child.name not in keep:
            remove_tree(child)


def _children(run_dir: AnyPath) -> list[AnyPath]:
    if isinstance(run_dir, StorePath):
        fs, p = run_dir._fs()
        try:
            return [run_dir / e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False)]
        except FileNotFoundError:
            return []
    try:
        return list(run_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


# -- one writer per run folder -----------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextlib.contextmanager
def locked(run_dir: AnyPath) -> Iterator[dict]:
    """Hold the run folder's lock for the block; raise HeprayError naming the holder if taken."""
    run_dir = as_path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
          "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(3):
        if _create_exclusive(path, json.dumps(me).encode()):
            break
        try:
            held = json.loads(path.read_bytes())
            host, pid = held["host"], int(held["pid"])
        except FileNotFoundError:
            continue  # released meanwhile
        except (ValueError, KeyError, TypeError):
            held, host, pid = {}, me["host"], -1  # unreadable: a lock whose writer died mid-write
        if host == me["host"] and (pid < 0 or not _alive(pid)):
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        raise HeprayError(f"{run_dir} is in use by another run (host {host}, pid {pid}, since "
                          f"{held.get('started', '?')}); wait for it to finish, or delete {path} if that run is gone")
    else:
        raise HeprayError(f"{run_dir}: could not take the lock {path}; delete it if no run uses the folder")
    try:
        yield me
    finally:
        with contextlib.suppress(Exception):
            if json.loads(path.read_bytes()).get("token") == me["token"]:
                path.unlink(missing_ok=True)
