"""Turning ``files:`` patterns into concrete paths/URLs, and opening them with clear errors."""

from __future__ import annotations

import contextlib
import glob
import os
from collections import OrderedDict

from ..errors import ConfigError, DataError, TreeNotFound


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def expand(patterns: str | list[str], resolve=lambda p: p, field: str = "dataset.files") -> list[str]:
    """Globs, lists and URLs -> an ordered, de-duplicated file list. A pattern that matches
    nothing is an error (a silent empty dataset is how events go missing)."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    out: list[str] = []
    for pat in patterns:
        pat = resolve(pat)
        # a name that exists as written is that file, even with glob characters: `run[1].root`
        # must not become the pattern that matches `run1.root`
        if is_url(pat):
            if any(ch in pat for ch in "*?["):
                from fsspec.core import url_to_fs

                fs, path = url_to_fs(pat)
                proto = pat.split("://")[0]
                found = [pat] if fs.exists(path) else sorted(f"{proto}://{p}" if "://" not in p else p
                                                                 for p in fs.glob(pat))
            else:
                found = [pat]
        else:
            pat = os.path.expanduser(pat.removeprefix("file://"))
            literal = not any(ch in pat for ch in "*?[") or os.path.exists(pat)
            found = [pat] if literal else sorted(glob.glob(pat))
        if not found:
            raise ConfigError("", field, f"pattern {pat!r} matched no files")
        out.extend(f for f in found if f not in out)
    return out


def _open_options(path: str) -> dict:
    """uproot options per protocol: a timeout for local, HTTP and XRootD sources; fsspec's object
    stores (s3://, gs://...) take their own client settings, and s3fs refuses ``timeout``."""
    proto = path.split("://", 1)[0] if "://" in path else "file"
    if proto in ("file", "http", "https", "root"):
        return {"timeout": 60}
    opts = {}
    if proto in ("s3", "s3a") and os.environ.get("AWS_ENDPOINT_URL"):  # as StorePath does (io/parts.py)
        opts["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    return opts


def open_tree(path: str, tree: str):
    """Open ``path`` and return (file, tree-like object). Errors name the file and say what to do."""
    import uproot

    try:
        f = uproot.open(path, **_open_options(path))
    except FileNotFoundError:
        raise DataError(path, "file not found", hint="check `files:`, or set engine.on_error: skip") from None
    except Exception as exc:  # uproot raises many types for a damaged header
        raise DataError(path, f"cannot open as ROOT ({_first_line(exc)})",
                        hint="the file may be empty, truncated or not ROOT; re-copy it or set engine.on_error: skip") from None
    try:
        obj = f[tree]
    except Exception:
        names = sorted({k.split(";")[0] for k, c in f.classnames().items() if c in ("TTree", "ROOT::RNTuple", "ROOT::Experimental::RNTuple")})
        f.close()
        raise TreeNotFound(path, tree, names) from None
    if not hasattr(obj, "num_entries"):
        f.close()
        raise DataError(path, f"{tree!r} is a {type(obj).__name__}, not a TTree or RNTuple", hint="set `tree:`")
    return f, obj


# Trees kept open between reads in this process: shard actors turn this on (keep_open), because
# opening a NanoAOD TTree (~950 branches) costs ~0.3 s, per shard otherwise. Keyed by the shard's
# file identity too, so a file replaced at the same path is never read through an old handle.
_kept: OrderedDict[tuple, tuple] = OrderedDict()
_keep_n = 0


def keep_open(n: int) -> None:
    """Keep the ``n`` most recently read trees open in this process; 0 closes them all."""
    global _keep_n
    _keep_n = n
    while len(_kept) > n:
        _kept.popitem(last=False)[1][0].close()


@contextlib.contextmanager
def opened_tree(path: str, tree: str, identity: str = ""):
    """``open_tree`` as a context: the file is closed at the end, or kept for the next read of
    the same file when ``keep_open`` is on. A handle that saw an error is always closed."""
    key = (path, tree, identity)
    f, obj = _kept.pop(key, None) or open_tree(path, tree)
    try:
        yield f, obj
    except BaseException:
        f.close()
        raise
    if _keep_n <= 0:
        f.close()
        return
    _kept[key] = (f, obj)  # most recent last
    keep_open(_keep_n)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
