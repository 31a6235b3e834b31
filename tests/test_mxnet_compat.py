"""Byte compatibility with the real mxnet 1.9.1 (numpy 1.23.5), run in a side venv as a subprocess.

(mxnet.recordio.unpack_img needs cv2 in that venv.) The reference python: $ARCPIPE_MXNET_PYTHON, else
<repo>/.venv-mxnet/bin/python, which `make test` (or `make mxnet-ref`) builds from
benchmarks/reference/requirements-mxnet.txt. Without it these tests skip; under CI=true they fail
(tests/conftest.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from arcpipe.imageio import decode_rgb, encode_jpeg
from arcpipe.recordio import MAGIC_BYTES, IRHeader, RecordReader, RecordWriter, pack, unpack

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.reference


def _mxnet_python() -> str | None:
    env = os.environ.get("ARCPIPE_MXNET_PYTHON")
    cand = Path(env) if env else REPO / ".venv-mxnet" / "bin" / "python"
    return str(cand) if cand.is_file() else None


MX_PY = _mxnet_python()
MX_WHERE = os.environ.get("ARCPIPE_MXNET_PYTHON") or str(REPO / ".venv-mxnet" / "bin" / "python")
needs_mxnet = pytest.mark.skipif(
    MX_PY is None,
    reason=f"mxnet reference venv not found: no python at {MX_WHERE} "
           "(build it with `make mxnet-ref`, or set ARCPIPE_MXNET_PYTHON)",
)

# The mxnet side: reads or writes a .rec described by a JSON spec, prints JSON.
MX_SCRIPT = textwrap.dedent('''
    import hashlib, json, sys
    import numpy as np
    import mxnet as mx
    mode, spec_path, rec, idx = sys.argv[1:5]
    if mode == "write":
        spec = json.load(open(spec_path))
        w = mx.recordio.MXIndexedRecordIO(idx, rec, "w")
        for item in spec:
            h = mx.recordio.IRHeader(0, item["label"], item["id"], item["id2"])
            w.write_idx(item["key"], mx.recordio.pack(h, bytes.fromhex(item["payload"])))
        w.close()
        print(json.dumps({"version": mx.__version__}))
    else:
        r = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
        out = []
        for k in r.keys:
            s = r.read_idx(k)
            h, payload = mx.recordio.unpack(s)
            lab = h.label.tolist() if isinstance(h.label, np.ndarray) else float(h.label)
            item = {"key": int(k), "flag": int(h.flag), "label": lab, "id": int(h.id), "id2": int(h.id2),
                    "sha": hashlib.sha256(payload).hexdigest(), "n": len(payload)}
            if item["key"] >= 1000:  # image records: decode them the mxnet way (BGR from cv2)
                _, img = mx.recordio.unpack_img(s)
                item["img_sum_bgr"] = [int(v) for v in img.reshape(-1, 3).sum(0)]
            out.append(item)
        seq = mx.recordio.MXRecordIO(rec, "r")
        n = 0
        while seq.read() is not None:
            n += 1
        print(json.dumps({"version": mx.__version__, "items": out, "sequential": n}))
''')


def _run_mx(tmp_path: Path, *args: str) -> dict:
    script = tmp_path / "mx_side.py"
    script.write_text(MX_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([MX_PY, str(script), *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"mxnet side failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _spec() -> list[dict]:
    """Records that exercise every corner: scalar/vector labels, magic inside, images, empty."""
    import hashlib

    rng = np.random.default_rng(7)
    items = [{"key": 0, "label": [1000.0, 1003.0], "id": 0, "id2": 0, "payload": ""}]
    for j, n in enumerate([0, 1, 2, 3, 4, 5, 17, 100, 4099]):
        items.append({"key": j + 1, "label": float(j) - 0.5, "id": j, "id2": 2**40 + j,
                      "payload": rng.integers(0, 256, n, dtype=np.uint8).tobytes().hex()})
    magic_payloads = [MAGIC_BYTES, b"ab" + MAGIC_BYTES, b"abcd" + MAGIC_BYTES * 3 + b"z",
                      MAGIC_BYTES * 2 + b"abcdefgh" + MAGIC_BYTES, b"x" * 28 + MAGIC_BYTES + b"x" * 9]
    for j, p in enumerate(magic_payloads):
        items.append({"key": 100 + j, "label": [float(j), 1.0], "id": 100 + j, "id2": 0, "payload": p.hex()})
    for j in range(3):
        img = (rng.random((112, 112, 3)) * 255).astype(np.uint8)
        items.append({"key": 1000 + j, "label": float(j), "id": 1000 + j, "id2": 0,
                      "payload": encode_jpeg(img, 95).hex()})
    assert hashlib  # payload hashes are compared below
    return items


def _write_ours(spec: list[dict], rec: Path) -> None:
    with RecordWriter(rec) as w:
        for it in spec:
            w.write(it["key"], pack(IRHeader(0, it["label"], it["id"], it["id2"]), bytes.fromhex(it["payload"])))


@needs_mxnet
def test_mxnet_reads_what_we_write(tmp_path):
    import hashlib

    spec = _spec()
    _write_ours(spec, tmp_path / "ours.rec")
    got = _run_mx(tmp_path, "read", "-", str(tmp_path / "ours.rec"), str(tmp_path / "ours.idx"))
    assert got["version"] == "1.9.1"
    assert got["sequential"] == len(spec)
    by_key = {it["key"]: it for it in got["items"]}
    assert sorted(by_key) == sorted(it["key"] for it in spec)
    for it in spec:
        m = by_key[it["key"]]
        payload = bytes.fromhex(it["payload"])
        assert m["sha"] == hashlib.sha256(payload).hexdigest(), it["key"]
        assert (m["id"], m["id2"]) == (it["id"], it["id2"])
        if isinstance(it["label"], list):
            assert m["flag"] == len(it["label"]) and m["label"] == it["label"]
        else:
            assert m["flag"] == 0 and m["label"] == float(np.float32(it["label"]))
        if it["key"] >= 1000:  # mxnet's unpack_img gives BGR; ours RGB of the same pixels
            rgb = decode_rgb(payload)
            assert m["img_sum_bgr"] == [int(v) for v in rgb[..., ::-1].reshape(-1, 3).sum(0)]


@needs_mxnet
def test_we_read_what_mxnet_writes_and_write_the_same_bytes(tmp_path):
    spec = _spec()
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    _run_mx(tmp_path, "write", str(tmp_path / "spec.json"), str(tmp_path / "mx.rec"), str(tmp_path / "mx.idx"))
    r = RecordReader(tmp_path / "mx.rec")
    assert r.keys == [it["key"] for it in spec]
    for it in spec:
        h, payload = unpack(r.read(it["key"]))
        assert payload == bytes.fromhex(it["payload"])
        assert (h.id, h.id2) == (it["id"], it["id2"])
        if isinstance(it["label"], list):
            assert h.flag == len(it["label"]) and h.label.tolist() == it["label"]
        else:
            assert h.flag == 0 and h.label == float(np.float32(it["label"]))
    assert len(list(r)) == len(spec)
    _write_ours(spec, tmp_path / "ours.rec")
    assert (tmp_path / "ours.rec").read_bytes() == (tmp_path / "mx.rec").read_bytes()
    assert (tmp_path / "ours.idx").read_bytes() == (tmp_path / "mx.idx").read_bytes()


def _pytest_sub(node: str, **env: str) -> subprocess.CompletedProcess:
    """One test of this suite in a fresh pytest process, CI unset unless given."""
    e = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    e.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", node, "-p", "no:cacheprovider", "-q", "-rfs"],
                          cwd=REPO, env=e, capture_output=True, text=True, timeout=300)


def test_missing_reference_skips_locally_and_fails_under_ci(tmp_path):
    """The real compat test, pointed at a python that does not exist: it skips, saying where it
    looked, and under CI=true the same test fails with that reason (tests/conftest.py)."""
    node = "tests/test_mxnet_compat.py::test_mxnet_reads_what_we_write"
    missing = str(tmp_path / "nowhere" / "bin" / "python")
    local = _pytest_sub(node, ARCPIPE_MXNET_PYTHON=missing)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    assert "1 skipped" in local.stdout and missing in local.stdout, local.stdout[-3000:]
    ci = _pytest_sub(node, ARCPIPE_MXNET_PYTHON=missing, CI="true")
    assert ci.returncode == 1, ci.stdout[-3000:] + ci.stderr[-3000:]
    # the skip is decided at set-up, so pytest counts the failure as an error there
    assert "1 error" in ci.stdout.splitlines()[-1] and "skipped" not in ci.stdout.splitlines()[-1], ci.stdout[-3000:]
    assert "could not run under CI=true" in ci.stdout and missing in ci.stdout, ci.stdout[-3000:]
