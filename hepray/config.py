"""Pydantic models of the job YAML. Every error is one line: ``file: field.path: problem``.

Each workload declares its own ``Config`` (a subclass of :class:`JobConfig`) and registers it
under its ``kind:``; :func:`load_job` picks the class from the registry and validates the whole
file against it, so unknown keys, wrong types and impossible sizes are refused before anything
runs or is written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from .errors import ConfigError, UnknownKind

# Every name that becomes part of a path (job, sample): no separators, no leading dot (`..`, `.x`)
NAME_PATTERN = r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]


class Spec(BaseModel):
    """Base of every config block: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SampleSpec(Spec):
    name: Name
    files: str | list[str]
    label: int | None = None
    weight: float = Field(1.0, ge=0)
    tree: str | None = None

    @field_validator("files")
    @classmethod
    def _nonempty(cls, v):
        if not v:
            raise ValueError("must name at least one file")
        return v


class DatasetSpec(Spec):
    """Which events to read. Either ``files`` (one unlabelled sample) or ``samples``."""

    files: str | list[str] | None = None
    samples: list[SampleSpec] = []
    tree: str = "Events"
    branches: list[str] = []
    aliases: dict[str, str] = {}  # column name -> branch path, for names like "Info/runNum"
    expressions: dict[str, str] = {}
    cut: str | None = None
    # ordered `- define: {name: expression}` / `- filter: expression` entries (docs/analysis.md);
    # from Python a define may be a callable of the shard's awkward record array
    steps: list[dict[str, Any]] = []
    event_id: list[str] | None = None  # default: detected run/lumi/event branches
    shard_events: int = Field(200_000, gt=0)
    shard_bytes: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _files_or_samples(self):
        if not self.files and not self.samples:
            raise ValueError("give `files:` or `samples:`")
        if self.files and self.samples:
            raise ValueError("give either `files:` or `samples:`, not both")
        names = [s.name for s in self.samples]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:  # one name, one set of shard ids and part names: the second would replace the first
            raise ValueError(f"samples: name {dup[0]!r} is used twice; give each sample its own name")
        from .data.expressions import Expression

        for name, text in self.expressions.items():
            Expression(text, field=f"expressions.{name}")
        if self.cut:
            Expression(self.cut, field="cut")
        for i, step in enumerate(self.steps):
            _check_step(step, f"steps[{i}]")
        return self

    @field_serializer("steps")
    def _steps_text(self, steps, info):
        """A Python callable is written (job.yaml, JSON) as its qualified name; texts as they are."""
        if info.mode != "json":
            return steps
        return [{k: ({n: _callable_name(t) if callable(t) else t for n, t in v.items()} if k == "define" else v)
                 for k, v in s.items()} for s in steps]

    def with_expressions(self, stored: dict[str, str], where: str = "", field: str = "model") -> DatasetSpec:
        """This spec plus ``stored`` expressions (those a model was trained with) it does not
        define; its own definitions win. The stored texts pass the same whitelist again."""
        missing = {k: v for k, v in (stored or {}).items() if k not in self.expressions}
        if not missing:
            return self
        try:
            return validate(DatasetSpec, {**self.model_dump(), "expressions": {**missing, **self.expressions}})
        except ConfigError as exc:
            raise ConfigError(where, field, f"expressions stored with the model are invalid: {exc}") from None

    def sample_list(self) -> list[SampleSpec]:
        if self.samples:
            return list(self.samples)
        return [SampleSpec(name="data", files=self.files)]


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_step(step: dict, field: str):
    from .data.expressions import Expression

    keys = set(step) - {"needs"}
    if len(keys) != 1 or not keys <= {"define", "filter"}:
        raise ConfigError("", field, "each step is `define: {name: expression, ...}` or `filter: expression`"
                          f" (got {sorted(step)})")
    if "filter" in step:
        if not isinstance(step["filter"], str):
            raise ConfigError("", f"{field}.filter", "must be an expression (text)")
        if "needs" in step:
            raise ConfigError("", f"{field}.needs", "only a define of a Python callable takes `needs:`")
        Expression(step["filter"], field=f"{field}.filter")
        return
    defs = step["define"]
    if not isinstance(defs, dict) or not defs:
        raise ConfigError("", f"{field}.define", "must map new column names to expressions")
    for name, text in defs.items():
        if not isinstance(name, str) or not _NAME.match(name) or name.startswith("hepray_"):
            raise ConfigError("", f"{field}.define", f"{name!r} is not a column name (letters, digits, _; "
                              "not starting with hepray_)")
        if callable(text):
            continue
        if not isinstance(text, str):
            raise ConfigError("", f"{field}.define.{name}", "must be an expression (text)")
        Expression(text, field=f"{field}.define.{name}")
    needs = step.get("needs")
    if needs is not None and not (isinstance(needs, list) and all(isinstance(n, str) for n in needs)):
        raise ConfigError("", f"{field}.needs", "must be a list of column names")


def _callable_name(fn) -> str:
    return f"<python callable {getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}>"


class OutputSpec(Spec):
    dir: str | None = None  # default: runs/<name>
    format: Literal["root", "parquet"] = "root"
    compression: str = "zstd"
    tree: str = "hepray"

    @field_validator("compression")
    @classmethod
    def _codec(cls, v):
        if v.split(":")[0].lower() not in {"zstd", "lz4", "zlib", "lzma", "none"}:
            raise ValueError("must be one of zstd, lz4, zlib, lzma, none (optionally codec:level)")
        return v


class EngineSpec(Spec):
    workers: int | None = Field(None, gt=0)  # default: the cluster's CPUs / cpus_per_worker
    cpus_per_worker: float = Field(1.0, gt=0)
    # GPUs per shard actor (fractions share one): torch on cuda, xgboost device=cuda; a cluster
    # without GPUs runs the job on CPUs with a warning
    gpus_per_worker: float = Field(0.0, ge=0)
    in_flight: int | None = Field(None, gt=0)  # shards queued per worker beyond the running one
    max_retries: int = Field(2, ge=0)
    on_error: Literal["fail", "skip"] = "fail"
    progress_every_s: float = Field(5.0, gt=0)
    # idle actors kept for the next run in this process (0: none); they hold their CPUs meanwhile
    keep_warm_s: float = Field(30.0, ge=0)
    # a shard running longer is ended (its actor restarted), tried again, then reported as failed
    shard_timeout_s: float | None = Field(1800.0, gt=0)
    # a lost worker's shards go to the others at once; with none left for this long, the run ends
    restart_timeout_s: float = Field(180.0, gt=0)
    # NaN or inf in a model's inputs: fail the shard, or count them per shard in the manifest
    on_nonfinite: Literal["fail", "count"] = "fail"


class ReportSpec(Spec):
    """How plots are labelled (mplhep): an experiment's style and label, or ``none`` (mplhep's
    neutral ROOT-like style, no experiment name); ``lumi`` in fb^-1 and ``com`` in TeV go in the
    top-right corner when given."""

    style: Literal["CMS", "ATLAS", "none"] = "none"
    label: str = "Simulation"
    lumi: float | None = Field(None, gt=0)
    com: float | None = Field(None, gt=0)


class JobConfig(Spec):
    """Fields every job has. Workloads subclass this with their own blocks."""

    default_tree: ClassVar[str] = "hepray"  # output tree name unless the job sets output.tree

    kind: str
    name: Name = "job"
    seed: int = 12345
    output: OutputSpec = OutputSpec()
    engine: EngineSpec = EngineSpec()
    report: ReportSpec = ReportSpec()

    # the job file, for error messages
    source: str = Field("", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _default_tree(cls, data):
        """A workload's default tree survives a job that sets other output fields."""
        if isinstance(data, dict):
            out = data.get("output")
            if out is None or (isinstance(out, dict) and "tree" not in out):
                data = {**data, "output": {**(out or {}), "tree": cls.default_tree}}
        return data

    def run_dir(self) -> Path:
        return Path(self.output.dir or os.path.join("runs", self.name))

    def resolve(self, path: str) -> str:
        """A path in the job: ``~`` expanded; relative paths are relative to the driver's working
        directory (as with every command-line tool) and made absolute here, because Ray workers
        run elsewhere (their working directory is where Ray started); URLs untouched."""
        return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def _format_loc(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validate(config_cls: type[JobConfig], data: dict, where: str = "") -> JobConfig:
    """Validate ``data`` against ``config_cls``; the first problem becomes one ConfigError line."""
    try:
        cfg = config_cls.model_validate(data)
    except ValidationError as exc:
        # a misspelt key explains the "missing" error it causes: report it first
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        loc = _format_loc([p for p in err["loc"] if p not in ("function-after[_files_or_samples(), DatasetSpec]",)])
        msg = err["msg"].removeprefix("Value error, ")
        nested = (err.get("ctx") or {}).get("error")
        if isinstance(nested, ConfigError):  # e.g. an expression refused inside a block
            loc = ".".join(p for p in (loc, nested.field) if p)
            msg = nested.problem
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see docs/jobs.md)"
        elif err["type"] == "string_pattern_mismatch" and err["ctx"].get("pattern") == NAME_PATTERN:
            msg = (f"{err['input']!r} is not a valid name: use letters, digits, `_`, `-`, `.`, "
                   "not starting with a dot (names become file and folder names)")
        elif err["type"] == "missing":
            msg = "required field is missing"
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(where, loc, msg + more) from None
    except ConfigError as exc:  # raised by nested checks such as expressions
        raise ConfigError(where, exc.field, exc.problem) from None
    if where:
        object.__setattr__(cfg, "source", where)
    return cfg


_registry = None  # the workload registry: given by hepray.api (config.py imports no workloads)


def use_registry(registry) -> None:
    """Set the registry :func:`load_job` uses when given none (hepray.api sets the built-in one)."""
    global _registry
    _registry = registry


def load_job(source: str | os.PathLike | dict, registry=None, overrides: dict | None = None) -> JobConfig:
    """Read a job (YAML path or dict), pick its workload by ``kind:`` and validate it.

    >>> job = load_job({"kind": "infer", "dataset": {"files": "x.root"}, "model": {"path": "m.json", "features": ["a"]}})
    >>> job.kind
    'infer'
    """
    registry = registry or _registry
    if registry is None:
        raise TypeError("load_job needs a workload registry (import hepray, or pass registry=)")
    where = ""
    if isinstance(source, dict):
        data = dict(source)
    else:
        where = str(source)
        try:
            with open(where) as f:
                data = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(where, "", "job file not found") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(where, "", f"not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(where, "", "a job file must be a YAML mapping with at least `kind:`")
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    kind = data.get("kind")
    if not isinstance(kind, str):
        raise ConfigError(where, "kind", "required field is missing (one of: " + ", ".join(registry.kinds()) + ")")
    if kind not in registry:
        raise UnknownKind(where, kind, registry.kinds())
    return validate(registry.get(kind).Config, data, where)


def _set_dotted(data: dict, key: str, value: Any):
    parts = key.split(".")
    for p in parts[:-1]:
        data = data.setdefault(p, {})
    data[parts[-1]] = value
