"""evaluate.ijb holds IJB sets by name (IJB-B and IJB-C in one run): one metrics file and ROC each."""
import json

import pytest
import yaml

from arcpipe.params import ParamsError, load_params
from arcpipe.stages import main
from test_ijb import _write_ijb


def _params(tmp_path, ijb):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"evaluate": {
        "model": {"kind": "pixels"}, "ijb": ijb,
        "metrics_dir": str(tmp_path / "metrics"), "plots_dir": str(tmp_path / "plots")}}))
    return p


def test_two_ijb_sets_and_one_switched_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_ijb(tmp_path / "IJBS")
    root = str(tmp_path / "IJBS")
    params = _params(tmp_path, {
        "ijbb": {"root": root, "target": "IJBS", "fars": [0.1]},
        "ijbc": {"root": root, "target": "IJBS", "fars": [0.1, 0.5]},
        "ijbx": None,
    })
    assert main("evaluate", ["--params", str(params)]) == 0
    b = json.loads((tmp_path / "metrics" / "ijbb.json").read_text())
    c = json.loads((tmp_path / "metrics" / "ijbc.json").read_text())
    assert b["benchmark"] == "ijbb" and c["benchmark"] == "ijbc"
    assert set(b["metrics"]["verification"]["tar_at_far"]) == {"0.1"}
    assert set(c["metrics"]["verification"]["tar_at_far"]) == {"0.1", "0.5"}
    assert b["metrics"]["verification"]["tar_at_far"]["0.1"] == c["metrics"]["verification"]["tar_at_far"]["0.1"]
    assert (tmp_path / "plots" / "roc_ijbb.csv").is_file() and (tmp_path / "plots" / "roc_ijbc.csv").is_file()
    assert not (tmp_path / "metrics" / "ijbx.json").exists()


def test_ijb_name_clashing_with_a_verification_set(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"evaluate": {"verification": {"ijbc": "x.bin"},
                                              "ijb": {"ijbc": {"root": "r", "target": "IJBC"}}}}))
    with pytest.raises(ParamsError, match="'ijbc' names both a verification set and an IJB set"):
        load_params([p])
