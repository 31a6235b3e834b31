"""rectools: verify reports every problem, rebuild-idx, unpack, stats, list (library and script)."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from arcpipe import rectools
from arcpipe.recordio import MAGIC_BYTES, IRHeader, RecordIOError, RecordReader, RecordWriter, pack, read_layout

REPO = Path(__file__).resolve().parents[1]


def write_insightface(d: Path, per_id=(3, 1, 2), magic_in: int = 2) -> dict:
    """An insightface-layout pack written record by record, independent of arcpipe.pack."""
    d.mkdir(parents=True, exist_ok=True)
    n = sum(per_id)
    k = len(per_id)
    payloads = {}
    with RecordWriter(d / "train.rec") as w:
        w.write(0, pack(IRHeader(0, [n + 1, n + k + 1], 0, 0), b""))
        key = 1
        for lab, cnt in enumerate(per_id):
            for _ in range(cnt):
                p = (b"img%03d" % key) * 9
                if key == magic_in:
                    p = b"abcd" + MAGIC_BYTES + p  # a record that gets split
                payloads[key] = p
                w.write(key, pack(IRHeader(0, float(lab), key, 0), p))
                key += 1
        start = 1
        for j, cnt in enumerate(per_id):
            w.write(n + 1 + j, pack(IRHeader(0, [start, start + cnt], 0, 0), b""))
            start += cnt
    (d / "property").write_text(f"{k},112,112\n")
    return payloads


def test_verify_clean_pack(tmp_path):
    write_insightface(tmp_path)
    rep = rectools.verify(tmp_path / "train.rec")
    assert rep.ok, rep.problems
    assert (rep.records, rep.images, rep.identities, rep.layout, rep.num_classes, rep.split_records) == (
        10, 6, 3, "insightface", 3, 1)


def test_verify_reports_every_problem(tmp_path):
    write_insightface(tmp_path)
    rec = tmp_path / "train.rec"
    r = RecordReader(rec)
    offs = dict(r.offsets)
    r.close()
    data = bytearray(rec.read_bytes())
    # 1) bad magic on image key 4; 2) image key 3 gets a label outside its identity's range
    data[offs[4]] ^= 0xFF
    lab_pos = offs[3] + 8 + 4
    data[lab_pos:lab_pos + 4] = struct.pack("<f", 2.0)
    # 3) the file is truncated inside the last record
    data = data[:-6]
    rec.write_bytes(bytes(data))
    # 4) the idx points key 2 into the middle of a record
    lines = (tmp_path / "train.idx").read_text().splitlines()
    lines[2] = f"2\t{offs[2] + 12}"
    (tmp_path / "train.idx").write_text("\n".join(lines) + "\n")
    (tmp_path / "property").write_text("7,112,112\n")  # 5) wrong class count
    rep = rectools.verify(rec)
    text = "\n".join(rep.problems)
    assert not rep.ok
    assert f"offset {offs[4]}: bad magic" in text
    assert "truncated" in text
    assert f"key 2: offset {offs[2] + 12} is not the start of a record" in text
    assert "key 3: label 2.0 inside identity 0's range" in text
    assert "num_classes 7 but" in text
    assert all("\n" not in p and "train" in p for p in rep.problems)
    # resynchronised after the bad frame: the records after it were still read
    assert rep.records >= 7


def test_rebuild_idx_restores_the_original(tmp_path):
    write_insightface(tmp_path)
    original = (tmp_path / "train.idx").read_bytes()
    (tmp_path / "train.idx").unlink()
    assert not rectools.verify(tmp_path / "train.rec").ok  # missing idx is a problem
    assert rectools.rebuild_idx(tmp_path / "train.rec") == 10
    assert (tmp_path / "train.idx").read_bytes() == original
    (tmp_path / "train.idx").write_text("0\t0\n1\t8\n")  # a wrong idx is replaced too
    rectools.rebuild_idx(tmp_path / "train.rec")
    assert (tmp_path / "train.idx").read_bytes() == original
    with pytest.raises(RecordIOError, match="header id 0 repeats"):  # identity records all have id 0
        rectools.rebuild_idx(tmp_path / "train.rec", tmp_path / "by_id.idx", keys="id")
    with RecordWriter(tmp_path / "im2rec.rec", tmp_path / "im2rec.idx") as w:
        for k in (5, 3, 9):
            w.write(k, pack(IRHeader(0, 1.0, k, 0), b"img"))
    want = (tmp_path / "im2rec.idx").read_bytes()
    rectools.rebuild_idx(tmp_path / "im2rec.rec", tmp_path / "by_id.idx", keys="id")
    assert (tmp_path / "by_id.idx").read_bytes() == want


def test_rebuild_idx_stops_at_truncation(tmp_path):
    write_insightface(tmp_path)
    rec = tmp_path / "train.rec"
    rec.write_bytes(rec.read_bytes()[:-5])
    with pytest.raises(RecordIOError, match=r"train\.rec: offset \d+: truncated"):
        rectools.rebuild_idx(rec, tmp_path / "new.idx")
    assert not (tmp_path / "new.idx").exists()


def test_unpack_tree_and_plain_im2rec_pack(tmp_path):
    payloads = write_insightface(tmp_path / "p")
    info = rectools.unpack_tree(tmp_path / "p" / "train.rec", tmp_path / "tree")
    assert info["images"] == 6 and info["identities"] == 3
    assert sorted(p.name for p in (tmp_path / "tree").iterdir()) == ["0", "1", "2"]
    assert (tmp_path / "tree" / "0" / "2.jpg").read_bytes() == payloads[2]
    assert sorted(p.name for p in (tmp_path / "tree" / "2").iterdir()) == ["5.jpg", "6.jpg"]
    # a plain pack: no header record, vector labels [label, aligned] as face2rec2 writes them
    with RecordWriter(tmp_path / "plain.rec") as w:
        for k in range(4):
            w.write(k, pack(IRHeader(0, [float(k % 2), 1.0], k, 0), b"x%d" % k))
    r = RecordReader(tmp_path / "plain.rec")
    assert read_layout(r).kind == "plain" and read_layout(r).image_keys == [0, 1, 2, 3]
    rep = rectools.verify(tmp_path / "plain.rec")
    assert rep.ok and rep.layout == "plain" and rep.identities == 2
    st = rectools.stats(tmp_path / "plain.rec")
    assert st["classes"] == 2 and st["images_per_class"] == {"min": 2, "median": 2.0, "max": 2}


def test_label_that_is_not_a_number_is_reported(tmp_path):
    with RecordWriter(tmp_path / "x.rec") as w:
        w.write(0, pack(IRHeader(0, 1.0, 0, 0), b"a" * 8))
        w.write(1, pack(IRHeader(0, float("nan"), 1, 0), b"b" * 8))
        w.write(2, struct.pack("<IfQQ", 0, 2.5, 2, 0) + b"c")
    rep = rectools.verify(tmp_path / "x.rec")
    assert any("key 1: label nan is not a class number" in p for p in rep.problems)
    assert any("key 2: label 2.5 is not a class number" in p for p in rep.problems)
    with pytest.raises(RecordIOError, match="key 1: label nan"):
        rectools.unpack_tree(tmp_path / "x.rec", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "rectool.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_rectool_script(tmp_path):
    write_insightface(tmp_path)
    rec = str(tmp_path / "train.rec")
    ok = _tool("verify", rec, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["images"] == 6
    listed = _tool("list", rec, "--limit", "3")
    assert listed.returncode == 0
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [r[0] for r in rows] == ["0", "1", "2"] and rows[0][3] == "[7.0, 10.0]"
    st = _tool("stats", rec)
    assert st.returncode == 0 and json.loads(st.stdout)["property"] == [3, 112, 112]
    (tmp_path / "property").unlink()
    assert any("property file does not exist" in p for p in rectools.verify(tmp_path / "train.rec").problems)
    data = bytearray((tmp_path / "train.rec").read_bytes())
    data[40] ^= 0xFF
    (tmp_path / "train.rec").write_bytes(bytes(data))
    bad = _tool("verify", rec)
    assert bad.returncode == 1 and "problem(s)" in bad.stdout
    missing = _tool("stats", str(tmp_path / "nope.rec"))
    assert missing.returncode == 2 and "nope.rec: RecordIO file does not exist" in missing.stderr
