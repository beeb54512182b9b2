"""Per-lumisection data-quality models on histograms, as pure functions of arrays.

Each monitored variable is histogrammed per lumisection in fixed bins (equal-probability bins of
the reference, plus one bin below and one above the reference's range, where a dead module or a
hot channel puts its events). Two models judge those histograms:

``classical`` (the DQM baseline)
    per variable a two-sample test of the lumisection's histogram against the reference one:
    ``chi2`` (Pearson's homogeneity chi2 of two histograms, as ROOT's ``Chi2Test("UU")``, on the
    bins inside the reference range, adjacent bins merged until the lumisection expects
    ``min_expected`` events in each, dof = groups - 1; the count outside the range by an exact
    binomial test; the variable's p-value ``min(1, 2 min(p_chi2, p_outside))``) or ``ks`` (Kolmogorov-Smirnov distance of the binned cumulative distributions, effective size
    ``n N / (n + N)``; conservative for binned data). The per-variable p-values are combined over
    variables by ``min_p`` (Bonferroni: ``min(1, V min_v p_v)``, valid whatever the correlation of
    the variables) or ``fisher`` (``-2 sum log p_v ~ chi2(2V)``, exact for independent variables
    only: the monitored jet variables are correlated, so this p-value is only nominal).
``autoencoder``
    a dense autoencoder on the lumisection's normalised histograms in the variance-stabilised form
    ``sqrt(count / n)`` (every bin's noise is ``1/(2 sqrt(n))``, whatever its content), trained on
    good lumisections; the statistic is ``4 n sum_b (x_b - x_hat_b)^2``, about ``chi2`` with one dof
    per bin for a good lumisection of any size ``n``, so one threshold serves lumisections of 50 or
    of 5000 events. The variables driving it are those with the largest share of that sum.

Neither p-value is trusted for the decision: each method's threshold is calibrated on held-out
good lumisections (:class:`Calibration`): a lumisection is flagged at false-alarm rate ``alpha``
when its p-value is below the ``k``-th smallest of ``m`` calibration p-values, ``k = floor(alpha
(m + 1))`` (the conformal rule: a good lumisection exchangeable with the calibration ones is
flagged with probability ``k / (m + 1) <= alpha``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .stats import chi2_sf, fraction

METHODS = ("classical", "autoencoder")
TESTS = ("chi2", "ks")
COMBINES = ("min_p", "fisher")


# -- binning -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Binning:
    """Per variable: interior edges. Bin 0 is below the reference minimum, the last bin above its
    maximum; between them equal-probability bins of the reference (fewer where a variable is
    discrete). Histograms are ``[V, B]`` with ``B`` the largest bin count; ``valid`` marks the
    bins a variable really has."""

    variables: list[str]
    edges: list[np.ndarray]

    @classmethod
    def from_reference(cls, X: np.ndarray, variables: list[str], bins: int = 20) -> Binning:
        X = np.asarray(X, dtype=np.float64)
        edges = []
        for v in range(X.shape[1]):
            x = X[:, v][np.isfinite(X[:, v])]
            if not len(x):
                raise ValueError(f"variable {variables[v]!r}: no finite reference values")
            q = np.unique(np.quantile(x, np.linspace(0.0, 1.0, bins + 1)))
            lo, hi = x.min(), x.max()
            # the outer edges just beyond the reference range: only events outside it land there
            inner = q[1:-1] if len(q) > 2 else np.array([], dtype=np.float64)
            edges.append(np.concatenate([[np.nextafter(lo, -np.inf)], inner, [np.nextafter(hi, np.inf)]])
                         if hi > lo else np.array([np.nextafter(lo, -np.inf), np.nextafter(hi, np.inf)]))
        return cls(list(variables), edges)

    @property
    def n_bins(self) -> int:
        return max(len(e) + 1 for e in self.edges)

    @property
    def valid(self) -> np.ndarray:
        out = np.zeros((len(self.edges), self.n_bins), dtype=bool)
        for v, e in enumerate(self.edges):
            out[v, : len(e) + 1] = True
        return out

    def index(self, X: np.ndarray) -> np.ndarray:
        """Bin of every value ``[n, V]`` (non-finite values: the top bin)."""
        X = np.asarray(X, dtype=np.float64)
        out = np.empty(X.shape, dtype=np.int64)
        for v, e in enumerate(self.edges):
            x = X[:, v]
            out[:, v] = np.where(np.isfinite(x), np.searchsorted(e, np.nan_to_num(x), side="right"), len(e))
        return out

    def counts(self, X: np.ndarray, group: np.ndarray | None = None, n_groups: int = 1) -> np.ndarray:
        """Histograms ``[n_groups, V, B]`` of ``X`` split by ``group`` (0..n_groups-1)."""
        return counts_from_index(self.index(X), self.n_bins, group, n_groups)

    def to_dict(self) -> dict:
        return {"variables": list(self.variables), "edges": [e.tolist() for e in self.edges]}

    @classmethod
    def from_dict(cls, d: dict) -> Binning:
        return cls(list(d["variables"]), [np.asarray(e, dtype=np.float64) for e in d["edges"]])


def counts_from_index(idx: np.ndarray, n_bins: int, group: np.ndarray | None = None, n_groups: int = 1) -> np.ndarray:
    n, V = idx.shape
    g = np.zeros(n, dtype=np.int64) if group is None else np.asarray(group, dtype=np.int64)
    flat = (g[:, None] * V + np.arange(V)[None, :]) * n_bins + idx
    return np.bincount(flat.ravel(), minlength=n_groups * V * n_bins).reshape(n_groups, V, n_bins)


def pseudo_lumis(idx: np.ndarray, sizes: np.ndarray, n_bins: int, rng: np.random.Generator) -> np.ndarray:
    """Histograms ``[L, V, B]`` of pseudo-lumisections: ``sizes[l]`` events drawn with replacement
    from the binned events ``idx`` [N, V] (whole events, so the variables keep their correlations)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    out = np.empty((len(sizes), idx.shape[1], n_bins), dtype=np.int64)
    for start in range(0, len(sizes), 256):
        s = sizes[start:start + 256]
        pick = rng.integers(0, len(idx), size=int(s.sum()))
        group = np.repeat(np.arange(len(s)), s)
        out[start:start + len(s)] = counts_from_index(idx[pick], n_bins, group, len(s))
    return out


# -- classical DQM -------------------------------------------------------------------------------
def _groups(r: np.ndarray, q: float) -> np.ndarray:
    """Group label of each bin: adjacent bins merged until each group's reference probability
    reaches ``q`` (the last, short group joins the one before)."""
    g = np.zeros(len(r), dtype=np.int64)
    acc, k = 0.0, 0
    for b, p in enumerate(r):
        g[b] = k
        acc += p
        if acc >= q:
            k, acc = k + 1, 0.0
    if k > 0 and (g == k).any():  # the last group is short
        g[g == k] = k - 1
    return g


def classical_pvalues(counts: np.ndarray, reference: np.ndarray, valid: np.ndarray, test: str = "chi2",
                      min_expected: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-lumisection, per-variable p-values ``[L, V]`` and test statistics of the lumisection
    histograms ``counts`` [L, V, B] against ``reference`` [V, B]."""
    if test not in TESTS:
        raise ValueError(f"test must be one of {', '.join(TESTS)}, got {test!r}")
    L, V, _ = counts.shape
    p = np.ones((L, V))
    stat = np.zeros((L, V))
    N = reference.sum(axis=1).astype(np.float64)
    n = counts.sum(axis=2).astype(np.float64)
    if test == "ks":
        from scipy.special import kolmogorov

        for v in range(V):
            m = valid[v]
            Fr = np.cumsum(reference[v, m]) / N[v]
            Fl = np.cumsum(counts[:, v, m], axis=1) / np.maximum(n[:, v:v + 1], 1)
            d = np.abs(Fl - Fr[None, :]).max(axis=1)
            ne = n[:, v] * N[v] / (n[:, v] + N[v])
            stat[:, v] = d
            p[:, v] = np.where(n[:, v] > 0, kolmogorov(np.sqrt(ne) * d), 1.0)
        return p, stat
    # chi2 on the bins inside the reference range, one grouping per (variable, lumisection size);
    # the two outer bins (outside the reference range) by an exact binomial test: each event of a
    # good lumisection falls outside the range of N reference events with probability 2 / (N + 1)
    # (exchangeability), so the per-variable p-value is min(1, 2 min(p_chi2, p_outside)).
    from .stats import binomial_sf

    for v in range(V):
        bins = np.flatnonzero(valid[v])
        inner, outer = bins[1:-1], bins[[0, -1]]
        ref = reference[v, inner].astype(np.float64)
        Ni = ref.sum()
        r = ref / max(Ni, 1.0)
        k_out = counts[:, v, outer].sum(axis=1)
        p_out = binomial_sf(k_out, n[:, v], 2.0 / (N[v] + 1.0))
        ni = n[:, v] - k_out
        p_chi = np.ones(L)
        sizes, inv = np.unique(ni, return_inverse=True)
        for j, size in enumerate(sizes):
            rows = np.flatnonzero(inv == j)
            if size <= 0:
                continue
            g = _groups(r, min(1.0, min_expected / size))
            k = g.max() + 1
            if k < 2:
                continue
            R = np.bincount(g, ref, minlength=k)
            C = np.zeros((len(rows), k))
            for b in range(len(g)):
                C[:, g[b]] += counts[rows, v, inner[b]]
            den = C + R[None, :]
            with np.errstate(invalid="ignore", divide="ignore"):
                x = np.where(den > 0, (Ni * C - size * R[None, :]) ** 2 / den, 0.0).sum(axis=1) / (size * Ni)
            stat[rows, v] = x
            p_chi[rows] = chi2_sf(x, k - 1)
        p[:, v] = np.minimum(1.0, 2.0 * np.minimum(p_chi, p_out))
    return p, stat


def combine_pvalues(p: np.ndarray, how: str = "min_p") -> np.ndarray:
    """One p-value per lumisection from per-variable ones ``[L, V]`` (see the module doc)."""
    V = p.shape[1]
    if how == "min_p":
        return np.minimum(1.0, V * p.min(axis=1))
    if how == "fisher":
        return chi2_sf(-2.0 * np.log(np.maximum(p, 1e-300)).sum(axis=1), 2 * V)
    raise ValueError(f"combine must be one of {', '.join(COMBINES)}, got {how!r}")


# -- autoencoder on histograms ---------------------------------------------------------------------
def hist_inputs(counts: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sqrt(count / n)`` of the valid bins, flattened ``[L, D]``, and ``n`` per lumisection."""
    n = counts.sum(axis=2)[:, 0].astype(np.float64)  # every variable sees every event
    x = np.sqrt(counts[:, valid] / np.maximum(n, 1)[:, None])
    return x.astype(np.float32), n


class HistAutoencoder:
    """The histogram autoencoder with its input centring; ``statistic(counts)`` per lumisection."""

    def __init__(self, model, mean: np.ndarray, valid: np.ndarray):
        self.model, self.mean, self.valid = model.eval(), np.asarray(mean, np.float32), np.asarray(valid, bool)
        self.var_of = np.nonzero(self.valid)[0]  # the variable of each flattened bin

    def statistic(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``4 n sum (x - x_hat)^2`` per lumisection, its p-value (chi2 with one dof per bin less
        one per variable: nominal), and each variable's share ``[L, V]`` of the sum."""
        import torch

        x, n = hist_inputs(counts, self.valid)
        with torch.no_grad():
            xh = self.model(torch.from_numpy(x - self.mean)).numpy() + self.mean
        r2 = 4.0 * n[:, None] * (x - xh) ** 2
        V = self.valid.shape[0]
        per_var = np.stack([r2[:, self.var_of == v].sum(axis=1) for v in range(V)], axis=1)
        stat = per_var.sum(axis=1)
        dof = max(int(self.valid.sum()) - V, 1)
        share = per_var / np.maximum(stat, 1e-300)[:, None]
        return stat, chi2_sf(stat, dof), share

    def state(self) -> dict:
        from ..engine.summary import encode

        return {"architecture": self.model.arch, "mean": self.mean.tolist(),
                "state_dict": {k: encode(v.detach().cpu().numpy()) for k, v in self.model.state_dict().items()}}

    @classmethod
    def from_state(cls, d: dict, valid: np.ndarray) -> HistAutoencoder:
        import torch

        from ..engine.summary import decode
        from ..models import build_model

        model = build_model(d["architecture"])
        model.load_state_dict({k: torch.from_numpy(np.array(decode(v))) for k, v in d["state_dict"].items()})
        return cls(model, np.asarray(d["mean"], np.float32), valid)


def train_hist_autoencoder(counts: np.ndarray, valid: np.ndarray, validation: np.ndarray, *, hidden=(64, 16),
                           latent: int = 4, epochs: int = 200, lr: float = 3e-3, batch_size: int = 128,
                           patience: int = 20, seed: int = 0) -> tuple[HistAutoencoder, dict]:
    """Fit on good lumisections' histograms ``counts`` [L, V, B]; early stopping on the
    ``validation`` ones. Deterministic for a seed (one torch thread)."""
    import copy

    import torch

    from ..models import build_model

    x, _ = hist_inputs(counts, valid)
    xv, _ = hist_inputs(validation, valid)
    mean = x.mean(axis=0)
    torch.manual_seed(seed)
    model = build_model({"name": "autoencoder", "n_inputs": x.shape[1], "hidden": list(hidden), "latent": latent,
                         "activation": "relu"})
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    X, XV = torch.from_numpy(x - mean), torch.from_numpy(xv - mean)
    best, best_state, bad, epoch = np.inf, None, 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        for i in np.array_split(rng.permutation(len(X)), max(1, len(X) // batch_size)):
            loss = (model(X[i]) - X[i]).pow(2).sum(dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float((model(XV) - XV).pow(2).sum(dim=1).mean())
        if val < best - 1e-9:
            best, best_state, bad = val, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best_state)
    return HistAutoencoder(model, mean, valid), {"epochs": epoch, "validation_loss": best}


# -- calibration ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Calibration:
    """Sorted p-values of one method on ``m`` held-out good lumisections."""

    pvalues: np.ndarray

    @property
    def m(self) -> int:
        return len(self.pvalues)

    def threshold(self, alpha: float) -> tuple[float, bool]:
        """The p-value below which a lumisection is flagged at false-alarm rate ``alpha`` (the
        ``floor(alpha (m + 1))``-th smallest calibration p-value), and whether the calibration
        set is large enough for it (``m + 1 >= 1 / alpha``); if not, ``alpha`` itself (nominal)."""
        k = int(np.floor(alpha * (self.m + 1)))
        if k < 1:
            return float(alpha), False
        return float(self.pvalues[k - 1]), True

    def to_list(self) -> list[float]:
        return self.pvalues.tolist()

    @classmethod
    def from_values(cls, p) -> Calibration:
        return cls(np.sort(np.asarray(p, dtype=np.float64)))


def false_alarm(pvalues: np.ndarray, threshold: float) -> dict:
    """Fraction of good lumisections flagged (``p < threshold``) with its 68% Clopper-Pearson
    interval; see :func:`.stats.fraction`."""
    p = np.asarray(pvalues)
    return fraction(int((p < threshold).sum()), len(p))


# -- profile maps (a variable's mean per cell of a 2D map, e.g. jet pT per eta-phi cell) ----------
@dataclasses.dataclass
class ProfileMap:
    """``w`` averaged per cell of an ``x`` x ``y`` grid (uniform cells over the reference range):
    the DQM energy map. A hot channel adds energy to the jets of a few cells, which the marginal
    histograms dilute over the whole detector. Statistic per lumisection:
    ``sum_c n_c (mean_c - mu_c)^2 / sigma_c^2`` over cells with events (``mu_c``, ``sigma_c``:
    the reference's mean and spread of ``w`` in the cell), about chi2 with one dof per such cell."""

    name: str
    x: str
    y: str
    w: str
    xedges: np.ndarray
    yedges: np.ndarray
    ref: np.ndarray | None = None  # [3, C]: reference count, mean, variance of w per cell

    @classmethod
    def from_reference(cls, X: np.ndarray, cols: tuple[int, int, int], names: tuple[str, str, str],
                       bins: tuple[int, int]) -> ProfileMap:
        x, y = X[:, cols[0]], X[:, cols[1]]
        m = cls(f"{names[2]} per {names[0]} x {names[1]} cell", *names,
                np.linspace(np.nanmin(x), np.nanmax(x), bins[0] + 1), np.linspace(np.nanmin(y), np.nanmax(y), bins[1] + 1))
        s = m.sums(m.cells(X[:, cols[0]], X[:, cols[1]]), X[:, cols[2]])[0]
        n = np.maximum(s[0], 1)
        mean = s[1] / n
        m.ref = np.stack([s[0], mean, np.maximum(s[2] / n - mean ** 2, 0.0)])
        return m

    @property
    def n_cells(self) -> int:
        return (len(self.xedges) - 1) * (len(self.yedges) - 1)

    def cells(self, x, y) -> np.ndarray:
        nx, ny = len(self.xedges) - 1, len(self.yedges) - 1
        ix = np.clip(np.searchsorted(self.xedges, np.nan_to_num(x), side="right") - 1, 0, nx - 1)
        iy = np.clip(np.searchsorted(self.yedges, np.nan_to_num(y), side="right") - 1, 0, ny - 1)
        return ix * ny + iy

    def sums(self, cell: np.ndarray, w: np.ndarray, group: np.ndarray | None = None, n_groups: int = 1) -> np.ndarray:
        """``[n_groups, 3, C]``: events, sum of w, sum of w^2 per cell."""
        C = self.n_cells
        g = np.zeros(len(cell), np.int64) if group is None else np.asarray(group, np.int64)
        k = g * C + cell
        w = np.nan_to_num(np.asarray(w, np.float64))
        return np.stack([np.bincount(k, minlength=n_groups * C), np.bincount(k, w, minlength=n_groups * C),
                         np.bincount(k, w * w, minlength=n_groups * C)]).reshape(3, n_groups, C).transpose(1, 0, 2)

    def pvalues(self, sums: np.ndarray) -> np.ndarray:
        """p-value per lumisection of its map ``sums`` [L, 3, C]."""
        n = sums[:, 0]
        ok = (self.ref[0] >= 5)[None, :] & (n > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums[:, 1] / np.maximum(n, 1)
            chi = np.where(ok, n * (mean - self.ref[1]) ** 2 / np.maximum(self.ref[2], 1e-12), 0.0)
        return chi2_sf(chi.sum(axis=1), np.maximum(ok.sum(axis=1), 1))

    def to_dict(self) -> dict:
        return {"name": self.name, "x": self.x, "y": self.y, "w": self.w, "xedges": self.xedges.tolist(),
                "yedges": self.yedges.tolist(), "ref": self.ref.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> ProfileMap:
        return cls(d["name"], d["x"], d["y"], d["w"], np.asarray(d["xedges"]), np.asarray(d["yedges"]), np.asarray(d["ref"]))


# -- the lumisection model stored with a train_anomaly artifact -----------------------------------
def method_pvalues(counts: np.ndarray, reference: np.ndarray, valid: np.ndarray, ae: HistAutoencoder | None,
                   test: str, combine: str, min_expected: float, maps: list[ProfileMap] = (),
                   map_sums: np.ndarray | None = None) -> dict:
    """Every method's p-value ``[L]`` and driving-variable scores ``[L, V (+ maps)]`` (higher =
    drives more: ``-log10 p_v`` for classical, the share of the statistic for the autoencoder).
    The classical method combines the per-variable histogram tests and the profile maps'."""
    out = {}
    pv, _ = classical_pvalues(counts, reference, valid, test, min_expected)
    if maps:
        pv = np.concatenate([pv, np.stack([m.pvalues(map_sums[:, i]) for i, m in enumerate(maps)], axis=1)], axis=1)
    out["classical"] = {"p": combine_pvalues(pv, combine), "drive": -np.log10(np.maximum(pv, 1e-300)), "p_var": pv}
    if ae is not None:
        stat, p, share = ae.statistic(counts)
        out["autoencoder"] = {"p": p, "drive": share, "stat": stat}
    return out


def build_lumi_model(pools: dict[str, np.ndarray], variables: list[str], *, maps: list[dict] = (), bins: int = 20,
                     test: str = "chi2",
                     combine: str = "min_p", min_expected: float = 5.0, sizes: tuple[int, int] = (50, 2000),
                     n_train: int = 2000, n_calibration: int = 1000, n_check: int = 1000, ae_hidden=(64, 16),
                     ae_latent: int = 4, ae_epochs: int = 200, seed: int = 0, log=print) -> dict:
    """Binning and reference histograms from the ``train`` events; the histogram autoencoder
    trained on pseudo-lumisections of them (early stopping on pseudo-lumisections of the
    ``validation`` events); each method's p-values on ``n_calibration`` pseudo-lumisections of the
    first half of the ``test`` events (the calibration) and on ``n_check`` of the second half (the
    held-out check of the false-alarm rate). Pseudo-lumisection sizes are log-uniform in ``sizes``
    (the statistics are normalised to the size, so one calibration serves all sizes).

    ``pools`` columns: the ``variables``, then any extra ones the ``maps`` name by index
    (``{"cols": (ix, iy, iw), "names": (x, y, w), "bins": (nx, ny)}``).

    Returns the JSON-able ``anomaly.lumi`` block of the artifact."""
    rng = np.random.default_rng([seed, 0x1D0])
    V = len(variables)
    binning = Binning.from_reference(pools["train"][:, :V], variables, bins)
    nb, valid = binning.n_bins, binning.valid
    pmaps = [ProfileMap.from_reference(pools["train"], m["cols"], m["names"], m["bins"]) for m in maps]
    split = {"calibration": ("test", 0), "check": ("test", 1)}
    idx = {k: binning.index(v[:, :V]) for k, v in pools.items()}
    cells = {k: [(pm.cells(v[:, m["cols"][0]], v[:, m["cols"][1]]), v[:, m["cols"][2]]) for pm, m in zip(pmaps, maps)]
             for k, v in pools.items()}
    half = len(idx["test"]) // 2
    reference = counts_from_index(idx["train"], nb)[0]

    def draw(pool: str, m: int) -> tuple[np.ndarray, np.ndarray | None]:
        src, part = split.get(pool, (pool, None))
        rows = np.arange(len(idx[src]))
        if part is not None:
            rows = rows[:half] if part == 0 else rows[half:]
        sz = np.exp(rng.uniform(np.log(sizes[0]), np.log(sizes[1]), m)).astype(np.int64)
        pick = rows[rng.integers(0, len(rows), int(sz.sum()))]
        group = np.repeat(np.arange(m), sz)
        counts = counts_from_index(idx[src][pick], nb, group, m)
        ms = np.stack([pm.sums(c[pick], w[pick], group, m) for pm, (c, w) in zip(pmaps, cells[src])], axis=1) if pmaps else None
        return counts, ms

    ae, fit = train_hist_autoencoder(draw("train", n_train)[0], valid, draw("validation", max(n_train // 4, 200))[0],
                                     hidden=ae_hidden, latent=ae_latent, epochs=ae_epochs, seed=seed)
    log(f"lumisection autoencoder: {valid.sum()} bins in, {fit['epochs']} epochs (validation loss {fit['validation_loss']:.4g})")
    c_counts, c_maps = draw("calibration", n_calibration)
    k_counts, k_maps = draw("check", n_check)
    cal = method_pvalues(c_counts, reference, valid, ae, test, combine, min_expected, pmaps, c_maps)
    chk = method_pvalues(k_counts, reference, valid, ae, test, combine, min_expected, pmaps, k_maps)
    idx["calibration"], idx["check"] = idx["test"][:half], idx["test"][half:]
    return {
        "maps": [m.to_dict() for m in pmaps],
        "binning": binning.to_dict(), "reference_counts": reference.tolist(), "test": test, "combine": combine,
        "min_expected": min_expected, "autoencoder": ae.state(), "autoencoder_fit": fit,
        "calibration": {m: np.sort(cal[m]["p"]).tolist() for m in METHODS},
        "check": {m: chk[m]["p"].tolist() for m in METHODS},
        "pseudo_lumis": {"sizes": list(sizes), "train": n_train, "calibration": n_calibration, "check": n_check,
                         "events": {k: int(len(v)) for k, v in idx.items()},
                         "how": "events drawn with replacement from held-out good reference events: calibration "
                                "from the first half of the test split, check from the second half"},
    }


@dataclasses.dataclass
class LumiModel:
    """The stored lumisection model, ready to judge histograms."""

    binning: Binning
    reference: np.ndarray
    ae: HistAutoencoder
    test: str
    combine: str
    min_expected: float
    calibration: dict[str, Calibration]
    check: dict[str, np.ndarray]
    maps: list[ProfileMap] = dataclasses.field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> LumiModel:
        b = Binning.from_dict(d["binning"])
        return cls(b, np.asarray(d["reference_counts"], dtype=np.int64), HistAutoencoder.from_state(d["autoencoder"], b.valid),
                   d["test"], d["combine"], float(d["min_expected"]),
                   {m: Calibration.from_values(v) for m, v in d["calibration"].items()},
                   {m: np.asarray(v) for m, v in d["check"].items()},
                   [ProfileMap.from_dict(m) for m in d.get("maps", [])])

    @property
    def drive_names(self) -> list[str]:
        return list(self.binning.variables) + [m.name for m in self.maps]

    def pvalues(self, counts: np.ndarray, map_sums: np.ndarray | None = None) -> dict:
        return method_pvalues(counts, self.reference, self.binning.valid, self.ae, self.test, self.combine,
                              self.min_expected, self.maps, map_sums)
