"""Fetch one file by URL into place, resumably, checked against its sha256 before it lands.

    source = resolve_source("https://example.org/lfw.tgz", timeout_s=30)   # checks the protocol
    fetch_file(source, Path("data/download/lfw/lfw.tgz"), sha256, size=None, retries=4, backoff_s=1.0,
               label="data set lfw")

Sources: http(s) with the standard library (Range requests resume `<dest>.part`; a server that
answers 200 to a Range restarts it from 0), file: URLs and plain paths (hard-linked where the
file system allows, else copied), and any other protocol through fsspec where its plugin is
importable; package://<package>/<path>, a file inside an installed Python package (copied).
A failed transfer is retried `retries` times, waiting backoff_s, 2*backoff_s, ...;
the .part file stays between attempts and between runs. The size (when given) and the sha256
are checked on the .part file, which is then renamed onto dest; a mismatch removes it.
"""
from __future__ import annotations

import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional
from urllib.parse import unquote, urlsplit

from tqdm import tqdm

from ..errors import PipelineError
from ..fsutil import sha256_file

__all__ = ["Source", "ChecksumError", "resolve_source", "fetch_file", "verify", "part_path"]

CHUNK = 1 << 20
USER_AGENT = "arcpipe-download/1"
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class _Retry(Exception):
    """A transfer that failed in a way another attempt may fix: the reason."""


class _Fail(Exception):
    """A transfer that no retry will fix (404, a missing file, a size the params contradict)."""


class ChecksumError(PipelineError):
    """The bytes fetched are not the expected ones: which check (size, sha256), expected and got."""

    def __init__(self, message: str, check: str, expected: str | int, got: str | int):
        super().__init__(message)
        self.check, self.expected, self.got = check, expected, got


@dataclass(frozen=True)
class Source:
    """Where a file comes from: `transfer(part, size, bar)` appends to or restarts `part`."""

    url: str
    transfer: Callable[[Path, Optional[int], tqdm], None]


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def resolve_source(url: str, timeout_s: float) -> Source:
    """The Source for `url`; a PipelineError (one line) for a protocol that cannot be read here."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return Source(url, lambda part, size, bar: _http_transfer(url, timeout_s, part, size, bar))
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise PipelineError(f"{url}: a file URL names a local file: file:relative/path or file:///absolute/path")
        path = Path(unquote(parts.path))
        return Source(url, lambda part, size, bar: _local_transfer(path, part, bar))
    if scheme == "package":
        path = _package_file(url, parts)
        return Source(url, lambda part, size, bar: _local_transfer(path, part, bar, link=False))
    if not scheme or (len(scheme) == 1 and os.name == "nt"):  # a plain path (C:\... on Windows)
        path = Path(url)
        return Source(url, lambda part, size, bar: _local_transfer(path, part, bar))
    fs, fs_path = _fsspec(url, scheme)
    return Source(url, lambda part, size, bar: _fsspec_transfer(fs, fs_path, part, bar))


def _package_file(url: str, parts) -> Path:
    """package://<package>/<path>: a file inside an installed Python package (found without
    importing it), i.e. the file: URL of that file in this environment's site-packages. The
    embedded sample's photos come this way: their place differs from one machine to the next."""
    import importlib.util

    name, rel = parts.netloc, unquote(parts.path).lstrip("/")
    if not name or not rel or any(p in ("", ".", "..") for p in rel.split("/")):
        raise PipelineError(f"{url}: a package URL is package://<package>/<path inside it>")
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"{url}: package '{name}' is not installed (pip install it, or point the url "
                            f"at a copy of the file)")
    return Path(list(spec.submodule_search_locations)[0]) / rel


def _fsspec(url: str, protocol: str) -> tuple[Any, str]:
    try:
        import fsspec
        from fsspec.registry import known_implementations
    except ImportError:
        raise PipelineError(f"{url}: protocol '{protocol}' is read through fsspec: pip install fsspec") from None
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as e:
        cls = known_implementations.get(protocol, {}).get("class", "")
        package = cls.split(".")[0] if cls and not cls.startswith("fsspec.") else _quoted(str(e))
        hint = f"needs the fsspec plugin {package}: pip install {package}" if package else f"cannot be read: {e}"
        raise PipelineError(f"{url}: protocol '{protocol}' {hint}") from None
    except ValueError:
        raise PipelineError(f"{url}: unknown protocol '{protocol}' (http, https, file:, a local path, "
                            f"or a protocol fsspec has a plugin for, such as s3 or gs)") from None
    return fsspec.core.url_to_fs(url)


def _quoted(text: str) -> str:
    m = re.search(r'"([A-Za-z0-9_.-]+)"', text)
    return m.group(1) if m else ""


def fetch_file(source: Source, dest: Path, sha256: str, size: Optional[int], retries: int, backoff_s: float,
               label: str, log: Optional[logging.Logger] = None) -> None:
    """Bring `source` to `dest`: transfer into dest.part (retrying), verify, rename into place."""
    log = log or logging.getLogger("arcpipe.download")
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=size, desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024, disable=None) as bar:
        for attempt in range(retries + 1):
            try:
                source.transfer(part, size, bar)
                break
            except _Fail as e:
                raise PipelineError(f"{label}: {source.url}: {e}") from None
            except _Retry as e:
                if attempt == retries:
                    kept = f"; {part} is kept, a rerun resumes it" if part.exists() else ""
                    raise PipelineError(f"{label}: {source.url}: {e} (gave up after {retries + 1} "
                                        f"attempt{'s' if retries else ''}){kept}") from None
                wait = backoff_s * 2 ** attempt
                log.warning("%s: %s: %s; attempt %d of %d in %.3g s", label, source.url, e, attempt + 2,
                            retries + 1, wait)
                time.sleep(wait)
    verify(part, sha256, size, f"{label}: {source.url}")
    os.replace(part, dest)


def verify(part: Path, sha256: str, size: Optional[int], label: str) -> None:
    """Size (when given) and sha256 of `part`; on a mismatch remove it and say expected and got."""
    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink()
        raise ChecksumError(f"{label}: size expected {size} bytes, got {got_size}; {part} was removed",
                            "size", size, got_size)
    got = sha256_file(part)
    if got != sha256:
        part.unlink()
        raise ChecksumError(f"{label}: sha256 expected {sha256}, got {got}; {part} was removed", "sha256", sha256, got)


def _copy(read: Callable[[int], bytes], out: BinaryIO, bar: tqdm) -> None:
    """Copy until end of stream; a failed read is worth another attempt."""
    while True:
        try:
            block = read(CHUNK)
        except (OSError, http.client.HTTPException) as e:
            raise _Retry(f"read failed: {type(e).__name__}: {e}") from None
        if not block:
            return
        out.write(block)
        bar.update(len(block))


def _restart(bar: tqdm, total: Optional[int], done: int) -> None:
    bar.reset(total=total)
    bar.update(done)


def _http_transfer(url: str, timeout_s: float, part: Path, size: Optional[int], bar: tqdm) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        offset = 0
    if size is not None and offset == size:
        return  # a whole file from an earlier attempt: verify decides
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as e:
        _http_refusal(e, offset, part)
        return
    except (OSError, http.client.HTTPException) as e:
        raise _Retry(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
    with resp:
        start, total = _response_range(resp, offset)
        if size is not None and total is not None and total != size:
            raise _Fail(f"the server says {total} bytes, the params say size {size}")
        _restart(bar, total, start)
        with open(part, "ab" if start else "wb") as out:
            out.truncate(start)
            _copy(resp.read, out, bar)
    got = part.stat().st_size
    if total is not None and got < total:
        raise _Retry(f"the connection closed at byte {got} of {total}")


def _response_range(resp: http.client.HTTPResponse, offset: int) -> tuple[int, Optional[int]]:
    """Where the body starts in the file (0 when the server ignored the Range) and the file's size."""
    length = resp.headers.get("Content-Length")
    if resp.status != 206:
        return 0, int(length) if length and length.isdigit() else None
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (resp.headers.get("Content-Range") or "").strip())
    if not m or int(m.group(1)) != offset:
        raise _Retry(f"the server answered a resume from byte {offset} with "
                     f"Content-Range {resp.headers.get('Content-Range')!r}")
    return offset, int(m.group(2)) if m.group(2) != "*" else None


def _http_refusal(e: urllib.error.HTTPError, offset: int, part: Path) -> None:
    """An HTTP error status: 416 on a resume means the part is whole (or wrong: start again)."""
    with e:
        if e.code == 416 and offset:
            m = re.fullmatch(r"bytes \*/(\d+)", (e.headers.get("Content-Range") or "").strip())
            if m and int(m.group(1)) == offset:
                return
            part.unlink()
            raise _Retry("the server refused to resume (HTTP 416); starting again from byte 0")
        if e.code in _RETRY_STATUS:
            raise _Retry(f"HTTP {e.code} {e.reason}")
        raise _Fail(f"HTTP {e.code} {e.reason}")


def _local_transfer(path: Path, part: Path, bar: tqdm, link: bool = True) -> None:
    """Copy a local file to `part`; `link`: a hard link where the file system allows (never for
    a file of an installed package: a link would share its inode, and so its mode, with our copy)."""
    if not path.is_file():
        raise _Fail(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    part.unlink(missing_ok=True)
    total = path.stat().st_size
    if link:
        try:
            os.link(path, part)  # the same bytes at no cost; verify still reads them
            _restart(bar, total, total)
            return
        except OSError:  # another file system, or links not allowed: copy
            pass
    _restart(bar, total, 0)
    with open(path, "rb") as src, open(part, "wb") as out:
        _copy(src.read, out, bar)


def _fsspec_transfer(fs: Any, path: str, part: Path, bar: tqdm) -> None:
    try:
        total = fs.size(path)
    except FileNotFoundError:
        raise _Fail("does not exist") from None
    except OSError as e:
        raise _Retry(f"{type(e).__name__}: {e}") from None
    offset = part.stat().st_size if part.exists() else 0
    if total is None or offset > total:
        offset = 0
    _restart(bar, total, offset)
    try:
        src = fs.open(path, "rb")
    except OSError as e:
        raise _Retry(f"{type(e).__name__}: {e}") from None
    with src, open(part, "ab" if offset else "wb") as out:
        out.truncate(offset)
        src.seek(offset)
        _copy(src.read, out, bar)
