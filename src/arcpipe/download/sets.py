"""The data sets of params `download`: fetch or accept each, extract archives, write the manifest.

    result = download_all(params.download, log)
    result["datasets"]["lfw"]   # {"file": "data/download/lfw/lfw.tgz", "sha256": ..., "size": ...,
                                #  "url": ..., "source": ..., "extracted": {"dir": ..., "files": ...}}
    result["fetched"], result["present"]   # names fetched this run, names already in place

Layout under out_dir: `<name>/<file>`, `<name>/<stem>/` (the archive extracted),
`<name>/<file>.state.json` (sha256, size and mtime of the file in place, and what was extracted
from it: a rerun trusts an unchanged file without reading it, and re-hashes one whose size or
mtime changed) and `manifest.json`. A set with `url: null` is the file the user placed at `path`:
it is taken (hard-linked or copied) when its sha256 matches; a missing or wrong one is reported,
one line each, after every other set was brought in, and the run fails.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, ContextManager, Optional
from urllib.parse import unquote, urlsplit

from ..errors import PipelineError
from ..fsutil import remove_path, sha256_file, write_json_atomic
from ..params.download import DownloadItem, DownloadParams
from .archive import ARCHIVE_SUFFIXES, archive_kind, archive_stem, extract_archive
from .fetch import ChecksumError, Source, fetch_file, resolve_source

__all__ = ["download_all", "file_name", "extract_dir"]


def file_name(name: str, item: DownloadItem) -> str:
    """The file's name under <out_dir>/<name>/: dest, else the last part of the url or path."""
    if item.dest:
        return item.dest
    where = unquote(urlsplit(item.url).path) if item.url is not None else item.path
    base = os.path.basename(where.replace("\\", "/").rstrip("/")) if where else ""
    if base in ("", ".", ".."):
        raise PipelineError(f"download.datasets.{name}: cannot tell a file name from {item.url or item.path!r}: "
                            f"give dest")
    return base


def extract_dir(name: str, item: DownloadItem, file: str) -> Optional[str]:
    """The folder the file is extracted into, None when it is not extracted."""
    if item.extract is False or (item.extract == "auto" and archive_kind(file) is None):
        return None
    stem = archive_stem(file)
    if archive_kind(file) is None or not stem:
        raise PipelineError(f"download.datasets.{name}: extract is true but {file!r} is not named as an archive "
                            f"({', '.join(ARCHIVE_SUFFIXES)}); set dest to its archive name")
    return stem


def download_all(section: DownloadParams, log: Optional[logging.Logger] = None,
                 working_on: Optional[Callable[[str], ContextManager]] = None,
                 manifest: Optional[Path] = None) -> dict:
    """Bring every data set of `section` into out_dir; raise PipelineError when any is missing.

    `working_on(what)` (the stage's ctx.working_on) names the set in hand for an unexpected error;
    `manifest`: where the manifest goes (default <out_dir>/manifest.json).
    """
    log = log or logging.getLogger("arcpipe.download")
    working_on = working_on or (lambda what: contextlib.nullcontext())
    out = Path(section.out_dir)
    # every protocol and name is checked before anything is fetched: a missing plugin shows at once
    plans = {name: _plan(name, item, section) for name, item in section.datasets.items()}
    entries, fetched, present, by_hand = {}, [], [], []
    for name, (item, file, source) in plans.items():
        with working_on(f"data set {name}"):
            dest = out / name / file
            if _in_place(dest, item, log):
                present.append(name)
            elif source is None:
                problem = _take_placed(name, item, dest, section, log)
                if problem:
                    by_hand.append((name, problem))
                    continue
                fetched.append(name)
            else:
                log.info("data set %s: fetching %s", name, item.url)
                fetch_file(source, dest, item.sha256, item.size, section.retries, section.backoff_s,
                           f"data set {name}", log)
                fetched.append(name)
            entries[name] = _entry(name, item, dest, log)
    if by_hand:
        for _, line in by_hand:
            log.error("%s", line)
        raise PipelineError(f"{len(by_hand)} data set{'s' if len(by_hand) > 1 else ''} to place by hand: "
                            f"{', '.join(name for name, _ in by_hand)} "
                            f"(each line above says where to get it and where to put it)")
    write_json_atomic(manifest or out / "manifest.json", {"datasets": entries})
    return {"datasets": entries, "fetched": fetched, "present": present}


def _plan(name: str, item: DownloadItem, section: DownloadParams) -> tuple[DownloadItem, str, Optional[Source]]:
    file = file_name(name, item)
    extract_dir(name, item, file)
    if item.url is None:
        return item, file, None
    try:
        return item, file, resolve_source(item.url, section.timeout_s)
    except PipelineError as e:
        raise PipelineError(f"data set {name}: {e}") from None


def _take_placed(name: str, item: DownloadItem, dest: Path, section: DownloadParams, log: logging.Logger) -> str:
    """Take the file the user placed at `path`; what is wrong with it ('' when it was taken)."""
    path = Path(item.path)
    where = f"get it from {item.manual} and put it at {path}"
    if not path.is_file():
        return f"data set {name}: {path} is missing: {where} (sha256 {item.sha256})"
    log.info("data set %s: taking %s, placed by hand", name, path)
    try:
        fetch_file(resolve_source(item.path, section.timeout_s), dest, item.sha256, item.size, 0, 0.0,
                   f"data set {name}", log)
    except ChecksumError as e:
        return f"data set {name}: {path} has {e.check} {e.got}, expected {e.expected}: {where}"
    return ""


def _state_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".state.json")


def _read_state(dest: Path) -> dict:
    try:
        state = json.loads(_state_path(dest).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _in_place(dest: Path, item: DownloadItem, log: logging.Logger) -> bool:
    """dest holds the expected bytes: trusted from its state when size and mtime are unchanged."""
    if not dest.is_file():
        return False
    st = dest.stat()
    if item.size is not None and st.st_size != item.size:
        log.warning("%s: %d bytes, expected %d: fetching it again", dest, st.st_size, item.size)
        return False
    state = _read_state(dest)
    if (state.get("sha256"), state.get("size"), state.get("mtime_ns")) == (item.sha256, st.st_size, st.st_mtime_ns):
        return True
    got = sha256_file(dest)
    if got != item.sha256:
        log.warning("%s: sha256 %s, expected %s: fetching it again", dest, got, item.sha256)
        return False
    return True  # _entry records the new size and mtime


def _state(dest: Path, sha256: str, extracted: Optional[dict]) -> dict:
    st = dest.stat()
    return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "extracted": extracted}


def _entry(name: str, item: DownloadItem, dest: Path, log: logging.Logger) -> dict:
    """The manifest row of a set in place, extracting its archive when that was not done yet
    (and removing what an earlier run extracted under another name or no longer should)."""
    stem = extract_dir(name, item, dest.name)
    state = _read_state(dest)
    done = state.get("extracted") if state.get("sha256") == item.sha256 else None
    old_dir = (state.get("extracted") or {}).get("dir")
    if old_dir and old_dir != stem and old_dir == os.path.basename(old_dir) and old_dir not in (".", ".."):
        remove_path(dest.parent / old_dir)
    extracted = None
    if stem is not None:
        target = dest.parent / stem
        if done and done.get("dir") == stem and target.is_dir():
            extracted = done
        else:
            log.info("data set %s: extracting %s into %s", name, dest.name, target)
            extracted = {"dir": stem, **extract_archive(dest, target)}
    new = _state(dest, item.sha256, extracted)
    if new != state:
        write_json_atomic(_state_path(dest), new)
    return {"file": dest.as_posix(), "sha256": item.sha256, "size": new["size"], "url": item.url,
            "source": item.url if item.url is not None else item.path,
            "extracted": None if extracted is None else {**extracted, "dir": (dest.parent / stem).as_posix()}}
