"""Official folds: pairs.txt's fold of each pair survives skipped pairs (the evalpack sidecar), the
verification uses it, and the metrics say which fold rule was used and how many pairs were dropped."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from arcpipe.evalpack import EvalPackError, load_bin, read_pack_folds
from arcpipe.evaluate.model import PixelsEmbedder
from arcpipe.evaluate.packs import embed_bins, verify_bin
from arcpipe.evaluate.verification import evaluate_embeddings, kfold_splits
from arcpipe.fsutil import sha256_file
from arcpipe.stages import main

from test_pack import make_aligned

FOLDS, HALF = 10, 2          # pairs.txt "10 2": per fold 2 matched + 2 mismatched pairs
OFFICIAL = "official (pairs.txt)"
CONTIGUOUS = "contiguous KFold(10) (reference)"


def _pairs_txt() -> str:
    lines = [f"{FOLDS}\t{HALF}"]
    for f in range(FOLDS):
        a, b = f"P{f}", f"P{(f + 1) % FOLDS}"
        lines += [f"{a}\t1\t2", f"{a}\t2\t3", f"{a}\t1\t{b}\t1", f"{a}\t3\t{b}\t2"]
    return "\n".join(lines) + "\n"


def _build(tmp_path: Path, monkeypatch, missing: set[str]) -> Path:
    """An aligned set of P0..P9 (3 images each, `missing` without a crop) and the evalpack stage."""
    monkeypatch.chdir(tmp_path)
    rows = []
    for f in range(FOLDS):
        for i in (1, 2, 3):
            img = f"P{f}/P{f}_{i:04d}.jpg"
            rows.append((f"data/sample/lfw/{img}", f"P{f}", "no_face" if img in missing else "ok"))
    make_aligned(tmp_path / "align" / "lfw", rows)
    (tmp_path / "pairs.txt").write_text(_pairs_txt())
    params = {"detect": {"datasets": {"lfw": {"source": "data/sample/lfw", "format": "lfw"}}},
              "pack": {"dataset": "lfw"},
              "align": {"out_dir": str(tmp_path / "align")},
              "evalpack": {"out_dir": str(tmp_path / "evalpack"), "on_missing": "skip",
                           "sets": {"lfw": {"dataset": "lfw", "pairs": str(tmp_path / "pairs.txt")}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main("evalpack", ["--params", str(tmp_path / "params.yaml")]) == 0
    return tmp_path / "evalpack" / "lfw.bin"


def _reference(path: Path, pair_folds=None):
    """The protocol run directly on the pack's embeddings (contiguous folds unless given)."""
    bins, issame = load_bin(path)
    a, b = embed_bins(bins, PixelsEmbedder(), True, str(path))
    return evaluate_embeddings(a, issame, flipped=b, pair_folds=pair_folds)


def test_skipped_pairs_keep_their_official_folds(tmp_path, monkeypatch):
    # P0_0003 has no crop: fold 0 loses two of its four pairs, every other fold keeps its four
    path = _build(tmp_path, monkeypatch, {"P0/P0_0003.jpg"})
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["pairs_listed"] == 40 and side["pairs_written"] == 38 and side["pairs_skipped"] == 2
    assert side["folds"] == 10 and side["pair_folds"] == [0, 0] + [f for f in range(1, 10) for _ in range(4)]
    assert side["fold_pairs_written"] == [2] + [4] * 9
    summary = json.loads((tmp_path / "evalpack" / "summary.json").read_text())
    assert "pair_folds" not in summary["per_set"]["lfw"]          # the long list stays in the sidecar

    m, _ = verify_bin("lfw", str(path), PixelsEmbedder(), True, 10, 1e-3)
    assert m["fold_rule"] == OFFICIAL
    assert m["pairs"] == 38 and m["pairs_listed"] == 40 and m["pairs_dropped"] == 2
    assert m["fold_sizes"] == [2] + [4] * 9
    # contiguous KFold would have cut the 38 pairs differently
    contiguous = [te.size for _, te in kfold_splits(38, 10)]
    assert contiguous == [4] * 8 + [3, 3] and contiguous != m["fold_sizes"]
    want = _reference(path, side["pair_folds"])
    assert m["fold_acc"] == [float(x) for x in want.accuracy]
    assert m["fold_threshold"] == [float(x) for x in want.best_threshold]
    assert m["data"]["sidecar"] == str(path.with_suffix(".json"))


def test_pack_without_sidecar_gets_the_reference_folds_exactly(tmp_path, monkeypatch):
    path = _build(tmp_path, monkeypatch, {"P0/P0_0003.jpg"})
    path.with_suffix(".json").unlink()                             # like a downloaded lfw.bin
    m, roc = verify_bin("lfw", str(path), PixelsEmbedder(), True, 10, 1e-3)
    assert m["fold_rule"] == CONTIGUOUS
    assert m["pairs_listed"] is None and m["pairs_dropped"] is None and m["data"]["sidecar"] is None
    assert m["fold_sizes"] == [4] * 8 + [3, 3]
    want = _reference(path)
    assert m["fold_acc"] == [float(x) for x in want.accuracy]
    assert m["acc_mean"] == want.acc_mean and m["acc_std"] == want.acc_std
    np.testing.assert_array_equal(roc["tpr"], want.tpr)
    np.testing.assert_array_equal(roc["fpr"], want.fpr)


def test_full_pack_official_folds_equal_contiguous_numbers(tmp_path, monkeypatch):
    path = _build(tmp_path, monkeypatch, set())
    m, roc = verify_bin("lfw", str(path), PixelsEmbedder(), True, 10, 1e-3)
    assert m["fold_rule"] == OFFICIAL and m["pairs_dropped"] == 0 and m["fold_sizes"] == [4] * 10
    ref = _reference(path)                                         # no pair folds: contiguous
    assert m["fold_acc"] == [float(x) for x in ref.accuracy]
    assert m["fold_threshold"] == [float(x) for x in ref.best_threshold]
    assert m["fold_val_threshold"] == [float(x) for x in ref.val_threshold]
    assert m["acc_mean"] == ref.acc_mean and m["acc_std"] == ref.acc_std
    np.testing.assert_array_equal(roc["tpr"], ref.tpr)


def test_evaluate_stage_records_the_fold_rule(tmp_path, monkeypatch):
    path = _build(tmp_path, monkeypatch, {"P3/P3_0001.jpg"})
    params = {"evaluate": {"model": {"kind": "pixels"}, "verification": {"lfw": str(path)},
                           "metrics_dir": str(tmp_path / "metrics"), "plots_dir": str(tmp_path / "plots")}}
    (tmp_path / "ev.yaml").write_text(yaml.safe_dump(params))
    assert main("evaluate", ["--params", str(tmp_path / "ev.yaml")]) == 0
    m = json.loads((tmp_path / "metrics" / "lfw.json").read_text())
    # P3_0001 is in two of fold 3's pairs and in one of fold 2's ("P2 1 P3 1")
    assert m["fold_rule"] == OFFICIAL and m["pairs_dropped"] == 3 and m["pairs_listed"] == 40
    assert m["fold_sizes"] == [4, 4, 3, 2] + [4] * 6


def test_sidecar_of_another_pack_or_without_folds_is_an_error(tmp_path, monkeypatch):
    path = _build(tmp_path, monkeypatch, {"P0/P0_0003.jpg"})
    side = path.with_suffix(".json")
    info = json.loads(side.read_text())
    sha = sha256_file(path)
    assert read_pack_folds(path, sha, 38).pair_folds == info["pair_folds"]
    with pytest.raises(EvalPackError, match=r"lfw\.json: describes another pack"):
        read_pack_folds(path, "0" * 64, 38)
    stale = {k: v for k, v in info.items() if k != "pair_folds"}  # a sidecar from before folds were kept
    side.write_text(json.dumps(stale))
    with pytest.raises(EvalPackError, match=r"lfw\.json: 2 pairs were skipped but the sidecar has no pair_folds"):
        verify_bin("lfw", str(path), PixelsEmbedder(), True, 10, 1e-3)
    side.write_text(json.dumps({**info, "pair_folds": info["pair_folds"][:-1]}))
    with pytest.raises(EvalPackError, match=r"one fold per pair of the pack \(38\), got 37"):
        read_pack_folds(path, sha, 38)
    side.write_text(json.dumps({**info, "pair_folds": [11] + info["pair_folds"][1:]}))
    with pytest.raises(EvalPackError, match=r"pair_folds\[0\]: expected a fold number in \[0, 10\), got 11"):
        read_pack_folds(path, sha, 38)
    side.write_text('{"sha256": "x",\n  oops}')
    with pytest.raises(EvalPackError, match=r"lfw\.json: line 2: not a readable pack sidecar") as e:
        read_pack_folds(path, sha, 38)
    assert "\n" not in str(e.value)


def test_other_fold_count_falls_back_to_contiguous(tmp_path, monkeypatch):
    path = _build(tmp_path, monkeypatch, {"P0/P0_0003.jpg"})
    m, _ = verify_bin("lfw", str(path), PixelsEmbedder(), True, 5, 1e-3)
    assert m["fold_rule"] == "contiguous KFold(5) (reference)" and m["folds"] == 5
    assert m["protocol"] == "verification-5fold" and m["pairs_dropped"] == 2
