"""Template filling throughput: `kind: templates` (hepray on Ray, 2 workers) vs a plain
single-process ``uproot.iterate`` + ``hist.fill`` loop filling the same histograms, side by side,
over the inference benchmark's size (2 M events), 3 processes x 3 categories x 5 systematics
(3 weight variations, 2 variations of the histogrammed score): 33 fills per process and chunk.
Both sides' histograms are checked equal before any figure is printed.

    python benchmarks/bench_templates.py [--events 2000000] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from common import interleaved, median_of, timed

CATS = {"low": ("pt", 0, 60), "mid": ("pt", 60, 120), "high": ("pt", 120, np.inf)}
PROCS = {"signal": 1, "ttbar": 2, "qcd": 0}
WSYST = {"pu": "w_pu", "btag": "w_btag", "isr": "w_isr"}  # name -> branch prefix: <b>_up, <b>_down
VSYST = {"jes": "score_jes", "jer": "score_jer"}  # name -> branch prefix: <b>_up, <b>_down
EDGES = np.linspace(0, 1, 21)


def write(path: Path, n: int, seed: int, basket: int = 100_000) -> str:
    import uproot

    rng = np.random.default_rng(seed)
    with uproot.recreate(path, compression=uproot.ZSTD(1)) as f:
        for a in range(0, n, basket):
            m = min(basket, n - a)
            proc = rng.choice([0, 1, 2], m, p=[0.6, 0.1, 0.3]).astype(np.int32)
            score = np.where(proc == 1, rng.beta(5, 2, m), rng.beta(2, 5, m))
            cols = {"process": proc, "score": score, "pt": rng.exponential(60, m) + 20, "w": rng.uniform(0.5, 1.5, m),
                    "event": np.arange(a, a + m, dtype=np.int64), "run": np.ones(m, np.int32),
                    "luminosityBlock": np.zeros(m, np.int32)}
            for b in WSYST.values():
                d = rng.normal(0, 0.05, m)
                cols[f"{b}_up"], cols[f"{b}_down"] = 1 + np.abs(d), 1 - np.abs(d)
            for k, b in enumerate(VSYST.values()):
                s = 0.02 * (k + 1)
                cols[f"{b}_up"], cols[f"{b}_down"] = np.clip(score * (1 + s), 0, 1), score * (1 - s)
            cols = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in cols.items()}
            if a == 0:
                f.mktree("Events", {k: v.dtype for k, v in cols.items()})
            f["Events"].extend(cols)
    return str(path)


def job(files, out, workers) -> dict:
    lo_hi = [(c, lo, hi) for c, (_, lo, hi) in CATS.items()]
    return {
        "kind": "templates", "name": "bench_templates", "output": {"dir": str(out)},
        "engine": {"workers": workers, "progress_every_s": 60},
        "dataset": {"files": files, "shard_events": 250_000},
        "variable": "score", "binning": {"bins": 20, "range": [0, 1]},
        "processes": [{"name": p, "cut": f"process == {code}", "weight": "w"} for p, code in PROCS.items()],
        "categories": [{"name": c, "cut": f"(pt >= {lo}) & (pt < {hi})" if np.isfinite(hi) else f"pt >= {lo}"}
                       for c, lo, hi in lo_hi],
        "systematics": [{"name": s, "weight_up": f"{b}_up", "weight_down": f"{b}_down"} for s, b in WSYST.items()]
                       + [{"name": s, "variable_up": f"{b}_up", "variable_down": f"{b}_down"} for s, b in VSYST.items()],
        "mc_stat": True, "plots": "none",  # the fill is measured, not matplotlib (the demo draws them)
    }


def plain(files: list[str]) -> dict:
    """The peer: what one writes by hand. One hist per process (category x variation x score)."""
    import hist
    import uproot

    variations = ["nominal"] + [f"{s}{d}" for s in [*WSYST, *VSYST] for d in ("Up", "Down")]
    hs = {p: hist.Hist(hist.axis.StrCategory(list(CATS)), hist.axis.StrCategory(variations),
                       hist.axis.Variable(EDGES), storage=hist.storage.Weight()) for p in PROCS}
    branches = ["process", "score", "pt", "w"] + [f"{b}_{d}" for b in [*WSYST.values(), *VSYST.values()]
                                                   for d in ("up", "down")]
    for a in uproot.iterate([f"{f}:Events" for f in files], branches, step_size=250_000, library="np"):
        for p, code in PROCS.items():
            sel = a["process"] == code
            for c, (var, lo, hi) in CATS.items():
                m = sel & (a[var] >= lo) & (a[var] < hi)
                x, w = a["score"][m], a["w"][m]
                h = hs[p]
                h.fill(c, "nominal", x, weight=w)
                for s, b in WSYST.items():
                    h.fill(c, f"{s}Up", x, weight=w * a[f"{b}_up"][m])
                    h.fill(c, f"{s}Down", x, weight=w * a[f"{b}_down"][m])
                for s, b in VSYST.items():
                    h.fill(c, f"{s}Up", a[f"{b}_up"][m], weight=w)
                    h.fill(c, f"{s}Down", a[f"{b}_down"][m], weight=w)
    return hs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    import uproot

    import hepray

    d = Path(args.dir or tempfile.mkdtemp(prefix="hepray_bench_templates_"))
    per = args.events // args.files
    files = [write(d / f"t_{i}.root", per, i) if not (d / f"t_{i}.root").exists() else str(d / f"t_{i}.root")
             for i in range(args.files)]
    n = per * args.files
    hepray.run(job(files[:1], d / "warm", args.workers), overwrite=True, quiet=True)  # Ray + actors start

    def hep():
        s, t = timed(hepray.run, job(files, d / "run", args.workers), overwrite=True, quiet=True)
        assert s["events_in"] == n, s
        return {"seconds": t, "shard_seconds": s["seconds"]}

    ref = {}

    def peer():
        hs, t = timed(plain, files)
        ref["hs"] = hs
        return {"seconds": t}

    runs = interleaved({"hepray": hep, "plain": peer}, args.rounds)
    # the same histograms: hepray's templates.root against the plain loop's (flow folded on both)
    from hepray.fit.templates import folded

    root = uproot.open(d / "run" / "templates.root")
    checked = 0
    for p, h in ref["hs"].items():
        for c in CATS:
            for v in h.axes[1]:
                name = p if v == "nominal" else f"{p}_{v}"
                vals, var = folded(h[c, v, :])
                np.testing.assert_allclose(root[f"{c}/{name}"].values(), vals, rtol=1e-6)
                np.testing.assert_allclose(root[f"{c}/{name}"].variances(), var, rtol=1e-6)
                checked += 1
    t_h, t_p = median_of(runs["hepray"], "seconds"), median_of(runs["plain"], "seconds")
    res = {"events": n, "workers": args.workers, "rounds": args.rounds, "processes": len(PROCS),
           "categories": len(CATS), "systematics": len(WSYST) + len(VSYST), "histograms_checked_equal": checked,
           "hepray_events_per_s": round(n / t_h), "plain_events_per_s": round(n / t_p),
           "hepray_over_plain": round(t_p / t_h, 3), "hepray_seconds": round(t_h, 2), "plain_seconds": round(t_p, 2),
           "hepray_seconds_per_round": [round(r["seconds"], 2) for r in runs["hepray"]],
           "plain_seconds_per_round": [round(r["seconds"], 2) for r in runs["plain"]],
           "loadavg": runs["hepray"][-1]["loadavg"]}
    print(json.dumps(res, indent=1))
    print(f"\ntemplates, {n:,} events, {len(PROCS)} processes x {len(CATS)} categories x {res['systematics']} "
          f"systematics ({checked} histograms, equal on both sides): hepray {res['hepray_events_per_s']:,} ev/s "
          f"({args.workers} workers) | plain uproot.iterate + hist.fill {res['plain_events_per_s']:,} ev/s "
          f"(1 process) | hepray/plain {res['hepray_over_plain']:.2f}x")
    Path("benchmarks/results").mkdir(exist_ok=True)
    Path("benchmarks/results/templates.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
