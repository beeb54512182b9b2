"""Per-lumisection data quality from per-event anomaly scores.

Events are never collected: :class:`LumiSums` keeps, per (run, lumisection), running sums that
are enough for every statistic below (memory grows with lumisections, not events), and two of
them merge, so parts can be summed by parallel tasks.

Statistics, each turned into a p-value under the reference (so one false-alarm rate ``alpha``
means the same for a lumisection of 10 or of 10 000 events):

``fisher`` (default)
    ``T = -2 sum_i log p_i`` with ``p_i`` the event's reference tail probability (Fisher's
    combination). For good data the ``p_i`` are uniform and ``T ~ chi2(2 n)``, an analytic
    threshold at any ``alpha`` and any size. It grows with every moderately unusual event (a
    shifted population) and with a few very unusual ones (a noisy channel), while one event can
    add at most ``2 log(n_ref + 1)``, so a single odd jet does not flag a lumisection.
``frac_above``
    the fraction of events above the reference ``event_quantile`` (e.g. its 99th percentile);
    ``k ~ Binomial(n, 1 - event_quantile)`` under the reference: exact, but blind to everything
    below that threshold.
``mean``
    the mean score; its null distribution comes from bootstrapping pseudo-lumisections of the
    same size from the reference table (scores are heavy-tailed, so no normal approximation).
    One extreme event can dominate it.

The features driving a lumisection are those whose mean per-feature reconstruction error
exceeds the reference most, in units of the reference spread of that mean (``z_f``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .reference import ReferenceTable
from .stats import binomial_sf, chi2_sf, fraction, z_from_p

STATISTICS = ("fisher", "frac_above", "mean")


def _key(run, lumi) -> np.ndarray:
    return (np.asarray(run, dtype=np.int64) << np.int64(32)) | (np.asarray(lumi, dtype=np.int64) & 0xFFFFFFFF)


@dataclasses.dataclass
class LumiSums:
    """Running sums per (run, lumisection). ``add`` takes one chunk of scored events."""

    n_features: int
    event_threshold: float  # per-event score threshold of ``frac_above``
    rows: dict = dataclasses.field(default_factory=dict)  # key -> row
    n: np.ndarray = None
    sum_score: np.ndarray = None
    sum_fisher: np.ndarray = None
    n_above: np.ndarray = None
    sum_err: np.ndarray = None
    truth_max: np.ndarray = None  # largest truth code seen in the lumisection (0 = good)

    def __post_init__(self):
        if self.n is None:
            self._alloc(0)

    def _alloc(self, size: int):
        old = len(self.n) if self.n is not None else 0
        for name, shape, dtype in (("n", (), np.int64), ("sum_score", (), np.float64), ("sum_fisher", (), np.float64),
                                   ("n_above", (), np.int64), ("sum_err", (self.n_features,), np.float64),
                                   ("truth_max", (), np.int64)):
            new = np.zeros((size, *shape), dtype=dtype)
            if old:
                new[:old] = getattr(self, name)[:old]
            setattr(self, name, new)

    def _rows_for(self, keys: np.ndarray) -> np.ndarray:
        rows = np.empty(len(keys), dtype=np.int64)
        for i, k in enumerate(keys.tolist()):
            r = self.rows.get(k)
            if r is None:
                r = self.rows[k] = len(self.rows)
            rows[i] = r
        if len(self.rows) > len(self.n):
            self._alloc(max(2 * len(self.n), len(self.rows), 64))
        return rows

    def add(self, run, lumi, score, pvalue, errors, truth=None) -> None:
        """One chunk: per-event run, lumi, score, reference tail probability, per-feature
        errors [n, F] and optionally a truth code (0 good)."""
        score = np.asarray(score, dtype=np.float64)
        if not len(score):
            return
        keys, inv = np.unique(_key(run, lumi), return_inverse=True)
        rows = self._rows_for(keys)
        m = len(keys)
        self.n[rows] += np.bincount(inv, minlength=m)
        self.sum_score[rows] += np.bincount(inv, score, minlength=m)
        self.sum_fisher[rows] += np.bincount(inv, -2.0 * np.log(np.asarray(pvalue, dtype=np.float64)), minlength=m)
        self.n_above[rows] += np.bincount(inv, score > self.event_threshold, minlength=m).astype(np.int64)
        errors = np.asarray(errors, dtype=np.float64)
        for f in range(self.n_features):
            self.sum_err[rows, f] += np.bincount(inv, errors[:, f], minlength=m)
        if truth is not None:
            t = np.zeros(m, dtype=np.int64)
            np.maximum.at(t, inv, np.asarray(truth, dtype=np.int64))
            self.truth_max[rows] = np.maximum(self.truth_max[rows], t)

    def merge(self, other: LumiSums) -> LumiSums:
        """Add another accumulator's sums into this one (parts summed by separate tasks)."""
        if not other.rows:
            return self
        keys = np.fromiter(other.rows.keys(), dtype=np.int64, count=len(other.rows))
        src = np.fromiter(other.rows.values(), dtype=np.int64, count=len(other.rows))
        rows = self._rows_for(keys)
        for name in ("n", "sum_score", "sum_fisher", "n_above", "sum_err"):
            getattr(self, name)[rows] += getattr(other, name)[src]
        self.truth_max[rows] = np.maximum(self.truth_max[rows], other.truth_max[src])
        return self

    @classmethod
    def from_summary(cls, lumis: dict, n_features: int, event_threshold: float) -> LumiSums:
        """From the scan's reduced per-shard summaries: ``{"run:lumi": {"n", "sum_score",
        "sum_fisher", "n_above", "sum_err", "truth" (events per truth code)}}``."""
        out = cls(n_features, event_threshold)
        if not lumis:
            return out
        keys = [tuple(int(x) for x in k.split(":")) for k in lumis]
        rows = out._rows_for(_key([k[0] for k in keys], [k[1] for k in keys]))
        for r, d in zip(rows, lumis.values()):
            for name in ("n", "sum_score", "sum_fisher", "n_above", "sum_err"):
                getattr(out, name)[r] = d[name]
            t = np.flatnonzero(np.asarray(d["truth"]))
            out.truth_max[r] = int(t.max()) if len(t) else 0
        return out

    def arrays(self) -> dict:
        """The sums as arrays sorted by (run, lumisection)."""
        keys = np.fromiter(self.rows.keys(), dtype=np.int64, count=len(self.rows))
        rows = np.fromiter(self.rows.values(), dtype=np.int64, count=len(self.rows))
        order = np.argsort(keys, kind="stable")
        keys, rows = keys[order], rows[order]
        out = {"run": (keys >> np.int64(32)).astype(np.int64), "lumi": (keys & 0xFFFFFFFF).astype(np.int64)}
        for name in ("n", "sum_score", "sum_fisher", "n_above", "sum_err", "truth_max"):
            out[name] = getattr(self, name)[rows]
        return out


def _pvalues_mean(mean: np.ndarray, n: np.ndarray, ref: ReferenceTable, n_boot: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Bootstrap p-value of each lumisection's mean score among ``n_boot`` pseudo-lumisections of
    its size drawn from the reference. Sizes above 100 share a null on a 5% geometric grid (the
    null changes smoothly with size), so the cost stays bounded for runs of many lumisections."""
    p = np.full(len(mean), np.nan)
    size = np.where(n > 100, np.round(100 * 1.05 ** np.round(np.log(np.maximum(n, 1) / 100) / np.log(1.05))), n)
    for s in np.unique(size[n > 0]).astype(int):
        null = np.empty(n_boot)
        chunk = max(1, int(2e6 // s))
        for i in range(0, n_boot, chunk):
            k = min(chunk, n_boot - i)
            null[i:i + k] = ref.sample(rng, (k, s)).mean(axis=1)
        null.sort()
        sel = size == s
        above = n_boot - np.searchsorted(null, mean[sel], side="left")
        p[sel] = (1.0 + above) / (n_boot + 1.0)
    return p


def lumi_pvalues(a: dict, ref: ReferenceTable, event_quantile: float, n_boot: int = 2000,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """p-value of every statistic for every lumisection of ``a`` (from :meth:`LumiSums.arrays`)."""
    n = a["n"].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = a["sum_score"] / n
        out = {
            "fisher": np.where(n > 0, chi2_sf(a["sum_fisher"], 2 * n), np.nan),
            "frac_above": np.where(n > 0, binomial_sf(a["n_above"], n, 1.0 - event_quantile), np.nan),
        }
    out["mean"] = _pvalues_mean(mean, a["n"], ref, n_boot, np.random.default_rng(seed))
    return out


def lumi_table(sums: LumiSums, ref: ReferenceTable, features: list[str], *, statistic: str = "fisher",
               false_alarm: float = 0.01, event_quantile: float = 0.99, min_events: int = 5,
               top_features: int = 3, n_boot: int = 2000, seed: int = 0) -> dict:
    """One row per lumisection: sums, the three statistics and their p-values, the chosen
    p-value and significance, the flag and the ``top_features`` features driving it.

    Lumisections with fewer than ``min_events`` events are not judged (``judged`` False, never
    flagged): too few events to tell.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    a = sums.arrays()
    n = a["n"]
    nf = np.maximum(n, 1).astype(np.float64)
    pv = lumi_pvalues(a, ref, event_quantile, n_boot, seed)
    judged = n >= min_events
    p = np.where(judged, pv[statistic], np.nan)
    mean_err = a["sum_err"] / nf[:, None]
    excess = mean_err - ref.feature_error_mean[None, :]
    ferr_z = excess / (np.maximum(ref.feature_error_std, 1e-12)[None, :] / np.sqrt(nf)[:, None])
    order = np.argsort(-ferr_z, axis=1)[:, :top_features]
    top = [[{"feature": features[j], "z": float(ferr_z[i, j]), "mean_error": float(mean_err[i, j]),
             "reference_error": float(ref.feature_error_mean[j])} for j in order[i]] for i in range(len(n))]
    return {
        "run": a["run"], "lumi": a["lumi"], "n": n, "mean_score": a["sum_score"] / nf,
        "fisher": a["sum_fisher"], "frac_above": a["n_above"] / nf,
        **{f"p_{k}": v for k, v in pv.items()},
        "pvalue": p, "z": np.where(judged, z_from_p(np.nan_to_num(p, nan=1.0)), np.nan),
        "judged": judged, "flagged": judged & (np.nan_to_num(p, nan=1.0) < false_alarm),
        "truth": a["truth_max"], "feature_z": ferr_z, "top_features": top,
        "statistic": statistic, "false_alarm": false_alarm,
    }


def performance(table: dict, features: list[str] | None = None) -> dict:
    """What the scan achieves against the truth codes (0 good): ROC AUC of each statistic's
    significance over judged lumisections, the fraction of faulty ones flagged (overall and per
    truth code) and the false-alarm rate on good ones, each with its 68% interval."""
    from ..report.metrics import auc

    j = table["judged"]
    bad = table["truth"] > 0
    out: dict = {"lumisections": int(len(j)), "judged": int(j.sum()), "faulty": int((bad & j).sum()),
                 "good": int((~bad & j).sum()), "statistic": table["statistic"], "false_alarm": table["false_alarm"]}
    if out["faulty"] and out["good"]:
        out["auc"] = {k: auc(bad[j].astype(int), -np.log(np.maximum(table[f"p_{k}"][j], 1e-300))) for k in STATISTICS}
    flagged = table["flagged"]
    out["found"] = fraction((flagged & bad & j).sum(), (bad & j).sum())
    out["found_per_truth"] = {int(t): fraction((flagged & j & (table["truth"] == t)).sum(), (j & (table["truth"] == t)).sum())
                              for t in np.unique(table["truth"][bad & j])}
    out["false_alarm_measured"] = fraction((flagged & ~bad & j).sum(), (~bad & j).sum())
    return out


def good_lumi_ranges(run: np.ndarray, lumi: np.ndarray, good: np.ndarray) -> dict[str, list[list[int]]]:
    """``{"run": [[first, last], ...]}`` of consecutive good lumisections (the CMS "golden JSON"
    layout), so a selection drops only the flagged lumisections, not whole runs."""
    out: dict[str, list[list[int]]] = {}
    for r, lu, g in zip(run.tolist(), lumi.tolist(), good.tolist()):
        if not g:
            continue
        ranges = out.setdefault(str(r), [])
        if ranges and ranges[-1][1] == lu - 1:
            ranges[-1][1] = lu
        else:
            ranges.append([lu, lu])
    return out


TRUTH_CODES = 8  # truth codes 0..7 counted per lumisection (larger ones count as 7)


def lumi_summary(run, lumi, score, pvalue, errors, event_threshold: float, truth=None,
                 hist_index: np.ndarray | None = None, n_bins: int = 0, maps: list | None = None) -> dict:
    """One shard's per-lumisection sums as a per-shard summary (hepray/engine/summary.py):
    ``{"run:lumi": {"n", "sum_score", "sum_fisher", "n_above", "sum_err" [F], "truth" [codes],
    "hist" [V, B]}}``. Summaries of shards add key by key, so a lumisection split over shards
    gets the sums of all its events; ``hist`` (the binned monitored variables, from
    ``hist_index`` [n, V]) and ``maps`` ([M, 3, C] from ``maps``: (ProfileMap, cell, w) per map)
    feed the histogram models of :mod:`.dqm`."""
    score = np.asarray(score, dtype=np.float64)
    if not len(score):
        return {}
    keys, inv = np.unique(_key(run, lumi), return_inverse=True)
    m = len(keys)
    n = np.bincount(inv, minlength=m)
    s = np.bincount(inv, score, minlength=m)
    fis = np.bincount(inv, -2.0 * np.log(np.asarray(pvalue, dtype=np.float64)), minlength=m)
    above = np.bincount(inv, score > event_threshold, minlength=m).astype(np.int64)
    errors = np.asarray(errors, dtype=np.float64)
    err = np.stack([np.bincount(inv, errors[:, f], minlength=m) for f in range(errors.shape[1])], axis=1)
    t = np.zeros(len(score), np.int64) if truth is None else np.clip(np.asarray(truth, np.int64), 0, TRUTH_CODES - 1)
    tc = np.bincount(inv * TRUTH_CODES + t, minlength=m * TRUTH_CODES).reshape(m, TRUTH_CODES)
    if hist_index is not None:
        from .dqm import counts_from_index

        h = counts_from_index(hist_index, n_bins, inv, m)
    if maps:
        ms = np.stack([pm.sums(cell, w, inv, m) for pm, cell, w in maps], axis=1)
    out = {}
    for i, k in enumerate(keys.tolist()):
        d = {"n": int(n[i]), "sum_score": float(s[i]), "sum_fisher": float(fis[i]), "n_above": int(above[i]),
             "sum_err": err[i], "truth": tc[i]}
        if hist_index is not None:
            d["hist"] = h[i]
        if maps:
            d["maps"] = ms[i]
        out[f"{k >> 32}:{k & 0xFFFFFFFF}"] = d
    return out
