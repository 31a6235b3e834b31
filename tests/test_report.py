"""The report stage: measured numbers beside the paper's, the paper table kept in one place."""
from __future__ import annotations

import csv
import io
import json

import pytest
import yaml

from arcpipe.paper import MAIN_SETTING, PAPER_NUMBERS, SETTINGS, numbers_for
from arcpipe.report import build_rows, headline, load_metrics, render_csv, render_markdown
from arcpipe.stages import main


def _verif(name, acc, std=0.01, val=0.5):
    return {"benchmark": name, "protocol": "verification-10fold", "acc_mean": acc, "acc_std": std,
            "val_mean": val, "val_std": 0.1, "far_target": 0.001, "pairs": 6000,
            "data": {"path": f"data/{name}.bin", "sha256": "ab" * 32, "images": 12000},
            "model": {"kind": "onnx", "name": "r100-test", "trained_on": "MS1MV2", "sha256": "cd" * 32}}


def _write(tmp_path, files):
    d = tmp_path / "metrics"
    d.mkdir()
    for name, data in files.items():
        (d / f"{name}.json").write_text(json.dumps(data))
    (d / "summary.json").write_text(json.dumps({"stage": "evaluate", "seconds": 1.0}))
    return d


def test_paper_table_is_the_anchor_table():
    main = {(n.key, n.metric): n.value for n in numbers_for(MAIN_SETTING)}
    assert main[("lfw", "acc")] == 99.83 and main[("ytf", "acc")] == 98.02
    assert main[("calfw", "acc")] == 95.45 and main[("cplfw", "acc")] == 92.08
    assert main[("megaface", "id_rank1_refined")] == 98.35 and main[("megaface", "ver_tar@1e-6_refined")] == 98.48
    assert main[("ijbb", "tar@1e-4")] == 94.2 and main[("ijbc", "tar@1e-4")] == 95.6
    uncertain = {n.key for n in numbers_for(MAIN_SETTING) if n.uncertain}
    assert uncertain == {"cfp_fp", "agedb_30"}
    s = SETTINGS[MAIN_SETTING]
    assert (s.training_data, s.backbone, s.margin, s.scale) == ("MS1MV2", "ResNet100", 0.5, 64)
    assert all(n.setting in SETTINGS for n in PAPER_NUMBERS)


def test_rows_put_ours_beside_the_paper(tmp_path):
    d = _write(tmp_path, {"lfw": _verif("lfw", 0.9950), "cfp_ff": _verif("cfp_ff", 0.99),
                          "ijbc": {"benchmark": "ijbc", "tar": {"1e-05": 0.93, "0.0001": 0.955}},
                          "ytf": {"benchmark": "ytf", "acc_mean": 0.97, "acc_std": 0.005}})
    metrics = load_metrics(d)
    assert set(metrics) == {"lfw", "cfp_ff", "ijbc", "ytf"}  # summary.json is not a benchmark
    rows = {(r["benchmark"], r["metric"]): r for r in build_rows(metrics)}
    lfw = rows[("lfw", "acc")]
    assert lfw["ours"] == pytest.approx(99.50) and lfw["paper"] == 99.83
    assert lfw["delta"] == pytest.approx(99.50 - 99.83)
    assert "CASIA-WebFace" in lfw["note"] and "99.53" in lfw["note"]   # the ablation setting too
    assert rows[("cfp_ff", "acc")]["paper"] is None                     # no paper number: still shown
    assert rows[("ijbc", "tar@1e-4")]["ours"] == pytest.approx(95.5) and rows[("ijbc", "tar@1e-4")]["paper"] == 95.6
    assert rows[("ytf", "acc")]["ours"] == pytest.approx(97.0)
    # paper numbers nobody measured are listed as such
    assert rows[("calfw", "acc")]["ours"] is None and "not measured" in rows[("calfw", "acc")]["note"]
    assert rows[("cfp_fp", "acc")]["paper_uncertain"] is True


def test_markdown_and_csv(tmp_path):
    metrics = load_metrics(_write(tmp_path, {"lfw": _verif("lfw", 0.9950, std=0.0031)}))
    rows = build_rows(metrics)
    md = render_markdown(rows, metrics)
    assert "| LFW | LFW accuracy | 99.50 ± 0.31 | 99.83 | -0.33 |" in md
    assert "~98.27" in md                      # uncertain paper number marked
    assert "MS1MV2, ResNet100, ArcFace m=0.5, s=64" in md
    assert "r100-test" in md and "trained on MS1MV2" in md and "data/lfw.bin" in md
    table = list(csv.DictReader(io.StringIO(render_csv(rows))))
    lfw = next(r for r in table if r["benchmark"] == "lfw" and r["metric"] == "acc")
    assert float(lfw["ours"]) == pytest.approx(99.5) and float(lfw["paper"]) == 99.83
    assert lfw["data_sha256"] == "ab" * 32
    assert len(table) == len(rows)


def test_report_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, {"lfw": _verif("lfw", 0.75)})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"metrics_dir": str(tmp_path / "metrics")},
                                      "report": {"out_dir": str(tmp_path / "reports")}}))
    assert main("report", ["--params", str(params)]) == 0
    out = tmp_path / "reports"
    assert sorted(p.name for p in out.iterdir()) == ["headline.json", "index.html", "results.csv", "results.md",
                                                     "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["measured"] == 2 and summary["with_paper_number"] == 1
    assert json.loads((out / "headline.json").read_text()) == {"lfw": {"acc": 75.0, "val@far=0.001": 50.0}}
    assert "sanity baseline" not in (out / "results.md").read_text()   # an onnx model here


def test_bad_metrics_file_names_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    d = _write(tmp_path, {"lfw": _verif("lfw", 0.75)})
    m = _verif("lfw", 0.75)
    m["model"] = {"kind": "pixels", "name": "pixels-16x16-gray (sanity baseline)"}
    (d / "lfw.json").write_text(json.dumps(m))
    assert "not comparable to the paper" in render_markdown(build_rows(load_metrics(d)), load_metrics(d))
    (d / "broken.json").write_text("{not json")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"metrics_dir": str(d)}, "report": {"out_dir": str(tmp_path / "r")}}))
    assert main("report", ["--params", str(params)]) == 2
    assert "broken.json: not a readable metrics JSON file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    params.write_text(yaml.safe_dump({"evaluate": {"metrics_dir": str(tmp_path / "none")}}))
    assert main("report", ["--params", str(params)]) == 2
    assert "metrics folder does not exist" in capsys.readouterr().err


def test_benchmark_shapes_of_ijb_megaface_ytf(tmp_path):
    """The dicts the IJB, MegaFace and YTF runners return (metrics nested under 'metrics')."""
    ijbc = {"benchmark": "ijbc", "metrics": {"target": "IJBC", "verification": {
        "tar_at_far": {"1e-06": 0.80, "1e-05": 0.90, "0.0001": 0.961, "0.001": 0.97}, "pairs": 100}}}
    mf = {"benchmark": "megaface", "metrics": {
        "raw": {"10": {"rank": {"1": 0.5}, "tar_at_far": {"1e-06": 0.4}},
                "1000000": {"rank": {"1": 0.97}, "tar_at_far": {"1e-06": 0.975}}},
        "refined": {"10": {"rank": {"1": 0.6}, "tar_at_far": {"1e-06": 0.5}},
                    "1000000": {"rank": {"1": 0.9841}, "tar_at_far": {"1e-06": 0.9852}}}}}
    ytf = {"benchmark": "ytf", "metrics": {"accuracy": 0.9801, "accuracy_std": 0.004, "pairs": 5000}}
    rows = {(r["benchmark"], r["metric"]): r for r in build_rows({"ijbc": ijbc, "megaface": mf, "ytf": ytf})}
    assert rows[("ytf", "acc")]["ours"] == pytest.approx(98.01) and rows[("ytf", "acc")]["ours_std"] == pytest.approx(0.4)
    assert rows[("ytf", "acc")]["paper"] == 98.02
    assert rows[("ijbc", "tar@1e-4")]["ours"] == pytest.approx(96.1) and rows[("ijbc", "tar@1e-4")]["paper"] == 95.6
    assert rows[("ijbc", "tar@1e-6")]["paper"] is None
    idr = rows[("megaface", "id_rank1_refined")]
    assert idr["ours"] == pytest.approx(98.41) and idr["paper"] == 98.35 and "1,000,000 distractors" in idr["note"]
    assert rows[("megaface", "ver_tar@1e-6_refined")]["ours"] == pytest.approx(98.52)
    # without noise lists only raw numbers exist: not put beside the paper's refined ones
    del mf["metrics"]["refined"]
    rows = {(r["benchmark"], r["metric"]): r for r in build_rows({"megaface": mf})}
    assert rows[("megaface", "id_rank1_raw")]["paper"] is None
    assert rows[("megaface", "id_rank1_refined")]["ours"] is None


def test_headline_holds_the_few_numbers_of_a_run(tmp_path):
    """One small metrics file per run for dvc exp show: each benchmark's figures, the baselines,
    the trainings' final loss and verification, the cleaning counts and quality per noise kind."""
    lfw = _verif("lfw", 0.83)
    base = {"benchmark": "baselines", "models": {"pixels": {"model": {"kind": "pixels", "name": "pixels"},
                                                            "verification": {"lfw": {"acc_mean": 0.69, "pairs": 6000}}}}}
    d = _write(tmp_path, {"lfw": lfw, "baselines": base})
    metrics = load_metrics(d)
    live = {"train": {"step": 150, "train": {"loss": 0.51234567, "lr": 0.0}, "verify": {"lfw": {"acc": 0.8367}}}}
    cleaning = {"images_in": 1504, "images_out": 1230, "identities_out": 55,
                "quality": {"kinds": {"corrupt": {"precision": 1.0, "recall": 1.0, "removed": 12}}}}
    h = headline(build_rows(metrics), metrics, live, cleaning)
    assert h["lfw"]["acc"] == 83.0 and h["baselines"] == {"pixels": {"lfw": 69.0}}
    assert h["train"] == {"step": 150, "loss": 0.5123, "verify_lfw": 83.67}
    assert h["cleaning"] == {"images_in": 1504, "images_out": 1230, "identities_out": 55,
                             "corrupt": {"precision": 1.0, "recall": 1.0}}
    assert headline([], {}) == {}
