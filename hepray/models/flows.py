"""Conditional normalizing flow: a masked autoregressive flow (MAF, Papamakarios et al. 2017)
with affine transforms whose shift and log-scale come from a MADE that also reads the context.

Exact ``log_prob(x, context)`` in one pass (training, likelihood ratios); ``sample(context)``
runs D passes per layer, cheap for the few-dimensional targets of fast simulation/unfolding.
Works for D = 1 too (then the transform depends on the context only).
"""

from __future__ import annotations

import math

from ..extras import require

torch = require("torch")
nn = torch.nn
F = torch.nn.functional
Tensor = torch.Tensor

_LOG_2PI = math.log(2 * math.pi)


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed 0/1 connectivity mask."""

    def __init__(self, n_in: int, n_out: int, mask: Tensor):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Outputs (shift, log_scale) [B, D] each, where output d depends on x_<d and the context.

    Hidden-unit degrees run over 0..D-1 (degree 0 units see only the context), so the
    autoregressive property holds for any D >= 1.
    """

    def __init__(self, n_features: int, n_context: int, hidden: int, n_hidden: int):
        super().__init__()
        d = n_features
        in_deg = torch.arange(1, d + 1)
        hid_deg = torch.arange(hidden) % d
        layers: list[nn.Module] = []
        prev = in_deg
        for i in range(n_hidden):
            mask = (hid_deg.unsqueeze(1) >= prev.unsqueeze(0)).float()
            layers.append(MaskedLinear(d if i == 0 else hidden, hidden, mask))
            prev = hid_deg
        self.hidden_layers = nn.ModuleList(layers)
        self.context = nn.Linear(n_context, hidden) if n_context else None
        out_deg = torch.cat([in_deg, in_deg])
        self.out = MaskedLinear(hidden, 2 * d, (out_deg.unsqueeze(1) > prev.unsqueeze(0)).float())
        nn.init.zeros_(self.out.weight)  # start as the identity transform: stable first steps
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        h = self.hidden_layers[0](x)
        if self.context is not None:
            h = h + self.context(context)
        h = F.silu(h)
        for layer in self.hidden_layers[1:]:
            h = F.silu(layer(h))
        shift, raw_scale = self.out(h).chunk(2, dim=-1)
        return shift, 3.0 * torch.tanh(raw_scale / 3.0)  # soft-clamped log-scale


class ConditionalFlow(nn.Module):
    """``ConditionalFlow(n_features=2, n_context=3, n_layers=5)``; base density N(0, 1).

    Each layer maps data x to latent u = (x - shift(x_<d, c)) · exp(-log_scale); the variable
    order is reversed between layers so every dimension gets conditioned on every other.
    """

    def __init__(self, n_features: int, n_context: int = 0, n_layers: int = 5, hidden: int = 64, n_hidden: int = 2):
        super().__init__()
        if n_hidden < 1:
            raise ValueError("n_hidden must be >= 1")
        self.arch = {"name": "conditional_flow", "n_features": n_features, "n_context": n_context,
                     "n_layers": n_layers, "hidden": hidden, "n_hidden": n_hidden}
        self.n_features, self.n_context = n_features, n_context
        self.mades = nn.ModuleList(MADE(n_features, n_context, hidden, n_hidden) for _ in range(n_layers))

    def _check_context(self, context: Tensor | None, batch: int) -> Tensor | None:
        if self.n_context == 0:
            return None
        if torch.jit.is_tracing():  # shapes are symbolic while exporting
            return context
        if context is None or context.shape != (batch, self.n_context):
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"context must have shape ({batch}, {self.n_context}), got {got}")
        return context

    def transform(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data -> latent: (u [B, D], log|det ∂u/∂x| [B])."""
        context = self._check_context(context, x.shape[0])
        logdet = x.new_zeros(x.shape[0])
        for i, made in enumerate(self.mades):
            if i:
                x = x.flip(-1)
            shift, log_scale = made(x, context)
            x = (x - shift) * torch.exp(-log_scale)
            logdet = logdet - log_scale.sum(dim=-1)
        return x, logdet

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """log p(x | context) per event [B]."""
        u, logdet = self.transform(x, context)
        return -0.5 * (u.pow(2).sum(dim=-1) + self.n_features * _LOG_2PI) + logdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``log_prob``: what an exported flow computes (density estimation, likelihood ratios)."""
        return self.log_prob(x, context)

    def loss(self, x: Tensor, context: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
        nll = -self.log_prob(x, context)
        if weights is None:
            return nll.mean()
        w = weights.to(nll.dtype)
        return (nll * w).sum() / w.sum().clamp(min=1e-12)

    @torch.no_grad()
    def sample(self, context: Tensor | None = None, num_samples: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """One sample per context row [B, D]; without context, ``num_samples`` rows."""
        if context is not None:
            n = context.shape[0]
            ref = context
        elif num_samples is not None:
            n = num_samples
            ref = next(self.parameters())
        else:
            raise ValueError("give context (one sample per row) or num_samples")
        context = self._check_context(context, n)
        u = torch.randn(n, self.n_features, generator=generator, dtype=ref.dtype).to(ref.device)
        for i in reversed(range(len(self.mades))):
            made = self.mades[i]
            x = torch.zeros_like(u)
            for d in range(self.n_features):  # invert autoregressively, one dimension at a time
                shift, log_scale = made(x, context)
                x[:, d] = u[:, d] * torch.exp(log_scale[:, d]) + shift[:, d]
            u = x.flip(-1) if i else x
        return u
