"""A trained flash-simulation pipeline on disk and in memory.

On disk (``<run_dir>/model/``)::

    flashsim_pipeline.json      the manifest: parameterizations in order, their input and output
                                columns, derived columns, output dtypes, pass-through columns
    efficiency/                 hepray_model.json + model.pt (an MLP: also usable by ``kind: infer``)
    <parameterization>/         hepray_model.json + model.pt (flow or GAN state_dict)
                                [+ model.ts / model.onnx when exported]

Every state_dict is loaded with ``torch.load(weights_only=True)`` into a network rebuilt from its
``architecture`` (``hepray.models.build_model``): nothing is unpickled.

:meth:`Pipeline.generate` is a pure function of (input columns, seed): the efficiency uniforms and
then each parameterization's noise are drawn, for the whole shard, from one torch generator seeded
with the shard's seed, so the output does not depend on batch size or on which actor ran it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from ..data.expressions import Expression
from ..data.reading import feature_matrix
from ..errors import ModelLoadError
from ..models.artifact import METADATA, save_metadata

MANIFEST = "flashsim_pipeline.json"
FORMAT_VERSION = 1


def stream_seed(job_seed: int, shard_id: str) -> int:
    """The seed of one shard's random stream: a pure function of the job seed and the shard id,
    so re-running (or retrying) a shard reproduces it and no two shards share a stream."""
    digest = hashlib.sha256(f"hepray-flashsim/{job_seed}/{shard_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def save_network(folder: Path, network, meta: dict) -> None:
    """``model.pt`` (the state_dict) and ``hepray_model.json`` (``meta`` + architecture)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(network.state_dict(), buf)
    (folder / "model.pt").write_bytes(buf.getvalue())
    save_metadata(folder, {"type": "torch", "file": "model.pt", "architecture": network.arch, **meta})


def write_manifest(model_dir: Path, manifest: dict) -> Path:
    from ..io.parts import write_json_atomic

    path = Path(model_dir) / MANIFEST
    write_json_atomic(path, {"format_version": FORMAT_VERSION, "kind": "flashsim_pipeline", **manifest})
    return path


@dataclasses.dataclass
class PipelineBundle:
    """The manifest and every file's bytes, read once on the driver: actors on other nodes need no
    access to its disk, and the bundle pickles small (a few hundred kB)."""

    path: str
    manifest: dict
    files: dict[str, bytes]

    @classmethod
    def read(cls, path: str | os.PathLike) -> PipelineBundle:
        """A pipeline folder on a local disk or an object store (``s3://.../model``: downloaded)."""
        from ..io.parts import StorePath, as_path
        from ..io.store import local_copy

        if isinstance(as_path(path), StorePath):
            with local_copy(path) as local:
                bundle = cls.read(local)
            bundle.path = str(path)  # messages name the store's folder, not the download
            return bundle
        root = Path(path)
        mpath = root / MANIFEST if root.is_dir() else root
        root = mpath.parent
        if not mpath.exists():
            raise ModelLoadError(str(root), f"no {MANIFEST}: not a flash-simulation pipeline (train one with "
                                            f"`kind: train_flashsim`)")
        manifest = json.loads(mpath.read_text())
        files = {}
        for step in manifest_steps(manifest):
            for name in (METADATA, "model.pt"):
                f = root / step["dir"] / name
                if not f.exists():
                    raise ModelLoadError(str(f), "missing: the pipeline folder is incomplete")
                files[f"{step['dir']}/{name}"] = f.read_bytes()
        bundle = cls(str(root), manifest, files)
        bundle.load()  # fail here, naming the folder, rather than later in every actor
        return bundle

    def load(self) -> Pipeline:
        eff = self.manifest.get("efficiency")
        efficiency = _load_efficiency(self, eff) if eff else None
        params = [(p, _load_parameterization(self, p["dir"])) for p in self.manifest["parameterizations"]]
        return Pipeline(self.manifest, efficiency, params)

    def meta(self, folder: str) -> dict:
        return json.loads(self.files[f"{folder}/{METADATA}"])

    def state(self, folder: str) -> dict:
        import torch

        raw = self.files[f"{folder}/model.pt"]
        try:
            return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelLoadError(f"{self.path}/{folder}/model.pt", f"{type(exc).__name__}: {exc}") from None


def manifest_steps(manifest: dict) -> list[dict]:
    """The efficiency step (if any), then the parameterizations, in generation order."""
    eff = manifest.get("efficiency")
    return ([eff] if eff else []) + list(manifest["parameterizations"])


def _network(bundle: PipelineBundle, folder: str):
    from ..models import build_model

    meta = bundle.meta(folder)
    net = build_model(meta["architecture"])
    try:
        net.load_state_dict(bundle.state(folder))
    except RuntimeError as exc:
        raise ModelLoadError(f"{bundle.path}/{folder}", str(exc).splitlines()[0]) from None
    return net.eval(), meta


def _load_efficiency(bundle: PipelineBundle, step: dict):
    from .modules import EfficiencyModule

    net, meta = _network(bundle, step["dir"])
    return EfficiencyModule(net, meta["preprocessing"]).eval()


def _load_parameterization(bundle: PipelineBundle, folder: str):
    from .modules import ParameterizationModule

    net, meta = _network(bundle, folder)
    return ParameterizationModule(net, meta["flashsim"]).eval()


class Pipeline:
    """The loaded pipeline: ``generate(columns, seed)`` -> the detector-level columns."""

    def __init__(self, manifest: dict, efficiency, parameterizations: list[tuple[dict, object]]):
        self.manifest, self.efficiency, self.parameterizations = manifest, efficiency, parameterizations
        self.derived = {k: Expression(v, field=f"derived.{k}") for k, v in manifest.get("derived", {}).items()}

    @property
    def columns(self) -> list[str]:
        """What generation writes, in the full simulation's branch order."""
        return list(self.manifest["columns"])

    @property
    def expressions(self) -> dict[str, str]:
        """Dataset expressions the conditions need (e.g. a fault flag from the ``fault`` branch)."""
        return dict(self.manifest.get("expressions", {}))

    def inputs(self) -> list[str]:
        """Input columns (branches or expressions) generation reads."""
        made = set(self.columns)
        out: list[str] = []
        for step in manifest_steps(self.manifest):
            out += [c for c in step["conditions"] if c not in made and c not in out]
        return out

    def generate(self, cols: dict, seed: int, batch_size: int = 65536) -> dict[str, np.ndarray]:
        import torch

        n = len(cols[self.inputs()[0]]) if self.inputs() else 0
        gen = torch.Generator().manual_seed(int(seed))
        m = self.manifest
        if n == 0:
            return {c: np.zeros(0, np.dtype(m["dtypes"][c])) for c in self.columns}
        out: dict[str, np.ndarray] = {}
        eff = m.get("efficiency")
        if eff:
            u = torch.rand(n, generator=gen).numpy()
            p = _run(self.efficiency, [feature_matrix(cols, eff["conditions"])], batch_size)
            out[eff["target"]] = u < p
        ok = out[eff["target"]] if eff else np.ones(n, bool)
        generated: list[str] = []
        for step, module in self.parameterizations:
            noise = torch.randn(n, module.n_noise, generator=gen).numpy()
            context = feature_matrix({**cols, **out}, step["conditions"])
            y = _run(module, [context, noise], batch_size)
            for j, name in enumerate(step["outputs"]):
                out[name] = y[:, j]
            generated += step["outputs"]
        for name in generated:  # objects the efficiency model did not reconstruct get no measurement
            out[name] = np.where(ok, out[name], np.float32(m.get("fill", 0.0))).astype(np.float32)
        for name, expr in self.derived.items():
            with np.errstate(all="ignore"):
                out[name] = np.asarray(expr.evaluate({**cols, **out}))
        return {c: _cast(out[c], m["dtypes"][c], m.get("mantissa_bits")) for c in self.columns}


def _run(module, inputs: list[np.ndarray], batch_size: int) -> np.ndarray:
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(inputs[0]), batch_size):
            outs.append(module(*(torch.from_numpy(np.ascontiguousarray(a[i:i + batch_size])) for a in inputs)).numpy())
    return np.concatenate(outs)


def _cast(x: np.ndarray, dtype: str, mantissa_bits: int | None) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        from ..generate.jets import round_mantissa

        return round_mantissa(np.asarray(x, dtype=np.float32), mantissa_bits).astype(dt)
    if dt.kind == "b":
        return np.asarray(x).astype(bool)
    return np.rint(np.asarray(x, dtype=np.float64)).astype(dt)
