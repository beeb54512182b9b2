"""Physics sanity of a generation run: numbers and PNG plots from the written parts.

Jet mass per process (peaks near mW and mtop for signal), tau32 per process (lower for tops than
for QCD) and the detector response reco_pt/gen_pt with its resolution versus generator pT.
The numbers are pure functions of the columns; only :func:`make_plots` needs matplotlib.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

BRANCHES = ["process", "label", "fault", "gen_pt", "reco_pt", "gen_mass", "reco_mass", "gen_tau32", "reco_tau32",
            "gen_tau21", "reco_tau21", "reco_ok"]
M_W, M_TOP = 80.4, 172.5
_PART = re.compile(r"^(?P<sample>.+)_[0-9a-f]{16}\.root$")


def read_parts(parts_dir: str | Path, branches: list[str] = BRANCHES) -> dict[str, dict[str, np.ndarray]]:
    """The per-jet branches of every part, concatenated per sample (part files are
    ``<sample>_<shard_id>.root``)."""
    import uproot

    from ..io.parts import as_path
    from ..io.store import local_copy

    per: dict[str, list[dict]] = {}
    for path in sorted(as_path(parts_dir).glob("*.root"), key=lambda p: p.name):  # a local folder or a store
        m = _PART.match(path.name)
        if not m:
            continue
        with local_copy(path) as local, uproot.open(local) as f:
            tree = f[next(k for k in f.keys(cycle=False) if f[k].classname == "TTree")]
            if tree.num_entries:
                per.setdefault(m["sample"], []).append(tree.arrays(branches, library="np"))
    return {s: {b: np.concatenate([a[b] for a in arrs]) for b in branches} for s, arrs in per.items()}


def mass_peak(mass: np.ndarray, lo: float = 20.0, hi: float = 300.0, width: float = 5.0) -> float:
    """Most probable jet mass: the mode of a 3-bin-smoothed histogram (NaN when empty)."""
    mass = mass[(mass >= lo) & (mass < hi)]
    if mass.size == 0:
        return float("nan")
    h, edges = np.histogram(mass, bins=np.arange(lo, hi + width, width))
    smooth = np.convolve(h, np.ones(3) / 3, mode="same")
    i = int(np.argmax(smooth))
    return float(0.5 * (edges[i] + edges[i + 1]))


def robust_sigma(x: np.ndarray) -> float:
    """Half the 16-84 % quantile range: a Gaussian's sigma, blind to the non-Gaussian tails."""
    if x.size < 2:
        return float("nan")
    q16, q84 = np.quantile(x, [0.16, 0.84])
    return float(0.5 * (q84 - q16))


def response_table(gen_pt: np.ndarray, reco_pt: np.ndarray, edges: np.ndarray) -> dict[str, list[float]]:
    """Median response reco/gen and its robust resolution (sigma / median) in bins of gen pT."""
    r = reco_pt / np.where(gen_pt > 0, gen_pt, np.nan)
    out = {"pt_lo": [], "pt_hi": [], "n": [], "response": [], "resolution": []}
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (gen_pt >= lo) & (gen_pt < hi) & np.isfinite(r)
        med = float(np.median(r[sel])) if sel.any() else float("nan")
        out["pt_lo"].append(float(lo))
        out["pt_hi"].append(float(hi))
        out["n"].append(int(sel.sum()))
        out["response"].append(med)
        out["resolution"].append(robust_sigma(r[sel]) / med if sel.sum() > 1 else float("nan"))
    return out


def summarize(samples: dict[str, dict[str, np.ndarray]], pt_range: tuple[float, float], bins: int = 5) -> dict:
    """The closing-note numbers: per sample the jet count, mass peaks and mean tau32; overall
    the detector pT response and resolution (fault-free, reconstructed jets only)."""
    out: dict = {"samples": {}}
    for name, c in samples.items():
        ok = c["reco_ok"].astype(bool)
        out["samples"][name] = {
            "jets": int(len(c["gen_pt"])),
            "mass_peak_gen": mass_peak(c["gen_mass"]),
            "mass_peak_reco": mass_peak(c["reco_mass"][ok]),
            "mean_tau32_gen": float(np.mean(c["gen_tau32"])) if len(c["gen_pt"]) else float("nan"),
            "mean_tau32_reco": float(np.mean(c["reco_tau32"][ok])) if ok.any() else float("nan"),
            "reco_ok_fraction": float(ok.mean()) if len(ok) else float("nan"),
        }
    if samples:
        gen = np.concatenate([c["gen_pt"] for c in samples.values()])
        reco = np.concatenate([c["reco_pt"] for c in samples.values()])
        good = np.concatenate([(c["fault"] == 0) & c["reco_ok"].astype(bool) for c in samples.values()])
        r = reco[good] / gen[good]
        med = float(np.median(r)) if r.size else float("nan")
        out["response"] = {"median": med, "resolution": robust_sigma(r) / med if r.size > 1 else float("nan"),
                           "by_gen_pt": response_table(gen[good], reco[good], np.linspace(*pt_range, bins + 1))}
        faults = np.concatenate([c["fault"] for c in samples.values()])
        ok_all = np.concatenate([c["reco_ok"].astype(bool) for c in samples.values()])
        out["by_fault"] = {}
        for code in np.unique(faults).tolist():
            sel = faults == code
            rr = reco[sel & ok_all] / gen[sel & ok_all]
            out["by_fault"][int(code)] = {"jets": int(sel.sum()), "reco_ok_fraction": float(ok_all[sel].mean()),
                                          "median_response": float(np.median(rr)) if rr.size else float("nan")}
    return out


def make_plots(samples: dict[str, dict[str, np.ndarray]], out_dir: str | Path, pt_range: tuple[float, float],
               summary: dict | None = None) -> list[Path]:
    """jet_mass.png, tau32.png and pt_response.png in ``out_dir``; returns their paths."""
    from ..report.plots import _plt

    plt = _plt()  # mplhep style of the job's report: block

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary or summarize(samples, pt_range)
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, level in zip(axes, ("gen", "reco")):
        for name, c in samples.items():
            sel = np.ones(len(c["gen_pt"]), bool) if level == "gen" else c["reco_ok"].astype(bool)
            ax.hist(c[f"{level}_mass"][sel], bins=np.arange(0, 300, 5), histtype="step", density=True, label=name)
        for m, t in ((M_W, "$m_W$"), (M_TOP, "$m_t$")):
            ax.axvline(m, color="grey", ls=":", lw=1)
            ax.text(m, ax.get_ylim()[1] * 0.95, t, ha="center", va="top", fontsize=8, color="grey")
        ax.set_xlabel(f"{'generator' if level == 'gen' else 'detector'}-level jet mass [GeV]")
    axes[0].set_ylabel("jets (normalised)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "jet_mass.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, var, label in zip(axes, ("reco_tau32", "reco_tau21"), (r"$\tau_{32}$", r"$\tau_{21}$")):
        for name, c in samples.items():
            sel = c["reco_ok"].astype(bool)
            ax.hist(c[var][sel], bins=np.linspace(0, 1.2, 49), histtype="step", density=True, label=name)
        ax.set_xlabel(f"detector-level {label}")
    axes[0].set_ylabel("jets (normalised)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "tau32.png"))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    if "response" in summary:
        gen = np.concatenate([c["gen_pt"] for c in samples.values()])
        reco = np.concatenate([c["reco_pt"] for c in samples.values()])
        fault = np.concatenate([c["fault"] for c in samples.values()])
        ok = np.concatenate([c["reco_ok"].astype(bool) for c in samples.values()])
        for code, text in ((0, "no fault"), (1, "dead region"), (2, "miscalibration"), (3, "noisy channel")):
            sel = ok & (fault == code)
            if sel.any():
                axes[0].hist(reco[sel] / gen[sel], bins=np.linspace(0.5, 1.5, 81), histtype="step", density=True,
                             label=f"{text} ({sel.sum()} jets)")
        axes[0].set_xlabel(r"$p_T^{reco} / p_T^{gen}$")
        axes[0].set_ylabel("jets (normalised)")
        axes[0].legend(fontsize=8)
        t = summary["response"]["by_gen_pt"]
        mid = 0.5 * (np.array(t["pt_lo"]) + np.array(t["pt_hi"]))
        half = 0.5 * (np.array(t["pt_hi"]) - np.array(t["pt_lo"]))
        axes[1].errorbar(mid, t["response"], xerr=half, fmt="o")
        axes[1].axhline(1.0, color="grey", ls=":")
        axes[1].set_ylim(0.8, 1.1)
        axes[1].set_ylabel(r"median $p_T^{reco} / p_T^{gen}$ (no fault)")
        axes[2].errorbar(mid, t["resolution"], xerr=half, fmt="s", color="C1")
        axes[2].set_ylim(0, max(0.1, 1.3 * np.nanmax(t["resolution"])) if np.isfinite(t["resolution"]).any() else 0.1)
        axes[2].set_ylabel(r"resolution $\sigma / \mathrm{median}$ (16-84 % range / 2)")
        for ax in axes[1:]:
            ax.set_xlabel(r"generator-level jet $p_T$ [GeV]")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "pt_response.png"))
    return written


def _save(fig, path: Path) -> Path:
    from ..report.plots import _save as save

    return save(fig, path)  # the experiment label, then saved
