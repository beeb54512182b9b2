"""Training objectives as ``step``/``val_step`` pairs for :func:`hepray.training.torch_loop.fit`.

Each objective is a small picklable object (it travels to Ray Train workers) with
``__call__(model, batch)`` for training and ``validate(model, batch)`` returning per-batch sums
(``"weight"`` is the normaliser, ``"loss"`` what early stopping watches). Batches are dicts of
tensors; ``inputs`` names the keys passed to the model in order (``("x",)`` for flat features,
e.g. ``("points", "features", "mask")`` for ParticleNet), ``y`` holds labels, ``w`` weights.

- :class:`Classification`: weighted BCE (one output) or cross-entropy (several).
- :class:`SystematicAware`: L_C + λ·Σ shape_penalty(nominal, varied) over variations of the
  inputs (Wunsch et al., arXiv:1907.11674): varied copies go through the model in the same
  forward pass as the nominal batch, so DDP sees one forward per update.
- :class:`Adversarial`: ADNN two-step update via ``hepray.models.losses.adnn_step``; updates
  the parameters itself (returns a dict), so train it with ``fit(..., sync="optimizer")``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..extras import require
from ..models.losses import adnn_step, adversary_loss, classification_loss, shape_penalty

torch = require("torch")
nn = torch.nn


def scores(logits):
    """Probabilities: sigmoid for one output column, softmax over several."""
    return torch.sigmoid(logits) if logits.shape[-1] == 1 else torch.softmax(logits, dim=-1)


class Classification:
    """Weighted classification loss; ``validate`` also sums correct predictions (accuracy)."""

    def __init__(self, inputs: Sequence[str] = ("x",)):
        self.inputs = tuple(inputs)

    def args(self, batch: dict) -> tuple:
        return tuple(batch[k] for k in self.inputs)

    def loss(self, model, batch: dict, logits=None):
        logits = model(*self.args(batch)) if logits is None else logits
        return classification_loss(logits, batch["y"], batch["w"]), logits

    def __call__(self, model, batch: dict):
        return self.loss(model, batch)[0]

    def validate(self, model, batch: dict) -> dict[str, float]:
        loss, logits = self.loss(model, batch)
        w = batch["w"].double()
        pred = (logits.reshape(-1) > 0).long() if logits.shape[-1] == 1 else logits.argmax(-1)
        return {"loss": float(loss) * float(w.sum()), "accuracy": float(((pred == batch["y"]).double() * w).sum()),
                "weight": float(w.sum())}


class Variational(Classification):
    """Bayes by Backprop: the classification loss plus ``KL(q || p) / n_train`` (the negative
    ELBO per training event) for networks with a ``kl()`` term (``hepray.models.bnn``);
    ``validate`` reports the data term only, which early stopping watches."""

    def __init__(self, n_train: int, inputs: Sequence[str] = ("x",)):
        super().__init__(inputs)
        self.n_train = max(1, int(n_train))

    def __call__(self, model, batch: dict):
        net = getattr(model, "module", model)  # DDP wraps the network
        return self.loss(model, batch)[0] + net.kl() / self.n_train


class SystematicAware(Classification):
    """L = L_C + λ·Λ, Λ = Σ over variations and score columns of ``shape_penalty`` between the
    nominal and the varied inputs' score distributions (soft histograms, so Λ has gradients).

    ``variations``: one function ``vary(x) -> x'`` per varied input copy (e.g. JES up and down,
    see :func:`scale_variations`); it acts on the first input.
    """

    def __init__(self, variations: Sequence, lam: float, bins: int = 20, bandwidth: float = 0.05,
                 kind: str = "l2", inputs: Sequence[str] = ("x",)):
        super().__init__(inputs)
        self.variations, self.lam, self.kind, self.bandwidth = list(variations), lam, kind, bandwidth
        self.edges = [i / bins for i in range(bins + 1)]

    def terms(self, model, batch: dict):
        args = self.args(batch)
        x, n = args[0], args[0].shape[0]
        stacked = torch.cat([x] + [vary(x) for vary in self.variations])
        rest = tuple(torch.cat([a] * (1 + len(self.variations))) for a in args[1:])
        logits = model(stacked, *rest)
        l_c, _ = self.loss(model, batch, logits[:n])
        s = scores(logits)
        w = batch["w"]
        penalty = logits.new_zeros(())
        for v in range(1, 1 + len(self.variations)):
            for k in range(s.shape[1]):
                penalty = penalty + shape_penalty(s[:n, k], s[v * n:(v + 1) * n, k], self.edges, self.bandwidth,
                                                  w, w, kind=self.kind)
        return l_c, penalty, logits[:n]

    def __call__(self, model, batch: dict):
        l_c, penalty, _ = self.terms(model, batch)
        return l_c + self.lam * penalty

    def validate(self, model, batch: dict) -> dict[str, float]:
        l_c, penalty, logits = self.terms(model, batch)
        out = super().validate(model, batch)
        wsum = out["weight"]
        out.update(loss=float(l_c + self.lam * penalty) * wsum, classification=float(l_c) * wsum,
                   shape_penalty=float(penalty) * wsum)
        return out


def scale_variations(deltas: Sequence[float], mean: Sequence[float], scale: Sequence[float]) -> list:
    """Up and down variations x_raw·(1 ± δ) of standardised inputs x = (x_raw - mean) / scale,
    i.e. x' = x ± δ·(x + mean/scale): what a jet-energy-scale shift does to pT and mass."""
    d = torch.tensor(list(deltas), dtype=torch.float32)
    c = torch.tensor([m / s for m, s in zip(mean, scale)], dtype=torch.float32)
    return [_Scale(d, c, +1.0), _Scale(d, c, -1.0)]


class _Scale:
    def __init__(self, delta, offset, sign: float):
        self.delta, self.offset, self.sign = delta, offset, sign

    def __call__(self, x):
        return x + self.sign * self.delta.to(x.device) * (x + self.offset.to(x.device))


class Adversarial(Classification):
    """ADNN: classifier ``model["classifier"]`` (needs ``penultimate``) against an adversary
    ``model["adversary"]`` that predicts ``batch["d"]`` (domain index, -1 = none) from the
    classifier's penultimate layer. Each step: classifier on L_C - α·L_A (``minimax``) or
    L_C + α·CE(adversary, uniform) (``confusion``), then the adversary on L_A.

    ``validate`` reports ``loss`` = L_C + α·max(0, log K - L_A): the classification loss plus
    what the adversary still recovers beyond chance (K domains), so early stopping does not
    prefer epochs where the classifier leaks the domain.
    """

    def __init__(self, opt_classifier, opt_adversary, alpha: float, n_domains: int, mode: str = "confusion",
                 adversary_steps: int = 1, inputs: Sequence[str] = ("x",)):
        super().__init__(inputs)
        self.opt_c, self.opt_a, self.alpha, self.mode = opt_classifier, opt_adversary, alpha, mode
        self.adversary_steps, self.log_k = adversary_steps, math.log(n_domains)

    def __call__(self, model, batch: dict) -> dict[str, float]:
        domains = batch["d"]
        if _any_rank_lacks(domains):  # every rank must step both optimizers (gradient averaging)
            return {"classifier_loss": math.nan, "adversary_loss": math.nan, "adversary_accuracy": math.nan}
        out = adnn_step(model["classifier"], model["adversary"], self.args(batch), batch["y"], domains,
                        self.opt_c, self.opt_a, alpha=self.alpha, weights=batch["w"],
                        adversary_steps=self.adversary_steps, mode=self.mode)
        return {k: out[k] for k in ("classifier_loss", "adversary_loss", "adversary_accuracy")}

    def validate(self, model, batch: dict) -> dict[str, float]:
        clf = model["classifier"]
        out = super().validate(clf, batch)
        args, domains = self.args(batch), batch["d"]
        sel = domains >= 0
        wsum = out["weight"]
        l_a = float(adversary_loss(model["adversary"], clf.penultimate(*args), domains)) if bool(sel.any()) else self.log_k
        out["classification"] = out["loss"]
        out["loss"] += self.alpha * max(0.0, self.log_k - l_a) * wsum
        out["adversary_loss"] = l_a * wsum
        return out


def _any_rank_lacks(domains) -> bool:
    from .torch_loop import allreduce_sum, world_size

    if world_size() == 1:  # adnn_step itself skips the adversary on a batch without domains
        return False
    lacking = allreduce_sum([0.0 if bool((domains >= 0).any()) else 1.0], domains.device)[0]
    return lacking > 0
