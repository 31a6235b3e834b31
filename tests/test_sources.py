"""Input readers: every layout lists its items in a fixed order and reads their bytes."""
from __future__ import annotations

import base64
import io
import tarfile
import zipfile

import cv2
import numpy as np
import pytest

from arcpipe.errors import PipelineError
from arcpipe.shards import bounds
from arcpipe.sources import SourceError, open_source


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return cv2.imencode(".jpg", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))[1].tobytes()


def test_folder_order_identity_and_sharding(tmp_path):
    for ident, n in (("b", 2), ("a", 3)):
        (tmp_path / ident).mkdir()
        for k in range(n):
            (tmp_path / ident / f"{k}.jpg").write_bytes(_jpeg(k))
    (tmp_path / "a" / "notes.txt").write_text("x")  # non-images stay items (they become rows)
    src = open_source("folder", tmp_path)
    items = src.items()
    assert [i.source for i in items] == ["a/0.jpg", "a/1.jpg", "a/2.jpg", "a/notes.txt", "b/0.jpg", "b/1.jpg"]
    assert [i.identity for i in items] == ["a"] * 4 + ["b"] * 2
    assert src.read(items[0]) == _jpeg(0)
    parts = [items[slice(*bounds(len(items), i, 4))] for i in range(4)]
    assert sum(parts, []) == items and all(parts)
    assert parts[1] == src.items()[slice(*bounds(len(items), 1, 4))]
    (tmp_path / "a" / "0.jpg").unlink()
    with pytest.raises(SourceError, match="0.jpg"):
        src.read(items[0])
    # the plain-system-call read returns every byte, of an empty file and of a large one
    big = np.random.default_rng(5).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    (tmp_path / "a" / "1.jpg").write_bytes(big)
    (tmp_path / "a" / "2.jpg").write_bytes(b"")
    assert src.read(items[1]) == big and src.read(items[2]) == b""


def test_ms1m_tsv_rows_and_broken_base64(tmp_path):
    good = base64.b64encode(_jpeg(1)).decode()
    rect = base64.b64encode(np.float32([0.1, 0.1, 0.9, 0.9]).tobytes()).decode()
    lines = [
        "\t".join(["m.01", "1", "http://u", "http://p", "f1", rect, good]),
        "\t".join(["m.01", "2", "http://u", "http://p", "f2", rect, good[:-7] + "!!!*"]),
        "m.02\tonly three\tcolumns",
        "\t".join(["m.02", "1", "http://u", "http://p", "f3", rect, good]),
    ]
    tsv = tmp_path / "part.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    src = open_source("ms1m_tsv", tsv)
    items = src.items()
    assert [i.source for i in items] == ["part.tsv:1", "part.tsv:2", "part.tsv:3", "part.tsv:4"]
    assert [i.identity for i in items] == ["m.01", "m.01", "", "m.02"]
    assert src.read(items[0]) == _jpeg(1) and src.read(items[3]) == _jpeg(1)
    with pytest.raises(SourceError, match="line 2: face data is not valid base64"):
        src.read(items[1])
    with pytest.raises(SourceError, match="line 3: expected 7 tab-separated columns, got 3"):
        src.read(items[2])


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "zip"])
def test_archive_read_in_place_and_hostile_members_refused(tmp_path, kind):
    path = tmp_path / f"faces.{kind}"
    members = {"ids/anna/0.jpg": _jpeg(0), "ids/bob/1.jpg": _jpeg(1), "../evil.jpg": _jpeg(2),
               "/etc/abs.jpg": _jpeg(3)}
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members.items():
                z.writestr(zipfile.ZipInfo(name), data)
    else:
        with tarfile.open(path, "w:gz" if kind == "tar.gz" else "w") as t:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            link = tarfile.TarInfo("ids/bob/link.jpg")
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/passwd"
            t.addfile(link)
    before = sorted(p.name for p in tmp_path.iterdir())
    src = open_source("archive", path)
    items = {i.source.split("!", 1)[1]: i for i in src.items()}
    assert src.read(items["ids/anna/0.jpg"]) == _jpeg(0) and items["ids/anna/0.jpg"].identity == "anna"
    assert src.read(items["ids/bob/1.jpg"]) == _jpeg(1)
    for bad in ("../evil.jpg", "/etc/abs.jpg") + (() if kind == "zip" else ("ids/bob/link.jpg",)):
        assert items[bad].error and bad in items[bad].error and "refused" in items[bad].error
        with pytest.raises(SourceError, match="refused"):
            src.read(items[bad])
    src.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing extracted
    assert not (tmp_path.parent / "evil.jpg").exists()


def test_rec_source_insightface_layout(tmp_path):
    recordio = pytest.importorskip("arcpipe.recordio")
    from arcpipe.recordio import IRHeader, RecordWriter, pack

    rec = tmp_path / "train.rec"
    with RecordWriter(rec) as w:
        w.write(0, pack(IRHeader(2, np.float32([4, 6]), 0, 0), b""))
        for k, lab in ((1, 0), (2, 0), (3, 1)):
            w.write(k, pack(IRHeader(0, float(lab), k, 0), _jpeg(k)))
        w.write(4, pack(IRHeader(2, np.float32([1, 3]), 0, 0), b""))
        w.write(5, pack(IRHeader(2, np.float32([3, 4]), 0, 0), b""))
    src = open_source("rec", rec)
    items = src.items()
    assert [i.source for i in items] == ["train.rec:1", "train.rec:2", "train.rec:3"]
    assert [i.identity for i in items] == ["0", "0", "1"]
    assert src.read(items[2]) == _jpeg(3)
    del recordio


def test_lfw_cfp_agedb_megaface_ijb_layouts(tmp_path):
    lfw = tmp_path / "lfw"
    (lfw / "Ann_Lee").mkdir(parents=True)
    (lfw / "Ann_Lee" / "Ann_Lee_0001.jpg").write_bytes(_jpeg(0))
    (lfw / "pairs.txt").write_text("10\t300\n")
    items = open_source("lfw", lfw).items()
    assert [(i.source, i.identity) for i in items] == [("Ann_Lee/Ann_Lee_0001.jpg", "Ann_Lee")]

    cfp = tmp_path / "cfp" / "Data" / "Images" / "001"
    for pose in ("frontal", "profile"):
        (cfp / pose).mkdir(parents=True)
        (cfp / pose / "01.jpg").write_bytes(_jpeg(1))
    items = open_source("cfp", tmp_path / "cfp").items()
    assert [i.identity for i in items] == ["001", "001"]
    assert items[0].source == "Data/Images/001/frontal/01.jpg"

    agedb = tmp_path / "agedb"
    agedb.mkdir()
    (agedb / "0_MariaCallas_35_f.jpg").write_bytes(_jpeg(2))
    assert open_source("agedb", agedb).items()[0].identity == "MariaCallas"

    mf = tmp_path / "mf" / "Zoe"
    mf.mkdir(parents=True)
    (mf / "Zoe_1.jpg").write_bytes(_jpeg(3))
    (mf / "Zoe_1.jpg.json").write_text('{"bounding_box": {"x": 10, "y": 20, "width": 30, "height": 40}}')
    (mf / "Zoe_2.jpg").write_bytes(_jpeg(4))
    items = open_source("megaface", tmp_path / "mf").items()
    assert [i.source for i in items] == ["Zoe/Zoe_1.jpg", "Zoe/Zoe_2.jpg"]
    assert items[0].box == (10.0, 20.0, 40.0, 60.0) and items[1].box is None

    ijb = tmp_path / "ijb" / "IJBS"
    (ijb / "meta").mkdir(parents=True)
    (ijb / "loose_crop").mkdir()
    (ijb / "loose_crop" / "1.jpg").write_bytes(_jpeg(5))
    (ijb / "meta" / "ijbs_name_5pts_score.txt").write_text(
        "1.jpg 1 2 3 4 5 6 7 8 9 10 0.99\n2.jpg 1 2 3\n")
    (ijb / "meta" / "ijbs_face_tid_mid.txt").write_text("1.jpg 7 70\n")
    src = open_source("ijb", tmp_path / "ijb")
    items = src.items()
    assert items[0].source == "IJBS/loose_crop/1.jpg" and items[0].identity == "7"
    assert items[0].landmarks == tuple(float(v) for v in range(1, 11)) and items[0].score == pytest.approx(0.99)
    assert src.read(items[0]) == _jpeg(5)
    assert "line 2" in items[1].error


def test_unknown_format_and_missing_root(tmp_path):
    with pytest.raises(PipelineError):
        open_source("nope", tmp_path)
    with pytest.raises(PipelineError, match="does not exist"):
        open_source("folder", tmp_path / "missing")
