"""``kind: train_jetgraph``: per-jet predictions from a graph of the event's jets, against the
2-D (pT, η) efficiency map analyses use for the same quantity.

Each event (jets with equal ``group_by`` values in the same sample) is a fully connected graph
of up to ``max_jets`` jets: node features ``features`` (pT, η, φ and flavour-like columns), ΔR
edges computed inside :class:`hepray.models.jetgraph.JetGraphNet` from the raw ``eta``/``phi``
columns. The target ``label`` is a 0/1 per-jet column (e.g. an expression "passes the τ32 < x
working point"). Trained with :func:`hepray.training.fit` like every hepray network (direct or
Ray Train, checkpoints, early stopping), unweighted by class by default so the outputs stay
calibrated probabilities. On the test events the graph network, the same network without
message passing (``reference``: per-jet only, so the difference is what the neighbours
bring) and the efficiency map fitted on the training jets are compared jet by jet: log-loss,
Brier score and AUC.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..config import Spec
from ..data.columns import SAMPLE
from ..errors import ConfigError
from ..gnn.events import EfficiencyMap, event_slots, gather, per_jet_metrics, scatter_back
from ..models.artifact import save_metadata
from ..training.bagging import BaggingSpec, bootstrap_indices, load_weights, probability_band_plots, train_replicas
from .base import Workload
from .registry import register
from .train_classifier import TrainingSpec
from .train_common import (
    TrainJob,
    WeightSpec,
    calibration_meta,
    calibration_report,
    fit_calibration,
    load_training_data,
)


class JetGraphNetworkSpec(Spec):
    hidden: int = Field(64, gt=0)
    n_layers: int = Field(3, ge=0)  # message-passing rounds; 0: a per-jet network
    aggregation: Literal["sum", "mean", "max"] = "sum"
    dropout: float = Field(0.0, ge=0, lt=1)
    n_rbf: int = Field(16, gt=0)
    rbf_max: float = Field(6.0, gt=0)


class MapSpec(Spec):
    """The efficiency map: pass fraction in (pT, η) bins of the training jets."""

    pt: str = "reco_pt"
    eta: str = "reco_eta"
    pt_bins: int | list[float] = 6  # an integer: quantile bins
    eta_bins: int | list[float] = 4
    abs_eta: bool = True
    prior: float = Field(1.0, ge=0)  # pseudo-jets pulling sparse bins towards the overall efficiency


DR_NN = "dr_nn"  # bagging variable: the jet's ΔR to its nearest neighbour in the event


class TrainJetGraphConfig(TrainJob):
    label: str  # per-jet 0/1 target (a branch or an expression)
    eta: str = "reco_eta"  # the feature columns ΔR is computed from (left unstandardised)
    phi: str = "reco_phi"
    group_by: list[str] = Field(["run", "luminosityBlock", "event"], min_length=1)  # + the sample
    order_by: str | None = "jet_rank"  # node order within an event (the network does not depend on it)
    max_jets: int = Field(4, gt=0)
    # bootstrap replicas of the graph network (events resampled): the predicted efficiency's
    # band vs each variable (columns of the dataset, or dr_nn), compared with the observed one
    bagging: BaggingSpec = BaggingSpec(variables=["reco_pt", "reco_eta", DR_NN])
    network: JetGraphNetworkSpec = JetGraphNetworkSpec()
    map: MapSpec = MapSpec()
    reference: bool = True  # also train without message passing (n_layers: 0)
    weights: WeightSpec = WeightSpec(balance_classes=False)  # balanced classes would bias the probabilities
    training: TrainingSpec = TrainingSpec(epochs=40, batch_size=128, learning_rate=3e-3, patience=8)
    mode: Literal["auto", "direct", "ray_train"] = "direct"
    num_workers: int | None = Field(None, gt=0)
    threads: int = Field(1, gt=0)  # torch threads (direct): graphs of a few jets are too small to split

    @model_validator(mode="after")
    def _angles_are_features(self):
        for field in ("eta", "phi"):
            if getattr(self, field) not in self.features:
                raise ConfigError("", field, f"{getattr(self, field)!r} must be one of `features:` (ΔR edges need it)")
        return self


class PerJetBCE:
    """Objective for :func:`hepray.training.fit`: weighted BCE over the real jets of a batch of
    event graphs (``x`` [B, N, F], ``mask`` [B, N], per-jet ``y`` and ``w``)."""

    def __call__(self, model, batch: dict):
        from ..models.jetgraph import masked_bce_with_logits

        return masked_bce_with_logits(model(batch["x"], batch["mask"]), batch["y"], batch["mask"], batch["w"])

    def validate(self, model, batch: dict) -> dict[str, float]:
        wsum = float(batch["w"][batch["mask"].bool()].sum())
        return {"loss": float(self(model, batch)) * wsum, "weight": wsum}


def build_jetgraph(setup: dict):
    import torch

    from ..models.jetgraph import JetGraphNet

    job: TrainJetGraphConfig = setup["job"]
    torch.manual_seed(job.seed)
    return JetGraphNet(len(job.features), 1, eta_index=job.features.index(job.eta),
                       phi_index=job.features.index(job.phi), **{**job.network.model_dump(), **setup["network"]})


def jetgraph_process(setup: dict, checkpoints, *, rank: int = 0, world: int = 1, device=None, log=None):
    """Event graphs already in memory (``setup["arrays"]``), split over ranks by rows."""
    import torch

    from ..data.columns import num_rows
    from ..gnn.training import loop_config
    from ..training import ShardBatches, common_steps, fit

    job: TrainJetGraphConfig = setup["job"]
    t = job.training
    model = build_jetgraph(setup)
    tr, va = setup["arrays"]["train"], setup["arrays"]["val"]
    steps = common_steps([num_rows(tr)], world, t.batch_size) if world > 1 else None
    train = ShardBatches.from_arrays(tr, t.batch_size, rank=rank, world=world, steps=steps, seed=job.seed)
    val = ShardBatches.from_arrays(va, 4 * t.batch_size, rank=rank, world=world, shuffle=False)
    optimizer = torch.optim.AdamW(model.parameters(), t.learning_rate, weight_decay=t.weight_decay)
    objective = PerJetBCE()
    result = fit(model, optimizer, objective, train, config=loop_config(t), val_batches=lambda epoch: val(0),
                 val_step=objective.validate, checkpoints=checkpoints, device=device, log=log)
    return model, result


def bootstrap_events(setup: dict, seed: int) -> dict:
    """A bagging replica's training graphs: events drawn with replacement (whole events, so a
    jet's neighbours come with it)."""
    tr = setup["arrays"]["train"]
    idx = bootstrap_indices(len(tr["y"]), seed)
    return {"arrays": {**setup["arrays"], "train": {k: v[idx] for k, v in tr.items()}}}


def predict_graphs(model, x: np.ndarray, mask: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Per-slot pass probabilities [E, N] of event graphs."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(torch.from_numpy(x[i:i + batch]), torch.from_numpy(mask[i:i + batch]))
            out.append(torch.sigmoid(logits.squeeze(-1)).numpy())
    return np.concatenate(out) if out else np.zeros(mask.shape, np.float32)


@register("train_jetgraph")
class TrainJetGraph(Workload):
    """Jets-as-nodes event graph predicting a per-jet quantity, compared with a (pT, η) map."""

    Config = TrainJetGraphConfig

    def columns(self) -> list[str]:
        job: TrainJetGraphConfig = self.job
        return list(dict.fromkeys(list(job.features) + [job.label, job.map.pt, job.map.eta] + list(job.group_by)
                                  + ([job.order_by] if job.order_by else [])))

    def run(self, ctx) -> dict:
        from ..gnn.training import run_training
        from ..report import plots
        from ..report.metrics import roc
        from ..training.diagnostics import plot_history
        from ..training.standardize import Moments

        job: TrainJetGraphConfig = self.job
        ctx.join()
        plan = ctx.plan(job.dataset, extra=self.columns())
        data, shard_ids = load_training_data(ctx, job, extra=self.columns(), plan=plan)
        if set(np.unique(data.y)) - {0, 1}:
            raise ConfigError(job.source, "label", f"{job.label!r} must be 0/1 per jet (e.g. an expression like 'reco_tau32 < 0.6')")
        cols, n = data.cols, len(data.y)
        slots = event_slots([cols[SAMPLE]] + [cols[k] for k in job.group_by],
                            cols[job.order_by] if job.order_by else None, job.max_jets)
        pre = Moments.of(data.X[data.train]).to_preprocessing()
        for f in (job.eta, job.phi):  # ΔR needs the raw angles
            i = job.features.index(f)
            pre["mean"][i], pre["scale"][i] = 0.0, 1.0
        X = ((data.X - np.asarray(pre["mean"])) / np.asarray(pre["scale"])).astype(np.float32)
        graphs = {"x": gather(X, slots), "mask": slots >= 0, "y": gather(data.y.astype(np.float32), slots),
                  "w": gather(data.w.astype(np.float32), slots)}
        first = slots[:, 0]  # an event's split is its first jet's (one identity: one split value)
        split = {"train": data.train[first], "val": data.val[first], "test": data.test[first]}
        arrays = {p: {k: v[m] for k, v in graphs.items()} for p, m in split.items() if p != "test"}
        ctx.log(f"{n} jets in {len(slots)} events (max {job.max_jets} jets, {int((slots >= 0).sum(1).mean() * 100) / 100} "
                f"on average); events: train {split['train'].sum()}, validation {split['val'].sum()}, test {split['test'].sum()}")
        workers = job.num_workers or ctx.cluster_cpus()
        mode = job.mode if job.mode != "auto" else "direct"  # small in-memory graphs: one process
        common = {"job": job, "arrays": arrays, "process": jetgraph_process, "build": build_jetgraph,
                  "threads": max(1, int(job.engine.cpus_per_worker))}
        train_kw = dict(mode=mode, workers=workers, keep_checkpoints=job.training.keep_checkpoints,
                        threads=job.threads, cpus_per_worker=job.engine.cpus_per_worker)
        variants = {"graph": {}}
        if job.reference and job.network.n_layers > 0:
            variants["per_jet"] = {"n_layers": 0}
        probs, fits, models = {}, {}, {}
        for name, override in variants.items():
            model, fits[name] = run_training(ctx, {**common, "network": override, "tag": name}, **train_kw)
            probs[name] = scatter_back(predict_graphs(model, graphs["x"], graphs["mask"]), slots, n)
            models[name] = model
        emap = EfficiencyMap.fit(cols[job.map.pt][data.train], cols[job.map.eta][data.train], data.y[data.train],
                                 data.raw_weight[data.train], job.map.pt_bins, job.map.eta_bins, job.map.abs_eta,
                                 job.map.prior)
        probs["map"] = emap.predict(cols[job.map.pt], cols[job.map.eta])
        test = data.test & np.isfinite(probs["graph"])
        y, w = data.y[test], data.raw_weight[test]
        result = {"jets": n, "events": int(len(slots)), "jets_dropped": int(n - (slots >= 0).sum()),
                  "pass_fraction_test": float(np.average(y, weights=w)),
                  "comparison": {k: per_jet_metrics(y, p[test], w) for k, p in probs.items()},
                  "training": fits, "map": emap.to_dict()}
        cmp = result["comparison"]
        result["graph_minus_map"] = {k: cmp["graph"][k] - cmp["map"][k] for k in ("log_loss", "brier", "auc")}
        if "per_jet" in cmp:
            result["graph_minus_per_jet"] = {k: cmp["graph"][k] - cmp["per_jet"][k] for k in ("log_loss", "brier", "auc")}
        pdir = ctx.store.local("plots")
        S = probs["graph"].reshape(-1, 1)
        result["calibration"] = calibration_report(S, data, pdir, "jet graph", fit_calibration(job, S, data), rows=test)
        curves = {}
        for k, p in probs.items():
            tpr, fpr, _ = roc(y, p[test], w)
            curves[f"{k} (AUC {cmp[k]['auc']:.3f}, log-loss {cmp[k]['log_loss']:.3f})"] = (tpr, fpr)
        plots.roc_curves(curves, pdir / "roc.png", f"per-jet {job.label}: graph vs per-jet vs (pT, η) map")
        plot_history(fits["graph"]["history"], pdir / "training.png")
        if job.bagging.models:
            result["bagging"] = self._bagging(ctx, common, graphs, slots, data, test, pre, result)
        self._save(ctx.store.local("model"), models["graph"], pre, result)
        ctx.write_json("metrics.json", result)
        return {"events_in": plan.events, "model": str(ctx.run_dir / "model"),
                **{f"{k}_log_loss": v["log_loss"] for k, v in cmp.items()},
                **{f"{k}_auc": v["auc"] for k, v in cmp.items()}, "ece": result["calibration"]["ece"],
                **({"bagging_coverage": float(np.mean([b["coverage"] for b in result["bagging"]["variables"].values()]))}
                   if "bagging" in result else {})}

    def _bagging(self, ctx, common: dict, graphs: dict, slots, data, test, pre: dict, result: dict) -> dict:
        """N graph networks on bootstrap resamples of the training events, in parallel
        (``ctx.map_tasks``); per variable the replicas' mean predicted efficiency with its
        spread against the observed pass fraction of the test jets (and the coverage); the
        replicas as an ensemble model folder."""
        from ..gnn.events import nearest_neighbour_dr
        from ..models.artifact import save_ensemble

        job: TrainJetGraphConfig = self.job
        bag = job.bagging
        setup = {**common, "network": {}, "tag": "graph", "bootstrap": bootstrap_events}
        replicas, seconds = train_replicas(ctx, setup, bag, job.seed)
        ctx.log(f"bagging: {bag.models} replicas in {seconds:.1f}s")
        n = len(data.y)
        nets = [load_weights(build_jetgraph(setup), w) for w, _ in replicas]
        P = np.stack([scatter_back(predict_graphs(m, graphs["x"], graphs["mask"]), slots, n)[test] for m in nets])
        cols = data.cols
        variables = {}
        for v in bag.variables:
            if v == DR_NN:
                variables[v] = nearest_neighbour_dr(np.asarray(cols[job.eta], float), np.asarray(cols[job.phi], float),
                                                    slots)[test]
            elif v in cols:
                variables[v] = np.asarray(cols[v], float)[test]
            else:
                raise ConfigError(job.source, "bagging.variables", f"{v!r} is not a column of the job (features, map "
                                  f"columns, group_by) nor {DR_NN}")
        out = {"models": bag.models, "seconds": round(seconds, 3), "working_point": job.label,
               "variables": probability_band_plots(P, variables, bag, ctx.store.local("plots"),
                                                   f"P({job.label}) per jet", data.raw_weight[test], data.y[test])}
        if bag.save:
            edir = ctx.store.local("ensemble")
            names = [f"member_{i:03d}" for i in range(bag.models)]
            for name, m in zip(names, nets):
                self._save(edir / name, m, pre, result)
            save_ensemble(edir, names, {"bagging": {"models": bag.models}})
            out["ensemble"] = str(ctx.store.path("ensemble"))
        return out

    def _save(self, mdir, model, pre: dict, result: dict) -> None:
        import torch

        job: TrainJetGraphConfig = self.job
        mdir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), mdir / "model.pt")
        save_metadata(mdir, {
            "type": "torch", "file": "model.pt", "features": list(job.features), "classes": [job.label],
            "task": "binary", "architecture": model.arch, "preprocessing": pre,
            # the arrays a caller passes: standardised node features [E, N, F] (η, φ raw) and the mask
            "inputs": {"arguments": ["x", "mask"], "graph": {"group_by": list(job.group_by), "order_by": job.order_by,
                                                             "max_jets": job.max_jets}},
            "metrics": result["comparison"]["graph"], "efficiency_map": result["map"],
            **calibration_meta(result["calibration"].get("temperature")),
        })
