"""The download stage against a real HTTP server on 127.0.0.1 (its own handler: Range support, a
connection dropped mid-file, Range ignored): a full download checked by sha256; a resume after a
drop that sends a Range header, within one run and across runs; a wrong checksum or size refused
with the partial file removed; a set in place not fetched again (the server sees no request) and a
changed one re-hashed; file:, file:// and plain paths; fsspec protocols (memory://, a missing
plugin named); sets placed by hand reported one line each, then accepted; archives extracted."""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import Field, ValidationError

from arcpipe.download import download_all
from arcpipe.errors import PipelineError
from arcpipe.params.download import DownloadItem, DownloadParams
from arcpipe.params.schema import Params
from arcpipe.runner import StageContext
from arcpipe.stages import download as download_stage

DATA = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: more than one read chunk


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.drop_once: set[str] = set()    # send half the body, then close the connection
        self.fail_once: dict[str, int] = {}  # answer this status once
        self.ignore_range = False

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up early is expected
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append({"path": self.path, "range": rng})
        data = srv.files.get(self.path)
        if data is None or self.path in srv.fail_once:
            self.send_error(srv.fail_once.pop(self.path, 404))
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and not srv.ignore_range:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in srv.drop_once:
            srv.drop_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def log():
    logger = logging.getLogger("test_download")
    logger.propagate = False
    h = Lines()
    logger.addHandler(h)
    logger.lines = h.lines
    yield logger
    logger.removeHandler(h)


def section(tmp: Path, retries: int = 2, **datasets) -> DownloadParams:
    return DownloadParams.model_validate({"out_dir": str(tmp / "dl"), "retries": retries, "backoff_s": 0.001,
                                          "timeout_s": 5.0, "datasets": datasets})


def test_full_download_is_checked_and_in_the_manifest(tmp_path, server, log):
    server.files["/d/set.bin"] = DATA
    res = download_all(section(tmp_path, a={"url": server.url("/d/set.bin"), "sha256": sha(DATA),
                                            "size": len(DATA)}), log)
    got = tmp_path / "dl" / "a" / "set.bin"
    assert got.read_bytes() == DATA and not (tmp_path / "dl/a/set.bin.part").exists()
    assert res["fetched"] == ["a"] and res["present"] == []
    man = json.loads((tmp_path / "dl" / "manifest.json").read_text())["datasets"]
    assert man == {"a": {"file": got.as_posix(), "sha256": sha(DATA), "size": len(DATA),
                         "url": server.url("/d/set.bin"), "source": server.url("/d/set.bin"), "extracted": None}}
    assert [r["range"] for r in server.requests] == [None]


def test_a_dropped_connection_resumes_with_a_range_request(tmp_path, server, log):
    server.files["/big.bin"] = DATA
    server.drop_once.add("/big.bin")
    download_all(section(tmp_path, big={"url": server.url("/big.bin"), "sha256": sha(DATA)}), log)
    assert (tmp_path / "dl/big/big.bin").read_bytes() == DATA
    half = (len(DATA)) // 2
    assert [r["range"] for r in server.requests] == [None, f"bytes={half}-"]
    assert any("connection closed at byte" in line for line in log.lines)


def test_the_part_file_is_kept_between_runs_and_resumed(tmp_path, server, log):
    server.files["/big.bin"] = DATA
    server.drop_once.add("/big.bin")
    params = section(tmp_path, retries=0, big={"url": server.url("/big.bin"), "sha256": sha(DATA)})
    with pytest.raises(PipelineError, match=r"data set big: .*gave up after 1 attempt.*a rerun resumes"):
        download_all(params, log)
    part = tmp_path / "dl/big/big.bin.part"
    assert part.stat().st_size == len(DATA) // 2 and not (tmp_path / "dl/big/big.bin").exists()
    download_all(params, log)
    assert (tmp_path / "dl/big/big.bin").read_bytes() == DATA and not part.exists()
    assert server.requests[-1]["range"] == f"bytes={len(DATA) // 2}-"


def test_a_server_that_ignores_range_restarts_from_zero(tmp_path, server, log):
    server.files["/big.bin"] = DATA
    server.drop_once.add("/big.bin")
    server.ignore_range = True
    download_all(section(tmp_path, big={"url": server.url("/big.bin"), "sha256": sha(DATA)}), log)
    assert (tmp_path / "dl/big/big.bin").read_bytes() == DATA
    assert [r["range"] for r in server.requests] == [None, f"bytes={len(DATA) // 2}-"]


def test_a_whole_part_file_gets_416_and_is_verified(tmp_path, server, log):
    server.files["/f.bin"] = DATA
    part = tmp_path / "dl/f/f.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA)
    download_all(section(tmp_path, f={"url": server.url("/f.bin"), "sha256": sha(DATA)}), log)
    assert (tmp_path / "dl/f/f.bin").read_bytes() == DATA
    assert [r["range"] for r in server.requests] == [f"bytes={len(DATA)}-"]


def test_a_wrong_checksum_is_refused_and_the_part_removed(tmp_path, server, log):
    server.files["/f.bin"] = DATA
    wrong = sha(b"something else")
    with pytest.raises(PipelineError) as e:
        download_all(section(tmp_path, f={"url": server.url("/f.bin"), "sha256": wrong}), log)
    msg = str(e.value)
    assert "\n" not in msg and "data set f" in msg and f"expected {wrong}" in msg and f"got {sha(DATA)}" in msg
    assert not (tmp_path / "dl/f/f.bin.part").exists() and not (tmp_path / "dl/f/f.bin").exists()
    assert not (tmp_path / "dl/manifest.json").exists()


def test_a_wrong_size_is_refused_before_the_body(tmp_path, server, log):
    server.files["/f.bin"] = DATA
    with pytest.raises(PipelineError, match=rf"data set f: .*server says {len(DATA)} bytes, the params say size 10"):
        download_all(section(tmp_path, f={"url": server.url("/f.bin"), "sha256": sha(DATA), "size": 10}), log)
    assert not (tmp_path / "dl/f/f.bin").exists()


def test_a_server_error_is_retried_with_backoff(tmp_path, server, log):
    server.files["/f.bin"] = DATA
    server.fail_once["/f.bin"] = 503
    download_all(section(tmp_path, f={"url": server.url("/f.bin"), "sha256": sha(DATA)}), log)
    assert (tmp_path / "dl/f/f.bin").read_bytes() == DATA and len(server.requests) == 2
    assert any("HTTP 503" in line and "attempt 2 of 3" in line for line in log.lines)


def test_http_404_fails_at_once_naming_the_set(tmp_path, server, log):
    with pytest.raises(PipelineError, match=r"data set gone: http://.*/nothing\.bin: HTTP 404"):
        download_all(section(tmp_path, gone={"url": server.url("/nothing.bin"), "sha256": sha(b"")}), log)
    assert len(server.requests) == 1


def test_a_set_in_place_is_not_fetched_again_and_a_changed_one_is_rehashed(tmp_path, server, log):
    server.files["/f.bin"] = DATA
    params = section(tmp_path, f={"url": server.url("/f.bin"), "sha256": sha(DATA)})
    download_all(params, log)
    server.requests.clear()
    res = download_all(params, log)
    assert server.requests == [] and res["present"] == ["f"] and res["fetched"] == []
    got = tmp_path / "dl/f/f.bin"
    os.utime(got, ns=(1, 1))  # same bytes, another mtime: re-hashed, still in place
    assert download_all(params, log)["present"] == ["f"] and server.requests == []
    state = json.loads((tmp_path / "dl/f/f.bin.state.json").read_text())
    assert state["mtime_ns"] == 1 and state["sha256"] == sha(DATA)
    got.write_bytes(b"x" * len(DATA))  # the same size, other bytes: fetched again
    assert download_all(params, log)["fetched"] == ["f"] and got.read_bytes() == DATA
    assert len(server.requests) == 1


def test_local_paths_file_urls_and_relative_file_urls(tmp_path, monkeypatch, log):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(DATA)
    monkeypatch.chdir(tmp_path)
    res = download_all(section(tmp_path, plain={"url": str(src / "a.bin"), "sha256": sha(DATA)},
                               uri={"url": (src / "a.bin").as_uri(), "sha256": sha(DATA), "dest": "b.bin"},
                               rel={"url": "file:src/a.bin", "sha256": sha(DATA), "size": len(DATA)}), log)
    assert res["fetched"] == ["plain", "uri", "rel"]
    for f in ("plain/a.bin", "uri/b.bin", "rel/a.bin"):
        assert (tmp_path / "dl" / f).read_bytes() == DATA
    assert (src / "a.bin").read_bytes() == DATA
    with pytest.raises(PipelineError, match=r"data set x: file:src/missing\.bin: src/missing\.bin does not exist"):
        download_all(section(tmp_path, x={"url": "file:src/missing.bin", "sha256": sha(DATA)}), log)


def test_fsspec_protocols_and_a_missing_plugin(tmp_path, log):
    fsspec = pytest.importorskip("fsspec")
    mem = fsspec.filesystem("memory")
    mem.pipe("/arcpipe-test/m.bin", DATA)
    try:
        download_all(section(tmp_path, m={"url": "memory://arcpipe-test/m.bin", "sha256": sha(DATA)}), log)
    finally:
        mem.rm("/arcpipe-test", recursive=True)
    assert (tmp_path / "dl/m/m.bin").read_bytes() == DATA
    with pytest.raises(PipelineError, match=r"data set u: nosuch://x/y\.bin: unknown protocol 'nosuch'"):
        download_all(section(tmp_path, u={"url": "nosuch://x/y.bin", "sha256": sha(DATA)}), log)
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(PipelineError) as e:
            download_all(section(tmp_path, s={"url": "s3://bucket/y.bin", "sha256": sha(DATA)}), log)
        assert str(e.value) == ("data set s: s3://bucket/y.bin: protocol 's3' needs the fsspec plugin s3fs: "
                                "pip install s3fs")


def test_sets_placed_by_hand_are_reported_then_accepted(tmp_path, server, monkeypatch, log):
    monkeypatch.chdir(tmp_path)
    server.files["/pub.bin"] = DATA
    placed = b"only from the authors"
    sets = {
        "pub": {"url": server.url("/pub.bin"), "sha256": sha(DATA)},
        "ms1mv2": {"url": None, "manual": "the insightface dataset zoo", "path": "manual/faces_emore.zip",
                   "sha256": sha(placed), "extract": False},
        "ijbc": {"url": None, "manual": "NIST, by request", "path": "manual/IJB-C.tar.gz", "sha256": sha(placed),
                 "extract": False},
    }
    with pytest.raises(PipelineError, match=r"^2 data sets to place by hand: ms1mv2, ijbc \(") as e:
        download_all(section(tmp_path, **sets), log)
    assert "\n" not in str(e.value)
    missing = [line for line in log.lines if "is missing" in line]
    assert missing == [
        f"data set ms1mv2: manual/faces_emore.zip is missing: get it from the insightface dataset zoo and put it "
        f"at manual/faces_emore.zip (sha256 {sha(placed)})",
        f"data set ijbc: manual/IJB-C.tar.gz is missing: get it from NIST, by request and put it at "
        f"manual/IJB-C.tar.gz (sha256 {sha(placed)})",
    ]
    assert (tmp_path / "dl/pub/pub.bin").read_bytes() == DATA  # the rest was brought in all the same
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual/faces_emore.zip").write_bytes(placed)
    (tmp_path / "manual/IJB-C.tar.gz").write_bytes(b"a wrong file")
    log.lines.clear()
    with pytest.raises(PipelineError, match=r"^1 data set to place by hand: ijbc "):
        download_all(section(tmp_path, **sets), log)
    assert [line for line in log.lines if line.startswith("data set ijbc")] == [
        f"data set ijbc: manual/IJB-C.tar.gz has sha256 {sha(b'a wrong file')}, expected {sha(placed)}: "
        f"get it from NIST, by request and put it at manual/IJB-C.tar.gz"]
    assert (tmp_path / "manual/IJB-C.tar.gz").read_bytes() == b"a wrong file"
    assert not (tmp_path / "dl/ijbc").exists() or os.listdir(tmp_path / "dl/ijbc") == []
    (tmp_path / "manual/IJB-C.tar.gz").write_bytes(placed)
    res = download_all(section(tmp_path, **sets), log)
    assert res["present"] == ["pub", "ms1mv2"] and res["fetched"] == ["ijbc"]
    assert (tmp_path / "dl/ijbc/IJB-C.tar.gz").read_bytes() == placed
    assert res["datasets"]["ms1mv2"]["source"] == "manual/faces_emore.zip" and res["datasets"]["ms1mv2"]["url"] is None


def tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_archives_are_extracted_once_and_a_hostile_one_refused(tmp_path, server, log):
    good = tgz({"lfw/a/1.jpg": b"one", "lfw/b/2.jpg": b"two"})
    server.files["/lfw.tgz"] = good
    params = section(tmp_path, lfw={"url": server.url("/lfw.tgz"), "sha256": sha(good)})
    res = download_all(params, log)
    out = tmp_path / "dl/lfw/lfw"
    assert (out / "lfw/a/1.jpg").read_bytes() == b"one" and (out / "lfw/b/2.jpg").read_bytes() == b"two"
    assert res["datasets"]["lfw"]["extracted"] == {"dir": out.as_posix(), "files": 2, "dirs": 0, "symlinks": 0,
                                                   "hardlinks": 0, "bytes": 6}
    ino = os.stat(out / "lfw/a/1.jpg").st_ino
    download_all(params, log)
    assert os.stat(out / "lfw/a/1.jpg").st_ino == ino  # not extracted again
    no_extract = section(tmp_path, lfw={"url": server.url("/lfw.tgz"), "sha256": sha(good), "extract": False})
    assert download_all(no_extract, log)["datasets"]["lfw"]["extracted"] is None and not out.exists()
    bad = tgz({"ok.txt": b"ok", "../../escape.txt": b"pwned"})
    server.files["/bad.tar.gz"] = bad
    with pytest.raises(PipelineError, match=r"bad\.tar\.gz: member '\.\./\.\./escape\.txt'"):
        download_all(section(tmp_path, bad={"url": server.url("/bad.tar.gz"), "sha256": sha(bad)}), log)
    assert sorted(os.listdir(tmp_path / "dl/bad")) == ["bad.tar.gz"] and not (tmp_path / "escape.txt").exists()


def test_params_are_checked():
    ok = {"url": "https://x/y.zip", "sha256": "A" * 64}
    assert DownloadItem.model_validate(ok).sha256 == "a" * 64
    bad = [
        {**ok, "sha256": "abc"},
        {"url": None, "sha256": "a" * 64},
        {"url": None, "manual": "somewhere", "sha256": "a" * 64},
        {**ok, "manual": "somewhere"},
        {**ok, "dest": "../y.zip"},
        {**ok, "extract": "yes"},
    ]
    for item in bad:
        with pytest.raises(ValidationError):
            DownloadItem.model_validate(item)
    with pytest.raises(ValidationError, match="names a folder"):
        DownloadParams.model_validate({"datasets": {"../up": ok}})


def test_extract_true_needs_an_archive_name(tmp_path, log):
    with pytest.raises(PipelineError, match=r"download\.datasets\.x: extract is true but 'y\.bin'"):
        download_all(section(tmp_path, x={"url": "https://example.invalid/y.bin", "sha256": "a" * 64,
                                          "extract": True}), log)


class _WithDownload(Params):
    """The root schema with the download section, as params/schema.py will have it."""

    download: DownloadParams = Field(default_factory=DownloadParams)


def test_the_stage_writes_summary_and_manifest(tmp_path, server, log):
    server.files["/a.bin"] = DATA
    params = _WithDownload(download=section(tmp_path, a={"url": server.url("/a.bin"), "sha256": sha(DATA)}))
    ctx = StageContext("download", params, [], None, 1, argparse.Namespace(), log)
    counts = download_stage.run(ctx)
    assert counts["fetched"] == ["a"] and counts["in"] == counts["out"] == 1
    summary = json.loads((tmp_path / "dl/summary.json").read_text())
    assert summary["stage"] == "download" and summary["bytes"] == len(DATA) and "fetched" not in summary
    assert (tmp_path / "dl/manifest.json").is_file()
    assert download_stage.run(ctx)["present"] == ["a"] and len(server.requests) == 1


def test_a_package_url_copies_the_installed_file_and_never_links_it(tmp_path, log):
    from arcpipe.photos import SAMPLE_PHOTOS, package_url, sample_photo

    name = "photo_tom_hanks"
    src = sample_photo(name)
    want = src.read_bytes()
    res = download_all(section(tmp_path, t={"url": package_url(name), "sha256": sha(want), "size": len(want)}), log)
    got = tmp_path / "dl/t" / Path(SAMPLE_PHOTOS[name][1]).name
    assert res["fetched"] == ["t"] and got.read_bytes() == want
    assert os.stat(got).st_ino != os.stat(src).st_ino  # a copy: our cache's chmod never reaches site-packages


@pytest.mark.parametrize("url, message", [
    ("package://no_such_package_here/data/x.bin", r"package 'no_such_package_here' is not installed"),
    ("package://insightface/../etc/passwd", r"a package URL is package://<package>/<path inside it>"),
    ("package://insightface", r"a package URL is package://<package>/<path inside it>"),
])
def test_a_bad_package_url_is_one_line_before_anything_is_fetched(tmp_path, log, url, message):
    with pytest.raises(PipelineError, match=message) as e:
        download_all(section(tmp_path, bad={"url": url, "sha256": sha(DATA), "dest": "x.bin"}), log)
    assert "\n" not in str(e.value) and str(e.value).startswith("data set bad: ")
    assert not (tmp_path / "dl").exists()


def test_one_set_per_stage_writes_its_manifest_and_summary_in_its_folder(tmp_path, server, log):
    server.files["/a.bin"] = DATA
    server.files["/b.bin"] = DATA[:1000]
    params = _WithDownload(download=section(tmp_path, a={"url": server.url("/a.bin"), "sha256": sha(DATA)},
                                            b={"url": server.url("/b.bin"), "sha256": sha(DATA[:1000])}))
    ctx = StageContext("download", params, [], None, 1, argparse.Namespace(dataset="b"), log)
    counts = download_stage.run(ctx)
    assert counts["fetched"] == ["b"] and counts["in"] == 1
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["b"]  # a is another stage's
    assert list(json.loads((tmp_path / "dl/b/manifest.json").read_text())["datasets"]) == ["b"]
    assert json.loads((tmp_path / "dl/b/summary.json").read_text())["bytes"] == 1000
    ctx = StageContext("download", params, [], None, 1, argparse.Namespace(dataset="c"), log)
    with pytest.raises(PipelineError, match=r"^--dataset c: not in download\.datasets \(a, b\)$"):
        download_stage.run(ctx)
