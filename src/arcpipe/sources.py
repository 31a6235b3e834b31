"""Raw inputs of the detect and align stages, one Item per input image, in a fixed order.

    src = open_source("folder", "data/sample/train/folder")
    items = src.items()                  # deterministic: sorted, same order every run
    data = src.read(item)                # bytes; raises SourceError(one line) when unreadable
    content_hash(data)                   # the fingerprint detect records and align checks

Formats: folder (<identity>/<image>), ms1m_tsv (7-column TSV with base64 JPEGs), archive (tar,
tar.gz/bz2/xz, zip: read in place, never extracted), rec (an existing RecordIO pack), lfw,
cfp (CFP-FP Data/Images/<id>/{frontal,profile}/), agedb (flat <n>_<Name>_<age>_<g>.jpg),
ijb (IJB-B/C/S meta/ + loose_crop/, landmarks from <t>_name_5pts_score.txt) and megaface
(<identity or group>/<image> with optional MegaFace JSON sidecars holding a bounding box).

An Item is small and picklable, so process-pool workers read the bytes themselves. A problem
known while listing (a hostile archive member, a TSV line with the wrong column count) becomes
an Item with `error` set: it still gets its manifest row.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

from .errors import PipelineError

FORMATS = ("folder", "ms1m_tsv", "archive", "rec", "lfw", "cfp", "agedb", "ijb", "megaface")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class SourceError(Exception):
    """One input item cannot be read; the message (one line) becomes the row's reason."""


@dataclass(frozen=True)
class Item:
    source: str  # stable key of the input, printed in the manifest (relative path, file:line, ...)
    identity: str = ""
    loc: tuple = ()  # format-specific locator for read()
    landmarks: Optional[tuple] = None  # given five points, 10 floats x1,y1,...,x5,y5
    box: Optional[tuple] = None  # given box x1,y1,x2,y2
    score: Optional[float] = None  # given detector score (IJB)
    error: str = ""  # known-unreadable while listing: the reason


def content_hash(data: bytes) -> str:
    """Cheap fingerprint of an input's bytes (the align stage checks the image did not change)."""
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}{len(data):x}"


def items_fingerprint(items: list["Item"]) -> str:
    """16 hex digits identifying an item list (its source keys, in order)."""
    h = hashlib.sha256()
    for it in items:
        h.update(it.source.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _sorted_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for f in sorted(filenames):
            out.append(Path(dirpath) / f)
    out.sort(key=lambda p: p.relative_to(root).as_posix())
    return out


class Source:
    format = ""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.exists():
            raise PipelineError(f"{self.root}: input source does not exist")

    def items(self) -> list[Item]:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, item: Item) -> bytes:
        if item.error:
            raise SourceError(item.error)
        path = self.root / item.loc[0]
        try:
            return path.read_bytes()
        except OSError as e:
            raise SourceError(f"{path}: cannot read: {e.strerror or e}") from None

    def close(self) -> None:
        pass

    def __getstate__(self):  # open handles stay in the process that opened them
        d = dict(self.__dict__)
        for k in [k for k in d if k.startswith("_h")]:
            d[k] = None
        return d


class FolderSource(Source):
    """<root>/<identity>/.../<file>: every regular file is an item (non-images become rows too)."""

    format = "folder"

    def items(self) -> list[Item]:
        out = []
        for p in _sorted_files(self.root):
            rel = p.relative_to(self.root).as_posix()
            parts = rel.split("/")
            out.append(Item(rel, parts[0] if len(parts) > 1 else "", (rel,)))
        return out


class LFWSource(Source):
    """LFW: <root>/<Name>/<Name>_<NNNN>.jpg (pairs.txt and other top-level files are metadata)."""

    format = "lfw"

    def items(self) -> list[Item]:
        out = []
        for p in _sorted_files(self.root):
            rel = p.relative_to(self.root).as_posix()
            parts = rel.split("/")
            if len(parts) < 2:
                continue  # pairs.txt, people.txt, README: protocol files, not images
            out.append(Item(rel, parts[0], (rel,)))
        return out


class CFPSource(Source):
    """CFP: <root>[/Data]/Images/<NNN>/{frontal,profile}/<NN>.jpg; identity = NNN."""

    format = "cfp"

    def items(self) -> list[Item]:
        base = self.root
        for cand in (self.root / "Data" / "Images", self.root / "Images"):
            if cand.is_dir():
                base = cand
                break
        out = []
        for p in _sorted_files(base):
            rel = p.relative_to(self.root).as_posix()
            parts = p.relative_to(base).as_posix().split("/")
            if len(parts) < 2:
                continue
            out.append(Item(rel, parts[0], (rel,)))
        return out


class AgeDBSource(Source):
    """AgeDB: flat folder of <n>_<Name>_<age>_<gender>.jpg; identity = Name."""

    format = "agedb"

    def items(self) -> list[Item]:
        out = []
        for p in _sorted_files(self.root):
            rel = p.relative_to(self.root).as_posix()
            fields = p.stem.split("_")
            ident = "_".join(fields[1:-2]) if len(fields) >= 4 else ""
            out.append(Item(rel, ident, (rel,)))
        return out


class MegaFaceSource(Source):
    """<root>/<identity or group>/<image> with an optional MegaFace sidecar <image>.json.

    The sidecar's "bounding_box" {x, y, width, height} is the given box for the given_box
    no-face policy. Sidecars are metadata, not items.
    """

    format = "megaface"

    def items(self) -> list[Item]:
        out = []
        files = _sorted_files(self.root)
        names = {p.as_posix() for p in files}
        for p in files:
            if p.suffix.lower() == ".json" and p.as_posix()[:-5] in names:
                continue
            rel = p.relative_to(self.root).as_posix()
            parts = rel.split("/")
            box = None
            side = Path(str(p) + ".json")
            if side.as_posix() in names:
                box = _megaface_box(side)
            out.append(Item(rel, parts[0] if len(parts) > 1 else "", (rel,), box=box))
        return out


def _megaface_box(path: Path) -> Optional[tuple]:
    try:
        bb = json.loads(path.read_text())["bounding_box"]
        x, y, w, h = (float(bb[k]) for k in ("x", "y", "width", "height"))
        return (x, y, x + w, y + h)
    except (OSError, ValueError, KeyError, TypeError):
        return None


class TSVSource(Source):
    """MS-Celeb-1M TSV (a file or a folder of *.tsv): MID, rank, image URL, page URL, face id,
    face rectangle (base64), face data (base64 JPEG). Identity = MID; source = file:line."""

    format = "ms1m_tsv"
    COLUMNS = 7

    def _files(self) -> list[Path]:
        if self.root.is_dir():
            return sorted(p for p in self.root.rglob("*.tsv"))
        return [self.root]

    def items(self) -> list[Item]:
        out = []
        for f in self._files():
            rel = f.name if f == self.root else f.relative_to(self.root).as_posix()
            off = 0
            with open(f, "rb") as fh:
                for lineno, line in enumerate(fh, 1):
                    n = len(line)
                    body = line.rstrip(b"\r\n")
                    if not body.strip():
                        off += n
                        continue
                    cols = body.split(b"\t")
                    key = f"{rel}:{lineno}"
                    if len(cols) != self.COLUMNS:
                        out.append(Item(key, "", (), error=f"{f}: line {lineno}: expected {self.COLUMNS} "
                                                          f"tab-separated columns, got {len(cols)}"))
                    else:
                        ident = cols[0].decode("utf-8", "replace")
                        out.append(Item(key, ident, (str(f), off, n, lineno)))
                    off += n
        return out

    def read(self, item: Item) -> bytes:
        if item.error:
            raise SourceError(item.error)
        path, off, n, lineno = item.loc
        with open(path, "rb") as fh:
            fh.seek(off)
            line = fh.read(n).rstrip(b"\r\n")
        col = line.split(b"\t")[self.COLUMNS - 1].strip()
        try:
            return base64.b64decode(col, validate=True)
        except (binascii.Error, ValueError) as e:
            raise SourceError(f"{path}: line {lineno}: face data is not valid base64 ({e})") from None


class ArchiveSource(Source):
    """tar (any compression tarfile reads) or zip, read in place. Identity = the member's parent
    folder name. Members with absolute paths, '..' parts, links or devices are refused."""

    format = "archive"

    def __init__(self, root):
        super().__init__(root)
        self._h = None
        self._is_zip = zipfile.is_zipfile(self.root)
        if not self._is_zip and not tarfile.is_tarfile(self.root):
            raise PipelineError(f"{self.root}: not a tar or zip archive")

    @staticmethod
    def _hostile(name: str) -> str:
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            return "absolute path"
        if ".." in PurePosixPath(name.replace("\\", "/")).parts:
            return "path escapes the archive ('..')"
        return ""

    def _item(self, name: str, loc: tuple, why: str = "") -> Item:
        key = f"{self.root.name}!{name}"
        why = why or self._hostile(name)
        if why:
            return Item(key, "", (), error=f"{self.root}: member '{name}': {why} (refused)")
        parts = PurePosixPath(name).parts
        return Item(key, parts[-2] if len(parts) > 1 else "", loc)

    def items(self) -> list[Item]:
        out = []
        if self._is_zip:
            with zipfile.ZipFile(self.root) as z:
                for info in z.infolist():
                    if info.is_dir():
                        continue
                    mode = (info.external_attr >> 16) & 0o170000
                    why = "symbolic link" if mode == 0o120000 else ""
                    out.append(self._item(info.filename, (info.filename,), why))
        else:
            with tarfile.open(self.root, "r:*") as t:
                for m in t:
                    if m.isdir():
                        continue
                    why = ""
                    if m.issym() or m.islnk():
                        why = f"link to '{m.linkname}'"
                    elif not m.isfile():
                        why = "not a regular file"
                    out.append(self._item(m.name, (m.name, m.offset_data, m.size), why))
        out.sort(key=lambda it: it.source)
        return out

    def read(self, item: Item) -> bytes:
        if item.error:
            raise SourceError(item.error)
        if self._is_zip:
            if self._h is None:
                self._h = zipfile.ZipFile(self.root)
            try:
                return self._h.read(item.loc[0])
            except (zipfile.BadZipFile, KeyError, OSError, EOFError) as e:
                raise SourceError(f"{self.root}: member '{item.loc[0]}': cannot read: {e}") from None
        name, offset, size = item.loc
        if self._plain_tar():
            with open(self.root, "rb") as fh:  # uncompressed tar: the bytes sit at offset_data
                fh.seek(offset)
                data = fh.read(size)
            if len(data) != size:
                raise SourceError(f"{self.root}: member '{name}': archive ends inside the member")
            return data
        if self._h is None:
            self._h = tarfile.open(self.root, "r:*")
        try:
            f = self._h.extractfile(self._h.getmember(name))
            return f.read() if f is not None else b""
        except (tarfile.TarError, KeyError, OSError, EOFError) as e:
            raise SourceError(f"{self.root}: member '{name}': cannot read: {e}") from None

    def _plain_tar(self) -> bool:
        with open(self.root, "rb") as fh:
            head = fh.read(6)
        return not (head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00")

    def close(self) -> None:
        if self._h is not None:
            self._h.close()
            self._h = None


class RecSource(Source):
    """An existing RecordIO pack (<name>.rec + .idx). insightface packs keep images at keys
    1..N-1 named by record 0's header; plain packs hold images only. Identity = the label."""

    format = "rec"

    def __init__(self, root):
        root = Path(root)
        if root.is_dir():
            recs = sorted(root.glob("*.rec"))
            if len(recs) != 1:
                raise PipelineError(f"{root}: expected one .rec file in the folder, found {len(recs)}")
            root = recs[0]
        super().__init__(root)
        self._h = None

    def _reader(self):
        if self._h is None:
            from .recordio import RecordReader

            self._h = RecordReader(self.root)
        return self._h

    def items(self) -> list[Item]:
        from .recordio import label_of, unpack

        r = self._reader()
        keys = list(r.keys)
        if not keys:
            return []
        keys_set = set(keys)
        first = min(keys)
        try:
            h0, _ = unpack(r.read(first))
        except Exception as e:
            raise PipelineError(f"{self.root}: record {first}: {e}") from None
        if first == 0 and h0.flag > 0:
            end = int(label_of(h0))
            image_keys = [k for k in range(1, end) if k in keys_set]
        else:
            image_keys = sorted(keys)
        out = []
        for k in image_keys:
            try:
                h, _ = unpack(r.read(k))
                out.append(Item(f"{self.root.name}:{k}", str(int(label_of(h))), (k,)))
            except Exception as e:
                out.append(Item(f"{self.root.name}:{k}", "", (), error=f"{self.root}: record {k}: {e}"))
        return out

    def read(self, item: Item) -> bytes:
        from .recordio import unpack

        if item.error:
            raise SourceError(item.error)
        try:
            return unpack(self._reader().read(item.loc[0]))[1]
        except Exception as e:
            raise SourceError(f"{self.root}: record {item.loc[0]}: {e}") from None


class IJBSource(Source):
    """IJB-B / IJB-C / IJB-S: <root>[/<IJBx>]/meta/<t>_name_5pts_score.txt and loose_crop/.

    Each line of the landmark file: image name, ten coordinates (x1 y1 ... x5 y5), detector
    score. The protocol aligns with these landmarks; no detection runs. Identity: the
    template of the image (from <t>_face_tid_mid.txt) when present.
    """

    format = "ijb"

    def _sets(self) -> list[Path]:
        if (self.root / "meta").is_dir():
            return [self.root]
        return sorted(p for p in self.root.iterdir() if (p / "meta").is_dir())

    def items(self) -> list[Item]:
        out = []
        sets = self._sets()
        if not sets:
            raise PipelineError(f"{self.root}: no IJB meta/ folder found")
        for s in sets:
            t = s.name.lower()
            lmk_file = s / "meta" / f"{t}_name_5pts_score.txt"
            if not lmk_file.is_file():
                cands = sorted((s / "meta").glob("*_name_5pts_score.txt"))
                if not cands:
                    raise PipelineError(f"{s / 'meta'}: no *_name_5pts_score.txt landmark file")
                lmk_file = cands[0]
                t = lmk_file.name[: -len("_name_5pts_score.txt")]
            tid = {}
            tid_file = s / "meta" / f"{t}_face_tid_mid.txt"
            if tid_file.is_file():
                for line in tid_file.read_text().splitlines():
                    f = line.split()
                    if len(f) >= 2:
                        tid.setdefault(f[0], f[1])
            prefix = "" if s == self.root else s.name + "/"
            for lineno, line in enumerate(lmk_file.read_text().splitlines(), 1):
                f = line.split()
                if not f:
                    continue
                key = f"{prefix}loose_crop/{f[0]}"
                try:
                    vals = [float(v) for v in f[1:]]
                    if len(vals) not in (10, 11):
                        raise ValueError(f"expected 10 coordinates and a score, got {len(vals)} numbers")
                except ValueError as e:
                    out.append(Item(key, "", (), error=f"{lmk_file}: line {lineno}: {e}"))
                    continue
                score = vals[10] if len(vals) == 11 else None
                out.append(Item(key, tid.get(f[0], ""), (key,), landmarks=tuple(vals[:10]), score=score))
        return out


_CLASSES = {
    "folder": FolderSource, "ms1m_tsv": TSVSource, "archive": ArchiveSource, "rec": RecSource,
    "lfw": LFWSource, "cfp": CFPSource, "agedb": AgeDBSource, "ijb": IJBSource, "megaface": MegaFaceSource,
}


def open_source(fmt: str, root: str | os.PathLike) -> Source:
    if fmt not in _CLASSES:
        raise PipelineError(f"input format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return _CLASSES[fmt](root)
