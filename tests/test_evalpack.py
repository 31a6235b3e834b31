"""Verification .bin packs: safe loading, writing, and the evalpack stage over an aligned set."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from arcpipe.errors import PipelineError
from arcpipe.evalpack import EvalPackError, load_bin, write_bin
from arcpipe.pairlists import read_lfw_pairs
from arcpipe.fsutil import sha256_file
from arcpipe.imageio import decode_rgb
from arcpipe.stages import main

from test_pack import make_aligned


def test_write_then_load_round_trip_and_plain_pickle_agrees(tmp_path):
    bins = [b"\xff\xd8jpeg%d" % i for i in range(6)]
    same = [True, False, True]
    sha = write_bin(tmp_path / "x.bin", bins, same)
    assert sha == sha256_file(tmp_path / "x.bin")
    got_bins, got_same = load_bin(tmp_path / "x.bin")
    assert got_bins == bins and got_same.dtype == bool and got_same.tolist() == same
    with open(tmp_path / "x.bin", "rb") as f:  # what insightface's loader does
        b2, s2 = pickle.load(f, encoding="bytes")
    assert b2 == bins and s2 == same
    assert write_bin(tmp_path / "y.bin", bins, same) == sha  # deterministic bytes


def test_loads_packs_with_numpy_types_and_py2_style_bytes(tmp_path):
    bins = [np.frombuffer(b"abc%d" % i, np.uint8).copy() for i in range(4)]
    same = [np.bool_(True), np.bool_(False)]
    (tmp_path / "np.bin").write_bytes(pickle.dumps((bins, same), protocol=2))
    got_bins, got_same = load_bin(tmp_path / "np.bin")
    assert got_bins == [b"abc0", b"abc1", b"abc2", b"abc3"] and got_same.tolist() == [True, False]
    (tmp_path / "p2.bin").write_bytes(pickle.dumps(([b"a", b"b"], np.array([True])), protocol=2))
    assert load_bin(tmp_path / "p2.bin")[0] == [b"a", b"b"]


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pack_that_tries_to_run_code_is_refused(tmp_path):
    target = tmp_path / "pwned"
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([_Evil(str(target))], [True])))
    with pytest.raises(EvalPackError, match=r"evil\.bin: refused to load: the pickle asks for (io|builtins)\.open"):
        load_bin(tmp_path / "evil.bin")
    assert not target.exists()
    (tmp_path / "evil2.bin").write_bytes(b"cos\nsystem\n(S'touch " + str(target).encode() + b"'\ntR.")
    with pytest.raises(EvalPackError, match="posix.system|os.system"):
        load_bin(tmp_path / "evil2.bin")
    assert not target.exists()


@pytest.mark.parametrize("payload, message", [
    (b"this is not a pickle", "not a readable pickle"),
    (pickle.dumps({"bins": []}), "expected a pickled .bins, issame_list. pair, got dict"),
    (pickle.dumps((["str-not-bytes", b"x"], [True])), r"bins\[0\]: expected encoded image bytes, got str"),
    (pickle.dumps(([b"a", b"b"], ["yes"])), r"issame_list\[0\]: expected a bool, got str"),
    (pickle.dumps(([b"a", b"b", b"c"], [True])), "3 images for 1 pairs"),
    (pickle.dumps(([b"a", b"b"], [1.5])), r"issame_list\[0\]: expected a bool, got float"),
])
def test_malformed_packs_get_one_clear_error(tmp_path, payload, message):
    (tmp_path / "bad.bin").write_bytes(payload)
    with pytest.raises(EvalPackError, match=message) as e:
        load_bin(tmp_path / "bad.bin")
    assert "bad.bin" in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, PipelineError)


def pairs_text(folds: int, n: int, matched: list[str], mismatched: list[str]) -> str:
    lines = [f"{folds}\t{n}"]
    for f in range(folds):
        lines += matched[f * n:(f + 1) * n] + mismatched[f * n:(f + 1) * n]
    return "\n".join(lines) + "\n"


def test_read_pairs_lfw_format_and_errors(tmp_path):
    txt = pairs_text(2, 1, ["Ann\t1\t2", "Bob\t1\t3"], ["Ann\t1\tBob\t2", "Bob\t3\tAnn\t2"])
    (tmp_path / "pairs.txt").write_text(txt)
    pairs = read_lfw_pairs(tmp_path / "pairs.txt")
    assert [(p.image1, p.image2, p.same, p.line, p.fold) for p in pairs] == [
        ("Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg", True, 2, 0),
        ("Ann/Ann_0001.jpg", "Bob/Bob_0002.jpg", False, 3, 0),
        ("Bob/Bob_0001.jpg", "Bob/Bob_0003.jpg", True, 4, 1),
        ("Bob/Bob_0003.jpg", "Ann/Ann_0002.jpg", False, 5, 1)]
    (tmp_path / "bad.txt").write_text(txt.replace("Bob\t1\t3", "Bob\tone\t3"))
    with pytest.raises(EvalPackError, match=r"bad\.txt: line 4: expected"):
        read_lfw_pairs(tmp_path / "bad.txt")
    (tmp_path / "short.txt").write_text("2\t1\nAnn\t1\t2\n")
    with pytest.raises(EvalPackError, match="4 lines, found 1"):
        read_lfw_pairs(tmp_path / "short.txt")


def _lfw_setup(tmp_path: Path) -> Path:
    people = {"Ann": 3, "Bob": 3, "Cid": 2}
    rows = []
    for name, n in people.items():
        for i in range(1, n + 1):
            status = "no_face" if (name, i) == ("Cid", 2) else ("fallback" if (name, i) == ("Bob", 3) else "ok")
            rows.append((f"data/sample/lfw/{name}/{name}_{i:04d}.jpg", name, status))
    make_aligned(tmp_path / "align" / "lfw", rows)
    matched = ["Ann\t1\t2", "Bob\t1\t3", "Cid\t1\t2", "Ann\t2\t3"]
    mismatched = ["Ann\t1\tBob\t2", "Bob\t3\tCid\t1", "Ann\t3\tDan\t1", "Cid\t1\tAnn\t2"]
    (tmp_path / "pairs.txt").write_text(pairs_text(2, 2, matched, mismatched))
    return tmp_path / "pairs.txt"


def _run(tmp_path, monkeypatch, **extra) -> int:
    monkeypatch.chdir(tmp_path)
    params = {"detect": {"datasets": {"lfw": {"source": "data/sample/lfw", "format": "lfw"}}},
              "pack": {"dataset": "lfw"},
              "align": {"out_dir": str(tmp_path / "align")},
              "evalpack": {"out_dir": str(tmp_path / "evalpack"),
                           "sets": {"lfw": {"dataset": "lfw", "pairs": str(tmp_path / "pairs.txt")}}, **extra}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return main("evalpack", ["--params", str(tmp_path / "params.yaml")])


def test_evalpack_stage_builds_bin_and_counts_missing(tmp_path, monkeypatch):
    _lfw_setup(tmp_path)
    assert _run(tmp_path, monkeypatch) == 0
    out = tmp_path / "evalpack"
    bins, same = load_bin(out / "lfw.bin")
    info = json.loads((out / "lfw.json").read_text())
    # Cid_0002 has no crop (pairs line 6), Dan_0001 is not in the set (line 8)
    assert info["pairs_listed"] == 8 and info["pairs_written"] == 6 and info["pairs_skipped"] == 2
    assert {m["image"] for m in info["missing"]} == {"Cid/Cid_0002.jpg", "Dan/Dan_0001.jpg"}
    # pairs.txt's fold of each written pair (fold 1 lost two of its four), for the official folds
    assert info["folds"] == 2 and info["pair_folds"] == [0, 0, 0, 0, 1, 1] and info["fold_pairs_written"] == [4, 2]
    assert info["sha256"] == sha256_file(out / "lfw.bin")
    assert len(bins) == 12 and same.tolist() == [True, True, False, False, True, False]
    assert all(decode_rgb(b).shape == (112, 112, 3) for b in bins)
    assert bins[0] != bins[1]  # Ann_0001 vs Ann_0002
    assert bins[0] == bins[4]  # Ann_0001 opens the first mismatched pair too
    summary = json.loads((out / "summary.json").read_text())
    assert summary["in"] == 8 and summary["out"] == 6 and summary["rejected"] == {"pair_with_missing_image": 2}


def test_evalpack_on_missing_fail_names_pairs_line(tmp_path, monkeypatch, capsys):
    _lfw_setup(tmp_path)
    assert _run(tmp_path, monkeypatch, on_missing="fail") == 2
    err = capsys.readouterr().err
    assert "pairs.txt: line 6: image Cid/Cid_0002.jpg is missing: no crop (status no_face)" in err
    assert not (tmp_path / "evalpack" / "lfw.bin").exists()
