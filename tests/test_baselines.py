"""evaluate.baselines: other models judged on the same verification packs, and the report's
table of what the model must beat."""
import json

from arcpipe.report import baseline_rows, load_metrics, render_markdown, build_rows
from arcpipe.stages import main
from test_evaluate_stage import make_pack, write_params


def test_baselines_are_judged_on_the_same_packs_and_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_pack(tmp_path / "a.bin", pairs=40, seed=0)
    params = write_params(tmp_path, {"set_a": tmp_path / "a.bin"}, embeddings_dir=str(tmp_path / "emb"),
                          baselines={"pixels_too": {"kind": "pixels"}})
    assert main("evaluate", ["--params", str(params)]) == 0
    main_m = json.loads((tmp_path / "metrics" / "set_a.json").read_text())
    base = json.loads((tmp_path / "metrics" / "baselines.json").read_text())
    got = base["models"]["pixels_too"]["verification"]["set_a"]
    assert got["acc_mean"] == main_m["acc_mean"] and got["pairs"] == 40  # the same model, the same numbers
    metrics = load_metrics(tmp_path / "metrics")
    rows = baseline_rows(metrics)
    assert [(r["set"], r["baseline"], r["margin"]) for r in rows] == [("set_a", "pixels_too", 0.0)]
    md = render_markdown(build_rows(metrics), metrics)
    assert "## Baselines" in md and "| set_a | pixels_too (" in md
    assert not any(r["benchmark"] == "baselines" for r in build_rows(metrics))  # not a benchmark row


def test_a_baseline_model_that_is_missing_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_pack(tmp_path / "a.bin", pairs=20, seed=0)
    params = write_params(tmp_path, {"set_a": tmp_path / "a.bin"}, embeddings_dir=str(tmp_path / "emb"),
                          baselines={"untrained": {"kind": "onnx", "path": str(tmp_path / "nope.onnx")}})
    assert main("evaluate", ["--params", str(params)]) == 2
    assert "evaluate.baselines.untrained.path: input path" in capsys.readouterr().err
    assert not (tmp_path / "metrics").exists()
