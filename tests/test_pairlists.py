"""The raw releases' verification protocols (CFP-FP/FF, CALFW, CPLFW, plain lists) and the
evalpack stage building packs from them."""
from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import yaml

from arcpipe import pairlists, sources
from arcpipe.evalpack import EvalPackError, load_bin
from arcpipe.params.detect import InputFormat
from arcpipe.params.pack import EvalPackSet
from arcpipe.pairlists import read_cfp_pairs, read_pair_list, read_pairs, read_two_line_pairs
from arcpipe.sources import open_source
from arcpipe.stages import main

from test_pack import make_aligned


def _cfp_protocol(root: Path, ids: int = 3, folds: int = 2) -> Path:
    """A CFP-shaped Protocol/ folder: 2 frontal + 2 profile images per identity."""
    proto = root / "Protocol"
    (proto / "Split").mkdir(parents=True)
    f_lines, p_lines = [], []
    for i in range(ids):
        for k in range(2):
            f_lines.append(f"{2 * i + k + 1} ../Data/Images/{i + 1:03d}/frontal/{k + 1:02d}.jpg")
            p_lines.append(f"{2 * i + k + 1} ../Data/Images/{i + 1:03d}/profile/{k + 1:02d}.jpg")
    (proto / "Pair_list_F.txt").write_text("\n".join(f_lines) + "\n")
    (proto / "Pair_list_P.txt").write_text("\n".join(p_lines) + "\n")
    for split in ("FP", "FF"):
        for fold in range(folds):
            d = proto / "Split" / split / f"{fold + 1:02d}"
            d.mkdir(parents=True)
            i = fold % ids
            j = (fold + 1) % ids
            second = 2 * i + 1 if split == "FP" else 2 * i + 2  # FF: the other frontal image
            d.joinpath("same.txt").write_text(f"{2 * i + 1},{second}\n")
            d.joinpath("diff.txt").write_text(f"{2 * i + 1},{2 * j + 1}\n{2 * i + 2},{2 * j + 2}\n")
    return proto


def test_cfp_fp_and_ff_read_the_protocol_folder_fold_by_fold(tmp_path):
    proto = _cfp_protocol(tmp_path)
    fp = read_cfp_pairs(proto, "FP")
    assert [(p.image1, p.image2, p.same, p.fold) for p in fp] == [
        ("001/frontal/01.jpg", "001/profile/01.jpg", True, 0),
        ("001/frontal/01.jpg", "002/profile/01.jpg", False, 0),
        ("001/frontal/02.jpg", "002/profile/02.jpg", False, 0),
        ("002/frontal/01.jpg", "002/profile/01.jpg", True, 1),
        ("002/frontal/01.jpg", "003/profile/01.jpg", False, 1),
        ("002/frontal/02.jpg", "003/profile/02.jpg", False, 1),
    ]
    assert fp[4].file == "Split/FP/02/diff.txt" and fp[4].line == 1
    ff = read_pairs("cfp_ff", proto)
    assert (ff[0].image1, ff[0].image2, ff[0].same) == ("001/frontal/01.jpg", "001/frontal/02.jpg", True)
    assert all("profile" not in p.image1 + p.image2 for p in ff)


def test_cfp_folds_sort_numerically(tmp_path):
    proto = _cfp_protocol(tmp_path, ids=3, folds=10)
    fp = read_cfp_pairs(proto, "FP")
    assert sorted({p.fold for p in fp}) == list(range(10))
    # folder "10" is the last fold, not the second
    assert [p.file for p in fp if p.fold == 9][0] == "Split/FP/10/same.txt"


def test_cfp_protocol_errors_name_file_and_line(tmp_path):
    with pytest.raises(EvalPackError, match="CFP protocol folder does not exist"):
        read_cfp_pairs(tmp_path / "nowhere", "FP")
    proto = _cfp_protocol(tmp_path)
    (proto / "Split" / "FP" / "01" / "diff.txt").write_text("1,3\n1;x\n")
    with pytest.raises(EvalPackError, match=r"Split/FP/01/diff.txt: line 2: expected '<i>,<j>'"):
        read_cfp_pairs(proto, "FP")
    (proto / "Split" / "FP" / "01" / "diff.txt").write_text("1,99\n")
    with pytest.raises(EvalPackError, match=r"diff.txt: line 1: index 99 is not in Pair_list_P.txt"):
        read_cfp_pairs(proto, "FP")
    (proto / "Pair_list_F.txt").write_text("1 a/frontal/01.jpg\n1 b/frontal/01.jpg\n")
    with pytest.raises(EvalPackError, match=r"Pair_list_F.txt: line 2: index 1 is listed twice"):
        read_cfp_pairs(proto, "FF")
    (proto / "Pair_list_F.txt").write_text("1 01.jpg\n")
    with pytest.raises(EvalPackError, match=r"Pair_list_F.txt: line 1: expected a path ending in <id>/<pose>/<image>"):
        read_cfp_pairs(proto, "FF")
    empty = tmp_path / "empty"
    (empty / "Split" / "FF").mkdir(parents=True)
    (empty / "Pair_list_F.txt").write_text("1 x/frontal/01.jpg\n")
    with pytest.raises(EvalPackError, match=r"Split/FF: no fold folders"):
        read_cfp_pairs(empty, "FF")


def _two_line(path: Path, pairs: list[tuple[str, str, int]]) -> Path:
    path.write_text("".join(f"{a} {lab}\n{b} {lab}\n" for a, b, lab in pairs))
    return path


def test_calfw_two_line_pairs_labels_and_contiguous_folds(tmp_path):
    rows = [(f"A_{k}.jpg", f"A_{k + 1}.jpg", 7) if k % 2 == 0 else (f"A_{k}.jpg", f"B_{k}.jpg", 0)
            for k in range(20)]
    pairs = read_two_line_pairs(_two_line(tmp_path / "pairs_CALFW.txt", rows), folds=4)
    assert len(pairs) == 20
    assert [p.same for p in pairs[:4]] == [True, False, True, False]
    assert [p.fold for p in pairs] == [f for f in range(4) for _ in range(5)]
    assert (pairs[1].image1, pairs[1].image2, pairs[1].line) == ("A_1.jpg", "B_1.jpg", 3)
    assert read_pairs("cplfw", tmp_path / "pairs_CALFW.txt", 4) == pairs


@pytest.mark.parametrize("text, message", [
    ("A_1.jpg 3\nA_2.jpg 4\n", r"pairs.txt: line 2: label 4 differs from line 1's 3"),
    ("A_1.jpg 3\nA_2.jpg 3\nB_1.jpg 0\n", r"3 lines: expected two lines per pair"),
    ("A_1.jpg 3\nA_2.jpg x\n", r"line 2: expected '<image file> <label>'"),
    ("../A_1.jpg 3\nA_2.jpg 3\n", r"line 1: '../A_1.jpg' is not a relative image path"),
])
def test_calfw_errors_name_the_line(tmp_path, text, message):
    p = tmp_path / "pairs.txt"
    p.write_text(text)
    with pytest.raises(EvalPackError, match=message):
        read_two_line_pairs(p)


def test_calfw_missing_file_is_named(tmp_path):
    with pytest.raises(EvalPackError, match=r"nope.txt: pairs file does not exist"):
        read_two_line_pairs(tmp_path / "nope.txt")


def test_pair_list_with_and_without_fold_column(tmp_path):
    p = tmp_path / "agedb_30_pairs.txt"
    p.write_text("# AgeDB-30\na/1.jpg a/2.jpg 1 1\na/1.jpg b/1.jpg 0 1\n\nb/1.jpg b/2.jpg true 2\n"
                 "a/2.jpg,b/2.jpg,false,2\n")
    pairs = read_pair_list(p)
    assert [(p.image1, p.image2, p.same, p.fold, p.line) for p in pairs] == [
        ("a/1.jpg", "a/2.jpg", True, 0, 2), ("a/1.jpg", "b/1.jpg", False, 0, 3),
        ("b/1.jpg", "b/2.jpg", True, 1, 5), ("a/2.jpg", "b/2.jpg", False, 1, 6)]
    p.write_text("".join(f"x{k}.jpg y{k}.jpg {k % 2}\n" for k in range(6)))
    assert [q.fold for q in read_pairs("list", p, folds=3)] == [0, 0, 1, 1, 2, 2]
    p.write_text("a.jpg b.jpg 1 1\nc.jpg d.jpg 0\n")
    with pytest.raises(EvalPackError, match="some lines give a fold and some do not"):
        read_pair_list(p)
    p.write_text("a.jpg b.jpg maybe\n")
    with pytest.raises(EvalPackError, match=r"line 1: expected '<image1> <image2> <1\|0> \[<fold>\]'"):
        read_pair_list(p)
    p.write_text("# nothing\n")
    with pytest.raises(EvalPackError, match="empty pairs file"):
        read_pair_list(p)


def test_params_protocols_and_formats_match_the_readers():
    assert typing.get_args(EvalPackSet.model_fields["protocol"].annotation) == pairlists.PROTOCOLS
    assert set(typing.get_args(InputFormat)) == set(sources.FORMATS)
    with pytest.raises(EvalPackError, match="unknown pairs protocol 'ytf'"):
        read_pairs("ytf", "x")


def test_calfw_source_lists_images_only_with_names(tmp_path):
    for name in ("Aaron_Peirsol_0001.jpg", "Aaron_Peirsol_0004.jpg", "Zoe_Ball_0002.jpg", "odd.jpg"):
        (tmp_path / name).write_bytes(b"\xff\xd8")
    (tmp_path / "Aaron_Peirsol_0001_5loc_attri.txt").write_text("1 2")
    (tmp_path / "pairs_CALFW.txt").write_text("")
    items = open_source("calfw", tmp_path).items()
    assert [(i.source, i.identity) for i in items] == [
        ("Aaron_Peirsol_0001.jpg", "Aaron_Peirsol"), ("Aaron_Peirsol_0004.jpg", "Aaron_Peirsol"),
        ("Zoe_Ball_0002.jpg", "Zoe_Ball"), ("odd.jpg", "")]
    assert [i.source for i in open_source("cplfw", tmp_path).items()] == [i.source for i in items]


def _run(tmp_path: Path, monkeypatch, sets: dict, datasets: dict, **extra) -> int:
    monkeypatch.chdir(tmp_path)
    params = {"detect": {"datasets": datasets},
              "pack": {"dataset": next(iter(datasets))},
              "align": {"out_dir": str(tmp_path / "align")},
              "evalpack": {"out_dir": str(tmp_path / "evalpack"), "sets": sets, **extra}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return main("evalpack", ["--params", str(tmp_path / "params.yaml")])


def test_stage_packs_cfp_and_calfw_from_their_release_layouts(tmp_path, monkeypatch):
    proto = _cfp_protocol(tmp_path / "cfp")
    rows = [(f"Data/Images/{i:03d}/{pose}/{k:02d}.jpg", f"{i:03d}", "ok")
            for i in (1, 2, 3) for pose in ("frontal", "profile") for k in (1, 2)]
    rows[rows.index(("Data/Images/003/profile/02.jpg", "003", "ok"))] = ("Data/Images/003/profile/02.jpg", "003", "no_face")
    make_aligned(tmp_path / "align" / "cfp", rows)
    make_aligned(tmp_path / "align" / "calfw", [(f"{n}_{k:04d}.jpg", n, "ok") for n in ("Ann", "Bob") for k in (1, 2)])
    _two_line(tmp_path / "pairs_CALFW.txt", [("Ann_0001.jpg", "Ann_0002.jpg", 1), ("Ann_0001.jpg", "Bob_0001.jpg", 0),
                                             ("Bob_0001.jpg", "Bob_0002.jpg", 2), ("Bob_0002.jpg", "Ann_0002.jpg", 0)])
    sets = {"cfp_fp": {"dataset": "cfp", "pairs": str(proto), "protocol": "cfp_fp"},
            "cfp_ff": {"dataset": "cfp", "pairs": str(proto), "protocol": "cfp_ff"},
            "calfw": {"dataset": "calfw", "pairs": str(tmp_path / "pairs_CALFW.txt"), "protocol": "calfw", "folds": 2}}
    datasets = {"cfp": {"source": "cfp", "format": "cfp"}, "calfw": {"source": "calfw", "format": "calfw"}}
    assert _run(tmp_path, monkeypatch, sets, datasets) == 0
    out = tmp_path / "evalpack"
    fp = json.loads((out / "cfp_fp.json").read_text())
    # 003/profile/02 has no crop: fold 1's second diff pair is skipped, named by its split file
    assert fp["protocol"] == "cfp_fp" and fp["pairs_listed"] == 6 and fp["pairs_written"] == 5
    assert fp["skipped_lines"] == ["Split/FP/02/diff.txt:2"] and fp["pair_folds"] == [0, 0, 0, 1, 1]
    bins, same = load_bin(out / "cfp_fp.bin")
    assert len(bins) == 10 and same.tolist() == [True, False, False, True, False]
    ff = json.loads((out / "cfp_ff.json").read_text())
    assert ff["pairs_written"] == 6 and ff["pairs_skipped"] == 0
    bins_fp, _ = load_bin(out / "cfp_fp.bin")
    bins_ff, _ = load_bin(out / "cfp_ff.bin")
    assert bins_fp[0] == bins_ff[0] and bins_fp[1] != bins_ff[1]  # same frontal, profile vs frontal partner
    cal = json.loads((out / "calfw.json").read_text())
    assert cal["pairs_written"] == 4 and cal["pair_folds"] == [0, 0, 1, 1] and cal["same"] == 2


def test_stage_refuses_an_image_name_two_sources_share(tmp_path, monkeypatch, capsys):
    make_aligned(tmp_path / "align" / "flat", [("a/Ann_0001.jpg", "Ann", "ok"), ("b/Ann_0001.jpg", "Ann", "ok"),
                                                ("a/Bob_0001.jpg", "Bob", "ok")])
    _two_line(tmp_path / "pairs.txt", [("Ann_0001.jpg", "Bob_0001.jpg", 0)])
    sets = {"calfw": {"dataset": "flat", "pairs": str(tmp_path / "pairs.txt"), "protocol": "calfw", "folds": 1}}
    assert _run(tmp_path, monkeypatch, sets, {"flat": {"source": "flat", "format": "folder"}}) == 2
    err = capsys.readouterr().err
    assert "image Ann_0001.jpg names more than one image of the aligned set (a/Ann_0001.jpg and b/Ann_0001.jpg)" in err
    assert not (tmp_path / "evalpack" / "calfw.bin").exists()


def test_stage_refuses_an_unknown_protocol_in_params(tmp_path, monkeypatch, capsys):
    make_aligned(tmp_path / "align" / "lfw", [("Ann/Ann_0001.jpg", "Ann", "ok")])
    (tmp_path / "pairs.txt").write_text("")
    sets = {"lfw": {"dataset": "lfw", "pairs": str(tmp_path / "pairs.txt"), "protocol": "ytf"}}
    assert _run(tmp_path, monkeypatch, sets, {"lfw": {"source": "lfw", "format": "lfw"}}) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evalpack.sets.lfw.protocol" in err[0] and "cfp_fp" in err[0]


def test_the_raw_eval_sets_variant_wires_all_six_benchmarks():
    from arcpipe.params import load_params
    repo = Path(__file__).resolve().parents[1]
    p = load_params([repo / "params.yaml", repo / "params" / "eval_sets_raw.yaml"])
    sets = p.evalpack.sets
    assert set(sets) >= {"lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw"}
    for name, spec in sets.items():
        assert spec.dataset in p.detect.datasets, name
        assert spec.protocol in pairlists.PROTOCOLS
        assert p.evaluate.verification[name] == f"{p.evalpack.out_dir}/{name}.bin"
    fmt = {n: d.format for n, d in p.detect.datasets.items()}
    assert {fmt[sets[n].dataset] for n in ("cfp_fp", "calfw", "cplfw", "agedb_30")} == {"cfp", "calfw", "cplfw", "agedb"}
