"""The demo shows all of hepray: every job file validates, and every workload kind (but the
skim utility) is a step of `hepray demo`, so a new workload cannot forget to join it."""

from __future__ import annotations

from pathlib import Path

import pytest

import hepray
from hepray.demo import STEPS
from hepray.workloads import REGISTRY

ROOT = Path(__file__).parent.parent
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_job_file_validates(path):
    job = hepray.load_job(path)
    assert job.kind in REGISTRY.kinds()


def test_every_kind_is_a_demo_step():
    kinds = {hepray.load_job(ROOT / job).kind for _, job, _ in STEPS}
    missing = set(REGISTRY.kinds()) - kinds - {"skim"}
    assert not missing, f"workloads missing from hepray/demo.py STEPS: {sorted(missing)}"
    outputs = [hepray.load_job(ROOT / job, overrides=o).output.dir for _, job, o in STEPS]
    assert len(set(outputs)) == len(outputs) and all(str(d).startswith("runs/demo/") for d in outputs)
