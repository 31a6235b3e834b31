"""arcpipe.recordio: the dmlc/mxnet RecordIO format, written and read without mxnet."""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
import pickle
import struct

import numpy as np
import pytest

from arcpipe.errors import PipelineError
from arcpipe.imageio import decode_rgb, encode_jpeg
from arcpipe.recordio import (
    MAGIC_BYTES, IRHeader, RecordIOError, RecordKeyError, RecordReader, RecordWriter,
    frame, label_of, pack, read_frame_at, unpack,
)

M = struct.pack("<I", 0xCED7230A)


def test_magic_is_little_endian_ced7230a():
    assert MAGIC_BYTES == b"\x0a\x23\xd7\xce" == M


def test_pack_scalar_label_layout():
    rec = pack(IRHeader(7, 3.0, 11, 12), b"jpeg")  # flag is forced to 0 for a number label
    assert rec == struct.pack("<IfQQ", 0, 3.0, 11, 12) + b"jpeg"
    h, p = unpack(rec)
    assert h == IRHeader(0, 3.0, 11, 12) and p == b"jpeg"
    assert isinstance(h.label, float)


def test_pack_vector_label_layout():
    rec = pack(IRHeader(0, [5, 9], 0, 0), b"")
    assert rec[:24] == struct.pack("<IfQQ", 2, 0.0, 0, 0)
    assert rec[24:] == np.array([5, 9], np.float32).tobytes()
    h, p = unpack(rec)
    assert h.flag == 2 and h.label.dtype == np.float32 and h.label.tolist() == [5.0, 9.0] and p == b""
    assert label_of(h) == 5.0
    assert label_of(unpack(pack(IRHeader(0, 4, 0, 0), b"x"))[0]) == 4.0


def test_unpack_rejects_short_records():
    with pytest.raises(ValueError):
        unpack(b"short")
    with pytest.raises(ValueError):  # flag says 3 floats, none follow
        unpack(struct.pack("<IfQQ", 3, 0, 0, 0))


def test_frame_of_whole_record_is_header_data_padding():
    assert frame(b"abcde") == M + struct.pack("<I", 5) + b"abcde" + b"\0\0\0"
    assert frame(b"abcd") == M + struct.pack("<I", 4) + b"abcd"
    assert frame(b"") == M + struct.pack("<I", 0)


def test_frame_splits_at_aligned_magic_only():
    rec = b"abcd" + M + b"efgh" + b"x" + M + b"yz"  # aligned at 4, unaligned at 13
    want = (M + struct.pack("<I", (1 << 29) | 4) + b"abcd"
            + M + struct.pack("<I", (3 << 29) | (len(rec) - 8)) + rec[8:] + b"\0" * ((-len(rec)) % 4))
    assert frame(rec) == want
    # magic at the very start: an empty first part; two in a row: an empty middle part
    rec2 = M + M + b"tail"
    want2 = (M + struct.pack("<I", 1 << 29) + M + struct.pack("<I", 2 << 29)
             + M + struct.pack("<I", (3 << 29) | 4) + b"tail")
    assert frame(rec2) == want2
    # a magic in the last, unaligned tail (beyond the last multiple of 4) is not split
    rec3 = b"ab" + M
    assert frame(rec3) == M + struct.pack("<I", 6) + rec3 + b"\0\0"


@pytest.mark.parametrize("seed", range(6))
def test_frames_round_trip_with_random_magics(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 200))
    data = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    for pos in rng.integers(0, max(n - 3, 1), int(rng.integers(0, 6))):
        data[pos:pos + 4] = M
    rec = bytes(data[:n])
    buf = frame(rec) + frame(b"next")
    got, nxt = read_frame_at(buf, 0)
    assert got == rec
    assert read_frame_at(buf, nxt) == (b"next", len(buf))


def _write(path, items, idx=None):
    with RecordWriter(path, idx) as w:
        for k, rec in items:
            w.write(k, rec)
    return w


def test_writer_reader_round_trip(tmp_path):
    items = [(k, pack(IRHeader(0, float(k % 3), k, 0), bytes([k]) * (k * 7) + (M if k % 2 else b"")))
             for k in range(40)]
    items[5] = (5, pack(IRHeader(0, 1.0, 5, 0), M * 10))  # split many times
    w = _write(tmp_path / "t.rec", items)
    assert w.splits >= 1 and len(w) == 40
    idx_lines = (tmp_path / "t.idx").read_text().splitlines()
    assert idx_lines[0] == "0\t0" and all(len(line.split("\t")) == 2 for line in idx_lines)
    r = RecordReader(tmp_path / "t.rec")
    assert r.idx_path == tmp_path / "t.idx"
    assert r.keys == list(range(40)) and len(r) == 40 and 5 in r and 40 not in r
    for k, rec in items:
        assert r.read(k) == rec
    assert list(r) == [rec for _, rec in items]
    assert [k for k, _ in r.items()] == list(range(40))
    h, payload = r.unpack(5)
    assert payload == M * 10 and h.label == 1.0


def test_offsets_match_idx_and_frames_are_4_aligned(tmp_path):
    items = [(k, pack(IRHeader(0, 0.0, k, 0), b"z" * k)) for k in range(9)]
    _write(tmp_path / "a.rec", items)
    r = RecordReader(tmp_path / "a.rec")
    scanned = [off for off, _ in r.scan()]
    assert scanned == [r.offsets[k] for k in r.keys]
    assert all(off % 4 == 0 for off in scanned)
    assert (tmp_path / "a.rec").stat().st_size % 4 == 0


def test_reader_without_idx_scans_and_uses_positions(tmp_path):
    items = [(100 + k, pack(IRHeader(0, 1.0, k, 0), b"p%d" % k)) for k in range(5)]
    _write(tmp_path / "a.rec", items, idx=tmp_path / "elsewhere.idx")
    r = RecordReader(tmp_path / "a.rec")
    assert r.idx_path is None and r.keys == [0, 1, 2, 3, 4]
    assert r.read(3) == items[3][1]
    r2 = RecordReader(tmp_path / "a.rec", tmp_path / "elsewhere.idx")
    assert r2.keys == [100, 101, 102, 103, 104] and r2.read(103) == items[3][1]


def test_non_sequential_keys_and_duplicates(tmp_path):
    _write(tmp_path / "a.rec", [(5, b"a" * 24), (2, b"b" * 24), (9, b"c" * 24)])
    r = RecordReader(tmp_path / "a.rec")
    assert r.keys == [5, 2, 9] and r.read(2) == b"b" * 24
    with pytest.raises(ValueError, match="key 2 was written more than once"):
        _write(tmp_path / "d.rec", [(1, b"x"), (2, b"y"), (2, b"z")])
    assert not (tmp_path / "d.rec").exists() and not (tmp_path / "d.idx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.idx", "a.rec"]


def test_writer_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with RecordWriter(tmp_path / "x.rec") as w:
            w.write(0, b"a" * 30)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError):
        with RecordWriter(tmp_path / "x.rec") as w:
            w.write("1", b"a")
    assert list(tmp_path.iterdir()) == []


def test_missing_key_error_names_file_and_key(tmp_path):
    _write(tmp_path / "a.rec", [(0, b"q" * 24)])
    r = RecordReader(tmp_path / "a.rec")
    with pytest.raises(RecordKeyError, match=r"a\.idx: key 7 is not in the index"):
        r.read(7)
    with pytest.raises(KeyError):  # also a KeyError for mapping-style callers
        r.read(7)


def test_truncated_rec_is_one_clear_error(tmp_path):
    items = [(k, pack(IRHeader(0, 1.0, k, 0), b"x" * 50)) for k in range(3)]
    _write(tmp_path / "a.rec", items)
    data = (tmp_path / "a.rec").read_bytes()
    (tmp_path / "a.rec").write_bytes(data[:-10])
    r = RecordReader(tmp_path / "a.rec")
    assert r.read(0) == items[0][1]
    with pytest.raises(RecordIOError, match=r"a\.rec: offset \d+: truncated record .*key 2"):
        r.read(2)
    with pytest.raises(RecordIOError, match="truncated"):
        list(r)
    assert isinstance(RecordIOError("x"), PipelineError)


def test_idx_into_middle_of_record_and_bad_magic(tmp_path):
    items = [(k, pack(IRHeader(0, 1.0, k, 0), b"x" * 50)) for k in range(3)]
    _write(tmp_path / "a.rec", items)
    (tmp_path / "a.idx").write_text("0\t0\n1\t20\n2\t999999\n")
    r = RecordReader(tmp_path / "a.rec")
    with pytest.raises(RecordIOError, match=r"a\.rec: offset 20: bad magic .*key 1"):
        r.read(1)
    with pytest.raises(RecordIOError, match="offset 999999: past the end"):
        r.read(2)
    data = bytearray((tmp_path / "a.rec").read_bytes())
    data[0] ^= 0xFF
    (tmp_path / "a.rec").write_bytes(bytes(data))
    with pytest.raises(RecordIOError, match="offset 0: bad magic"):
        RecordReader(tmp_path / "a.rec").read(0)


def test_bad_idx_line_names_line(tmp_path):
    _write(tmp_path / "a.rec", [(0, b"q" * 24)])
    (tmp_path / "a.idx").write_text("0\t0\nzz\t4\n")
    with pytest.raises(RecordIOError, match=r"a\.idx: line 2: expected 'key<TAB>offset'"):
        RecordReader(tmp_path / "a.rec").keys
    with pytest.raises(RecordIOError, match="does not exist"):
        RecordReader(tmp_path / "missing.rec")


def _child_read(reader, key, q):
    q.put(reader.read(key))


def test_reader_survives_pickle_and_fork(tmp_path):
    items = [(k, pack(IRHeader(0, 1.0, k, 0), b"%05d" % k * 20)) for k in range(20)]
    _write(tmp_path / "a.rec", items)
    r = RecordReader(tmp_path / "a.rec")
    assert r.read(3) == items[3][1]  # opened in the parent
    clone = pickle.loads(pickle.dumps(r))
    assert clone.read(4) == items[4][1]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_read, args=(r, 17, q))
    p.start()
    got = q.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0 and got == items[17][1]
    assert r.read(17) == items[17][1]


def test_jpeg_helpers_round_trip_rgb_order():
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0] = 200  # red in RGB
    back = decode_rgb(encode_jpeg(img, 95))
    assert back.shape == (16, 16, 3) and back[..., 0].mean() > 150 and back[..., 2].mean() < 50
    with pytest.raises(ValueError):
        decode_rgb(b"not an image")


def test_write_images_gives_the_same_bytes_as_write(tmp_path):
    rng = np.random.default_rng(3)
    payloads = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in rng.integers(0, 300, 50)]
    payloads[7] = b"abcd" + M + b"efgh"  # forces the split path for its chunk
    keys = list(range(1, 51))
    labels = [float(k % 4) for k in keys]
    with RecordWriter(tmp_path / "a.rec") as w:
        for k, lab, p in zip(keys, labels, payloads):
            w.write(k, pack(IRHeader(0, lab, k, 0), p))
    with RecordWriter(tmp_path / "b.rec", durable=False) as w:
        w.write_images(keys[:20], labels[:20], payloads[:20], chunk=8)
        w.write_images(keys[20:], labels[20:], payloads[20:])
    assert (tmp_path / "a.rec").read_bytes() == (tmp_path / "b.rec").read_bytes()
    assert (tmp_path / "a.idx").read_bytes() == (tmp_path / "b.idx").read_bytes()
    r = RecordReader(tmp_path / "b.rec")
    h, p = r.unpack(8)
    assert p == payloads[7] and h == IRHeader(0, labels[7], 8, 0)
    with pytest.raises(ValueError, match="more than once"):
        with RecordWriter(tmp_path / "c.rec") as w:
            w.write_images([1, 2], [0, 0], [b"a", b"b"])
            w.write_images([2], [0], [b"c"])
    assert not (tmp_path / "c.rec").exists()


@pytest.mark.parametrize("where", ["tmp", "shm"])
def test_direct_and_plain_writes_give_the_same_file(tmp_path, where, monkeypatch):
    import os
    import tempfile

    from arcpipe.recordio import writer

    monkeypatch.setattr(writer._RecSink, "CAP", 1 << 20)  # many buffer rotations, small test
    monkeypatch.setattr(writer, "_CHUNK_BYTES", 200_000)

    if where == "shm":
        if not os.path.isdir("/dev/shm"):
            pytest.skip("no /dev/shm on this machine")
        base = Path(tempfile.mkdtemp(dir="/dev/shm"))  # tmpfs: no O_DIRECT, the writer falls back
    else:
        base = tmp_path
    try:
        rng = np.random.default_rng(11)
        blob = rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes()
        sizes = rng.integers(1, 300_000, 70)  # ~10 MB: more than one 8 MiB staging buffer
        payloads = [blob[:int(n)] for n in sizes]
        for direct in (True, False):
            with RecordWriter(base / f"{direct}.rec", direct=direct) as w:
                w.write_images(range(50), [1.0] * 50, payloads[:50], chunk=7)
                for k in range(50, 70):
                    w.write(k, pack(IRHeader(0, 2.0, k, 0), payloads[k]))
        a, b = (base / "True.rec").read_bytes(), (base / "False.rec").read_bytes()
        assert len(a) > 8 << 20 and a == b
        assert (base / "True.idx").read_bytes() == (base / "False.idx").read_bytes()
        r = RecordReader(base / "True.rec")
        assert r.unpack(69)[1] == payloads[69] and r.unpack(3)[1] == payloads[3]
    finally:
        if where == "shm":
            import shutil

            shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("relabel", [False, True])
def test_append_pack_gives_the_bytes_of_writing_each_record(tmp_path, relabel):
    """Merging parts by copying their bytes (labels patched in place) equals writing every record
    again: plain records take the copy, a record split by the magic number and a vector label
    take the record-by-record path, and idx offsets shift by what came before."""
    rng = np.random.default_rng(1)
    recs = [[(k, float(k % 3), rng.integers(0, 256, 40 + 7 * k, dtype=np.uint8).tobytes()) for k in range(1, 30)],
            [(k, 2.0, rng.integers(0, 256, 64, dtype=np.uint8).tobytes()) for k in range(30, 40)]]
    recs[1][3] = (33, 1.0, b"ab" + M + b"cd" * 5 + M)  # holds the magic: written split
    parts = []
    for i, part in enumerate(recs):
        rec = tmp_path / f"part{i}.rec"
        with RecordWriter(rec) as w:
            for k, lab, payload in part:
                w.write(k, pack(IRHeader(0, lab, k, 0), payload))
        parts.append(rec)
    vec = tmp_path / "vec.rec"
    with RecordWriter(vec) as w:
        w.write(40, pack(IRHeader(2, [4.0, 5.0], 40, 0), b"v" * 9))
    parts.append(vec)
    flat = [r for part in recs for r in part]
    new = {k: (7.0 - lab if relabel else lab) for k, lab, _ in flat}
    new[40] = 9.0
    expect = tmp_path / "expect.rec"
    with RecordWriter(expect) as w:
        for k, lab, payload in flat:
            w.write(k, pack(IRHeader(0, new[k], k, 0), payload))
        w.write(40, pack(IRHeader(0, 9.0, 40, 0), b"v" * 9))
    got = tmp_path / "got.rec"
    with RecordWriter(got) as w:
        for rec in parts:
            keys = [int(x.split()[0]) for x in rec.with_suffix(".idx").read_text().splitlines()]
            assert w.append_pack(rec, labels=[new[k] for k in keys]) == len(keys)
    assert got.read_bytes() == expect.read_bytes()
    assert got.with_suffix(".idx").read_bytes() == expect.with_suffix(".idx").read_bytes()
    r = RecordReader(got)
    assert unpack(r.read(33))[1] == b"ab" + M + b"cd" * 5 + M
