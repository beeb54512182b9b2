"""Torch modules. ``build_model(arch)`` rebuilds a network from the ``architecture`` dict stored
in a model's metadata, so weights load with ``torch.load(weights_only=True)`` - no pickled code."""

from __future__ import annotations

_BUILDERS = {
    "mlp": ("hepray.models.mlp", "MLP"),
    "particlenet": ("hepray.models.particlenet", "ParticleNet"),
    "jetgraph": ("hepray.models.jetgraph", "JetGraphNet"),
    "autoencoder": ("hepray.models.autoencoder", "AutoEncoder"),
    "vae": ("hepray.models.autoencoder", "VariationalAutoEncoder"),
    "conditional_flow": ("hepray.models.flows", "ConditionalFlow"),
    "conditional_gan": ("hepray.models.gan", "ConditionalGAN"),
    "adversary": ("hepray.models.losses", "Adversary"),
}


def register_architecture(name: str, module: str, cls: str) -> None:
    if name in _BUILDERS and _BUILDERS[name] != (module, cls):
        raise ValueError(f"architecture {name!r} already registered")
    _BUILDERS[name] = (module, cls)


def build_model(arch: dict):
    """``build_model({"name": "mlp", "n_inputs": 4, "hidden": [8], "n_outputs": 1})``."""
    import importlib

    arch = dict(arch)
    name = arch.pop("name")
    if name not in _BUILDERS:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    module, cls = _BUILDERS[name]
    return getattr(importlib.import_module(module), cls)(**arch)
