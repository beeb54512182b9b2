"""Bayesian MLP: mean-field Gaussian weights trained by Bayes by Backprop (Blundell et al. 2015).

Each weight ``w ~ N(mu, sigma^2)`` with ``sigma = softplus(rho)``; the prior is ``N(0,
prior_sigma^2)``. Training minimises the expected negative log-likelihood plus ``KL(q || p) /
N_train`` per event (the ELBO divided by the training-set size, so the data term and the KL
term keep their relative weight whatever the batch size). Forward passes sample with the
local reparameterisation trick (Kingma et al. 2015): the pre-activations' mean and variance are
computed from ``mu`` and ``sigma`` and one Gaussian sample is drawn per row and unit, so every
row of a batch sees its own weight sample and M predictive samples of n events are one batch
of M x n rows (``hepray.models.predict``). Predictions are the mean over ``predict_samples``
passes, with their standard deviation as the model uncertainty.
"""

from __future__ import annotations

import math

from ..extras import require
from .mlp import ACTIVATIONS

torch = require("torch")
nn = torch.nn
F = torch.nn.functional


class BayesLinear(nn.Module):
    """A linear layer with a factorised Gaussian posterior over weights and biases."""

    def __init__(self, n_in: int, n_out: int, prior_sigma: float = 1.0, init_sigma: float = 0.05):
        super().__init__()
        self.prior_sigma = prior_sigma
        bound = 1.0 / math.sqrt(n_in)
        self.weight_mu = nn.Parameter(torch.empty(n_out, n_in).uniform_(-bound, bound))
        self.bias_mu = nn.Parameter(torch.empty(n_out).uniform_(-bound, bound))
        rho = math.log(math.expm1(init_sigma))  # softplus^-1
        self.weight_rho = nn.Parameter(torch.full((n_out, n_in), rho))
        self.bias_rho = nn.Parameter(torch.full((n_out,), rho))

    def forward(self, x):
        w_sigma, b_sigma = F.softplus(self.weight_rho), F.softplus(self.bias_rho)
        mean = F.linear(x, self.weight_mu, self.bias_mu)
        var = F.linear(x * x, w_sigma * w_sigma, b_sigma * b_sigma)
        return mean + torch.sqrt(var + 1e-12) * torch.randn_like(mean)

    def kl(self):
        """KL(q || prior) summed over the layer's weights and biases (closed form)."""
        total = 0.0
        for mu, rho in ((self.weight_mu, self.weight_rho), (self.bias_mu, self.bias_rho)):
            sigma = F.softplus(rho)
            p = self.prior_sigma
            total = total + (torch.log(p / sigma) + (sigma * sigma + mu * mu) / (2 * p * p) - 0.5).sum()
        return total


class BayesianMLP(nn.Sequential):
    """``BayesianMLP(4, [32, 32], 1)``: BayesLinear/activation blocks, raw logits out; every
    forward pass samples. ``kl()`` is the KL term of the ELBO; ``penultimate`` as for ``MLP``."""

    stochastic = True

    def __init__(self, n_inputs: int, hidden: list[int], n_outputs: int, activation: str = "elu",
                 prior_sigma: float = 1.0, predict_samples: int = 20, stochastic: bool = True):
        layers: list[nn.Module] = []
        width = n_inputs
        for h in hidden:
            layers += [BayesLinear(width, h, prior_sigma), ACTIVATIONS[activation]()]
            width = h
        layers.append(BayesLinear(width, n_outputs, prior_sigma))
        super().__init__(*layers)
        self.arch = {"name": "bnn", "n_inputs": n_inputs, "hidden": list(hidden), "n_outputs": n_outputs,
                     "activation": activation, "prior_sigma": prior_sigma, "predict_samples": predict_samples,
                     "stochastic": True}

    def kl(self):
        return sum(m.kl() for m in self if isinstance(m, BayesLinear))

    def penultimate(self, x):
        for layer in list(self)[:-1]:
            x = layer(x)
        return x
