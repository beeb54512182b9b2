"""``hepray verify RUN_DIR``: every part of a finished run checked against its commit marker and
the manifest (size and sha256), so a run folder copied, archived or left on a flaky disk can be
trusted again without rerunning it.

A run folder holds one parts folder per mapped stage (``parts/``, ``train_parts/``...), each
with its ``_manifest.json`` and ``_committed/`` markers. A part is good when the manifest lists
it, its marker reads, names it and records the manifest's size and checksum, and the file has
exactly that size and checksum. Anything else is listed: one line per bad part or marker.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from .parts import COMMITTED, AnyPath, as_path, marker_path, read_marker, sha256_file

MANIFEST = "_manifest.json"
THREADS = 8  # hashing releases the GIL; on a store each check is a round trip


def parts_dirs(run_dir: AnyPath) -> list[AnyPath]:
    """The parts folders of a run: those holding a manifest or commit markers."""
    found = {p.parent for p in run_dir.glob(f"*/{MANIFEST}")} | {p.parent for p in run_dir.glob(f"*/{COMMITTED}")}
    return sorted(found, key=str)


def _check_part(parts_dir: AnyPath, entry: dict) -> str | None:
    """None if the manifest's ``entry`` is a good part, else why not (one line)."""
    sid, name = entry.get("shard_id"), entry.get("part")
    if not isinstance(sid, str) or not isinstance(name, str) or "/" in name or "/" in sid:
        return f"{parts_dir / MANIFEST}: entry {entry.get('index')} names no valid shard or part"
    try:
        rec = read_marker(marker_path(parts_dir, sid))
    except ValueError as exc:  # corrupt: not JSON, not UTF-8, no part named
        return str(exc)
    except OSError as exc:
        return f"{marker_path(parts_dir, sid)}: cannot read the commit marker ({type(exc).__name__})"
    part = parts_dir / name
    if rec is None:
        return f"{part}: no commit marker {marker_path(parts_dir, sid)}"
    if rec["part"] != name:
        return f"{part}: the commit marker names another part ({rec['part']})"
    for key in ("bytes_written", "sha256"):
        if entry.get(key) is not None and rec.get(key) != entry[key]:
            return f"{part}: {key} differs between the manifest and the commit marker"
    if not rec.get("sha256"):
        return f"{part}: the commit marker holds no checksum"
    try:
        size = part.stat().st_size
    except (FileNotFoundError, NotADirectoryError):
        return f"{part}: missing"
    if size != rec.get("bytes_written"):
        return f"{part}: {size} bytes, the commit marker says {rec.get('bytes_written')}"
    if sha256_file(part) != rec["sha256"]:
        return f"{part}: checksum differs from the commit marker (the file changed or is corrupt)"
    return None


def verify_parts(parts_dir: AnyPath) -> tuple[int, list[str]]:
    """(parts checked, problems) of one parts folder."""
    try:
        manifest = json.loads((parts_dir / MANIFEST).read_bytes().decode())
    except FileNotFoundError:
        return 0, [f"{parts_dir / MANIFEST}: missing (the run did not finish: rerun it with --resume)"]
    except (UnicodeDecodeError, ValueError):
        return 0, [f"{parts_dir / MANIFEST}: corrupt (not JSON)"]
    entries = manifest.get("parts") if isinstance(manifest, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return 0, [f"{parts_dir / MANIFEST}: corrupt (no list of parts)"]
    with ThreadPoolExecutor(THREADS) as pool:
        problems = [p for p in pool.map(lambda e: _check_part(parts_dir, e), entries) if p]
    listed = {e.get("part") for e in entries}
    # a part file the manifest does not list: a run's last step removes these, so it was added later
    for p in parts_dir.glob("*"):
        if p.name.endswith((".root", ".parquet")) and p.name not in listed:
            problems.append(f"{p}: not in the manifest")
    return len(entries), problems


def verify_run(run_dir) -> tuple[int, list[str]]:
    """(parts checked, problems) of every parts folder of a run; a folder with none is a problem."""
    run_dir = as_path(run_dir)
    dirs = parts_dirs(run_dir)
    if not dirs:
        return 0, [f"{run_dir}: no parts folder with a {MANIFEST} (not a hepray run folder?)"]
    n, problems = 0, []
    for d in dirs:
        k, bad = verify_parts(d)
        n += k
        problems += bad
    return n, problems
