"""conifer conversion of an xgboost BDT artifact into an HLS project, with the corrections that
make conifer 1.11 agree with xgboost >= 2.

What goes wrong with conifer's own xgboost converter (measured with xgboost 3.2, see
docs/fpga.md for the numbers):

1. **Intercept (base_score) not in margin space.** xgboost >= 2 estimates the intercept
   (``boost_from_average``) and stores it in ``learner_model_param.base_score`` in the space of
   the objective's *output*; xgboost >= 3.1 stores a vector, one per class for multi-class.
   conifer takes ``logit`` for ``binary:logistic``/``reg:logistic`` (right), but also for
   ``multi:softprob``/``multi:softmax``, whose stored values are already margins (logit of a
   negative number: NaN), and not ``log`` for the log-link objectives (``count:poisson``,
   ``reg:gamma``, ``reg:tweedie``...), whose stored value is a mean. Correction: map
   ``base_score`` through the objective's link, then *check* it against xgboost itself
   (margin minus the sum of the leaves on probe rows) and use the measured value if they differ.
2. **Thresholds and leaf values cast by truncation.** xgboost splits on ``x < t`` with float32
   ``x`` and ``t``. conifer writes ``t`` and the leaf values as decimal text, and the C++ casts
   them to ``ap_fixed`` by truncation (``AP_TRN``, towards -inf). For an input ``x`` on the
   input grid, ``x < t`` holds exactly when ``x < ceil_grid(t)``, but the truncated
   ``floor_grid(t)`` flips every input that sits on ``floor_grid(t)``; and truncated leaves bias
   the sum by up to one LSB per tree, always downwards. Correction: thresholds are the exact
   float32 split values from the model JSON rounded *up* to the input grid, leaf values and the
   intercept are rounded to the *nearest* score-grid value, so every C++ cast is exact.
3. **max_depth from the training config.** conifer reads it from ``save_config()``, which
   holds the *training* parameter: a model loaded from JSON reports the default 6, and
   ``grow_policy: lossguide`` reports 0. Correction: the depth of the deepest tree.

Trees are rebuilt from the model's JSON (node ids are array indices; exact float32 values)
rather than from ``trees_to_dataframe`` (decimal text). Categorical splits and missing-value
routing (``default_left``) have no conifer equivalent: the first is refused, the second is
recorded (inputs must not be NaN on the trigger path).

With these corrections the C simulation equals, for every input on the input grid, the sum of
the grid-rounded xgboost leaves that xgboost itself selects; the test suite checks this to
2^-10 of the score LSB.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelLoadError
from ..extras import import_xgboost, require
from .artifacts import Artifact
from .fixed import FixedType

PROJECT_META = "hepray_fpga.json"

_LOGIT = ("binary:logistic", "reg:logistic")
_LOG = ("count:poisson", "reg:gamma", "reg:tweedie", "survival:cox", "survival:aft")

BRIDGE = """// hepray: batch C-simulation entry point for ctypes (conifer's own bridge is pybind11,
// one call per event, and changes the working directory). One translation unit on purpose:
// every tree is its own template instance, and parsing parameters.h once instead of three
// times cuts the compile time by about a third.
#include "firmware/BDT.cpp"
#include "firmware/{name}.cpp"  // the synthesised top function {name}(x, score)

extern "C" int hepray_n_features() {{ return n_features; }}
extern "C" int hepray_n_outputs() {{ return BDT::fn_classes(n_classes); }}

extern "C" void hepray_batch_float(const float *x, double *y, long n) {{
    const int n_out = BDT::fn_classes(n_classes);
    for (long i = 0; i < n; ++i) {{
        input_arr_t xt;
        for (int f = 0; f < n_features; ++f) xt[f] = (input_t) x[i * n_features + f];
        score_arr_t s;
        {name}(xt, s);
        for (int c = 0; c < n_out; ++c) y[i * n_out + c] = (double) s[c];
    }}
}}
"""


@dataclasses.dataclass
class BDTOptions:
    """Types and target of the BDT firmware. ``input_precision: auto`` sizes the input/threshold
    type from the model's thresholds (one sign bit, one bit of headroom) with the score type's
    fractional bits, saturating so out-of-range inputs clip instead of wrapping."""

    precision: str = "ap_fixed<18,8>"  # scores: leaves, intercept, sum
    input_precision: str = "auto"  # inputs and thresholds (conifer compares them in one type)
    correct: bool = True  # apply the xgboost >= 2 corrections (module docstring)
    clock_period: float = 5.0
    part: str = "xcvu13p-flga2577-2-e"
    project_name: str = "trigger_bdt"

    def validate(self) -> BDTOptions:
        score = FixedType.parse(self.precision)
        if score.integer < 2:
            raise ConfigError("", "precision", "a BDT score type needs >= 2 integer bits (conifer multiplies by norm = 1)")
        if self.input_precision != "auto":
            FixedType.parse(self.input_precision)
        return self


# -- the xgboost model, read from its JSON ---------------------------------------------------------

@dataclasses.dataclass
class XGBTrees:
    """The parts of an xgboost model a BDT firmware needs, exactly as xgboost holds them."""

    objective: str
    n_features: int
    n_groups: int  # 1 (binary / regression) or number of classes
    base_score: list[float]  # as stored (output space)
    trees: list[dict]  # per tree: left, right, feature, threshold (f32), leaf (f32), group
    feature_names: list[str]
    _depth: int | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_booster(cls, booster) -> XGBTrees:
        model = json.loads(bytes(booster.save_raw("json")))
        learner = model["learner"]
        gb = learner["gradient_booster"]
        if gb.get("name") not in ("gbtree", "dart"):
            raise ModelLoadError("", f"booster {gb.get('name')!r} is not a tree ensemble")
        if gb.get("name") == "dart":
            gb = gb["gbtree"]
        param = learner["learner_model_param"]
        n_class = int(param.get("num_class", 0) or 0)
        n_target = int(param.get("num_target", 1) or 1)
        if n_target > 1:
            raise ModelLoadError("", "multi-target xgboost models are not supported by conifer")
        base = [float(v) for v in str(param["base_score"]).strip("[]").split(",") if v.strip()]
        info = gb["model"].get("tree_info") or [0] * len(gb["model"]["trees"])
        trees = []
        for t, group in zip(gb["model"]["trees"], info):
            if any(int(s) != 0 for s in t.get("split_type", [])):
                raise ModelLoadError("", "categorical splits have no conifer equivalent")
            left = np.asarray(t["left_children"], dtype=np.int64)
            is_leaf = left == -1
            cond = np.asarray(t["split_conditions"], dtype=np.float32)
            trees.append({
                "left": left, "right": np.asarray(t["right_children"], dtype=np.int64),
                "feature": np.where(is_leaf, -2, np.asarray(t["split_indices"], dtype=np.int64)),
                "threshold": np.where(is_leaf, np.float32(0), cond),
                "leaf": np.where(is_leaf, cond, np.float32(0)),
                "group": int(group),
            })
        names = list(booster.feature_names or [f"f{i}" for i in range(int(param["num_feature"]))])
        return cls(learner["objective"]["name"], int(param["num_feature"]), max(1, n_class), base, trees, names)

    def depth(self) -> int:
        """Depth of the deepest tree, walked from the root (node ids need not be ordered:
        pruning frees ids that later splits reuse)."""
        if self._depth is None:
            best = 0
            for t in self.trees:
                level, frontier = 0, [0]
                while frontier:
                    nxt = [c for i in frontier if t["left"][i] != -1 for c in (t["left"][i], t["right"][i])]
                    if nxt:
                        level += 1
                    frontier = nxt
                best = max(best, level)
            self._depth = best
        return self._depth

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """Leaf index per (event, tree), traversing with xgboost's rule ``x < t`` in float32."""
        X = np.asarray(X, dtype=np.float32)
        out = np.zeros((len(X), len(self.trees)), dtype=np.int64)
        rows = np.arange(len(X))
        for j, t in enumerate(self.trees):
            node = np.zeros(len(X), dtype=np.int64)
            for _ in range(self.depth() + 1):
                f = t["feature"][node]
                inner = f >= 0
                if not inner.any():
                    break
                x = X[rows, np.where(inner, f, 0)]
                go_left = x < t["threshold"][node]
                node = np.where(inner, np.where(go_left, t["left"][node], t["right"][node]), node)
            out[:, j] = node
        return out

    def leaf_sum(self, X: np.ndarray, leaf_values: list[np.ndarray] | None = None) -> np.ndarray:
        """Sum of leaf values per group, float64: ``[n, n_groups]`` (no intercept)."""
        L = self.leaves(X)
        out = np.zeros((len(X), self.n_groups))
        for j, t in enumerate(self.trees):
            values = t["leaf"] if leaf_values is None else leaf_values[j]
            out[:, t["group"]] += np.asarray(values, dtype=np.float64)[L[:, j]]
        return out


def dmatrix(booster, X: np.ndarray):
    """A float32 DMatrix carrying the booster's feature names (xgboost refuses unnamed data
    for a model trained with names)."""
    xgb = import_xgboost()

    return xgb.DMatrix(np.asarray(X, dtype=np.float32), feature_names=booster.feature_names,
                       feature_types=booster.feature_types)


def intercept(booster, model: XGBTrees, probe: np.ndarray | None = None) -> tuple[list[float], dict]:
    """The intercept in margin space, one per group, and how it was found.

    Analytic: ``base_score`` through the objective's link. Checked against xgboost on probe rows
    (margin - sum of leaves); if they disagree by more than float32 rounding the measured value
    wins and the record says so (a future xgboost changing its storage again is caught here).
    """
    base = list(model.base_score)
    if len(base) == 1:
        base = base * model.n_groups
    if model.objective in _LOGIT:
        analytic = [math.log(b / (1 - b)) if 0 < b < 1 else float("nan") for b in base]
        link = "logit"
    elif model.objective in _LOG:
        analytic = [math.log(b) if b > 0 else float("nan") for b in base]
        link = "log"
    else:
        analytic, link = [float(b) for b in base], "identity"
    if probe is None:
        probe = np.random.default_rng(0).normal(size=(64, model.n_features)).astype(np.float32)
    margin = np.asarray(booster.predict(dmatrix(booster, probe), output_margin=True), dtype=np.float64)
    measured = (margin.reshape(len(probe), -1) - model.leaf_sum(probe)).mean(axis=0)
    tol = 1e-5 * max(1.0, float(np.max(np.abs(measured))))
    agree = bool(np.all(np.isfinite(analytic))) and bool(np.max(np.abs(np.asarray(analytic) - measured)) <= tol)
    record = {"objective": model.objective, "base_score": model.base_score, "link": link,
              "analytic": analytic, "measured": measured.tolist(), "used": "analytic" if agree else "measured"}
    return (analytic if agree else measured.tolist()), record


def auto_input_type(model: XGBTrees, score: FixedType) -> FixedType:
    """Input/threshold type covering every threshold with a bit of headroom, saturating."""
    thr = np.concatenate([t["threshold"][t["feature"] >= 0] for t in model.trees] or [np.zeros(1)])
    top = float(np.max(np.abs(thr))) if thr.size else 1.0
    integer = max(2, int(math.ceil(math.log2(top + 1.0))) + 2)  # sign + headroom
    return FixedType(integer + score.fractional, integer, True, "AP_TRN", "AP_SAT")


def ensemble_dict(model: XGBTrees, init: list[float], input_type: FixedType | None,
                  score_type: FixedType | None) -> dict:
    """conifer's ensembleDict, built from the JSON model with the grid corrections applied."""
    n_f = model.n_features
    per_group: list[list[dict]] = [[] for _ in range(model.n_groups)]
    for t in model.trees:
        thr = t["threshold"].astype(np.float64)
        if input_type is not None:
            thr = np.where(t["feature"] >= 0, input_type.ceil(thr), 0.0)
        leaf = t["leaf"].astype(np.float64)
        if score_type is not None:
            leaf = _nearest(score_type).quantize(leaf)
        per_group[t["group"]].append({
            "feature": t["feature"].tolist(), "threshold": thr.tolist(), "value": leaf.tolist(),
            "children_left": t["left"].tolist(), "children_right": t["right"].tolist(),
            "weight": [[1 if f == k else 0 for k in range(n_f)] for f in t["feature"].tolist()],
        })
    n_trees = {len(g) for g in per_group}
    if len(n_trees) != 1:
        raise ModelLoadError("", f"classes have different numbers of trees ({sorted(n_trees)})")
    init = list(init)
    if score_type is not None:
        init = _nearest(score_type).quantize(init).tolist()
    trees = [[per_group[g][i] for g in range(model.n_groups)] for i in range(n_trees.pop())]
    return {
        "max_depth": max(1, model.depth()), "n_trees": len(trees), "n_features": n_f,
        "n_classes": 2 if model.n_groups == 1 else model.n_groups, "trees": trees,
        "init_predict": init, "norm": 1, "library": "xgboost", "splitting_convention": "<",
        "feature_map": {name: i for i, name in enumerate(model.feature_names)},
    }


def _nearest(t: FixedType) -> FixedType:
    """Round-to-nearest, saturating twin of ``t`` for values written into the firmware."""
    return t.with_modes("AP_RND_CONV", "AP_SAT")


def convert_bdt(artifact: Artifact, out_dir: str | Path, opts: BDTOptions) -> Path:
    """Write the conifer Xilinx HLS project of an xgboost artifact into ``out_dir``.

    The project is self-contained (``ap_types/`` headers copied in, a ctypes bridge added), so a
    Ray actor needs only g++ to compile its C simulation: not conifer, not pybind11.
    """
    conifer = require("conifer")
    opts.validate()
    booster = artifact.booster()
    model = XGBTrees.from_booster(booster)
    score = FixedType.parse(opts.precision)
    inp = auto_input_type(model, score) if opts.input_precision == "auto" else FixedType.parse(opts.input_precision)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    correction: dict = {"applied": bool(opts.correct)}
    if opts.correct:
        init, correction["intercept"] = intercept(booster, model)
        ens = ensemble_dict(model, init, inp, score)
        correction["max_depth"] = {"conifer": _conifer_depth(booster), "trees": ens["max_depth"]}
    else:
        import logging

        logging.getLogger("conifer").setLevel(logging.ERROR)  # its xgboost>=2 warning is the point here
        ens = conifer.converters.get_converter("xgboost").convert(booster)
    cfg = {"Backend": "xilinxhls", "ProjectName": opts.project_name, "OutputDir": str(out_dir),
           "InputPrecision": str(inp), "ThresholdPrecision": str(inp), "ScorePrecision": str(score),
           "WeightPrecision": "ap_uint<1>" if opts.correct else str(inp),
           "XilinxPart": opts.part, "ClockPeriod": opts.clock_period, "Unroll": True}
    bdt = conifer.backends.xilinxhls.make_model(ens, cfg)
    bdt.write()
    _copy_ap_types(out_dir / "ap_types")
    (out_dir / "hepray_bridge.cpp").write_text(BRIDGE.format(name=opts.project_name))
    n_out = 1 if ens["n_classes"] == 2 else ens["n_classes"]
    meta = {
        "kind": "conifer", "project_name": opts.project_name, "n_inputs": model.n_features, "n_outputs": n_out,
        "options": dataclasses.asdict(opts), "input_type": str(inp), "score_type": str(score),
        "n_trees": ens["n_trees"], "max_depth": ens["max_depth"], "n_nodes": bdt.n_nodes(), "n_leaves": bdt.n_leaves(),
        "correction": correction, "conifer_version": str(getattr(conifer, "__version__", "?")),
        "model": {k: artifact.meta.get(k) for k in ("features", "classes", "task", "preprocessing")},
    }
    (out_dir / PROJECT_META).write_text(json.dumps(meta, indent=2, default=float))
    return out_dir


def _conifer_depth(booster) -> int | None:
    """What conifer would have read as max_depth (the training config), for the record."""
    try:
        cfg = json.loads(booster.save_config())
        return int(cfg["learner"]["gradient_booster"]["tree_train_param"]["max_depth"])
    except (KeyError, ValueError, TypeError):
        return None


def ap_types_dir() -> Path:
    """Xilinx ap_types headers: ``$XILINX_AP_INCLUDE`` or the copy hls4ml ships."""
    import importlib.util
    import os

    env = os.environ.get("XILINX_AP_INCLUDE")
    if env and (Path(env) / "ap_fixed.h").exists():
        return Path(env)
    spec = importlib.util.find_spec("hls4ml")
    if spec and spec.submodule_search_locations:
        d = Path(list(spec.submodule_search_locations)[0]) / "templates" / "vivado" / "ap_types"
        if (d / "ap_fixed.h").exists():
            return d
    raise ModelLoadError("ap_types", "no ap_fixed.h: pip install hls4ml==1.3.0 or set XILINX_AP_INCLUDE")


def _copy_ap_types(dest: Path) -> None:
    import shutil

    if not (dest / "ap_fixed.h").exists():
        shutil.copytree(ap_types_dir(), dest, dirs_exist_ok=True)


def expected_scores(booster, opts: BDTOptions, X: np.ndarray) -> np.ndarray:
    """What the corrected firmware must output for inputs ``X``: xgboost's own leaf choice
    (``pred_leaf``) on the input-grid values of X, each leaf and the intercept rounded to the
    score grid, summed exactly. The C simulation equals this to the last bit."""
    model = XGBTrees.from_booster(booster)
    score = FixedType.parse(opts.precision)
    inp = auto_input_type(model, score) if opts.input_precision == "auto" else FixedType.parse(opts.input_precision)
    Xq = inp.quantize(np.asarray(X, dtype=np.float64)).astype(np.float32)
    leaves = np.asarray(booster.predict(dmatrix(booster, Xq), pred_leaf=True), dtype=np.int64).reshape(len(Xq), -1)
    init, _ = intercept(booster, model)
    rnd = _nearest(score)
    out = np.tile(rnd.quantize(init), (len(Xq), 1))
    for j, t in enumerate(model.trees):
        out[:, t["group"]] += rnd.quantize(t["leaf"].astype(np.float64))[leaves[:, j]]
    return out
