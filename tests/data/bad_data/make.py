"""Writes the bad-data corpus: one folder per fault, a job.yaml (first lines ``# expect:`` and
``# exit:``) and the small ROOT files it reads, plus the model every case uses. Run from the
repository root: ``python tests/data/bad_data/make.py`` (the files are committed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from hepray.testing import fit_toy_xgboost, write_toy_root

HERE = Path(__file__).parent
N = 200


def toy(path: Path, seed: int = 0, **change) -> Path:
    """A toy file of N events (clusters of 100), with columns replaced by ``change``."""
    write_toy_root(path, N, seed=seed, basket=100)
    if not change:
        return path
    cols = uproot.open(path)["Events"].arrays(library="ak")
    cols = {k: cols[k] for k in cols.fields}
    cols.update(change)
    with uproot.recreate(path) as f:
        f.mktree("Events", {k: (v.dtype if isinstance(v, np.ndarray) and v.ndim == 1 else
                                np.dtype((v.dtype, v.shape[1:])) if isinstance(v, np.ndarray) else v.type.content)
                            for k, v in cols.items()})
        for start in range(0, N, 100):
            f["Events"].extend({k: v[start:start + 100] for k, v in cols.items()})
    return path


def case(name: str, expect: str, code: int, dataset: str, files) -> None:
    d = HERE / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    for fname, make in files.items():
        make(d / fname)
    (d / "job.yaml").write_text(f"# expect: {expect}\n# exit: {code}\nkind: infer\nname: bad\n"
                                f"dataset: {dataset}\nmodel: {{path: model}}\noutput: {{dir: run}}\n"
                                "engine: {workers: 1, progress_every_s: 60}\n")


def main() -> None:
    rng = np.random.default_rng(7)
    shutil.rmtree(HERE / "model", ignore_errors=True)
    good = toy(HERE / "_fit.root")
    fit_toy_xgboost(HERE / "model", [str(good)], rounds=3, depth=2)
    good.unlink()
    case("01_type_changes_between_files", "b.root: branch 'f0' is float here but double in", 2,
         "{files: [a.root, b.root]}",
         {"a.root": toy, "b.root": lambda p: toy(p, 1, f0=rng.normal(size=N).astype(np.float32))})
    case("02_type_changes_between_samples", "sig.root: branch 'f1' is int32_t here but double in", 2,
         "{samples: [{name: bkg, files: bkg.root}, {name: sig, files: sig.root}]}",
         {"bkg.root": toy, "sig.root": lambda p: toy(p, 1, f1=rng.integers(0, 5, N).astype(np.int32))})
    case("03_jagged_feature", "a.root: branch 'f3' is jagged (float[]) where one value per event is expected", 2,
         "{files: a.root}",
         {"a.root": lambda p: toy(p, f3=ak.unflatten(rng.normal(size=2 * N).astype(np.float32), np.full(N, 2)))})
    case("04_fixed_size_array_feature", "a.root: branch 'f2' holds 3 values per event (float[3]) where one", 2,
         "{files: a.root}", {"a.root": lambda p: toy(p, f2=rng.normal(size=(N, 3)).astype(np.float32))})
    case("05_empty_tree", "a.root: tree 'Events' has no events", 2, "{files: a.root}",
         {"a.root": lambda p: toy(p, **{k: v[:0] for k, v in _cols(p).items()})})
    nan = rng.normal(size=N).astype(np.float32)
    nan[[5, 150, 151]] = np.nan
    case("06_nan_in_a_feature", "feature 'f1' has 1 NaN or inf values (first at entry 5)", 1, "{files: a.root, shard_events: 100}",
         {"a.root": lambda p: toy(p, f1=nan)})
    inf = rng.normal(size=N).astype(np.float32)
    inf[[7, 8]] = [np.inf, -np.inf]
    case("07_inf_in_a_feature", "feature 'f2' has 2 NaN or inf values (first at entry 7)", 1,
         "{files: a.root}", {"a.root": lambda p: toy(p, f2=inf)})


def _cols(p: Path) -> dict:
    toy(p)
    a = uproot.open(p)["Events"].arrays(library="ak")
    return {k: a[k] for k in a.fields}


if __name__ == "__main__":
    main()
