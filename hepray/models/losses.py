"""Training objectives beyond plain cross-entropy.

* ADNN (adversarial, model-agnostic): an ``Adversary`` tries to tell which signal model (domain)
  a signal event came from, reading the classifier's penultimate layer; the classifier is trained
  with L_C - α·L_A so its internal representation stops encoding the signal model.
* Systematic-aware: a differentiable histogram of the classifier score, so the shape change
  between nominal and systematically varied samples can be penalised during training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..extras import require
from .mlp import ACTIVATIONS

torch = require("torch")
nn = torch.nn
F = torch.nn.functional
Tensor = torch.Tensor


class Adversary(nn.Module):
    """MLP from the classifier's penultimate features to ``n_domains`` logits."""

    def __init__(self, n_inputs: int, n_domains: int, hidden: list[int] | None = None, activation: str = "relu"):
        super().__init__()
        hidden = list(hidden) if hidden is not None else [32]
        self.arch = {"name": "adversary", "n_inputs": n_inputs, "n_domains": n_domains, "hidden": hidden,
                     "activation": activation}
        layers: list[nn.Module] = []
        width = n_inputs
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, n_domains))
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


def _as_tuple(inputs) -> tuple:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def classification_loss(logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
    """BCE for one output column ([B] or [B, 1]), cross-entropy for several; optional event weights."""
    if logits.dim() == 1 or logits.shape[-1] == 1:
        per = F.binary_cross_entropy_with_logits(logits.reshape(-1), labels.reshape(-1).to(logits.dtype),
                                                 reduction="none")
    else:
        per = F.cross_entropy(logits, labels.long(), reduction="none")
    if weights is None:
        return per.mean()
    w = weights.to(per.dtype)
    return (per * w).sum() / w.sum().clamp(min=1e-12)


def adversary_loss(adversary: nn.Module, features: Tensor, domains: Tensor) -> Tensor:
    """Cross-entropy of the domain prediction over events with a domain (``domains`` >= 0)."""
    return _adversary_terms(adversary, features, domains)[0]


def _adversary_terms(adversary: nn.Module, features: Tensor, domains: Tensor) -> tuple[Tensor, Tensor | None]:
    """(cross-entropy, logits) over the events that have a domain; (0, None) when none has."""
    sel = domains >= 0
    if not bool(sel.any()):
        return features.new_zeros(()), None
    logits = adversary(features[sel])
    return F.cross_entropy(logits, domains[sel].long()), logits


def confusion_loss(adversary: nn.Module, features: Tensor, domains: Tensor) -> Tensor:
    """Cross-entropy between the adversary's prediction and the uniform distribution."""
    sel = domains >= 0
    if not bool(sel.any()):
        return features.new_zeros(())
    return -F.log_softmax(adversary(features[sel]), dim=-1).mean()


def adnn_step(classifier: nn.Module, adversary: nn.Module, inputs, labels: Tensor, domains: Tensor,
              opt_classifier: torch.optim.Optimizer, opt_adversary: torch.optim.Optimizer,
              alpha: float, weights: Tensor | None = None, adversary_steps: int = 1,
              mode: str = "minimax") -> dict[str, float]:
    """One ADNN update: classifier on L_C - α·L_A, then the adversary on L_A.

    ``mode="minimax"`` is that textbook objective; its gradient vanishes once the adversary is
    confident (like the original GAN loss). ``mode="confusion"`` instead trains the classifier
    on L_C + α·CE(adversary, uniform), which keeps pushing the adversary toward chance.

    ``inputs`` is a tensor or a tuple of tensors passed to ``classifier(*inputs)`` and
    ``classifier.penultimate(*inputs)``. ``domains`` holds the signal-model index of each signal
    event and -1 for events without one (background): only those enter L_A.
    Returns the losses and ``adversary_accuracy`` on the batch before the update (NaN if the
    batch has no domain labels). A fooled adversary does not prove the information is gone:
    check the final features with a freshly trained probe too.
    """
    inputs = _as_tuple(inputs)
    classifier.train()
    adversary.train()
    # step 1: classifier, adversary fixed
    l_c = classification_loss(classifier(*inputs), labels, weights)
    if mode not in ("minimax", "confusion"):
        raise ValueError(f"mode must be minimax or confusion, got {mode!r}")
    feats = classifier.penultimate(*inputs)
    l_a, adv_logits = _adversary_terms(adversary, feats, domains)
    accuracy = float("nan")
    if adv_logits is not None:  # measured before either network saw this batch's update
        accuracy = float((adv_logits.argmax(-1) == domains[domains >= 0]).float().mean())
    penalty = -l_a if mode == "minimax" else confusion_loss(adversary, feats, domains)
    opt_classifier.zero_grad(set_to_none=True)
    (l_c + alpha * penalty).backward()
    opt_classifier.step()
    # step 2: adversary on the updated (frozen) representation
    with torch.no_grad():
        feats = classifier.penultimate(*inputs)
    l_a2 = l_a.detach()
    for _ in range(adversary_steps):
        l_a2 = adversary_loss(adversary, feats, domains)
        opt_adversary.zero_grad(set_to_none=True)
        if l_a2.requires_grad:
            l_a2.backward()
            opt_adversary.step()
    return {"classifier_loss": float(l_c.detach()), "adversary_loss": float(l_a2.detach()),
            "total_loss": float((l_c + alpha * penalty).detach()), "adversary_accuracy": accuracy}


def soft_histogram(scores: Tensor, bins: Tensor | Sequence[float], bandwidth: float,
                   weights: Tensor | None = None, density: bool = False) -> Tensor:
    """Differentiable histogram: each event spreads a Gaussian kernel of width ``bandwidth`` and
    fills each bin with the kernel's integral over it, Φ((hi - s)/h) - Φ((lo - s)/h).

    ``bins`` are the n+1 edges; tends to the hard histogram as ``bandwidth`` -> 0. With
    ``density`` the result sums to one (shape only).
    """
    scores = scores.reshape(-1)
    edges = torch.as_tensor(bins, dtype=scores.dtype, device=scores.device)
    if bandwidth <= 0:
        raise ValueError("bandwidth must be > 0")
    cdf = 0.5 * (1.0 + torch.erf((edges.unsqueeze(0) - scores.unsqueeze(1)) / (bandwidth * math.sqrt(2.0))))
    per_event = cdf[:, 1:] - cdf[:, :-1]  # [N, n_bins]
    if weights is not None:
        per_event = per_event * weights.reshape(-1, 1).to(per_event.dtype)
    hist = per_event.sum(dim=0)
    if density:
        hist = hist / hist.sum().clamp(min=1e-12)
    return hist


def shape_penalty(scores_nominal: Tensor, scores_varied: Tensor, bins: Tensor | Sequence[float],
                  bandwidth: float, weights_nominal: Tensor | None = None,
                  weights_varied: Tensor | None = None, kind: str = "l2") -> Tensor:
    """How much a systematic variation changes the (normalised) score shape; 0 when identical.

    ``kind="l2"``: Σ (p - q)²; ``kind="chi2"``: symmetric χ², Σ (p - q)² / (p + q).
    Add ``λ · shape_penalty(...)`` to the classification loss to train a shape-robust classifier.
    """
    p = soft_histogram(scores_nominal, bins, bandwidth, weights_nominal, density=True)
    q = soft_histogram(scores_varied, bins, bandwidth, weights_varied, density=True)
    diff2 = (p - q).pow(2)
    if kind == "l2":
        return diff2.sum()
    if kind == "chi2":
        return (diff2 / (p + q).clamp(min=1e-12)).sum()
    raise ValueError(f"kind must be l2 or chi2, got {kind!r}")
