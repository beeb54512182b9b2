"""Conditional GAN for fast simulation: generator(noise, context) -> x, discriminator(x, context).

Stabilisers, all optional: spectral norm on the discriminator (default on), one-sided label
smoothing, a WGAN-GP-style gradient penalty, feature matching on the discriminator's last
hidden layer, and an exponential moving average (EMA) of the generator weights, which is what
samples are drawn from: GAN training oscillates around the solution and the average sits on it.
``train_step`` does the discriminator update(s), one generator update and the EMA update.
"""

from __future__ import annotations

import copy

from ..extras import require
from .mlp import ACTIVATIONS

torch = require("torch")
nn = torch.nn
F = torch.nn.functional
Tensor = torch.Tensor


class Generator(nn.Module):
    def __init__(self, n_noise: int, n_context: int, n_outputs: int, hidden: list[int], activation: str):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_noise + n_context
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, noise: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(noise if context is None else torch.cat([noise, context], dim=-1))


class Discriminator(nn.Module):
    """Returns logits [B]; ``features`` gives the last hidden layer (for feature matching)."""

    def __init__(self, n_inputs: int, n_context: int, hidden: list[int], spectral_norm: bool):
        super().__init__()
        wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = []
        width = n_inputs + n_context
        for h in hidden:
            layers += [wrap(nn.Linear(width, h)), nn.LeakyReLU(0.2)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = wrap(nn.Linear(width, 1))

    def features(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.body(x if context is None else torch.cat([x, context], dim=-1))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.head(self.features(x, context)).squeeze(-1)


class ConditionalGAN(nn.Module):
    """``ConditionalGAN(n_outputs=1, n_context=1)``; ``forward(noise, context)`` is the sampler
    that gets exported (EMA generator when ``ema_decay`` is set).

    Kept as one module so one state_dict + ``arch`` holds all networks.
    """

    def __init__(self, n_outputs: int, n_context: int = 0, n_noise: int = 8,
                 generator_hidden: list[int] | None = None, discriminator_hidden: list[int] | None = None,
                 activation: str = "relu", spectral_norm: bool = True, ema_decay: float | None = 0.99):
        super().__init__()
        g_hidden = list(generator_hidden) if generator_hidden is not None else [64, 64]
        d_hidden = list(discriminator_hidden) if discriminator_hidden is not None else [64, 64]
        self.arch = {"name": "conditional_gan", "n_outputs": n_outputs, "n_context": n_context,
                     "n_noise": n_noise, "generator_hidden": g_hidden, "discriminator_hidden": d_hidden,
                     "activation": activation, "spectral_norm": spectral_norm, "ema_decay": ema_decay}
        self.n_noise, self.n_context, self.ema_decay = n_noise, n_context, ema_decay
        self.generator = Generator(n_noise, n_context, n_outputs, g_hidden, activation)
        self.discriminator = Discriminator(n_outputs, n_context, d_hidden, spectral_norm)
        self.generator_ema = None
        if ema_decay is not None:
            if not 0.0 <= ema_decay < 1.0:
                raise ValueError("ema_decay must be in [0, 1) or None")
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.generator_ema is None:
            return
        for avg, live in zip(self.generator_ema.parameters(), self.generator.parameters()):
            avg.lerp_(live, 1.0 - self.ema_decay)

    def generate(self, context: Tensor | None = None, num_samples: int | None = None,
                 noise: Tensor | None = None, use_ema: bool = True) -> Tensor:
        """Samples [B, n_outputs]: one per context row, else ``num_samples`` (or one per noise row)."""
        n = context.shape[0] if context is not None else (noise.shape[0] if noise is not None else num_samples)
        if n is None:
            raise ValueError("give context, noise or num_samples")
        if noise is None:
            ref = next(self.generator.parameters())
            noise = torch.randn(n, self.n_noise, dtype=ref.dtype, device=ref.device)
        gen = self.generator_ema if use_ema and self.generator_ema is not None else self.generator
        return gen(noise, context if self.n_context else None)

    def forward(self, noise: Tensor, context: Tensor | None = None) -> Tensor:
        gen = self.generator_ema if self.generator_ema is not None else self.generator
        return gen(noise, context if self.n_context else None)


def gradient_penalty(disc: Discriminator, real: Tensor, fake: Tensor, context: Tensor | None) -> Tensor:
    """WGAN-GP penalty (‖∇D‖ - 1)² on random interpolates of real and generated events."""
    eps = torch.rand(real.shape[0], 1, dtype=real.dtype, device=real.device)
    mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
    out = disc(mix, context)
    (grad,) = torch.autograd.grad(out.sum(), mix, create_graph=True)
    return (grad.norm(dim=-1) - 1.0).pow(2).mean()


def train_step(gan: ConditionalGAN, real: Tensor, context: Tensor | None,
               opt_generator: torch.optim.Optimizer, opt_discriminator: torch.optim.Optimizer, *,
               label_smoothing: float = 0.1, gp_weight: float = 0.0, feature_matching: float = 0.0,
               n_critic: int = 1) -> dict[str, float]:
    """One GAN update with the non-saturating loss; returns the losses as floats.

    ``label_smoothing`` sets the real target to 1 - s (one-sided: fakes stay 0);
    ``gp_weight`` > 0 adds the gradient penalty; ``feature_matching`` > 0 adds the squared
    difference of mean discriminator features (real vs generated) to the generator loss.
    """
    if context is not None and not gan.n_context:
        context = None
    disc, n = gan.discriminator, real.shape[0]
    real_target = torch.full((n,), 1.0 - label_smoothing, dtype=real.dtype, device=real.device)
    fake_target = torch.zeros(n, dtype=real.dtype, device=real.device)

    for _ in range(n_critic):
        with torch.no_grad():
            fake = gan.generate(context, num_samples=n, use_ema=False)
        d_loss = (F.binary_cross_entropy_with_logits(disc(real, context), real_target)
                  + F.binary_cross_entropy_with_logits(disc(fake, context), fake_target))
        gp = gradient_penalty(disc, real, fake, context) if gp_weight > 0 else real.new_zeros(())
        opt_discriminator.zero_grad(set_to_none=True)
        (d_loss + gp_weight * gp).backward()
        opt_discriminator.step()

    fake = gan.generate(context, num_samples=n, use_ema=False)
    g_loss = F.binary_cross_entropy_with_logits(disc(fake, context), torch.ones_like(fake_target))
    fm = real.new_zeros(())
    if feature_matching > 0:
        with torch.no_grad():
            real_feat = disc.features(real, context).mean(dim=0)
        fm = (disc.features(fake, context).mean(dim=0) - real_feat).pow(2).sum()
    opt_generator.zero_grad(set_to_none=True)
    (g_loss + feature_matching * fm).backward()
    opt_generator.step()
    gan.update_ema()
    opt_discriminator.zero_grad(set_to_none=True)  # the generator step left grads on D
    return {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach()), "gradient_penalty": float(gp.detach()),
            "feature_matching": float(fm.detach())}
