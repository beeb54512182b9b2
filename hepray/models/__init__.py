"""Torch modules. ``build_model(arch)`` rebuilds a network from the ``architecture`` dict stored
in a model's metadata, so weights load with ``torch.load(weights_only=True)`` - no pickled code."""

from __future__ import annotations

_BUILDERS = {
    "mlp": ("hepray.models.mlp", "MLP"),
    "bnn": ("hepray.models.bnn", "BayesianMLP"),
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
    builder = getattr(importlib.import_module(module), cls)
    _check_arguments(name, builder, arch)
    return builder(**arch)


def _check_arguments(name: str, builder, arch: dict) -> None:
    """Stored architecture arguments must match the module's signature: an unknown or missing one
    is named, instead of a TypeError deep inside the constructor."""
    import inspect

    params = inspect.signature(builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(arch) - set(params))
    missing = [k for k, p in params.items() if p.default is p.empty and k not in arch
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if unknown or missing:
        what = "; ".join(x for x in (f"unknown {', '.join(unknown)}" if unknown else "",
                                     f"missing {', '.join(missing)}" if missing else "") if x)
        raise ValueError(f"architecture {name!r} arguments do not match {builder.__name__}(): {what} "
                         f"(it takes {', '.join(params)})")
