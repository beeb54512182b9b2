"""Plain fully-connected network, the shape hls4ml converts (Linear + activation layers only)."""

from __future__ import annotations

from ..extras import require

torch = require("torch")
nn = torch.nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "silu": nn.SiLU, "leakyrelu": nn.LeakyReLU}


class MLP(nn.Sequential):
    """``MLP(16, [64, 32, 32], 5)``: Linear/activation blocks, raw logits out.

    ``penultimate(x)`` gives the last hidden layer, which the adversary of ADNN training reads.
    """

    def __init__(self, n_inputs: int, hidden: list[int], n_outputs: int, activation: str = "relu", dropout: float = 0.0):
        layers: list[nn.Module] = []
        width = n_inputs
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, n_outputs))
        super().__init__(*layers)
        self.arch = {"name": "mlp", "n_inputs": n_inputs, "hidden": list(hidden), "n_outputs": n_outputs,
                     "activation": activation, "dropout": dropout}

    def penultimate(self, x):
        for layer in list(self)[:-1]:
            x = layer(x)
        return x
