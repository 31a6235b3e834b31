"""The align stage end to end: aligned set (contract 2), crops equal to norm_crop, rows kept,
counts reconciled, contact sheet written, shard parts reused."""
from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pandas as pd

from arcpipe import align as A
from arcpipe.align.aligned_set import AlignedSet, landmarks_of
from arcpipe.imageio import decode_image, encode_jpeg
from arcpipe.stages import main

from test_detect_stage import _weights_or_skip, bad_input_files, detect, logged_summary, portrait, write_params


def align(params, *args) -> int:
    return main("align", ["--params", str(params), *args])


def test_align_end_to_end(tmp_path, monkeypatch):
    _weights_or_skip()
    monkeypatch.chdir(tmp_path)
    face = portrait()
    cases = bad_input_files(face)
    for k, ident in enumerate(("grace", "hopper")):
        (tmp_path / "raw" / ident).mkdir(parents=True)
    for k, (name, (data, _)) in enumerate(sorted(cases.items())):
        (tmp_path / "raw" / ("grace" if k % 2 else "hopper") / name).write_bytes(data)
    params = write_params(tmp_path, {"d": {"source": str(tmp_path / "raw"), "format": "folder", "preset": "deploy"}},
                          shards=2)
    assert detect(params, "--dataset", "d") == 0
    assert align(params, "--dataset", "d", "--shard", "0/2") == 0
    assert not (tmp_path / "align" / "d" / "manifest.parquet").exists()
    assert align(params, "--dataset", "d") == 0
    out = tmp_path / "align" / "d"
    for f in ("faces.rec", "faces.idx", "manifest.parquet", "summary.json", "contact_sheet.jpg"):
        assert (out / f).is_file(), f
    s = AlignedSet(out)
    m = s.manifest
    assert len(m) == len(cases) and m["row"].tolist() == list(range(len(cases)))
    assert set(m.columns) >= {"row", "source", "identity", "label", "status", "reason", "key"}
    faces = s.faces
    assert len(faces) == 6 and (faces["status"] == "ok").all()
    assert sorted(faces["label"].unique()) == [0, 1] and (m.loc[m["key"] < 0, "key"] == -1).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["in"] == summary["aligned"] + summary["rejected_total"] == len(cases)
    assert summary["classes"] == 2 and logged_summary(tmp_path, "align")["parts_reused"] == 1
    # each crop is norm_crop of the decoded image with the manifest's landmarks (JPEG aside)
    for _, row in faces.iterrows():
        data = (tmp_path / "raw" / row["source"]).read_bytes()
        ref = A.norm_crop(decode_image(data).image, landmarks_of(row), 112)
        stored = s.read_jpeg(int(row["key"]))
        assert stored == encode_jpeg(ref, 95)  # byte-identical: same crop, same encoder
        got = s.read_rgb(int(row["key"]))
        assert got.shape == (112, 112, 3) and np.abs(got.astype(int) - ref).mean() < 4
        hdr, _ = s.read_record(int(row["key"]))
        assert int(hdr.label) == row["label"]
        assert row["align_error"] < 8  # landmarks land near the template
    # the contact sheet is an image a person can open
    sheet = cv2.imread(str(out / "contact_sheet.jpg"))
    assert sheet is not None and sheet.shape[1] >= 112 * 8
    s.close()


def test_fallback_rows_get_box_crops(tmp_path, monkeypatch):
    _weights_or_skip()
    monkeypatch.chdir(tmp_path)
    import skimage.data

    (tmp_path / "raw" / "cat").mkdir(parents=True)
    cat = skimage.data.chelsea()
    (tmp_path / "raw" / "cat" / "a.jpg").write_bytes(cv2.imencode(".png", cat[:, :, ::-1])[1].tobytes())
    params = write_params(tmp_path, {"c": {"source": str(tmp_path / "raw"), "format": "folder", "preset": "lfw"}})
    assert detect(params) == 0
    params = write_params(tmp_path, {"c": {"source": str(tmp_path / "raw"), "format": "folder", "preset": "lfw"}})
    assert align(params, "--dataset", "c") == 0
    s = AlignedSet(tmp_path / "align" / "c")
    row = s.faces.iloc[0]
    assert row["status"] == "fallback" and row["origin"] == "center_crop"
    from arcpipe.detect import fallback_box

    ref = A.crop_box(cat, fallback_box(cat.shape), 112)
    assert s.read_jpeg(int(row["key"])) == encode_jpeg(ref, 95)


def test_changed_image_is_caught(tmp_path, monkeypatch):
    _weights_or_skip()
    monkeypatch.chdir(tmp_path)
    face = portrait()
    (tmp_path / "raw" / "g").mkdir(parents=True)
    f = tmp_path / "raw" / "g" / "0.jpg"
    f.write_bytes(cv2.imencode(".jpg", face[:, :, ::-1])[1].tobytes())
    params = write_params(tmp_path, {"d": {"source": str(tmp_path / "raw"), "format": "folder", "preset": "deploy"}})
    assert detect(params) == 0
    f.write_bytes(cv2.imencode(".jpg", face[::-1, :, ::-1])[1].tobytes())
    assert align(params) == 0
    m = pd.read_parquet(tmp_path / "align" / "d" / "manifest.parquet")
    assert m["status"].tolist() == ["align_failed"] and "changed" in m["reason"][0]
    assert m["key"].tolist() == [-1]


def test_one_part_becomes_the_set_without_a_copy(tmp_path, monkeypatch):
    """With one part its records are written under their final labels and the merge links them
    as the set (same bytes as the copy a merge of many parts makes); when an image fails at
    align and takes its identity's only crop, the labels move and the merge patches a copy."""
    _weights_or_skip()
    monkeypatch.chdir(tmp_path)
    face = portrait()
    for ident in ("ada", "bob", "cyd"):
        (tmp_path / "raw" / ident).mkdir(parents=True)
        for k in range(2 if ident != "bob" else 1):
            img = np.ascontiguousarray(face[:, ::-1] if k else face)
            (tmp_path / "raw" / ident / f"{k}.jpg").write_bytes(encode_jpeg(img, 90))
    ds = {"d": {"source": str(tmp_path / "raw"), "format": "folder", "preset": "deploy"}}
    params = write_params(tmp_path, ds)
    assert detect(params) == 0
    assert align(params) == 0
    out = tmp_path / "align" / "d"
    part = out / "parts" / "part-00000-of-00001.rec"
    assert os.path.samefile(out / "faces.rec", part) and os.path.samefile(out / "faces.idx", part.with_suffix(".idx"))
    s = AlignedSet(out)
    assert sorted(s.faces["label"]) == [0, 0, 1, 2, 2]
    for _, row in s.faces.iterrows():
        assert int(s.read_record(int(row["key"]))[0].label) == row["label"]
    s.close()
    linked = (out / "faces.rec").read_bytes()
    # the same set through two parts (the copying merge) is the same bytes
    (tmp_path / "two").mkdir()
    params2 = write_params(tmp_path / "two", ds, shards=2)
    shutil.copytree(tmp_path / "detect", tmp_path / "two" / "detect")
    monkeypatch.chdir(tmp_path / "two")
    assert align(params2) == 0
    assert (tmp_path / "two" / "align" / "d" / "faces.rec").read_bytes() == linked
    monkeypatch.chdir(tmp_path)
    # bob's only image changes after detection: cyd's label moves from 2 to 1
    (tmp_path / "raw" / "bob" / "0.jpg").write_bytes(encode_jpeg(np.ascontiguousarray(face[::-1]), 90))
    shutil.rmtree(out)
    assert align(params) == 0
    assert not os.path.samefile(out / "faces.rec", part)
    s = AlignedSet(out)
    assert sorted(s.faces["label"]) == [0, 0, 1, 1]
    for _, row in s.faces.iterrows():
        assert int(s.read_record(int(row["key"]))[0].label) == row["label"]
    s.close()
