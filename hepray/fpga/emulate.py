"""Bit-accurate emulation: compile a written HLS project's C simulation with g++ and call it.

Why not hls4ml's ``compile()/predict()`` or conifer's ``compile()/decision_function()``
directly: both keep a library handle that cannot be pickled (so it cannot travel to a Ray actor),
both loop over events in Python with one foreign call per event, and conifer ``chdir``s around
every call (unsafe with threads). Here the *written project* travels as bytes
(:func:`pack_project`), each actor compiles it once in its own folder, and one ctypes call runs a
whole array through the same C++ the firmware is synthesised from (hls4ml: the sources and
flags of its ``build_lib.sh``; conifer: ``firmware/*.cpp`` plus a small extern "C" bridge), each
compiled as one translation unit. ctypes releases the GIL during the call.
"""

from __future__ import annotations

import ctypes
import functools
import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np

from ..errors import HeprayError
from .hls import PROJECT_META

_SKIP_SUFFIXES = (".so", ".o", ".tmp")
_SKIP_DIRS = ("tb_data", "__pycache__")


class CompileError(HeprayError):
    """g++ failed on a generated project; the message ends with the compiler's last lines."""

    def __reduce__(self):
        return (CompileError, (self.message,))


class Emulator:
    """A compiled C simulation: ``predict(X[n, n_in]) -> float64[n, n_out]``."""

    def __init__(self, project_dir: str | Path, lib_path: Path, meta: dict, compile_s: float):
        self.project_dir = Path(project_dir)
        self.meta = meta
        self.kind = meta["kind"]
        self.n_inputs, self.n_outputs = int(meta["n_inputs"]), int(meta["n_outputs"])
        self.compile_s = compile_s
        self._lib = ctypes.CDLL(str(lib_path), mode=os.RTLD_LOCAL)
        f32 = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
        if self.kind == "hls4ml":
            name = meta["project_name"]
            self._out_dtype = np.float32
            self._batch = getattr(self._lib, f"{name}_batch_float")
            self._batch.argtypes = [f32, f32, ctypes.c_long]
            self._one = getattr(self._lib, f"{name}_float")
            self._one.argtypes = [f32, f32]
        else:
            f64 = np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS")
            self._out_dtype = np.float64
            self._batch = self._lib.hepray_batch_float
            self._batch.argtypes = [f32, f64, ctypes.c_long]
            self._one = None
        self._batch.restype = None

    def _check(self, X) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_inputs:
            raise ValueError(f"expected inputs of shape (n, {self.n_inputs}), got {X.shape}")
        return X

    def predict(self, X) -> np.ndarray:
        """All events in one C call (the C++ loops)."""
        X = self._check(X)
        out = np.zeros((len(X), self.n_outputs), dtype=self._out_dtype)
        if len(X):
            self._batch(X, out, len(X))
        return out.astype(np.float64)

    def predict_per_event(self, X) -> np.ndarray:
        """One C call per event from a Python loop: what hls4ml's and conifer's predict do."""
        X = self._check(X)
        out = np.zeros((len(X), self.n_outputs), dtype=self._out_dtype)
        for i in range(len(X)):
            if self._one is not None:
                self._one(X[i], out[i])
            else:
                self._batch(X[i:i + 1], out[i:i + 1], 1)
        return out.astype(np.float64)

    def throughput(self, X, per_event_max: int = 2000) -> dict:
        """Events per second, batched vs one call per event (on at most ``per_event_max``)."""
        X = self._check(X)
        t0 = time.perf_counter()
        self.predict(X)
        batched = time.perf_counter() - t0
        sub = X[:per_event_max]
        t0 = time.perf_counter()
        self.predict_per_event(sub)
        single = time.perf_counter() - t0
        return {"events": len(X), "batched_events_per_s": len(X) / max(batched, 1e-9),
                "per_event_events": len(sub), "per_event_events_per_s": len(sub) / max(single, 1e-9)}


def project_meta(project_dir: str | Path) -> dict:
    return json.loads((Path(project_dir) / PROJECT_META).read_text())


def compile_project(project_dir: str | Path, timeout_s: float = 600) -> Emulator:
    """Compile the project's C simulation (g++) and load it."""
    project_dir = Path(project_dir).resolve()
    meta = project_meta(project_dir)
    t0 = time.perf_counter()
    lib = _compile_hls4ml(project_dir, meta, timeout_s) if meta["kind"] == "hls4ml" else _compile_conifer(project_dir, meta, timeout_s)
    return Emulator(project_dir, lib, meta, time.perf_counter() - t0)


def _run(cmd: list[str], cwd: Path, timeout_s: float, what: str) -> None:
    try:
        res = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise CompileError(f"{what}: {cmd[0]} not found; install g++ (apt-get install -y g++)") from None
    except subprocess.TimeoutExpired:
        raise CompileError(f"{what}: compiling took longer than {timeout_s:.0f} s") from None
    if res.returncode != 0:
        tail = "\n".join(res.stdout.strip().splitlines()[-15:])
        raise CompileError(f"{what}: compilation failed (exit {res.returncode}):\n{tail}")


@functools.cache
def _gxx_accepts(flag: str) -> bool:
    """Whether g++ takes ``flag`` (hls4ml's build_lib.sh probes -std=c++23 and -fno-gnu-unique)."""
    try:
        res = subprocess.run(["g++", "-Werror", "-fsyntax-only", flag, "-xc++", "-", "-o", os.devnull],
                             input="", capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def _compile_hls4ml(d: Path, meta: dict, timeout_s: float) -> Path:
    """hls4ml's ``build_lib.sh`` recipe (same sources, same flags: ``-O3 -fPIC``, ``-std=c++23``
    when g++ takes it, ``-fno-gnu-unique``, ``WEIGHTS_DIR``), but the firmware and the bridge as
    one translation unit: the ap_types headers are parsed once, which halves the compile time."""
    name = meta["project_name"]
    unity = d / "hepray_unity.cpp"
    unity.write_text(f'#include "firmware/{name}.cpp"\n#include "{name}_bridge.cpp"\n')
    lib = d / f"hepray_{name}.so"
    flags = ["-O3", "-fPIC", "-shared", "-w"]
    flags += ["-std=c++23"] if _gxx_accepts("-std=c++23") else ["-std=c++11"]
    flags += ["-fno-gnu-unique"] if _gxx_accepts("-fno-gnu-unique") else []
    weights = f'-DWEIGHTS_DIR="{d / "firmware" / "weights"}"'
    _run(["g++", *flags, "-Ifirmware/ap_types/", weights, unity.name, "-o", str(lib)], d, timeout_s, f"hls4ml project {d}")
    return lib


def _compile_conifer(d: Path, meta: dict, timeout_s: float) -> Path:
    """The conifer Xilinx HLS firmware through the hepray bridge (one translation unit that
    includes ``firmware/*.cpp``), with conifer's flags ``-std=c++14`` but ``-O2`` rather than
    ``-O3``: same results, shorter compiles; no pybind11."""
    name = meta["project_name"]
    lib = d / f"hepray_{name}.so"
    cmd = ["g++", "-O2", "-std=c++14", "-fPIC", "-shared", "-fno-gnu-unique", f"-I{d / 'ap_types'}", f"-I{d / 'firmware'}",
           "hepray_bridge.cpp", "-o", str(lib)]
    _run(cmd, d, timeout_s, f"conifer project {d}")
    return lib


# -- shipping a project to an actor ------------------------------------------------------------------

def pack_project(project_dir: str | Path) -> bytes:
    """The written project as gzip'd tar bytes, build products left out (they are rebuilt)."""
    project_dir = Path(project_dir)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for path in sorted(project_dir.rglob("*")):
            rel = path.relative_to(project_dir)
            if path.is_dir() or path.suffix in _SKIP_SUFFIXES or any(p in _SKIP_DIRS for p in rel.parts):
                continue
            tar.add(path, arcname=str(rel), recursive=False)
    return buf.getvalue()


def unpack_project(blob: bytes, dest: str | Path) -> Path:
    """Unpack :func:`pack_project` bytes into ``dest`` (refusing paths that leave it)."""
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for m in tar.getmembers():
            target = (dest / m.name).resolve()
            if not str(target).startswith(str(dest) + os.sep) or not (m.isfile() or m.isdir()):
                raise HeprayError(f"refusing project archive member {m.name!r}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.10.12: members were checked above
            tar.extractall(dest)
    return dest
