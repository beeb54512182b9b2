"""The data layer reads what experiments write: every file of tests/data/real (CMS NanoAOD as
TTree and RNTuple, HZZ in each codec, Zmumu, an experiment EDM, split classes) through a skim
job on Ray, compared with plain uproot. Unreadable branches give the clear error, naming the file."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import uproot

import hepray

from .conftest import REAL

CASES = {
    "nanoAOD_2015_CMS_Open_Data_ttbar.root": dict(tree="Events", branches=["nJet", "Jet_pt", "MET_pt"],
                                                  expressions={"ht": "sum(Jet_pt)"}, check="MET_pt"),
    "cmsopendata2015_ttbar_19980_NANOAOD_RNTupleImporter_rntuple_v1-0-0-1.root":
        dict(tree="Events", branches=["nJet", "Jet_pt", "MET_pt"], expressions={"ht": "sum(Jet_pt)"}, check="MET_pt"),
    "Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root":
        dict(tree="Events", branches=["nMuon", "Muon_pt"], expressions={"lead": "max(Muon_pt)"}, check="nMuon"),
    **{f"uproot-HZZ{c}.root": dict(tree="events", branches=["NJet", "Jet_Px", "Jet_Py", "MET_px"],
                                   expressions={"Jet_pt": "sqrt(Jet_Px**2 + Jet_Py**2)"}, check="MET_px")
       for c in ("", "-lz4", "-lzma", "-zstd", "-uncompressed")},
    **{f"uproot-Zmumu{c}.root": dict(tree="events", branches=["Run", "Event", "E1", "E2", "px1"],
                                     expressions={"Esum": "E1 + E2"}, check="E1") for c in ("", "-lz4", "-zstd")},
    "uproot-mc10events.root": dict(tree="Events", aliases={"runNum": "Info/runNum", "ele_pt": "Electron/Electron.pt"},
                                   branches=[], expressions={"n_ele": "num(ele_pt)"}, check="Info/runNum"),
    "uproot-small-evnt-tree-fullsplit.root": dict(tree="tree", aliases={"i32": "evt/I32", "f64": "evt/F64",
                                                  "arr": "evt/ArrayF32[10]", "vec": "evt/StlVecF64"},
                                                  branches=[], expressions={"s": "sum(vec)"}, check="evt/F64"),
}


def test_every_real_file_is_covered():
    assert {p.name for p in REAL.glob("*.root")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_file_through_engine_matches_uproot(ray_session, tmp_path, name):
    case = dict(CASES[name])
    check = case.pop("check")
    ds = {"files": str(REAL / name), "shard_events": 500, **case}
    s = hepray.run({"kind": "skim", "name": "real", "dataset": ds, "output": {"dir": str(tmp_path)},
                    "engine": {"workers": 2, "progress_every_s": 60}}, quiet=True)
    tree = uproot.open(REAL / name)[case["tree"]]
    assert s["events_in"] == s["events_out"] == tree.num_entries
    man = json.loads((tmp_path / "parts" / "_manifest.json").read_text())
    out = ak.concatenate([uproot.open(tmp_path / "parts" / p["part"])["hepray"].arrays() for p in man["parts"]])
    column = {v: k for k, v in case.get("aliases", {}).items()}.get(check, check)
    ref = tree.arrays([check])[check] if hasattr(tree, "common_entry_offsets") else tree.arrays([check])[check]
    np.testing.assert_array_equal(ak.to_numpy(out[column]), ak.to_numpy(ref))
    for name_ in case["expressions"]:
        assert name_ in out.fields
    assert ak.all(out.hepray_entry == np.arange(tree.num_entries))


@pytest.mark.parametrize("name, branch", [("uproot-mc10events.root", "Info/triggerBits"),
                                          ("uproot-small-evnt-tree-fullsplit.root", "evt")])
def test_unreadable_branch_is_a_clear_error_naming_the_file(ray_session, tmp_path, name, branch):
    tree = CASES[name]["tree"]
    job = {"kind": "skim", "name": "bad", "dataset": {"files": str(REAL / name), "tree": tree, "aliases": {"x": branch}},
           "output": {"dir": str(tmp_path)}, "engine": {"workers": 1, "progress_every_s": 60}}
    with pytest.raises(hepray.errors.JobFailed, match=rf"{name}.*cannot read entries"):
        hepray.run(job, quiet=True)
    assert not list((tmp_path / "parts").glob("*.root"))
