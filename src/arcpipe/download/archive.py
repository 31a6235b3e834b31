"""Safe extraction of zip and tar archives (.zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz).

    archive_kind("lfw.tgz")                          # "tar"; None: the name is not an archive's
    archive_stem("lfw.tgz")                          # "lfw"
    extract_archive(Path("lfw.tgz"), Path("lfw"))    # {"files": ..., "dirs": ..., "bytes": ...}

Every member is checked by this module, not left to zipfile's or tarfile's own sanitising: an
absolute name, a `..` part, a member written through a symlink, a symlink or hardlink that points
outside the target, a device file, fifo or socket is refused with one line naming the archive and
the member. Members are written into a temporary folder beside the target, renamed into place
only when the whole archive was extracted and every symlink still resolves inside it; on any
refusal or error the temporary folder is removed and the target is left as it was.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional

from ..errors import PipelineError
from ..fsutil import atomic_path

__all__ = ["ARCHIVE_SUFFIXES", "archive_kind", "archive_stem", "extract_archive"]

ARCHIVE_SUFFIXES = {
    ".zip": "zip", ".tar": "tar", ".tar.gz": "tar", ".tgz": "tar",
    ".tar.bz2": "tar", ".tbz2": "tar", ".tar.xz": "tar", ".txz": "tar",
}
_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, RuntimeError)


def _suffix(name: str) -> Optional[str]:
    low = name.lower()
    return max((s for s in ARCHIVE_SUFFIXES if low.endswith(s)), key=len, default=None)


def archive_kind(name: str) -> Optional[str]:
    """"zip" or "tar" by the file name's suffix; None for any other name."""
    s = _suffix(name)
    return ARCHIVE_SUFFIXES[s] if s else None


def archive_stem(name: str) -> str:
    """The name without its archive suffix: the folder the archive is extracted into."""
    s = _suffix(name)
    return name[: len(name) - len(s)] if s else name


@dataclass(frozen=True)
class _Member:
    name: str                      # as stored in the archive
    kind: str                      # file, dir, symlink, hardlink, or what it is when refused
    link: str = ""                 # a symlink's target, a hardlink's archive path
    mode: int = 0o644
    mtime: Optional[float] = None
    open: Optional[Callable[[], BinaryIO]] = None


class _Refused(Exception):
    """A member that may not be extracted: the reason, and the member when it is not the one in hand."""

    def __init__(self, reason: str, member: Optional[str] = None):
        super().__init__(reason)
        self.member = member


def extract_archive(archive: str | os.PathLike, target: str | os.PathLike) -> dict:
    """Extract `archive` into the folder `target` (replaced whole if it exists); returns counts."""
    archive, target = Path(archive), Path(target)
    kind = archive_kind(archive.name)
    if kind is None:
        raise PipelineError(f"{archive}: not a zip or tar archive by its name "
                            f"(expected one of {', '.join(ARCHIVE_SUFFIXES)})")
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        writer = _Writer(tmp)
        name = ""
        try:
            with _members(archive, kind) as members:
                for m in members:
                    name = m.name
                    writer.add(m)
            writer.check_symlinks()
        except _Refused as e:
            raise PipelineError(f"{archive}: member {e.member or name!r}: {e}; nothing was extracted") from None
        except _READ_ERRORS as e:
            at = f" at member {name!r}" if name else ""
            why = " ".join(str(e).split())  # tarfile's ReadError spans lines
            raise PipelineError(f"{archive}: cannot extract{at}: {type(e).__name__}: {why}; "
                                f"nothing was extracted") from None
    return writer.counts


@contextlib.contextmanager
def _members(archive: Path, kind: str) -> Iterator[Iterator[_Member]]:
    """The archive's members in stored order, read lazily while the archive is open."""
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            yield (_zip_member(zf, info) for info in zf.infolist())
    else:
        with tarfile.open(archive, "r:*") as tf:
            yield (_tar_member(tf, ti) for ti in tf)


_SPECIAL = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
            stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Member:
    mode = info.external_attr >> 16 if info.create_system == 3 else 0  # unix attributes
    ftype = stat.S_IFMT(mode)
    mtime = _zip_mtime(info)
    if info.is_dir() or ftype == stat.S_IFDIR:
        return _Member(info.filename, "dir", mtime=mtime)
    if ftype == stat.S_IFLNK:
        return _Member(info.filename, "symlink", zf.read(info).decode("utf-8", "replace"))
    if ftype in (0, stat.S_IFREG):
        return _Member(info.filename, "file", mode=stat.S_IMODE(mode) or 0o644, mtime=mtime,
                       open=lambda: zf.open(info))
    return _Member(info.filename, _SPECIAL.get(ftype, f"file of type {oct(ftype)}"))


def _zip_mtime(info: zipfile.ZipInfo) -> Optional[float]:
    try:
        return time.mktime(info.date_time + (0, 0, -1))
    except (OverflowError, ValueError):
        return None


def _tar_member(tf: tarfile.TarFile, ti: tarfile.TarInfo) -> _Member:
    if ti.isreg():
        return _Member(ti.name, "file", mode=ti.mode, mtime=ti.mtime, open=lambda: tf.extractfile(ti))
    if ti.isdir():
        return _Member(ti.name, "dir", mtime=ti.mtime)
    if ti.issym():
        return _Member(ti.name, "symlink", ti.linkname)
    if ti.islnk():
        return _Member(ti.name, "hardlink", ti.linkname)
    kinds = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo"}
    return _Member(ti.name, kinds.get(ti.type, f"tar member of type {ti.type!r}"))


def _is_absolute(name: str) -> bool:
    """A POSIX absolute path, or a Windows one (C:...) that some archivers store."""
    return name.startswith("/") or (len(name) > 1 and name[1] == ":" and name[0].isalpha())


def _relative(name: str, what: str = "name") -> str:
    """The member path relative to the target, '/'-separated; refuses absolute paths and '..'."""
    n = name.replace("\\", "/")
    if _is_absolute(n):
        raise _Refused(f"{what} is an absolute path")
    parts = [p for p in n.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Refused(f"{what} has a '..' part: it would escape the target folder")
    return "/".join(parts)


class _Writer:
    """Writes checked members under `root`, never through a symlink, never outside it."""

    def __init__(self, root: Path):
        self.root = root
        self.real = os.path.realpath(root)
        self.symlinks: list[tuple[str, str]] = []   # (member name, path relative to root)
        self.counts = {"files": 0, "dirs": 0, "symlinks": 0, "hardlinks": 0, "bytes": 0}

    def add(self, m: _Member) -> None:
        if m.kind not in ("file", "dir", "symlink", "hardlink"):
            raise _Refused(f"is a {m.kind}: only files, folders and links inside the archive are extracted")
        rel = _relative(m.name)
        if not rel:
            if m.kind == "dir":  # the archive's own root, "./"
                return
            raise _Refused("has an empty name")
        dest = self._place(rel, m.kind == "dir")
        if m.kind == "dir":
            dest.mkdir(exist_ok=True)
            self.counts["dirs"] += 1
        elif m.kind == "file":
            self._write_file(m, dest)
        elif m.kind == "symlink":
            self._symlink(m, rel, dest)
        else:
            self._hardlink(m, dest)

    def _place(self, rel: str, is_dir: bool) -> Path:
        """Create the member's parent folders and clear the way for it (a later member of the same
        name replaces an earlier one, as tar does); refuses a path through a symlink."""
        dest = self.root / rel
        parent = os.path.dirname(rel)
        if os.path.realpath(dest.parent) != os.path.join(self.real, parent).rstrip("/"):
            raise _Refused("its path goes through a symlink of the archive")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        elif dest.is_dir() and not is_dir:
            raise _Refused("a folder of that name was extracted before it")
        return dest

    def _write_file(self, m: _Member, dest: Path) -> None:
        with m.open() as src, open(dest, "xb") as out:  # "x": never follows a symlink planted there
            shutil.copyfileobj(src, out, 1 << 20)
        os.chmod(dest, (m.mode & 0o755) | 0o600)
        if m.mtime is not None:
            os.utime(dest, (m.mtime, m.mtime))
        self.counts["files"] += 1
        self.counts["bytes"] += dest.stat().st_size

    def _symlink(self, m: _Member, rel: str, dest: Path) -> None:
        if _is_absolute(m.link.replace("\\", "/")):
            raise _Refused(f"symlink to the absolute path {m.link!r}")
        depth = len(rel.split("/")) - 1
        for part in m.link.replace("\\", "/").split("/"):
            depth += -1 if part == ".." else 0 if part in ("", ".") else 1
            if depth < 0:
                raise _Refused(f"symlink to {m.link!r}, outside the target folder")
        os.symlink(m.link, dest)
        self.symlinks.append((m.name, rel))
        self.counts["symlinks"] += 1

    def _hardlink(self, m: _Member, dest: Path) -> None:
        rel_src = _relative(m.link, f"hardlink target {m.link!r}")
        src = self.root / rel_src
        if os.path.realpath(src) != os.path.join(self.real, rel_src) or not src.is_file():
            raise _Refused(f"hardlink to {m.link!r}, which is not a file extracted before it")
        os.link(src, dest, follow_symlinks=False)
        self.counts["hardlinks"] += 1

    def check_symlinks(self) -> None:
        """Every symlink, now that all are in place, resolves inside the target (a chain of links
        that each look harmless may not); refuses the first that does not."""
        for name, rel in self.symlinks:
            real = os.path.realpath(self.root / rel)
            if real != self.real and not real.startswith(self.real + os.sep):
                raise _Refused(f"symlink resolves to {real}, outside the target folder", name)
