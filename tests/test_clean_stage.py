"""The clean stage on a tiny pack with planted noise (a mislabelled image, one person under two
labels, an identity of an evaluation set): exactly that goes, with its rows in the removal table;
kept list, label map, summary and metrics reconcile; the histograms are PNGs; bad input (a store of
another pack, missing or misshapen centres, a missing evaluation set, a threshold out of range)
exits 2 with one line and writes nothing."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from arcpipe.clean.rules import COLUMNS
from arcpipe.clean.store import FeatureWriter
from arcpipe.stages import main
from test_pack import make_aligned

D = 32
E = np.eye(D, dtype=np.float32)
IDS, PER = 8, 6          # identities id0..id7 (labels 0..7), six images each: keys 1..48
MISLABELLED = 3 * PER + 1  # key of label 3's first image: a photo of person 4
OUTPUTS = ("kept.parquet", "label_map.parquet", "removals.parquet", "summary.json", "intra_similarity.png",
           "nearest_centre.png")


class _In:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.old = os.getcwd()
        os.chdir(self.path)

    def __exit__(self, *exc):
        os.chdir(self.old)


def direction(label: int) -> np.ndarray:
    """The person behind each label: 6 is person 5 again (two labels of one person)."""
    return E[5] if label == 6 else E[label]


def write_store(path: Path, keys, labels, feats) -> None:
    with FeatureWriter(path, D, {"model": "planted"}) as w:
        w.append([str(k) for k in keys], labels, feats)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    rows = [(f"id{i}/{j}.jpg", f"id{i}", "ok") for i in range(IDS) for j in range(PER)]
    make_aligned(root / "align" / "train", rows)
    (root / "pack.yaml").write_text(yaml.safe_dump({
        "align": {"out_dir": str(root / "align")},
        "pack": {"dataset": "train", "out_dir": str(root / "pack"), "flat_shuffled": False}}))
    with _In(root):
        assert main("pack", ["--params", str(root / "pack.yaml")]) == 0
    man = pd.read_parquet(root / "pack" / "manifest.parquet")
    man = man[man["packed"]].sort_values("key")
    keys, labels = man["key"].to_numpy(), man["label"].to_numpy()
    assert list(keys) == list(range(1, IDS * PER + 1)) and list(labels) == [k // PER for k in range(IDS * PER)]
    rng = np.random.default_rng(0)
    feats = np.stack([direction(int(lab)) for lab in labels]) + 0.05 * rng.standard_normal((len(keys), D))
    feats[MISLABELLED - 1] = E[4] + 0.05 * rng.standard_normal(D)
    write_store(root / "features" / "train", keys, labels, feats)
    # the bootstrap head: sub-centre 0 on each label's person, sub-centre 1 elsewhere
    centres = np.stack([np.stack([direction(c), E[20 + c]]) for c in range(IDS)]).astype(np.float32)
    (root / "bootstrap").mkdir()
    np.save(root / "bootstrap" / "centres.npy", centres)
    # an evaluation set: its identity 'a' is person 7; 'b' and 'c' are nobody in the pack
    ev = root / "features" / "lfw"
    lab = np.array([0, 0, 0, 1, 1, 2, 2, -1])
    dirs = [E[7], E[30], E[31], E[29]]
    f = np.stack([dirs[x] for x in lab]) + 0.05 * rng.standard_normal((len(lab), D))
    write_store(ev, [f"lfw/{i}.jpg" for i in range(len(lab))], lab, f)
    pd.DataFrame({"label": [0, 1, 2], "identity": ["a", "b", "c"], "images": [3, 2, 2]}).to_parquet(
        ev / "identities.parquet", index=False)
    return root


def params(tmp: Path, root: Path, **over) -> Path:
    clean = {"features_dir": str(root / "features" / "train"), "pack_dir": str(root / "pack"),
             "bootstrap_dir": str(root / "bootstrap"), "eval_features": {"lfw": str(root / "features" / "lfw")},
             "out_dir": str(tmp / "clean"), "metrics": str(tmp / "metrics" / "clean.json"), "chunk": 16}
    for k, v in over.items():
        clean[k] = {**clean[k], **v} if isinstance(v, dict) and isinstance(clean.get(k), dict) else v
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump({"clean": clean}))
    return path


def run(tmp: Path, path: Path) -> int:
    with _In(tmp):
        return main("clean", ["--params", str(path)])


def test_clean_removes_the_planted_noise_and_reconciles(root, tmp_path):
    assert run(tmp_path, params(tmp_path, root)) == 0
    out = tmp_path / "clean"
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    t = pd.read_parquet(out / "removals.parquet")
    assert list(t.columns) == COLUMNS
    images = t[t["level"] == "image"].sort_values("row")
    overlap = [7 * PER + j for j in range(PER)]  # store rows of label 7
    assert images[["row", "key", "label", "rule"]].values.tolist() == (
        [[MISLABELLED - 1, str(MISLABELLED), 3, "subcenter"]] + [[r, str(r + 1), 7, "overlap"] for r in overlap])
    assert (images.loc[images["rule"] == "overlap", "detail"] == "lfw:a").all()
    ids = t[t["level"] == "identity"].sort_values("label")
    assert ids[["label", "rule", "detail"]].values.tolist() == [[6, "inter", "merged into 5"],
                                                                [7, "overlap", "lfw:a"]]
    kept = pd.read_parquet(out / "kept.parquet")
    assert list(kept.columns) == ["row", "key", "old_label", "new_label"]
    want = [k for k in range(1, IDS * PER + 1) if k != MISLABELLED and k <= 7 * PER]
    assert kept["key"].tolist() == want and kept["row"].tolist() == [k - 1 for k in want]  # store order
    assert kept["old_label"].tolist() == [(k - 1) // PER for k in want]
    assert kept["new_label"].tolist() == [min((k - 1) // PER, 5) for k in want]  # 6 merged into 5
    lm = pd.read_parquet(out / "label_map.parquet")
    assert lm["label"].tolist() == list(range(IDS)) and lm["new"].tolist() == [0, 1, 2, 3, 4, 5, 5, -1]
    assert lm["target"].tolist() == [0, 1, 2, 3, 4, 5, 5, 7] and lm["identity"].tolist() == [f"id{i}" for i in range(IDS)]
    assert lm["images"].tolist() == [PER] * IDS and lm["kept"].tolist() == [6, 6, 6, 5, 6, 6, 6, 0]

    s = json.loads((out / "summary.json").read_text())
    assert (s["in"], s["out"], s["identities_in"], s["identities_out"]) == (48, 41, 8, 6)
    assert s["rejected"] == {"subcenter": 1, "intra": 0, "inter": 0, "overlap": 6, "min_images": 0}
    assert s["in"] == s["out"] + sum(s["rejected"].values()) == s["out"] + int((t["level"] == "image").sum())
    assert s["identities_in"] == s["identities_out"] + sum(s["identities_removed"].values())
    assert s["merged_identities"] == 1 and s["rules"]["intra"]["min_cos"] == 0.25
    assert s["rules"]["subcenter"]["max_angle_deg"] == 75.0 and s["subcentres"]["shape"] == [IDS, 2, D]
    assert s["eval_sets"]["lfw"]["identities"] == 3  # the unlabelled image is no identity
    assert "seconds" not in json.dumps(s)
    m = json.loads((tmp_path / "metrics" / "clean.json").read_text())
    assert m == {"images_in": 48, "images_out": 41, "identities_in": 8, "identities_out": 6,
                 "removed": {r: {"images": s["rules"][r]["images"], "identities": s["rules"][r]["identities"]}
                             for r in s["rules"]}}
    from PIL import Image

    for name in ("intra_similarity.png", "nearest_centre.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    # the same inputs give the same bytes
    first = {n: (out / n).read_bytes() for n in OUTPUTS}
    assert run(tmp_path, params(tmp_path, root)) == 0
    assert {n: (out / n).read_bytes() for n in OUTPUTS} == first


def test_rules_switched_off_need_no_centres(root, tmp_path):
    path = params(tmp_path, root, bootstrap_dir=str(tmp_path / "none"), subcenter={"enabled": False},
                  overlap={"enabled": False}, eval_features={})
    assert run(tmp_path, path) == 0
    s = json.loads((tmp_path / "clean" / "summary.json").read_text())
    assert s["order"] == ["intra", "inter", "min_images"] and s["disabled"] == ["subcenter", "nearest", "overlap"]
    assert s["subcentres"] is None and s["out"] == 47 and s["rejected"]["intra"] == 1  # intra takes the stray


def _bad(tmp: Path, path: Path, capsys) -> str:
    capsys.readouterr()
    assert run(tmp, path) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1, errors
    assert not (tmp / "clean").exists() and not (tmp / "metrics").exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".clean")]
    return errors[0]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(root, tmp_path, capsys):
    # a store whose keys are not the pack's
    man = pd.read_parquet(root / "pack" / "manifest.parquet").sort_values("key")
    keys = man["key"].tolist()
    keys[10] = 999
    other = tmp_path / "other"
    write_store(other, keys, man["label"].to_numpy(), np.tile(E[0], (len(keys), 1)))
    line = _bad(tmp_path, params(tmp_path, root, features_dir=str(other)), capsys)
    assert str(other) in line and "'999'" in line and "'11'" in line and "manifest.parquet" in line
    # missing centres, centres of another head
    line = _bad(tmp_path, params(tmp_path, root, bootstrap_dir=str(tmp_path / "none")), capsys)
    assert "centres.npy" in line and "clean.subcenter.enabled" in line
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "b" / "centres.npy", np.zeros((IDS + 1, 2, D), np.float32))
    line = _bad(tmp_path, params(tmp_path, root, bootstrap_dir=str(tmp_path / "b")), capsys)
    assert "9 classes" in line and "8 classes" in line
    np.save(tmp_path / "b" / "centres.npy", np.zeros((IDS, 2, D + 1), np.float32))
    line = _bad(tmp_path, params(tmp_path, root, bootstrap_dir=str(tmp_path / "b")), capsys)
    assert f"{D + 1}-d" in line
    # a missing evaluation set
    line = _bad(tmp_path, params(tmp_path, root, eval_features={"megaface": str(tmp_path / "mf")}), capsys)
    assert "clean.eval_features.megaface" in line and "mf" in line
    # thresholds out of range: refused when the params are read
    for over in ({"intra": {"min_cos": 1.5}}, {"subcenter": {"max_angle_deg": 200.0}},
                 {"overlap": {"max_cos": -2.0}}, {"min_images": {"min_images": 0}}):
        line = _bad(tmp_path, params(tmp_path, root, **over), capsys)
        assert next(iter(over)) in line
