"""The evaluate stage end to end on small .bin packs built here with pickle: metrics and ROC files
match the protocol run directly; bad packs fail with one line naming the file, leaving the
previous outputs in place."""
from __future__ import annotations

import csv
import json
import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

from arcpipe.evaluate.model import PixelsEmbedder
from arcpipe.evaluate.verification import evaluate_embeddings
from arcpipe.stages import main


def _face(rng, base):
    img = base + rng.normal(0, 12, base.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_pack(path, pairs=40, seed=0, size=112, odd=False, broken=None):
    """Synthetic 'faces': each identity a smooth random pattern; same pairs share it."""
    rng = np.random.default_rng(seed)
    ids = [cv2.resize(rng.uniform(0, 255, (6, 6, 3)), (size, size), interpolation=cv2.INTER_CUBIC)
           for _ in range(pairs + 1)]
    bins, issame = [], []
    for p in range(pairs):
        same = p % 2 == 0
        a = _face(rng, ids[p])
        b = _face(rng, ids[p] if same else ids[p + 1])
        for im in (a, b):
            bins.append(cv2.imencode(".jpg", im[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
        issame.append(same)
    if odd:
        bins.pop()
    if broken is not None:
        bins[broken] = b"not a jpeg"
    with open(path, "wb") as f:
        pickle.dump((bins, issame), f, protocol=4)
    return bins, issame


def write_params(tmp_path, sets, **evaluate):
    ev = {"model": {"kind": "pixels"}, "verification": {k: str(v) for k, v in sets.items()},
          "metrics_dir": str(tmp_path / "metrics"), "plots_dir": str(tmp_path / "plots")}
    ev.update(evaluate)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"evaluate": ev}))
    return p


def _decode(bins):
    return np.stack([cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1] for b in bins])


def test_stage_writes_metrics_equal_to_the_protocol(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bins, issame = make_pack(tmp_path / "a.bin", pairs=40, seed=0)
    make_pack(tmp_path / "b.bin", pairs=30, seed=1)
    params = write_params(tmp_path, {"set_a": tmp_path / "a.bin", "set_b": tmp_path / "b.bin"}, batch_size=7)
    assert main("evaluate", ["--params", str(params)]) == 0

    m = json.loads((tmp_path / "metrics" / "set_a.json").read_text())
    # the same protocol on embeddings computed here, independently of the stage's decode loop
    rgb = _decode(bins)
    a, b = PixelsEmbedder().embed_views(rgb, flip=True)
    want = evaluate_embeddings(a, issame, flipped=b)
    assert m["fold_acc"] == [float(x) for x in want.accuracy]
    assert m["fold_threshold"] == [float(x) for x in want.best_threshold]
    assert m["acc_mean"] == want.acc_mean and m["acc_std"] == want.acc_std
    assert m["pairs"] == 40 and m["data"]["images"] == 80 and len(m["data"]["sha256"]) == 64
    assert m["model"]["kind"] == "pixels" and m["flip"] is True
    assert m["acc_mean"] > 0.8  # the synthetic pairs are easy even for the pixel baseline

    with open(tmp_path / "plots" / "roc_set_a.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["threshold", "fpr", "tpr"] and len(rows) == 400
    np.testing.assert_array_equal([float(r["tpr"]) for r in rows], want.tpr)
    np.testing.assert_array_equal([float(r["fpr"]) for r in rows], want.fpr)

    assert json.loads((tmp_path / "metrics" / "set_b.json").read_text())["pairs"] == 30
    summary = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert summary["benchmarks"] == ["set_a", "set_b"] and summary["stage"] == "evaluate"


def test_no_flip_changes_the_embeddings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bins, issame = make_pack(tmp_path / "a.bin", pairs=20, seed=2)
    params = write_params(tmp_path, {"a": tmp_path / "a.bin"}, flip=False)
    assert main("evaluate", ["--params", str(params)]) == 0
    m = json.loads((tmp_path / "metrics" / "a.json").read_text())
    want = evaluate_embeddings(PixelsEmbedder().embed(_decode(bins), flip=False), issame)
    assert m["flip"] is False and m["fold_acc"] == [float(x) for x in want.accuracy]


@pytest.mark.parametrize("kind,pattern", [
    ("odd", r"b\.bin: 79 images for 40 pairs"),
    ("broken", r"b\.bin: image 5 \(pair 2\) is not a decodable image"),
    ("size", r"b\.bin: image 0 \(pair 0\) is 96x96; expected an aligned 112x112 face"),
    ("few", r"b\.bin: 5 pairs cannot make 10 folds"),
    ("missing", r"evaluate\.verification\.b: input path .*nope\.bin' does not exist"),
])
def test_bad_pack_fails_with_one_line_and_keeps_old_outputs(tmp_path, monkeypatch, capsys, kind, pattern):
    import re

    monkeypatch.chdir(tmp_path)
    make_pack(tmp_path / "a.bin", pairs=20, seed=3)
    b = tmp_path / "b.bin"
    if kind == "odd":
        make_pack(b, pairs=40, odd=True)
    elif kind == "broken":
        make_pack(b, pairs=40, broken=5)
    elif kind == "size":
        make_pack(b, pairs=20, size=96)
    elif kind == "few":
        make_pack(b, pairs=5)
    else:
        b = tmp_path / "nope.bin"
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "old.json").write_text("{}")
    params = write_params(tmp_path, {"a": tmp_path / "a.bin", "b": b})
    assert main("evaluate", ["--params", str(params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.search(pattern, err[-1]), err[-1]
    # nothing half-written: the old folder is intact, the new set's file never appeared
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["old.json"]
    assert not (tmp_path / "plots").exists()


def test_script_runs_as_the_dag_calls_it(tmp_path, repo_root):
    make_pack(tmp_path / "lfw.bin", pairs=20, seed=4)
    params = write_params(tmp_path, {"lfw": tmp_path / "lfw.bin"})
    r = subprocess.run([sys.executable, str(repo_root / "scripts" / "evaluate.py"), "--params", str(params)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "summary:" in r.stderr.strip().splitlines()[-1]
    assert (tmp_path / "metrics" / "lfw.json").is_file() and (tmp_path / "plots" / "roc_lfw.csv").is_file()


def test_onnx_model_in_the_stage(tmp_path, monkeypatch):
    """A real ONNX file through the stage: the metrics name the file and its sha256."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(16, 3 * 112 * 112)).astype(np.float32) * 0.01, "W")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("Gemm", ["f", "W"], ["e"], transB=1)],
        "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 16])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "lin.onnx"))
    (tmp_path / "lin.yaml").write_text("input_size: [112, 112]\ncrop: arcface112\nmean: 127.5\nstd: 127.5\n"
                                       "channel_order: rgb\nembedding_size: 16\nname: linear-test\n")
    monkeypatch.chdir(tmp_path)
    make_pack(tmp_path / "a.bin", pairs=20, seed=5)
    params = write_params(tmp_path, {"a": tmp_path / "a.bin"}, model={"kind": "onnx", "path": str(tmp_path / "lin.onnx")})
    assert main("evaluate", ["--params", str(params)]) == 0
    m = json.loads((tmp_path / "metrics" / "a.json").read_text())
    assert m["model"]["name"] == "linear-test" and m["model"]["path"].endswith("lin.onnx")
    assert len(m["model"]["sha256"]) == 64 and m["model"]["embedding_size"] == 16


def test_only_and_skip_switch_benchmarks_off_and_keep_the_others_files(tmp_path, monkeypatch, capsys):
    """A variant names the benchmarks it wants (or does not) instead of nulling the others; a run
    by hand replaces only the files of what it judged, so the other benchmarks' metrics stay."""
    monkeypatch.chdir(tmp_path)
    make_pack(tmp_path / "a.bin", pairs=20, seed=5)
    make_pack(tmp_path / "b.bin", pairs=20, seed=6)
    sets = {"a": tmp_path / "a.bin", "b": tmp_path / "b.bin"}
    assert main("evaluate", ["--params", str(write_params(tmp_path, sets))]) == 0
    b_before = (tmp_path / "metrics" / "b.json").read_bytes()
    a_before = json.loads((tmp_path / "metrics" / "a.json").read_text())

    only_a = write_params(tmp_path, sets, only=["a"], flip=False)
    assert main("evaluate", ["--params", str(only_a)]) == 0
    summary = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert summary["benchmarks"] == ["a"]
    a_after = json.loads((tmp_path / "metrics" / "a.json").read_text())
    assert a_after["flip"] is False and a_before["flip"] is True  # a was judged again
    assert (tmp_path / "metrics" / "b.json").read_bytes() == b_before  # b kept, untouched
    assert (tmp_path / "plots" / "roc_b.csv").is_file()

    skip_a = write_params(tmp_path, sets, skip=["a"])
    assert main("evaluate", ["--params", str(skip_a)]) == 0
    assert json.loads((tmp_path / "metrics" / "summary.json").read_text())["benchmarks"] == ["b"]

    capsys.readouterr()
    for bad in ({"skip": ["ijbc"]}, {"only": ["c"]}):
        assert main("evaluate", ["--params", str(write_params(tmp_path, sets, **bad))]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no benchmark named" in err[0] and "configured: a, b" in err[0], err
    assert main("evaluate", ["--params", str(write_params(tmp_path, sets, skip=["a", "b"]))]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
