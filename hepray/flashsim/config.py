"""The blocks of ``kind: train_flashsim`` that describe a pipeline of parameterizations.

A pipeline is an efficiency model (is the object reconstructed?) followed by generative models of
the detector-level features, each learning a *response* (``reco_x / gen_x``, ``reco_x - gen_x``,
...) rather than the raw value: the response is nearly the same shape everywhere in phase space,
so a small network learns it from a few thousand jets, and the generator-level value carries the
rest of the physics through unchanged.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..config import Spec

Transform = Literal["ratio", "log_ratio", "diff", "dphi", "value"]
TRANSFORMS: tuple[str, ...] = ("ratio", "log_ratio", "diff", "dphi", "value")


class OutputSpec(Spec):
    """One generated column: its response transform and the generator-level column it is taken
    relative to (default: the name with ``reco_`` replaced by ``gen_``; unused for ``value``)."""

    transform: Transform = "ratio"
    reference: str | None = None

    def reference_for(self, name: str, prefix: tuple[str, str]) -> str | None:
        if self.transform == "value":
            return None
        if self.reference:
            return self.reference
        reco, gen = prefix
        return gen + name[len(reco):] if name.startswith(reco) else None


class FitSpec(Spec):
    """Mini-batch Adam with early stopping on the validation split (flows, efficiency); GANs run
    all epochs (their losses do not tell when the samples are best) and keep the EMA generator."""

    epochs: int = Field(60, gt=0)
    batch_size: int = Field(256, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int | None = Field(10, gt=0)
    schedule: Literal["none", "cosine", "step", "plateau"] = "cosine"
    grad_clip: float | None = Field(5.0, gt=0)


class FlowArch(Spec):
    n_layers: int = Field(5, gt=0)
    hidden: int = Field(64, gt=0)
    n_hidden: int = Field(2, gt=0)


class GanArch(Spec):
    n_noise: int = Field(8, gt=0)
    generator_hidden: list[int] = [64, 64]
    discriminator_hidden: list[int] = [64, 64]
    activation: Literal["relu", "tanh", "elu", "silu", "leakyrelu"] = "leakyrelu"
    ema_decay: float | None = Field(0.995, ge=0, lt=1)
    label_smoothing: float = Field(0.1, ge=0, lt=0.5)
    feature_matching: float = Field(1.0, ge=0)
    gp_weight: float = Field(0.0, ge=0)
    n_critic: int = Field(1, gt=0)


class EfficiencySpec(Spec):
    """P(target | conditions) from an MLP classifier (BCE, no class balancing: the output must be
    a calibrated probability, since the pipeline draws ``target`` from it)."""

    target: str = "reco_ok"
    conditions: list[str] | None = None  # default: the job's conditions
    hidden: list[int] = [64, 64]
    activation: Literal["relu", "tanh", "elu", "silu", "leakyrelu"] = "silu"
    training: FitSpec | None = None  # default: the job's training block


class ParameterizationSpec(Spec):
    """A conditional generative model of some detector-level columns.

    ``conditions`` default to the job's; ``extra_conditions`` adds columns made by an *earlier*
    parameterization (a Lamarr-style chain: trained on the true values, generated from the
    generated ones). The reference columns of the outputs are always added to the conditions.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    model: Literal["flow", "gan"] = "flow"
    outputs: dict[str, OutputSpec] = Field(min_length=1)
    conditions: list[str] | None = None
    extra_conditions: list[str] = []
    flow: FlowArch = FlowArch()
    gan: GanArch = GanArch()
    training: FitSpec | None = None

    @field_validator("outputs", mode="before")
    @classmethod
    def _shorthand(cls, v):
        """``reco_pt: ratio`` is short for ``reco_pt: {transform: ratio}``."""
        if isinstance(v, dict):
            return {k: ({"transform": t} if isinstance(t, str) else t) for k, t in v.items()}
        return v


class PipelineSpec(Spec):
    """Everything of the pipeline that is not data: what is learned and how."""

    conditions: list[str] = Field(min_length=1)
    efficiency: EfficiencySpec | None = EfficiencySpec()
    parameterizations: list[ParameterizationSpec] = Field(min_length=1)
    derived: dict[str, str] = {}  # columns computed after generation, in order (expressions)
    fill: float = 0.0  # value of the generated columns where the efficiency model says "not reconstructed"
    prefix: tuple[str, str] = ("reco_", "gen_")  # detector-level / generator-level name prefixes
    mantissa_bits: int | None = Field(None, gt=0, le=23)  # round floats like the full simulation did
    passthrough: list[str] = ["gen_*", "run", "luminosityBlock", "event", "jet_rank", "process", "label",
                              "truth_dr", "fault"]  # input columns copied to the output (fnmatch patterns)

    @model_validator(mode="after")
    def _chain(self):
        names = [p.name for p in self.parameterizations]
        if len(set(names)) != len(names):
            raise ValueError("parameterizations: names must be unique")
        made: set[str] = {self.efficiency.target} if self.efficiency else set()
        for p in self.parameterizations:
            for c in p.extra_conditions:
                if c not in made:
                    raise ValueError(f"parameterizations.{p.name}.extra_conditions: {c!r} is not made by an earlier "
                                     f"parameterization (made so far: {sorted(made) or 'none'})")
            twice = made & set(p.outputs)
            if twice:
                raise ValueError(f"parameterizations.{p.name}.outputs: {sorted(twice)} already made earlier")
            made |= set(p.outputs)
            for out, spec in p.outputs.items():
                if spec.transform != "value" and spec.reference_for(out, self.prefix) is None:
                    raise ValueError(f"parameterizations.{p.name}.outputs.{out}: give `reference:` (the name does "
                                     f"not start with {self.prefix[0]!r})")
        from ..data.expressions import Expression

        for name, text in self.derived.items():
            Expression(text, field=f"derived.{name}")
        return self
