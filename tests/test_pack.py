"""The pack stage: an aligned set (contract 2) -> insightface train.rec/.idx/property (+ shards, flat)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from arcpipe.pack import identity_blocks, plan_pack
from arcpipe.imageio import decode_rgb, encode_jpeg
from arcpipe.recordio import (
    IRHeader, RecordReader, RecordWriter, image_label, pack, read_layout,
    read_property, unpack,
)
from arcpipe.stages import main

REPO = Path(__file__).resolve().parents[1]


def face(seed: int, size: int = 112) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 200, size, dtype=np.float32)
    img = base[None, :, None] + base[:, None, None] * 0.3 + rng.normal(0, 8, (size, size, 3))
    img[..., seed % 3] += 40
    return np.clip(img, 0, 255).astype(np.uint8)


def make_aligned(directory: Path, rows: list[tuple[str, str, str]], quality: int = 95, size: int = 112) -> pd.DataFrame:
    """rows: (source, identity, status). Writes faces.rec/.idx, manifest.parquet, summary.json."""
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted({i for _, i, _ in rows if i})
    labels = {n: k for k, n in enumerate(names)}
    recs = []
    next_key = 0
    with RecordWriter(directory / "faces.rec", directory / "faces.idx") as w:
        for r, (src, ident, status) in enumerate(rows):
            key = -1
            if status in ("ok", "fallback"):
                key = next_key
                next_key += 1
                w.write(key, pack(IRHeader(0, float(labels.get(ident, -1)), key, 0), encode_jpeg(face(r, size), quality)))
            recs.append({"row": r, "source": src, "identity": ident, "label": labels.get(ident, -1),
                         "status": status, "reason": "" if key >= 0 else "no face found", "key": key})
    man = pd.DataFrame(recs)
    man.to_parquet(directory / "manifest.parquet", index=False)
    (directory / "summary.json").write_text(json.dumps({"stage": "align", "jpeg_quality": quality}))
    return man


def sample_rows() -> list[tuple[str, str, str]]:
    rows = []
    for ident, n in [("carol", 3), ("alice", 4), ("bob", 2), ("dave", 1)]:
        for j in range(n):
            rows.append((f"{ident}/{j:04d}.jpg", ident, "ok"))
    rows.insert(2, ("alice/0009.jpg", "alice", "no_face"))     # rejected: no crop
    rows.append(("eve/0000.jpg", "eve", "unreadable"))         # identity with no crop at all
    rows.append(("stray.jpg", "", "fallback"))                 # crop but no identity
    rows.append(("bob/0007.jpg", "bob", "fallback"))           # a fallback crop is packed
    return rows


def run_pack_stage(tmp_path: Path, monkeypatch, **pack_params) -> tuple[int, Path]:
    monkeypatch.chdir(tmp_path)
    params = {"align": {"out_dir": str(tmp_path / "align")},
              "pack": {"dataset": "train", "out_dir": str(tmp_path / "pack"), **pack_params}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    rc = main("pack", ["--params", str(tmp_path / "params.yaml")])
    return rc, tmp_path / "pack"


def test_plan_orders_identities_and_rejects_with_reasons():
    man = pd.DataFrame({"row": range(6), "identity": ["b", "a", "", "b", "a", "c"],
                        "key": [0, 1, 2, -1, 3, -1], "status": ["ok", "ok", "ok", "no_face", "fallback", "too_large"]})
    plan = plan_pack(man)
    packed = plan[plan.pack_status == "packed"].sort_values("pack_key")
    assert packed["identity"].tolist() == ["a", "a", "b"] and packed["pack_key"].tolist() == [1, 2, 3]
    assert packed["pack_label"].tolist() == [0, 0, 1]  # 'c' has no crop, so labels stay contiguous
    assert sorted(plan.loc[plan.pack_status != "packed", "pack_reason"]) == [
        "no_crop:no_face", "no_crop:too_large", "no_identity"]


def test_shard_bounds_are_contiguous_and_balanced():
    b = identity_blocks([5, 5, 5, 5, 1, 1, 1, 1, 1, 1], 3)
    assert b[0][0] == 0 and b[-1][1] == 10 and all(x[1] == y[0] for x, y in zip(b, b[1:]))
    assert all(lo < hi for lo, hi in b)


def test_pack_stage_writes_insightface_layout(tmp_path, monkeypatch):
    man = make_aligned(tmp_path / "align" / "train", sample_rows())
    rc, out = run_pack_stage(tmp_path, monkeypatch, flat_shuffled=True, seed=3)
    assert rc == 0
    r = RecordReader(out / "train.rec")
    lay = read_layout(r)
    assert lay.kind == "insightface"
    n = len(lay.image_keys)
    assert n == 11 and lay.image_keys == list(range(1, 12))   # 3+4+2+1 ok + 1 bob fallback
    h0 = r.header(0)
    assert h0.flag == 2 and h0.label.tolist() == [12, 16]
    assert lay.identity_ranges == [(1, 5), (5, 8), (8, 11), (11, 12)]  # alice, bob, carol, dave
    assert read_property(out / "property") == (4, 112, 112)
    # every image carries its identity's label and the align stage's JPEG bytes unchanged (same quality)
    align_r = RecordReader(tmp_path / "align" / "train" / "faces.rec")
    pm = pd.read_parquet(out / "manifest.parquet")
    assert len(pm) == len(man) and pm["packed"].sum() == n
    for _, row in pm[pm["packed"]].iterrows():
        h, payload = r.unpack(int(row["key"]))
        assert image_label(r, int(row["key"])) == row["label"]
        assert payload == align_r.unpack(int(row["align_key"]))[1]
    for lab, (s, e) in enumerate(lay.identity_ranges):
        assert {image_label(r, k) for k in range(s, e)} == {lab}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["in"] == len(man) and summary["out"] == n
    assert summary["in"] == summary["out"] + sum(summary["rejected"].values())
    assert summary["rejected"] == {"no_crop:no_face": 1, "no_crop:unreadable": 1, "no_identity": 1}
    assert summary["reencoded"] is False
    # the flat, shuffled, image-only variant
    flat = RecordReader(out / "train_flat.rec")
    assert flat.keys == list(range(n))
    flat_items = [unpack(rec) for rec in flat]
    assert all(h.flag == 0 for h, _ in flat_items)
    assert sorted(int(h.id) for h, _ in flat_items) == list(range(1, n + 1))
    assert [int(h.id) for h, _ in flat_items] != list(range(1, n + 1))  # shuffled
    for h, payload in flat_items:
        h2, p2 = r.unpack(int(h.id))
        assert h.label == h2.label and payload == p2


def test_pack_is_deterministic_and_reencodes_when_quality_differs(tmp_path, monkeypatch):
    make_aligned(tmp_path / "align" / "train", sample_rows(), quality=95)
    rc, out = run_pack_stage(tmp_path, monkeypatch, quality=80, flat_shuffled=False)
    assert rc == 0
    first = {p: (out / p).read_bytes() for p in ("train.rec", "train.idx", "property")}
    assert not (out / "train_flat.rec").exists()
    rc, out = run_pack_stage(tmp_path, monkeypatch, quality=80, flat_shuffled=False)
    assert {p: (out / p).read_bytes() for p in first} == first
    assert json.loads((out / "summary.json").read_text())["reencoded"] is True
    r = RecordReader(out / "train.rec")
    align_r = RecordReader(tmp_path / "align" / "train" / "faces.rec")
    pm = pd.read_parquet(out / "manifest.parquet")
    row = pm[pm["packed"]].iloc[0]
    new, old = r.unpack(int(row["key"]))[1], align_r.unpack(int(row["align_key"]))[1]
    assert new != old and len(new) < len(old)  # re-encoded at the lower quality
    assert np.abs(decode_rgb(new).astype(int) - decode_rgb(old).astype(int)).mean() < 6


def test_pack_shards_are_complete_packs_with_global_labels(tmp_path, monkeypatch):
    make_aligned(tmp_path / "align" / "train", sample_rows())
    rc, out = run_pack_stage(tmp_path, monkeypatch, shards=2, flat_shuffled=False)
    assert rc == 0 and not (out / "train.rec").exists()
    labels = []
    for i in range(2):
        r = RecordReader(out / f"train_{i:03d}.rec")
        lay = read_layout(r)
        assert lay.kind == "insightface" and lay.image_keys[0] == 1
        labels.append(sorted({image_label(r, k) for k in lay.image_keys}))
    assert labels[0] + labels[1] == [0, 1, 2, 3]
    pm = pd.read_parquet(out / "manifest.parquet")
    assert set(pm.loc[pm["packed"], "shard"]) == {0, 1}


def test_pack_stage_script_fails_cleanly_without_input(tmp_path):
    params = {"align": {"out_dir": str(tmp_path / "align")}, "pack": {"out_dir": str(tmp_path / "pack")}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "pack.py"), "--params", str(tmp_path / "p.yaml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "pack.dataset" in proc.stderr and "does not exist" in proc.stderr
    assert not (tmp_path / "pack" / "train.rec").exists()


def test_a_failure_in_the_flat_copy_leaves_the_previous_pack_whole(tmp_path, monkeypatch, capsys):
    """The pack is one output: a disk that fills up while the flat copy is written leaves the
    previous train.rec, property and manifest exactly as they were, and no temporary folder."""
    make_aligned(tmp_path / "align" / "train", sample_rows())
    rc, out = run_pack_stage(tmp_path, monkeypatch, flat_shuffled=True)
    assert rc == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    make_aligned(tmp_path / "align" / "train", sample_rows()[:-3])  # fewer images: a different pack

    import arcpipe.stages.pack as stage

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stage, "write_flat_pack", disk_full)
    rc, out = run_pack_stage(tmp_path, monkeypatch, flat_shuffled=True)
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pack: error: unexpected OSError") and "No space left on device" in err[-1]
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    assert "Traceback" in (tmp_path / "logs" / "pack.log").read_text()
