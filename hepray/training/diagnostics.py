"""What a trained torch classifier is checked with after training, on the driver: scores of raw
features, Taylor attribution, exports checked against torch, and the ADNN / systematic-aware
diagnostics (what the extra loss term bought, measured on test events).

Everything takes raw features: :class:`Evaluator` holds the network with the standardisation it
was trained with, so numbers here match what ``kind: infer`` and the exported files compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..extras import require
from ..report import metrics, plots

torch = require("torch")
nn = torch.nn


class ScoreModule(nn.Module):
    """Raw features -> class probabilities (sigmoid for one output, softmax for several), the
    standardisation folded in: the self-contained module that is exported."""

    def __init__(self, classifier: nn.Module, mean=None, scale=None, multiclass: bool = False):
        super().__init__()
        self.classifier, self.multiclass = classifier, multiclass
        n = classifier.arch["n_inputs"] if hasattr(classifier, "arch") else 1
        self.register_buffer("mean", torch.as_tensor(np.zeros(n) if mean is None else mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(np.ones(n) if scale is None else scale, dtype=torch.float32))

    def forward(self, x):
        logits = self.classifier((x - self.mean) / self.scale)
        return torch.softmax(logits, dim=-1) if self.multiclass else torch.sigmoid(logits)


class Evaluator:
    """A classifier with its standardisation (``mean``, ``scale``) and task."""

    def __init__(self, classifier: nn.Module, mean, scale, task: str):
        self.classifier, self.task = classifier.cpu().eval(), task
        self.mean, self.scale = np.asarray(mean, np.float32), np.asarray(scale, np.float32)

    def with_model(self, classifier: nn.Module) -> Evaluator:
        return Evaluator(classifier, self.mean, self.scale, self.task)

    def module(self, standardize: bool = True) -> ScoreModule:
        mean, scale = (self.mean, self.scale) if standardize else (None, None)
        return ScoreModule(self.classifier, mean, scale, self.task == "multiclass").eval()

    def standardize(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean) / self.scale).astype(np.float32)

    def _map(self, fn, X: np.ndarray, batch: int) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(X), batch):
                out.append(fn(torch.from_numpy(self.standardize(X[i:i + batch]))).numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

    def scores(self, X: np.ndarray, batch: int = 65536) -> np.ndarray:
        """[n, K] probabilities (K = 1 for binary) of raw features ``X``; a stochastic network
        (``bnn``): the mean over its ``predict_samples`` passes, as ``kind: infer`` predicts."""
        module = self.module(standardize=False)
        if not getattr(self.classifier, "stochastic", False):
            return self._map(module, X, batch)
        n = int(self.classifier.arch.get("predict_samples", 20))
        return np.mean([self._map(module, X, batch) for _ in range(n)], axis=0)

    def penultimate(self, X: np.ndarray, batch: int = 65536) -> np.ndarray:
        return self._map(self.classifier.penultimate, X, batch)


# -- attribution and export ----------------------------------------------------------------------
def attribution(evaluator: Evaluator, X: np.ndarray, features: Sequence[str], classes: Sequence[str], spec,
                plot_dir: Path) -> dict:
    """Taylor-expansion importances (first order and, if asked, second) of each output column
    with respect to the standardised inputs, ranked, with bar plots. Binary: one ranking."""
    from ..models.attribution import taylor_attribution

    module = evaluator.module(standardize=False)
    x = torch.from_numpy(evaluator.standardize(X))
    n_out = 1 if evaluator.task == "binary" else len(classes)
    out = {}
    for k in range(n_out):
        name = classes[-1] if n_out == 1 else classes[k]
        r = taylor_attribution(module, x, list(features), output_index=k, second_order=spec.second_order)
        out[name] = {key: v[: spec.top] if key == "second" else v for key, v in r.items()}
        suffix = "" if n_out == 1 else f"_{name}"
        plots.bar_ranking(dict(r["first"]), plot_dir / f"attribution_first{suffix}.png",
                          f"Taylor attribution, score {name}", "mean |t_i| (standardised inputs)")
        if spec.second_order:
            pairs = {f"{a}×{b}" if a != b else f"{a}²": v for a, b, v in r["second"][: spec.top]}
            plots.bar_ranking(pairs, plot_dir / f"attribution_second{suffix}.png",
                              f"second-order Taylor terms, score {name}", "mean |t_ij|")
    return out


def export(evaluator: Evaluator, X: np.ndarray, model_dir: Path, torchscript: bool, onnx: bool) -> dict:
    """TorchScript and ONNX of raw features -> probabilities, each run next to torch on ``X``:
    ``{"torchscript": {"file", "max_abs_diff"}, "onnx": {...}}``."""
    from ..models.export import check_export, export_onnx, export_torchscript

    module = evaluator.module()
    x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    ts = export_torchscript(module, x, model_dir / "model.torchscript.pt") if torchscript else None
    ox = export_onnx(module, x, model_dir / "model.onnx", input_names=["features"], output_names=["scores"]) if onnx else None
    report = check_export(module, x, ts, ox)
    for key, path in (("torchscript", ts), ("onnx", ox)):
        if path is not None:
            report[key]["file"] = path.name
    return report


# -- ADNN ----------------------------------------------------------------------------------------
def domain_of_events(data, domains: Sequence[str]) -> np.ndarray:
    """Per event: the index of its sample in ``domains``, -1 for other samples."""
    lookup = np.array([list(domains).index(n) if n in domains else -1 for n in data.samples])
    return lookup[data.sample]


def probe_accuracy(features: np.ndarray, dom: np.ndarray, train: np.ndarray, val: np.ndarray, test: np.ndarray,
                   n_domains: int, seed: int, epochs: int) -> dict:
    """Train a fresh adversary on frozen ``features`` (train events with a domain), early-stopped
    on validation; its test accuracy says how much domain information the features still hold
    (a co-trained adversary can be fooled while the information is still there)."""
    from ..models.losses import Adversary
    from .batches import ShardBatches
    from .objectives import Classification
    from .torch_loop import LoopConfig, fit

    def arrays(mask):
        m = mask & (dom >= 0)
        return {"x": features[m].astype(np.float32), "y": dom[m], "w": np.ones(m.sum(), np.float32)}

    mu, sd = features[train].mean(0), features[train].std(0) + 1e-6
    features = (features - mu) / sd
    torch.manual_seed(seed)
    probe = Adversary(features.shape[1], n_domains, hidden=[64, 64])
    tr, va, te = arrays(train), arrays(val), arrays(test)
    objective = Classification()
    fit(probe, torch.optim.Adam(probe.parameters(), 3e-3), objective, ShardBatches.from_arrays(tr, 256, seed=seed),
        val_batches=lambda e: [va], val_step=objective.validate,
        config=LoopConfig(epochs=epochs, schedule="none", patience=8))
    with torch.no_grad():
        pred = probe(torch.from_numpy(te["x"])).argmax(-1).numpy()
    counts = np.bincount(te["y"], minlength=n_domains)
    return {"probe_accuracy": float(np.mean(pred == te["y"])), "chance": float(counts.max() / max(counts.sum(), 1))}


def domain_ks(S: np.ndarray, dom: np.ndarray, mask: np.ndarray, domains: Sequence[str]) -> dict:
    """KS distance between the score distributions of each pair of domains (largest over score
    columns): 0 when the classifier treats the signal models alike."""
    pairs = {}
    for a in range(len(domains)):
        for b in range(a + 1, len(domains)):
            sa, sb = S[mask & (dom == a)], S[mask & (dom == b)]
            if len(sa) and len(sb):
                pairs[f"{domains[a]}/{domains[b]}"] = max(metrics.ks(sa[:, k], sb[:, k])["statistic"] for k in range(S.shape[1]))
    vals = list(pairs.values())
    return {"ks_domains": pairs, "ks_domains_max": max(vals) if vals else None,
            "ks_domains_mean": float(np.mean(vals)) if vals else None}


def adnn_metrics(evaluator: Evaluator, data, S: np.ndarray, domains: Sequence[str], seed: int, probe_epochs: int) -> dict:
    """Fresh-probe accuracy on the penultimate layer and on the scores alone (what an analysis
    using only the output could still tell apart), chance level, score KS between domains."""
    dom = domain_of_events(data, domains)
    split = (data.train, data.val, data.test, len(domains), seed, probe_epochs)
    out = probe_accuracy(evaluator.penultimate(data.X), dom, *split)
    out["probe_accuracy_scores"] = probe_accuracy(S, dom, *split)["probe_accuracy"]
    out.update(domain_ks(S, dom, data.test, domains))
    return out


def plot_domains(S: np.ndarray, data, domains: Sequence[str], path: Path, title: str) -> Path:
    dom = domain_of_events(data, domains)
    groups = {d: S[data.test & (dom == i), -1] for i, d in enumerate(domains)}
    groups.update({n: S[data.test & (data.sample == i) & (dom < 0), -1] for i, n in enumerate(data.samples)
                   if n not in domains})
    return plots.score_distributions(groups, path, f"{title}: score per signal model (test)")


# -- systematics ---------------------------------------------------------------------------------
def systematic_shifts(evaluator: Evaluator, data, S: np.ndarray, systematics, features: Sequence[str],
                      plot_dir: Path, suffix: str, bins: int = 20) -> dict:
    """How each variation (inputs scaled by 1 ± δ) moves the test scores, per variation:
    ``ks`` (largest KS distance nominal vs varied over true classes and score columns),
    ``l2`` (Σ (p - q)² of normalised 20-bin histograms, the hard version of the training
    penalty) and ``mean_abs_shift`` (mean |Δ score| per event)."""
    t = data.test
    edges = np.linspace(0, 1, bins + 1)
    out = {}
    for syst in systematics:
        shown = {}
        for sign, direction in ((+1, "up"), (-1, "down")):
            X = data.X[t].copy()
            for j, f in enumerate(features):
                X[:, j] *= 1 + sign * syst.scale.get(f, 0.0)
            Sv, Sn, y = evaluator.scores(X), S[t], data.y[t]
            ks, l2 = 0.0, 0.0
            for c in np.unique(y):
                for k in range(S.shape[1]):
                    a, b = Sn[y == c, k], Sv[y == c, k]
                    ks = max(ks, metrics.ks(a, b)["statistic"])
                    p, q = np.histogram(a, edges)[0], np.histogram(b, edges)[0]
                    l2 = max(l2, float((((p / max(p.sum(), 1)) - (q / max(q.sum(), 1))) ** 2).sum()))
            out[f"{syst.name}_{direction}"] = {"ks": ks, "l2": l2, "mean_abs_shift": float(np.abs(Sv - Sn).mean())}
            shown[f"{syst.name} {direction}"] = Sv[:, -1]
        plots.score_distributions({"nominal": S[t, -1]}, plot_dir / f"systematic_{syst.name}{suffix}.png",
                                  f"score under {syst.name} (test){' ' + suffix.strip('_') if suffix else ''}", dashed=shown)
    return out


def mean_of(shifts: dict, key: str) -> float:
    return float(np.mean([v[key] for v in shifts.values()])) if shifts else 0.0


def plot_history(history: list[dict], path: Path) -> Path:
    """Loss per epoch, training and validation."""
    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    epochs = [h["epoch"] for h in history]
    for key in sorted({k for h in history for k in h if k.endswith("loss")}):
        ax.plot(epochs, [h.get(key, np.nan) for h in history], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return plots._save(fig, path)
