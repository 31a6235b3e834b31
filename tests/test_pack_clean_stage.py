"""The pack_clean stage: the cleaned pack holds exactly the kept images, each record the raw pack's
bytes with only the label patched, under contiguous new labels in insightface's layout (header,
identity records, property), the flat copy the same records shuffled; rectool verify passes; the
manifest maps every record back and reconciles; a kept list naming a key the pack lacks (or one
that leaves an image unaccounted for) exits 2 with one line and writes nothing."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from arcpipe.clean.rules import COLUMNS
from arcpipe.imageio import decode_rgb
from arcpipe.recordio import RecordReader, read_idx, read_layout, read_property, unpack
from arcpipe.rectools import verify
from arcpipe.stages import main
from test_clean_stage import IDS, PER, _In, params as clean_params, root as clean_root  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
N = IDS * PER


@pytest.fixture(scope="module")
def cleaned(clean_root, tmp_path_factory) -> Path:  # noqa: F811
    """The clean stage's output for the planted pack of test_clean_stage."""
    tmp = tmp_path_factory.mktemp("cleaned")
    with _In(tmp):
        assert main("clean", ["--params", str(clean_params(tmp, clean_root))]) == 0
    return tmp / "clean"


def pack_params(tmp: Path, raw: Path, clean_dir: Path, **over) -> Path:
    p = {"pack_dir": str(raw), "clean_dir": str(clean_dir), "out_dir": str(tmp / "pack_clean"), **over}
    path = tmp / "pc.yaml"
    path.write_text(yaml.safe_dump({"pack_clean": p}))
    return path


def run(tmp: Path, path: Path) -> int:
    with _In(tmp):
        return main("pack_clean", ["--params", str(path)])


def patched(record: bytes, label: int) -> bytes:
    """The raw record with its IRHeader label (bytes 4..8) set to `label`."""
    return record[:4] + struct.pack("<f", float(label)) + record[8:]


def check_layout(out: Path, classes: int) -> list:
    """Header and identity records as the pack stage writes them; returns the (start, end) ranges."""
    r = RecordReader(out / "train.rec")
    lay = read_layout(r)
    n = len(lay.image_keys)
    assert lay.kind == "insightface" and lay.image_keys == list(range(1, n + 1))
    assert lay.identity_keys == list(range(n + 1, n + 1 + classes))
    h0, payload = unpack(r.read(0))
    assert (h0.flag, list(h0.label), h0.id, h0.id2, payload) == (2, [n + 1, n + classes + 1], 0, 0, b"")
    for j, (s, e) in enumerate(lay.identity_ranges):
        assert s < e and all(unpack(r.read(k))[0].label == j for k in range(s, e))
    assert read_property(out / "property") == (classes, 112, 112)
    for rec in ("train.rec", "train_flat.rec"):
        if (out / rec).exists():
            rep = verify(out / rec)
            assert rep.ok, rep.problems
    return lay.identity_ranges


def test_the_cleaned_pack_is_the_kept_records_relabelled(clean_root, cleaned, tmp_path):  # noqa: F811
    raw = clean_root / "pack"
    assert run(tmp_path, pack_params(tmp_path, raw, cleaned, seed=5)) == 0
    out = tmp_path / "pack_clean"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.parquet", "property", "summary.json", "train.idx",
                                                     "train.rec", "train_flat.idx", "train_flat.rec"]
    kept = pd.read_parquet(cleaned / "kept.parquet")
    man = pd.read_parquet(out / "manifest.parquet")
    assert len(man) == N and man["raw_key"].is_unique and set(man["raw_key"]) == set(range(1, N + 1))
    new = man[man["packed"]]
    assert new["key"].tolist() == list(range(1, len(kept) + 1))
    assert sorted(new["raw_key"]) == kept["key"].tolist()
    by_raw = kept.set_index("key")
    assert (new["label"].to_numpy() == by_raw.loc[new["raw_key"], "new_label"].to_numpy()).all()
    assert (new["old_label"].to_numpy() == by_raw.loc[new["raw_key"], "old_label"].to_numpy()).all()
    assert new["identity"].tolist() == [f"id{o}" for o in new["old_label"]] and (new["reason"] == "").all()
    gone = man[~man["packed"]]
    assert (gone["key"] == -1).all() and (gone["label"] == -1).all() and (gone["flat_key"] == -1).all()
    assert gone["reason"].value_counts().to_dict() == {"clean:overlap": 6, "clean:subcenter": 1}

    r_raw, r_new = RecordReader(raw / "train.rec"), RecordReader(out / "train.rec")
    for key, raw_key, label in new[["key", "raw_key", "label"]].itertuples(index=False):
        rec = r_new.read(int(key))
        assert rec == patched(r_raw.read(int(raw_key)), int(label))
        assert unpack(rec)[0].id == raw_key  # the IRHeader id traces back to the raw pack
    ranges = check_layout(out, 6)
    assert [e - s for s, e in ranges] == [6, 6, 6, 5, 6, 12]  # label 6 merged into 5: twelve images

    flat = RecordReader(out / "train_flat.rec")
    fk = new["flat_key"].to_numpy()
    assert sorted(fk) == list(range(len(new))) and list(read_idx(out / "train_flat.idx")[0]) == list(range(len(new)))
    assert not (fk == np.arange(len(new))).all()  # shuffled
    for key, f in zip(new["key"], fk):
        assert flat.read(int(f)) == r_new.read(int(key))

    s = json.loads((out / "summary.json").read_text())
    assert (s["in"], s["out"], s["num_classes"], s["num_classes_in"]) == (N, 41, 6, IDS)
    assert s["in"] == s["out"] + sum(s["rejected"].values()) and s["rejected"] == {"clean:overlap": 6,
                                                                                  "clean:subcenter": 1}
    assert (s["reencoded"], s["quality"], s["raw_quality"]) == (False, 95, 95)
    assert s["files"]["train.rec"] == {"images": 41, "identities": 6, "bytes": (out / "train.rec").stat().st_size}
    cli = subprocess.run([sys.executable, str(REPO / "scripts" / "rectool.py"), "verify", str(out / "train.rec")],
                         capture_output=True, text=True)
    assert cli.returncode == 0 and "0 problem(s)" in cli.stdout, cli.stdout + cli.stderr
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert run(tmp_path, pack_params(tmp_path, raw, cleaned, seed=5)) == 0  # the same bytes again
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def write_clean(path: Path, kept: pd.DataFrame, removed_keys=(), rule="intra") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    kept.to_parquet(path / "kept.parquet", index=False)
    rows = [{"row": k - 1, "key": str(k), "label": (k - 1) // PER, "rule": rule, "score": 0.0, "level": "image",
             "detail": ""} for k in removed_keys]
    pd.DataFrame(rows, columns=COLUMNS).astype({"row": np.int64, "label": np.int64, "score": float}).to_parquet(
        path / "removals.parquet", index=False)
    return path


def test_merges_that_interleave_labels_are_regrouped_and_quality_reencodes(clean_root, tmp_path):  # noqa: F811
    # old 0 and old 2 become new 1, old 1 becomes new 0: new label 1's images are not one run of raw keys
    keys = np.arange(2, N + 1)  # raw key 1 removed
    old = (keys - 1) // PER
    new = np.array([1, 0, 1, 2, 3, 4, 5, 6])[old]
    c = write_clean(tmp_path / "c", pd.DataFrame({"row": keys - 1, "key": keys, "old_label": old, "new_label": new}),
                    [1])
    assert run(tmp_path, pack_params(tmp_path, clean_root / "pack", c, flat_shuffled=False, quality=80)) == 0
    out = tmp_path / "pack_clean"
    assert not (out / "train_flat.rec").exists()
    man = pd.read_parquet(out / "manifest.parquet")
    k = man[man["packed"]]
    assert k["raw_key"].tolist() == list(range(7, 13)) + list(range(2, 7)) + list(range(13, 19)) + list(range(19, N + 1))
    assert [e - s for s, e in check_layout(out, 7)] == [6, 11, 6, 6, 6, 6, 6]
    s = json.loads((out / "summary.json").read_text())
    assert s["reencoded"] and s["quality"] == 80 and s["rejected"] == {"clean:intra": 1}
    r_raw, r_new = RecordReader(clean_root / "pack" / "train.rec"), RecordReader(out / "train.rec")
    h, jpeg = unpack(r_new.read(1))
    _, jpeg_raw = unpack(r_raw.read(7))
    assert (h.label, h.id) == (0, 7) and jpeg != jpeg_raw and decode_rgb(jpeg).shape == (112, 112, 3)


def _bad(tmp: Path, path: Path, capsys) -> str:
    capsys.readouterr()
    assert run(tmp, path) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1, errors
    assert not (tmp / "pack_clean").exists() and not [p for p in tmp.iterdir() if p.name.startswith(".pack_clean")]
    return errors[0]


def test_a_kept_list_that_does_not_fit_the_pack_exits_2(clean_root, tmp_path, capsys):  # noqa: F811
    raw = clean_root / "pack"
    keys = np.arange(1, N + 1)
    old = (keys - 1) // PER
    table = pd.DataFrame({"row": keys - 1, "key": keys, "old_label": old, "new_label": old})
    bad = table.copy()
    bad.loc[3, "key"] = 4242
    line = _bad(tmp_path, pack_params(tmp_path, raw, write_clean(tmp_path / "a", bad)), capsys)
    assert "key 4242 is not an image of" in line and "kept.parquet" in line
    line = _bad(tmp_path, pack_params(tmp_path, raw, write_clean(tmp_path / "b", table.iloc[1:])), capsys)
    assert "key 1 is neither kept nor removed" in line
    wrong = table.copy()
    wrong.loc[0, "old_label"] = 5
    line = _bad(tmp_path, pack_params(tmp_path, raw, write_clean(tmp_path / "c", wrong)), capsys)
    assert "key 1 has old_label 5" in line
    gap = table.assign(new_label=np.where(old == 3, 9, old))
    line = _bad(tmp_path, pack_params(tmp_path, raw, write_clean(tmp_path / "d", gap)), capsys)
    assert "not contiguous" in line
    line = _bad(tmp_path, pack_params(tmp_path, raw, tmp_path / "nope"), capsys)
    assert "pack_clean.clean_dir" in line
