"""Bad IJB input through the real evaluate stage: a counted skip or one line naming the file and
line, exit code 2, nothing half-written; FARs too small for the data are reported as such."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from arcpipe.errors import PipelineError
from arcpipe.evaluate.ijb import identify_1n
from arcpipe.stages import main
from test_ijb import _write_ijb

LMK = "ijbs_name_5pts_score.txt"


def _degenerate(root, lines: dict[int, str]):
    """Replace the landmarks of the given meta lines (1-based) by the given ten numbers."""
    p = root / "meta" / LMK
    rows = p.read_text().splitlines()
    for ln, vals in lines.items():
        name, *rest = rows[ln - 1].split()
        rows[ln - 1] = f"{name} {vals} {rest[-1]}"
    p.write_text("\n".join(rows) + "\n")


def _params(tmp_path, **ijb):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"evaluate": {
        "model": {"kind": "pixels"},
        "ijb": {"ijbs": {"root": str(tmp_path / "IJBS"), "target": "IJBS", **ijb}},
        "metrics_dir": str(tmp_path / "metrics"), "plots_dir": str(tmp_path / "plots"),
        "embeddings_dir": str(tmp_path / "emb")}}))
    return p


EQUAL = " ".join(["60.5"] * 10)                                   # five equal points
COLLINEAR = "40 50 50 60 60 70 70 80 80 90"                        # five points on one line


def test_degenerate_landmarks_are_counted_skips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_ijb(tmp_path / "IJBS")
    _degenerate(tmp_path / "IJBS", {3: EQUAL, 9: COLLINEAR})
    assert main("evaluate", ["--params", str(_params(tmp_path, fars=[0.1]))]) == 0
    m = json.loads((tmp_path / "metrics" / "ijbs.json").read_text())
    assert m["counts"]["skipped_bad_landmarks"] == 2 and m["counts"]["images_embedded"] == 14
    assert m["problems"][0].endswith(f"{LMK}:3: degenerate landmarks: the five points coincide")
    assert m["problems"][1].endswith(f"{LMK}:9: degenerate landmarks: the five points lie on one line")


@pytest.mark.parametrize("vals,why", [(EQUAL, "the five points coincide"), (COLLINEAR, "the five points lie on one line")])
def test_degenerate_landmarks_stop_the_script_in_one_line(tmp_path, repo_root, vals, why):
    _write_ijb(tmp_path / "IJBS")
    _degenerate(tmp_path / "IJBS", {5: vals})
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "old.json").write_text("{}")
    params = _params(tmp_path, on_bad_row="error")
    r = subprocess.run([sys.executable, str(repo_root / "scripts" / "evaluate.py"), "--params", str(params)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"evaluate: error: \S+/IJBS/meta/{LMK}:5: degenerate landmarks: {why}", last), last
    # nothing half-written: the old metrics stand, no plots or embeddings appeared, no temp folders
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["old.json"]
    assert not (tmp_path / "plots").exists() and not (tmp_path / "emb").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_unreadable_image_stops_with_file_and_line(tmp_path, monkeypatch, capsys):
    from arcpipe.evaluate import loader

    monkeypatch.setattr(loader, "POOL_MIN_IMAGES", 0)    # found by a pool worker
    monkeypatch.chdir(tmp_path)
    _write_ijb(tmp_path / "IJBS")
    (tmp_path / "IJBS" / "loose_crop" / "4.jpg").write_bytes(b"not a jpeg")
    assert main("evaluate", ["--params", str(_params(tmp_path, on_bad_row="error")), "--workers", "2"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(rf"{LMK}:5: image \S+/loose_crop/4.jpg is missing or unreadable$", last), last
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "emb").exists()


def test_gallery_of_one_template_is_an_error_naming_the_set(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write_ijb(tmp_path / "IJBS")
    meta = tmp_path / "IJBS" / "meta"
    # one gallery template (subject 0, listed in both gallery files); the one probe of that subject
    (meta / "ijbs_1N_gallery_G1.csv").write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n1,0,x.jpg\n")
    (meta / "ijbs_1N_gallery_G2.csv").write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n1,0,y.jpg\n")
    (meta / "ijbs_1N_probe_mixed.csv").write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n2,0,x.jpg\n")
    assert main("evaluate", ["--params", str(_params(tmp_path))]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(r"1:N gallery \S+ijbs_1N_gallery_G1.csv, \S+ijbs_1N_gallery_G2.csv: the IJBS 1:N gallery "
                     r"holds 1 template, so no probe has a non-mated score", last), last
    assert not (tmp_path / "metrics").exists()
    # the protocol function itself refuses too, naming what it was given
    g = np.eye(3)[:1]
    with pytest.raises(PipelineError, match="probes.csv: the 1:N gallery holds 1 template"):
        identify_1n(g, np.array([7]), g, np.array([7]), where="probes.csv")


def test_rates_too_small_for_the_data_are_not_resolvable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_ijb(tmp_path / "IJBS")
    # 28 pairs, 24 impostor: FAR 0.01 needs 100; 4 probes x 3 non-mated gallery templates = 12 scores
    params = _params(tmp_path, fars=[0.01, 0.1, 0.5], fpirs=[0.01, 0.1])
    assert main("evaluate", ["--params", str(params)]) == 0
    m = json.loads((tmp_path / "metrics" / "ijbs.json").read_text())["metrics"]
    v = m["verification"]
    assert v["impostor"] == 24
    assert v["tar_at_far"]["0.01"] is None and v["tar_at_far"]["0.1"] is not None and v["tar_at_far"]["0.5"] is not None
    assert v["not_resolvable"] == {"0.01": "FAR 0.01 needs at least 100 impostor pairs; 24 here"}
    i = m["identification"]
    assert i["non_mated_scores"] == 12
    assert i["tpir_at_fpir"]["0.01"] is None and i["threshold_at_fpir"]["0.01"] is None
    assert i["tpir_at_fpir"]["0.1"] is not None
    assert i["not_resolvable"] == {"0.01": "FAR 0.01 needs at least 100 impostor pairs; 12 here"}
    # the ROC plot is the whole curve still
    assert (tmp_path / "plots" / "roc_ijbs.csv").read_text().splitlines()[-1] == "1.0,1.0"
