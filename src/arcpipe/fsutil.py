"""Atomic writes: an output exists whole or not at all."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def _scratch_beside(path: Path) -> Iterator[Path]:
    """A fresh temporary sibling of `path` (its parent made where missing), removed if the body
    raises; left in place on success for the caller to move."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    remove_path(tmp)
    try:
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto `path`, on error remove it.

    Works for files and for directories (the caller creates what it needs at the yielded path).
    """
    path = Path(path)
    with _scratch_beside(path) as tmp:
        yield tmp
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_files_into(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success move each file written there into `folder`
    (replacing same-named files, keeping the others), on error remove it and touch nothing."""
    folder = Path(folder)
    with _scratch_beside(folder) as tmp:
        yield tmp
    folder.mkdir(exist_ok=True)
    for entry in sorted(tmp.iterdir()):
        target = folder / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    tmp.rmdir()


def remove_path(path: str | os.PathLike) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """dst becomes a file with src's bytes, atomically: a hard link where the file system allows
    one (no second copy on disk; nothing here rewrites a finished file in place, every writer
    replaces it whole), else a copy."""
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def digest_of(obj: Any) -> str:
    """16 hex digits of the sha256 of `obj` as sorted JSON: the identity of params or of a part's inputs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
