"""The report says only what was measured: a difference beside the paper's number only in the
paper's setting, and no number for a rate at a FAR the impostor pairs cannot resolve."""
from __future__ import annotations

import csv
import io
import json

import pytest
import yaml

from arcpipe.paper import PAPER_NUMBERS, PROTOCOLS
from arcpipe.report import build_rows, render_csv, render_markdown
from arcpipe.stages import main


def _megaface(distractors: int, impostors: int, tar_value=0.9852, not_resolvable=None) -> dict:
    size = {"distractors": distractors, "genuine": 114, "impostors": impostors,
            "rank": {"1": 0.9841, "10": 0.99}, "tar_at_far": {"1e-06": tar_value}}
    if not_resolvable:
        size["not_resolvable"] = not_resolvable
    small = {"distractors": 10, "genuine": 114, "impostors": 290, "rank": {"1": 1.0}, "tar_at_far": {"1e-06": None},
             "not_resolvable": {"1e-06": "FAR 1e-06 needs at least 1000000 impostor pairs; 290 here"}}
    return {"benchmark": "megaface", "metrics": {"raw": {"10": small, str(distractors): size},
                                                 "refined": {"10": small, str(distractors): size}}}


def _verif(name: str, pairs: int, **extra) -> dict:
    m = {"benchmark": name, "protocol": "verification-10fold", "folds": 10, "acc_mean": 0.995, "acc_std": 0.003,
         "val_mean": 0.98, "val_std": 0.01, "far_target": 0.001, "pairs": pairs, "diff_pairs": pairs // 2,
         "fold_rule": "official (pairs.txt)", "pairs_listed": pairs, "pairs_dropped": 0,
         "val_train_impostors": [pairs // 2 * 9 // 10] * 10,
         "data": {"path": f"data/{name}.bin", "sha256": "ab" * 32, "images": 2 * pairs}}
    m.update(extra)
    return m


def _ijb(name: str, pairs: int, impostor: int, tars: dict, not_resolvable=None) -> dict:
    v = {"tar_at_far": tars, "pairs": pairs, "genuine": pairs - impostor, "impostor": impostor}
    if not_resolvable:
        v["not_resolvable"] = not_resolvable
    return {"benchmark": name, "metrics": {"target": name.upper(), "verification": v,
                                           "identification": {"tpir_at_fpir": {"0.01": 0.9}, "non_mated_scores": 500}}}


def _rows(metrics: dict) -> dict:
    return {(r["benchmark"], r["metric"]): r for r in build_rows(metrics)}


def _md_line(md: str, label: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if f"| {label} |" in ln)
    return [c.strip() for c in line.strip("|").split("|")]


def test_megaface_with_50_distractors_has_no_delta_and_says_why():
    metrics = {"megaface": _megaface(50, 1450, tar_value=0.98)}
    rows = _rows(metrics)
    idr = rows[("megaface", "id_rank1_refined")]
    assert idr["ours"] == pytest.approx(98.41) and idr["paper"] == 98.35
    assert idr["delta"] is None
    assert idr["setting_differs"] == "50 distractors, not 1M" and "50 distractors, not 1M" in idr["note"]
    md = render_markdown(build_rows(metrics), metrics)
    cells = _md_line(md, "MegaFace rank-1 Id (refined)")
    assert cells[2] == "98.41" and cells[3] == "98.35" and cells[4] == ""      # no difference printed
    assert "+0.06" not in md and "1M distractors)" not in md                  # nor a label claiming 1M
    table = list(csv.DictReader(io.StringIO(render_csv(build_rows(metrics)))))
    row = next(r for r in table if r["metric"] == "id_rank1_refined")
    assert row["delta"] == "" and row["setting_differs"] == "50 distractors, not 1M"


def test_megaface_with_1m_distractors_shows_the_delta():
    metrics = {"megaface": _megaface(1_000_000, 114_000_000)}
    rows = _rows(metrics)
    idr = rows[("megaface", "id_rank1_refined")]
    assert idr["delta"] == pytest.approx(98.41 - 98.35) and idr["setting_differs"] == ""
    ver = rows[("megaface", "ver_tar@1e-6_refined")]
    assert ver["ours"] == pytest.approx(98.52) and ver["delta"] == pytest.approx(98.52 - 98.48)
    assert ver["not_resolvable"] == ""
    md = render_markdown(build_rows(metrics), metrics)
    assert _md_line(md, "MegaFace rank-1 Id (refined)")[4] == "+0.06"
    assert _md_line(md, "MegaFace Ver TAR@FAR=1e-6 (refined)")[4] == "+0.04"


@pytest.mark.parametrize("shape", ["new", "old"])
def test_megaface_tar_not_resolvable(shape):
    # 50 distractors x 29 probes = 1,450 impostor pairs: FAR 1e-6 needs 1,000,000
    if shape == "new":
        mf = _megaface(50, 1450, tar_value=None,
                       not_resolvable={"1e-06": "FAR 1e-06 needs at least 1000000 impostor pairs; 1450 here"})
    else:  # written before the rule: a number is there, the count says it means nothing
        mf = _megaface(50, 1450, tar_value=0.98)
    metrics = {"megaface": mf}
    ver = _rows(metrics)[("megaface", "ver_tar@1e-6_refined")]
    assert ver["ours"] is None and ver["delta"] is None and ver["paper"] == 98.48
    assert ver["not_resolvable"] == "not resolvable (1,450 impostor pairs)"
    assert "not measured" not in ver["note"]
    md = render_markdown(build_rows(metrics), metrics)
    cells = _md_line(md, "MegaFace Ver TAR@FAR=1e-6 (refined)")
    assert cells[2] == "not resolvable (1,450 impostor pairs)" and cells[4] == ""
    assert "98.00" not in md


@pytest.mark.parametrize("shape", ["new", "old"])
def test_ijb_rows_not_resolvable_and_full_set_compared(shape):
    tars = {"1e-06": 0.80, "1e-05": 0.90, "0.0001": 0.961, "0.001": 0.97}
    nr = None
    impostor = 8_000_000
    if shape == "new":
        tars["1e-06"] = None
        nr = {"1e-06": "FAR 1e-06 needs at least 1000000 impostor pairs; 999999 here"}
        impostor = 999_999
    ijbb = _ijb("ijbb", impostor + 10_270, impostor, tars, nr)
    ijbb["metrics"]["verification"]["pairs"] = 8_010_270
    rows = _rows({"ijbb": ijbb})
    r4 = rows[("ijbb", "tar@1e-4")]
    assert r4["ours"] == pytest.approx(96.1) and r4["delta"] == pytest.approx(96.1 - 94.2)
    r6 = rows[("ijbb", "tar@1e-6")]
    if shape == "new":
        assert r6["ours"] is None and r6["not_resolvable"] == "not resolvable (999,999 impostor pairs)"
    else:
        assert r6["ours"] == pytest.approx(80.0) and r6["not_resolvable"] == ""
    # a subset of the template pairs: no difference, and the row says how many
    small = _ijb("ijbb", 496, 448, {"0.0001": 1.0, "0.001": 1.0})
    r = _rows({"ijbb": small})[("ijbb", "tar@1e-4")]
    assert r["ours"] is None and r["not_resolvable"] == "not resolvable (448 impostor pairs)"
    assert r["setting_differs"] == "496 template pairs, not 8,010,270" and r["delta"] is None
    assert _rows({"ijbb": small})[("ijbb", "tar@1e-3")]["not_resolvable"] == "not resolvable (448 impostor pairs)"


def test_sample_ijb_style_set_is_not_a_paper_benchmark():
    ijbs = _ijb("ijbs", 496, 448, {"1e-06": 1.0, "0.1": 1.0})
    rows = build_rows({"ijbs": ijbs})
    mine = [r for r in rows if r["benchmark"] == "ijbs"]
    assert [r["metric"] for r in mine] == ["tar@1e-6"]
    assert mine[0]["paper"] is None and mine[0]["delta"] is None
    assert mine[0]["not_resolvable"] == "not resolvable (448 impostor pairs)"
    assert "not one of the paper's benchmarks" in mine[0]["note"]


def test_verification_only_full_official_set_is_compared():
    rows = _rows({"lfw": _verif("lfw", 6000), "cfp_fp": _verif("cfp_fp", 7000), "calfw": _verif("calfw", 60)})
    assert rows[("lfw", "acc")]["delta"] == pytest.approx(99.5 - 99.83) and rows[("lfw", "acc")]["setting_differs"] == ""
    assert rows[("cfp_fp", "acc")]["delta"] == pytest.approx(99.5 - 98.27)
    small = rows[("calfw", "acc")]
    assert small["delta"] is None and small["paper"] == 95.45 and small["setting_differs"] == "60 pairs, not 6,000"
    # VAL@1e-3 over 2,700 impostor pairs per training split is fine; over 27 it is not
    assert rows[("lfw", "val@far=0.001")]["ours"] == pytest.approx(98.0)
    assert rows[("calfw", "val@far=0.001")]["not_resolvable"] == "not resolvable (27 impostor pairs)"
    assert rows[("calfw", "val@far=0.001")]["ours"] is None


def test_verification_settings_that_differ_besides_the_count():
    five = _verif("lfw", 6000, folds=5, protocol="verification-5fold", fold_rule="contiguous KFold(5) (reference)")
    r = _rows({"lfw": five})[("lfw", "acc")]
    assert r["delta"] is None and r["setting_differs"] == "5 folds, not 10"
    dropped = _verif("agedb_30", 5990, pairs_listed=6000, pairs_dropped=10)
    r = _rows({"agedb_30": dropped})[("agedb_30", "acc")]
    assert r["delta"] is None and r["setting_differs"] == "5,990 pairs, not 6,000; 10 of 6,000 listed pairs dropped"
    no_count = _verif("cplfw", 6000)
    del no_count["pairs"]
    r = _rows({"cplfw": no_count})[("cplfw", "acc")]
    assert r["delta"] is None and "not counted" in r["setting_differs"]


def test_old_verification_shape_judged_from_its_counts():
    old = _verif("lfw", 60, val_mean=0.9667)
    del old["val_train_impostors"], old["fold_rule"], old["pairs_listed"], old["pairs_dropped"]
    r = _rows({"lfw": old})[("lfw", "val@far=0.001")]
    assert r["ours"] is None and r["not_resolvable"] == "not resolvable (30 impostor pairs)"


def test_every_paper_number_has_its_protocol():
    assert {p.key for p in PAPER_NUMBERS} <= set(PROTOCOLS)
    assert PROTOCOLS["megaface"].distractors == 1_000_000
    assert PROTOCOLS["ijbb"].pairs == 8_010_270 and PROTOCOLS["ijbc"].pairs == 15_658_489
    assert all(PROTOCOLS[k].pairs == 6000 for k in ("lfw", "calfw", "cplfw", "agedb_30"))
    assert PROTOCOLS["cfp_fp"].pairs == PROTOCOLS["cfp_ff"].pairs == 7000


def test_report_stage_counts_what_it_compared(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "metrics"
    d.mkdir()
    (d / "megaface.json").write_text(json.dumps(_megaface(50, 1450, tar_value=0.98)))
    (d / "lfw.json").write_text(json.dumps(_verif("lfw", 6000)))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"metrics_dir": str(d)}, "report": {"out_dir": str(tmp_path / "r")}}))
    assert main("report", ["--params", str(params)]) == 0
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["compared"] == 1 and s["not_resolvable"] == 1 and s["setting_differs"] == 2
    md = (tmp_path / "r" / "results.md").read_text()
    assert "| 6,000 | 6,000 | 0 | 10, official (pairs.txt) |" in md
