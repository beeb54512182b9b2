"""Jets-as-nodes event graph: per-jet predictions that depend on the neighbouring jets.

Built for b-tagging-efficiency parametrisation: the chance that a jet passes a tagger working
point depends on its own (pT, η, flavour) and on nearby jets, so each event is a fully connected
graph of its jets with ΔR as the edge feature. Inputs are padded: ``x`` [B, N, F], ``mask`` [B, N].
"""

from __future__ import annotations

import math

from ..extras import require

torch = require("torch")
nn = torch.nn
F = torch.nn.functional
Tensor = torch.Tensor


def delta_r(eta: Tensor, phi: Tensor) -> Tensor:
    """Pairwise ΔR [B, N, N] with Δφ wrapped into [-π, π)."""
    deta = eta.unsqueeze(-1) - eta.unsqueeze(-2)
    dphi = torch.remainder(phi.unsqueeze(-1) - phi.unsqueeze(-2) + math.pi, 2 * math.pi) - math.pi
    return torch.sqrt(deta * deta + dphi * dphi + 1e-12)


def _mlp(n_in: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, w in enumerate(widths):
        layers.append(nn.Linear(n_in, w))
        if i < len(widths) - 1:
            layers.append(nn.SiLU())
        n_in = w
    return nn.Sequential(*layers)


class JetGraphNet(nn.Module):
    """Message passing over all jet pairs: m_ij = φ(h_i, h_j, ΔR_ij), h_i += ψ(h_i, Σ_j m_ij).

    ``eta_index``/``phi_index`` pick the input columns ΔR is computed from (raw η, φ: compute
    ΔR before any standardisation changes their scale). ``aggregation`` is "sum", "mean" or "max"
    over the real neighbours. ΔR enters the edge MLP raw and expanded on ``n_rbf`` Gaussian
    radial basis functions over [0, ``rbf_max``] (as in SchNet), which makes ΔR thresholds easy
    to learn. Output: logits [B, N, n_outputs], zero on padded jets.
    """

    def __init__(self, n_features: int, n_outputs: int = 1, hidden: int = 64, n_layers: int = 3,
                 eta_index: int = 1, phi_index: int = 2, aggregation: str = "sum", dropout: float = 0.0,
                 n_rbf: int = 16, rbf_max: float = 6.0):
        super().__init__()
        if aggregation not in ("sum", "mean", "max"):
            raise ValueError(f"aggregation must be sum, mean or max, got {aggregation!r}")
        self.arch = {"name": "jetgraph", "n_features": n_features, "n_outputs": n_outputs,
                     "hidden": hidden, "n_layers": n_layers, "eta_index": eta_index,
                     "phi_index": phi_index, "aggregation": aggregation, "dropout": dropout,
                     "n_rbf": n_rbf, "rbf_max": rbf_max}
        self.eta_index, self.phi_index, self.aggregation = eta_index, phi_index, aggregation
        self.embed = _mlp(n_features, [hidden, hidden])
        self.register_buffer("rbf_centres", torch.linspace(0.0, rbf_max, n_rbf), persistent=False)
        self.rbf_width = rbf_max / max(n_rbf - 1, 1)
        self.edge_mlps = nn.ModuleList(_mlp(2 * hidden + 1 + n_rbf, [hidden, hidden]) for _ in range(n_layers))
        self.node_mlps = nn.ModuleList(_mlp(2 * hidden, [hidden, hidden]) for _ in range(n_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(n_layers))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_outputs)

    def _aggregate(self, messages: Tensor, edge_mask: Tensor) -> Tensor:
        """``messages`` [B, N, N, H] (i receives from j), ``edge_mask`` [B, N, N, 1] -> [B, N, H]."""
        if self.aggregation == "max":
            filled = messages.masked_fill(~edge_mask, float("-inf")).amax(dim=2)
            return torch.where(torch.isinf(filled), torch.zeros_like(filled), filled)  # no neighbours
        total = (messages * edge_mask).sum(dim=2)
        if self.aggregation == "mean":
            total = total / edge_mask.sum(dim=2).clamp(min=1)
        return total

    def node_embedding(self, x: Tensor, mask: Tensor) -> Tensor:
        """Final node representations [B, N, hidden] (what an adversary or a probe would read)."""
        mask = mask.bool()
        b, n, _ = x.shape
        x = x * mask.unsqueeze(-1)
        dr = delta_r(x[..., self.eta_index], x[..., self.phi_index]).unsqueeze(-1)  # [B, N, N, 1]
        edge = torch.cat([dr, torch.exp(-0.5 * ((dr - self.rbf_centres) / self.rbf_width) ** 2)], dim=-1)
        pos = torch.arange(n, device=x.device)
        not_self = pos.unsqueeze(0) != pos.unsqueeze(1)  # (not torch.eye: exports to ONNX)
        edge_mask = (mask.unsqueeze(1) & mask.unsqueeze(2) & not_self).unsqueeze(-1)
        h = self.embed(x)
        for edge_mlp, node_mlp, norm in zip(self.edge_mlps, self.node_mlps, self.norms):
            hi = h.unsqueeze(2).expand(b, n, n, h.shape[-1])
            hj = h.unsqueeze(1).expand(b, n, n, h.shape[-1])
            msg = edge_mlp(torch.cat([hi, hj, edge], dim=-1))
            agg = self._aggregate(msg, edge_mask)
            h = norm(h + self.dropout(node_mlp(torch.cat([h, agg], dim=-1))))
        return h * mask.unsqueeze(-1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.head(self.node_embedding(x, mask)) * mask.bool().unsqueeze(-1)


def masked_bce_with_logits(logits: Tensor, targets: Tensor, mask: Tensor,
                           weights: Tensor | None = None) -> Tensor:
    """Per-jet binary cross-entropy averaged over real jets only (``logits`` [B, N] or [B, N, 1])."""
    if logits.dim() == 3:
        logits = logits.squeeze(-1)
    m = mask.bool()
    loss = F.binary_cross_entropy_with_logits(logits[m], targets[m].to(logits.dtype), reduction="none")
    if weights is not None:
        w = weights[m].to(loss.dtype)
        return (loss * w).sum() / w.sum().clamp(min=1e-12)
    return loss.mean()
