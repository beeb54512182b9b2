"""Dense autoencoder and VAE for anomaly detection: events the model reconstructs badly are
unlike the (background-dominated) data it was trained on.

Both expose ``loss(x)`` (what training minimises), ``score(x)`` (one anomaly score per event,
higher = more anomalous) and ``per_feature_error(x)`` (which inputs are off).
"""

from __future__ import annotations

from ..extras import require
from .mlp import ACTIVATIONS

torch = require("torch")
nn = torch.nn
Tensor = torch.Tensor


def _dense(widths: list[int], activation: str) -> nn.Sequential:
    """Linear/activation stack, no activation after the last layer."""
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class AutoEncoder(nn.Module):
    """``AutoEncoder(n_inputs=8, hidden=[32, 16], latent=3)``; the decoder mirrors the encoder."""

    def __init__(self, n_inputs: int, hidden: list[int] | None = None, latent: int = 4, activation: str = "relu"):
        super().__init__()
        hidden = list(hidden) if hidden is not None else [32, 16]
        self.arch = {"name": "autoencoder", "n_inputs": n_inputs, "hidden": hidden, "latent": latent,
                     "activation": activation}
        self.encoder = _dense([n_inputs, *hidden, latent], activation)
        self.decoder = _dense([latent, *reversed(hidden), n_inputs], activation)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def per_feature_error(self, x: Tensor) -> Tensor:
        """Squared reconstruction error [B, F]."""
        return (self(x) - x).pow(2)

    def score(self, x: Tensor) -> Tensor:
        """Mean squared reconstruction error per event [B]."""
        return self.per_feature_error(x).mean(dim=-1)

    def loss(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        return _weighted_mean(self.score(x), weights)


class VariationalAutoEncoder(nn.Module):
    """VAE with a Gaussian encoder q(z|x), reparametrised sampling and a β-weighted KL term.

    ``forward(x)`` returns (reconstruction, mu, logvar); in eval mode the reconstruction decodes
    the mean ``mu``, so scores are deterministic. ``score(x, kind=...)``: "recon" (default),
    "kl" (the latent-space score, often more robust) or "elbo" (recon + β·KL).
    """

    def __init__(self, n_inputs: int, hidden: list[int] | None = None, latent: int = 4,
                 activation: str = "relu", beta: float = 1.0):
        super().__init__()
        hidden = list(hidden) if hidden is not None else [32, 16]
        self.arch = {"name": "vae", "n_inputs": n_inputs, "hidden": hidden, "latent": latent,
                     "activation": activation, "beta": beta}
        self.beta = beta
        self.body = _dense([n_inputs, *hidden], activation)
        self.body_act = ACTIVATIONS[activation]() if hidden else nn.Identity()
        width = hidden[-1] if hidden else n_inputs
        self.mu = nn.Linear(width, latent)
        self.logvar = nn.Linear(width, latent)
        self.decoder = _dense([latent, *reversed(hidden), n_inputs], activation)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body_act(self.body(x))
        return self.mu(h), self.logvar(h).clamp(-20.0, 20.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decoder(z), mu, logvar

    @staticmethod
    def kl(mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(q(z|x) || N(0, 1)) per event [B]."""
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)

    def per_feature_error(self, x: Tensor) -> Tensor:
        mu, _ = self.encode(x)
        return (self.decoder(mu) - x).pow(2)

    def score(self, x: Tensor, kind: str = "recon") -> Tensor:
        mu, logvar = self.encode(x)
        recon = (self.decoder(mu) - x).pow(2).mean(dim=-1)
        if kind == "recon":
            return recon
        if kind == "kl":
            return self.kl(mu, logvar)
        if kind == "elbo":
            return recon + self.beta * self.kl(mu, logvar)
        raise ValueError(f"kind must be recon, kl or elbo, got {kind!r}")

    def loss(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        """Negative ELBO up to constants: per-event MSE (summed over features) + β·KL."""
        recon, mu, logvar = self(x)
        per_event = (recon - x).pow(2).sum(dim=-1) + self.beta * self.kl(mu, logvar)
        return _weighted_mean(per_event, weights)


def _weighted_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return values.mean()
    w = weights.to(values.dtype)
    return (values * w).sum() / w.sum().clamp(min=1e-12)
