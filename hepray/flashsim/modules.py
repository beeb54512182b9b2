"""The torch modules a parameterization runs as: raw columns in, detector-level columns out.

Everything that turns a trained network into a simulation step lives *inside* the module
(context standardisation, the network, de-standardisation, the inverse response transform), so the TorchScript/ONNX export computes exactly what hepray's
generation does, and a C++ user needs nothing but the exported file and a noise tensor.

Random numbers are an *input* (``noise``), never drawn inside: the caller owns the random
stream, which is what makes a shard's output a pure function of its seed.
"""

from __future__ import annotations

import math

import numpy as np

from ..extras import require
from .config import TRANSFORMS

torch = require("torch")
nn = torch.nn
Tensor = torch.Tensor

CODES = {name: i for i, name in enumerate(TRANSFORMS)}


# -- response transforms (numpy, training side) -----------------------------------------------
def to_response(transform: str, reco: np.ndarray, gen: np.ndarray | None) -> np.ndarray:
    """The quantity a model learns for one column; :meth:`ParameterizationModule.forward`
    inverts it. ``ratio``/``log_ratio`` need a positive reference (``gen``)."""
    reco = np.asarray(reco, dtype=np.float64)
    if transform == "value":
        return reco
    gen = np.asarray(gen, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if transform == "ratio":
            return reco / gen
        if transform == "log_ratio":
            return np.log(reco / gen)
        if transform == "diff":
            return reco - gen
        if transform == "dphi":
            return (reco - gen + np.pi) % (2 * np.pi) - np.pi
    raise ValueError(f"unknown transform {transform!r}; use one of {', '.join(TRANSFORMS)}")


def _from_response(code: Tensor, y: Tensor, gen: Tensor) -> Tensor:
    """Inverse of :func:`to_response`, column by column (``code`` [D]): one traced graph for any
    mix of transforms. Unselected branches may overflow; ``where`` drops them."""
    ratio = y * gen
    log_ratio = gen * torch.exp(torch.clamp(y, max=30.0))
    diff = y + gen
    dphi = torch.remainder(diff + math.pi, 2 * math.pi) - math.pi
    out = y
    for name, value in (("ratio", ratio), ("log_ratio", log_ratio), ("diff", diff), ("dphi", dphi)):
        out = torch.where(code == CODES[name], value, out)
    return out


# -- flow inversion with given noise ------------------------------------------------------------
def flow_inverse(flow, u: Tensor, context: Tensor | None) -> Tensor:
    """Latent ``u`` -> data for :class:`hepray.models.flows.ConditionalFlow`, as its ``sample`` does,
    but with the noise given and without in-place writes (so it traces and exports to ONNX)."""
    d_total = u.shape[1]
    for i in reversed(range(len(flow.mades))):
        made = flow.mades[i]
        cols: list[Tensor] = []
        for d in range(d_total):
            x = torch.cat(cols + [torch.zeros_like(u[:, d:])], dim=1) if cols else torch.zeros_like(u)
            shift, log_scale = made(x, context)
            cols.append(u[:, d:d + 1] * torch.exp(log_scale[:, d:d + 1]) + shift[:, d:d + 1])
        x = torch.cat(cols, dim=1)
        u = x.flip(-1) if i else x
    return u


class ParameterizationModule(nn.Module):
    """``forward(context [B, C], noise [B, D]) -> columns [B, D]`` for a flow or a GAN.

    ``context`` holds the raw condition columns (the order of ``meta["conditions"]``); the outputs
    are in the order of ``meta["outputs"]``; integer columns are clamped at 0 but left continuous
    (the caller rounds), so exports agree with torch to float precision rather than up to a
    rounding flip at .5.
    """

    def __init__(self, core: nn.Module, meta: dict):
        super().__init__()
        self.core, self.kind = core, meta["model"]
        self.n_noise = int(meta["n_noise"])
        f32 = torch.float32
        self.register_buffer("c_mean", torch.tensor(meta["context_preprocessing"]["mean"], dtype=f32))
        self.register_buffer("c_scale", torch.tensor(meta["context_preprocessing"]["scale"], dtype=f32))
        self.register_buffer("y_mean", torch.tensor(meta["target_preprocessing"]["mean"], dtype=f32))
        self.register_buffer("y_scale", torch.tensor(meta["target_preprocessing"]["scale"], dtype=f32))
        self.register_buffer("transform_code", torch.tensor([CODES[t] for t in meta["transforms"]], dtype=torch.int64))
        self.register_buffer("is_integer", torch.tensor(meta["integer"], dtype=torch.bool))
        n_ctx = len(meta["conditions"])
        # index of each output's reference column in the context; n_ctx points at an appended zero
        ref = [meta["conditions"].index(r) if r is not None else n_ctx for r in meta["references"]]
        self.register_buffer("ref_index", torch.tensor(ref, dtype=torch.int64))

    def standardized(self, context: Tensor, noise: Tensor) -> Tensor:
        """Samples in the standardised response space (what the network itself produces)."""
        c = (context - self.c_mean) / self.c_scale
        if self.kind == "flow":
            return flow_inverse(self.core, noise, c)
        return self.core(noise, c)

    def forward(self, context: Tensor, noise: Tensor) -> Tensor:
        y = self.standardized(context, noise) * self.y_scale + self.y_mean
        gen = torch.cat([context, torch.zeros_like(context[:, :1])], dim=1)[:, self.ref_index]
        out = _from_response(self.transform_code, y, gen)
        return torch.where(self.is_integer, torch.clamp(out, min=0.0), out)


class EfficiencyModule(nn.Module):
    """``forward(context [B, C]) -> P(reconstructed) [B]``: the classifier with its standardisation."""

    def __init__(self, mlp: nn.Module, preprocessing: dict):
        super().__init__()
        self.mlp = mlp
        self.register_buffer("c_mean", torch.tensor(preprocessing["mean"], dtype=torch.float32))
        self.register_buffer("c_scale", torch.tensor(preprocessing["scale"], dtype=torch.float32))

    def forward(self, context: Tensor) -> Tensor:
        return torch.sigmoid(self.mlp((context - self.c_mean) / self.c_scale)).squeeze(-1)
