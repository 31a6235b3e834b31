"""The detect stage on real photographs and on every kind of bad input: one row per input,
status and reason, counts that reconcile, shards that resume and are not reused when stale."""
from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from arcpipe.stages import main

PIL = pytest.importorskip("PIL", reason="Pillow (a matplotlib dependency) writes the CMYK and EXIF cases")
from PIL import Image  # noqa: E402


def _weights_or_skip():
    try:
        from arcpipe.detect.weights import load_state_dicts  # noqa: F401

        load_state_dicts()
    except Exception as e:  # the MTCNN weights come from the facenet-pytorch wheel
        pytest.skip(f"MTCNN weights unavailable: {e}")


def portrait() -> np.ndarray:
    """A real photograph of one face (RGB), small enough for a quick CPU detection."""
    import matplotlib

    p = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    rgb = cv2.imread(str(p))[:, :, ::-1]
    return cv2.resize(rgb, (256, 300), interpolation=cv2.INTER_AREA)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def bad_input_files(face: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected status). Every case is a real file, made here."""
    jpg = cv2.imencode(".jpg", face[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    rgba = np.dstack([face, np.full(face.shape[:2], 200, np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(face).convert("CMYK").save(buf, "JPEG", quality=92)
    cmyk = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees counter-clockwise; the viewer turns it back
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(face, 1))).save(buf, "JPEG", quality=92, exif=exif.tobytes())
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 99)) \
        + _png_chunk(b"IEND", b"")
    return {
        "good.jpg": (jpg, "ok"),
        "zero.jpg": (b"", "unreadable"),
        "truncated.jpg": (jpg[: len(jpg) // 2], "unreadable"),
        "text.jpg": (b"this is not an image\n", "unreadable"),
        "alpha.png": (cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))[1].tobytes(), "ok"),
        "deep16.png": (cv2.imencode(".png", face[:, :, ::-1].astype(np.uint16) * 257)[1].tobytes(), "ok"),
        "gray.jpg": (cv2.imencode(".jpg", cv2.cvtColor(face, cv2.COLOR_RGB2GRAY))[1].tobytes(), "ok"),
        "cmyk.jpg": (cmyk, "ok"),
        "exif6.jpg": (buf.getvalue(), "ok"),
        "bomb.png": (bomb, "too_large"),
    }


def write_params(tmp: Path, datasets: dict, shards: int = 1, **detect) -> Path:
    p = {
        "detect": {"out_dir": str(tmp / "detect"), "datasets": datasets, "shards": shards, "workers": 1,
                   "batch_size": 4, **detect},
        "align": {"out_dir": str(tmp / "align"), "shards": shards, "workers": 1, "contact_sheet": 8},
        "pack": {"dataset": next(iter(datasets))},
        "evalpack": {"sets": {}},
    }
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def detect(params: Path, *args: str) -> int:
    return main("detect", ["--params", str(params), *args])


@pytest.fixture(scope="module")
def face():
    return portrait()


def test_bad_inputs_become_rows_and_counts_reconcile(tmp_path, monkeypatch, face):
    _weights_or_skip()
    monkeypatch.chdir(tmp_path)
    cases = bad_input_files(face)
    (tmp_path / "raw" / "grace").mkdir(parents=True)
    for name, (data, _) in cases.items():
        (tmp_path / "raw" / "grace" / name).write_bytes(data)
    params = write_params(tmp_path, {"bad": {"source": str(tmp_path / "raw"), "format": "folder", "preset": "deploy"}})
    assert detect(params, "--dataset", "bad") == 0
    df = pd.read_parquet(tmp_path / "detect" / "bad" / "manifest.parquet")
    assert len(df) == len(cases)
    got = dict(zip(df["source"].str.split("/").str[-1], df["status"]))
    assert got == {n: s for n, (_, s) in cases.items()}
    why = dict(zip(df["source"].str.split("/").str[-1], df["reason"]))
    assert "empty" in why["zero.jpg"] and "truncated JPEG" in why["truncated.jpg"]
    assert "not an image" in why["text.jpg"] and "100000x100000" in why["bomb.png"]
    note = dict(zip(df["source"].str.split("/").str[-1], df["note"]))
    assert "alpha" in note["alpha.png"] and "16-bit" in note["deep16.png"] and "CMYK" in note["cmyk.jpg"]
    assert "EXIF orientation 6" in note["exif6.jpg"] and "grayscale" in note["gray.jpg"]
    ex = df[df["source"].str.endswith("exif6.jpg")].iloc[0]
    assert (ex["width"], ex["height"]) == (256, 300)  # upright, as the viewer shows it
    ok = df[df["status"] == "ok"]
    g = df[df["source"].str.endswith("good.jpg")].iloc[0]
    for _, r in ok.iterrows():  # all variants: the same face, landmarks within a few pixels
        d = np.hypot(r[[f"lmk_x{i}" for i in range(1, 6)]].to_numpy(float) - g[[f"lmk_x{i}" for i in range(1, 6)]].to_numpy(float),
                     r[[f"lmk_y{i}" for i in range(1, 6)]].to_numpy(float) - g[[f"lmk_y{i}" for i in range(1, 6)]].to_numpy(float))
        assert d.max() < 6, (r["source"], d)
    s = json.loads((tmp_path / "detect" / "bad" / "summary.json").read_text())
    assert s["in"] == len(cases) == s["out"] + s["rejected_total"]
    assert s["rejected"] == {"too_large": 1, "unreadable": 3} and s["ok"] == 6
    assert sum(v for k, v in s["rejected_reasons"].items()) == 4


def test_tsv_broken_base64_row_and_ijb_given_landmarks(tmp_path, monkeypatch, face):
    _weights_or_skip()
    monkeypatch.chdir(tmp_path)
    jpg = cv2.imencode(".jpg", face[:, :, ::-1])[1].tobytes()
    b64 = base64.b64encode(jpg).decode()
    rows = [["m.0a", "1", "u", "p", "f", "", b64], ["m.0a", "2", "u", "p", "f", "", "@@not base64@@"],
            ["m.0b", "1", "u", "p", "f", "", b64]]
    (tmp_path / "ms1m.tsv").write_text("".join("\t".join(r) + "\n" for r in rows))
    ijb = tmp_path / "ijb" / "IJBS"
    (ijb / "meta").mkdir(parents=True)
    (ijb / "loose_crop").mkdir()
    (ijb / "loose_crop" / "1.jpg").write_bytes(jpg)
    (ijb / "meta" / "ijbs_name_5pts_score.txt").write_text(
        "1.jpg 100 120 150 121 125 150 105 180 145 181 0.95\nmissing.jpg 1 2 3 4 5 6 7 8 9 10 0.5\n")
    params = write_params(tmp_path, {
        "tsv": {"source": str(tmp_path / "ms1m.tsv"), "format": "ms1m_tsv", "preset": "ms1m"},
        "ijb": {"source": str(tmp_path / "ijb"), "format": "ijb"}})
    assert detect(params, "--dataset", "tsv") == 0
    df = pd.read_parquet(tmp_path / "detect" / "tsv" / "manifest.parquet")
    assert df["status"].tolist() == ["ok", "unreadable", "ok"]
    assert "line 2" in df["reason"][1] and "base64" in df["reason"][1]
    assert df["identity"].tolist() == ["m.0a", "m.0a", "m.0b"]
    assert detect(params, "--dataset", "ijb") == 0
    df = pd.read_parquet(tmp_path / "detect" / "ijb" / "manifest.parquet")
    assert df["status"].tolist() == ["ok", "unreadable"]
    assert df["origin"][0] == "given_landmarks" and df["lmk_x1"][0] == 100 and df["score"][0] == pytest.approx(0.95)


def test_no_face_policies(tmp_path, monkeypatch):
    _weights_or_skip()
    monkeypatch.chdir(tmp_path)
    import skimage.data

    (tmp_path / "mf" / "cat").mkdir(parents=True)
    cat = cv2.imencode(".jpg", skimage.data.chelsea()[:, :, ::-1])[1].tobytes()
    (tmp_path / "mf" / "cat" / "a.jpg").write_bytes(cat)
    (tmp_path / "mf" / "cat" / "a.jpg.json").write_text('{"bounding_box": {"x": 50, "y": 40, "width": 100, "height": 120}}')
    (tmp_path / "mf" / "cat" / "b.jpg").write_bytes(cat)
    ds = {"lfwlike": {"source": str(tmp_path / "mf"), "format": "megaface", "preset": "lfw"},
          "mf": {"source": str(tmp_path / "mf"), "format": "megaface", "preset": "megaface"},
          "drop": {"source": str(tmp_path / "mf"), "format": "megaface", "preset": "ms1m"}}
    params = write_params(tmp_path, ds)
    for name in ds:
        assert detect(params, "--dataset", name) == 0
    read = lambda n: pd.read_parquet(tmp_path / "detect" / n / "manifest.parquet")  # noqa: E731
    assert read("lfwlike")["status"].tolist() == ["fallback", "fallback"]
    assert read("lfwlike")["origin"].tolist() == ["center_crop"] * 2
    mf = read("mf")
    assert mf["status"].tolist() == ["fallback", "no_face"] and mf["origin"][0] == "given_box"
    assert mf.loc[0, ["box_x1", "box_y1", "box_x2", "box_y2"]].tolist() == [50, 40, 150, 160]
    assert read("drop")["status"].tolist() == ["no_face", "no_face"]


def test_a_shard_reads_only_its_own_images(tmp_path, monkeypatch, face):
    """Shard 1 of 2 works from the listing: shard 0's files may be gone (it never opens them)."""
    _weights_or_skip()
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    for k in range(4):
        (raw / f"id{k}").mkdir(parents=True)
        (raw / f"id{k}" / "0.jpg").write_bytes(cv2.imencode(".jpg", np.roll(face, 9 * k, axis=1)[:, :, ::-1])[1].tobytes())
    params = write_params(tmp_path, {"d": {"source": str(raw), "format": "folder", "preset": "deploy"}}, shards=2)
    assert detect(params, "--dataset", "d", "--list") == 0
    listing = tmp_path / "detect" / "d" / "listing.parquet"
    before = listing.stat().st_mtime_ns
    assert detect(params, "--dataset", "d", "--list", "--shard", "0/2") == 2
    for k in (0, 1):  # rows 0 and 1: shard 0
        (raw / f"id{k}" / "0.jpg").unlink()
    assert detect(params, "--dataset", "d", "--shard", "1/2") == 0
    part = pd.read_parquet(tmp_path / "detect" / "d" / "parts" / "part-00001-of-00002.parquet")
    assert part["row"].tolist() == [2, 3] and (part["status"] == "ok").all()
    assert part["loc"].tolist() == ['["id2/0.jpg"]', '["id3/0.jpg"]']
    assert listing.stat().st_mtime_ns == before  # shard jobs never rewrite the listing


def test_listing_is_kept_when_unchanged_and_rebuilt_when_the_source_changes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tsv = tmp_path / "faces.tsv"
    row = lambda mid, k: f"{mid}\t{k}\turl\tpage\tfid\trect\t{base64.b64encode(b'x' * (k + 1)).decode()}\n"
    tsv.write_text("".join(row(m, k) for m, k in [("m.1", 0), ("m.1", 1), ("m.2", 2)]))
    params = write_params(tmp_path, {"t": {"source": str(tsv), "format": "ms1m_tsv", "preset": "ms1m"}}, shards=2)
    assert detect(params, "--dataset", "t", "--list") == 0
    listing = tmp_path / "detect" / "t" / "listing.parquet"
    from arcpipe.shards import read_rows
    from arcpipe.sources import frame_items, listing_meta, open_source

    items = frame_items(read_rows(listing, 1, 3))
    assert [it.source for it in items] == ["faces.tsv:2", "faces.tsv:3"]
    assert open_source("ms1m_tsv", tsv).read(items[1]) == b"x" * 3  # the locator seeks straight to its row
    meta = listing_meta(listing)
    assert meta["rows"] == 3 and meta["format"] == "ms1m_tsv" and meta["needs_detector"] is True
    with open(tsv, "a") as f:
        f.write(row("m.3", 3))
    assert detect(params, "--dataset", "t", "--shard", "0/2") == 2  # stale listing: one line, no part
    assert not (tmp_path / "detect" / "t" / "parts").exists()
    assert detect(params, "--dataset", "t", "--list") == 0
    assert listing_meta(listing)["rows"] == 4


def logged_summary(root: Path, stage: str) -> dict:
    """The summary the last run of `stage` logged (it says how the run went: parts reused...), in
    logs/<stage>.log or, for a run with --dataset, logs/<stage>.<dataset>.log."""
    logs = [p for p in (root / "logs").glob(f"{stage}*.log") if p.name.split(".")[0] == stage and ".shard" not in p.name]
    log = max(logs, key=lambda p: p.stat().st_mtime_ns)
    last = [ln for ln in log.read_text().splitlines() if " summary: " in ln][-1]
    return json.loads(last.split(" summary: ", 1)[1])


def test_shards_resume_and_stale_parts(tmp_path, monkeypatch, face):
    _weights_or_skip()
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    for k in range(4):
        (raw / f"id{k}").mkdir(parents=True)
        (raw / f"id{k}" / "0.jpg").write_bytes(cv2.imencode(".jpg", np.roll(face, 7 * k, axis=1)[:, :, ::-1])[1].tobytes())
    (raw / "id0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    ds = {"d": {"source": str(raw), "format": "folder", "preset": "deploy"}}
    params = write_params(tmp_path, ds, shards=2)
    out = tmp_path / "detect" / "d"
    assert detect(params, "--dataset", "d", "--shard", "1/2") == 2  # a shard starts from the listing
    assert not (out / "parts").exists()
    assert detect(params, "--dataset", "d", "--list") == 0
    assert detect(params, "--dataset", "d", "--shard", "1/2") == 0
    assert (out / "parts" / "part-00001-of-00002.parquet").is_file()
    assert not (out / "manifest.parquet").exists()  # a shard alone is not the data set
    assert detect(params, "--dataset", "d", "--shard", "1/3") == 2  # K must match params
    mtime = (out / "parts" / "part-00001-of-00002.parquet").stat().st_mtime_ns
    assert detect(params, "--dataset", "d") == 0
    assert (out / "parts" / "part-00001-of-00002.parquet").stat().st_mtime_ns == mtime  # reused
    s = json.loads((out / "summary.json").read_text())
    assert s["in"] == 5 and s["out"] + s["rejected_total"] == 5 and "parts_reused" not in s
    assert logged_summary(tmp_path, "detect")["parts_reused"] == 1
    first = pd.read_parquet(out / "manifest.parquet")
    assert first["row"].tolist() == list(range(5))
    # other params: the parts are stale, recomputed; the old manifest disappears at once
    params = write_params(tmp_path, ds, shards=2, min_face_score=0.9999999)
    assert detect(params, "--dataset", "d", "--shard", "0/2") == 0
    assert not (out / "manifest.parquet").exists()
    assert detect(params, "--dataset", "d") == 0
    assert logged_summary(tmp_path, "detect")["parts_reused"] == 1  # part 0 from the shard run above, part 1 recomputed
    again = pd.read_parquet(out / "manifest.parquet")
    assert (again["status"] == "no_face").sum() >= 1 and len(again) == 5


def test_images_rewritten_under_the_same_names_are_detected_again(tmp_path, monkeypatch, face):
    """A regenerated source (same file names, other bytes) never reuses the old parts: the
    listing's fingerprint covers each file's size and mtime (a folder) or the container's (a TSV)."""
    _weights_or_skip()
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"

    def write_images(shift: int) -> None:
        for k in range(3):
            (raw / f"id{k}").mkdir(parents=True, exist_ok=True)
            img = np.roll(face, 7 * k + shift, axis=1)[:, :, ::-1]
            (raw / f"id{k}" / "0.jpg").write_bytes(cv2.imencode(".jpg", img)[1].tobytes())

    write_images(0)
    tsv = tmp_path / "faces.tsv"
    jpeg = lambda shift: base64.b64encode(cv2.imencode(".jpg", np.roll(face, shift, axis=1)[:, :, ::-1])[1]).decode()
    tsv.write_text(f"m.1\t0\turl\tpage\tfid\trect\t{jpeg(0)}\n")
    ds = {"d": {"source": str(raw), "format": "folder", "preset": "deploy"},
          "t": {"source": str(tsv), "format": "ms1m_tsv", "preset": "deploy"}}
    params = write_params(tmp_path, ds)
    assert detect(params) == 0
    before = {n: pd.read_parquet(tmp_path / "detect" / n / "manifest.parquet") for n in ds}
    assert detect(params) == 0  # nothing changed: every part reused
    assert logged_summary(tmp_path, "detect")["datasets"]["t"]["parts_reused"] == 1
    write_images(3)  # the same names, other pixels
    tsv.write_text(f"m.1\t0\turl\tpage\tfid\trect\t{jpeg(5)}\n")
    assert detect(params) == 0
    summary = logged_summary(tmp_path, "detect")["datasets"]
    assert summary["d"]["parts_reused"] == 0 and summary["t"]["parts_reused"] == 0
    for n in ds:
        after = pd.read_parquet(tmp_path / "detect" / n / "manifest.parquet")
        assert (after["content"] != before[n]["content"]).all(), n
