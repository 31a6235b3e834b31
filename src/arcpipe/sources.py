"""Raw inputs of the detect and align stages, one Item per input image, in a fixed order.

    src = open_source("folder", "data/sample/train/folder")
    items = src.items()                  # deterministic: sorted, same order every run
    data = src.read(item)                # bytes; raises SourceError(one line) when unreadable
    content_hash(data)                   # the fingerprint detect records and align checks

Formats: folder (<identity>/<image>), ms1m_tsv (7-column TSV with base64 JPEGs), archive (tar,
tar.gz/bz2/xz, zip: read in place, never extracted), rec (an existing RecordIO pack), lfw,
cfp (CFP-FP Data/Images/<id>/{frontal,profile}/), agedb (flat <n>_<Name>_<age>_<g>.jpg),
calfw and cplfw (flat <Name>_<N>.jpg, other files such as landmarks and pairs lists skipped),
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
from typing import Callable, Iterable, Iterator, Optional

import pandas as pd

from .errors import PipelineError

FORMATS = ("folder", "ms1m_tsv", "archive", "rec", "lfw", "cfp", "agedb", "calfw", "cplfw", "ijb", "megaface")
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


def _read_whole(path: str) -> bytes:
    """A file's bytes by plain system calls: a third of the time of Path.read_bytes for the small
    images a folder data set holds (no buffered-reader layers to set up per file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size)
        if len(data) < size:  # a short read (huge files, signals): the rest in a loop
            chunks = [data]
            while True:
                more = os.read(fd, 1 << 24)
                if not more:
                    break
                chunks.append(more)
            data = b"".join(chunks)
        return data
    finally:
        os.close(fd)


def content_hash(data: bytes) -> str:
    """Cheap fingerprint of an input's bytes (the align stage checks the image did not change)."""
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}{len(data):x}"


# --------------------------------------------------------------------------- listings
# A listing is the item list as a table, written once so that each shard job reads only its own
# rows (arcpipe.shards.read_rows) instead of listing the whole source again.

LISTING_COLUMNS = ["source", "identity", "loc", "landmarks", "box", "score", "error"]
LISTING_META = "arcpipe_listing"


def json_text(v) -> str:
    """A locator, landmarks or box as listings and manifests store it: JSON, "" for none."""
    return "" if v is None or v == () else json.dumps(list(v))


def _listing_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.float64() if c == "score" else pa.string()) for c in LISTING_COLUMNS])


def items_frame(items: Iterable[Item]) -> pd.DataFrame:
    """Items as columns: locators and given landmarks/box as JSON text ("" for none)."""
    rows = [(it.source, it.identity, json_text(it.loc), json_text(it.landmarks), json_text(it.box),
             float("nan") if it.score is None else float(it.score), it.error) for it in items]
    df = pd.DataFrame(rows, columns=LISTING_COLUMNS)
    df["score"] = df["score"].astype("float64")
    return df


def frame_items(df: pd.DataFrame) -> list[Item]:
    """The inverse of items_frame."""
    def opt(text: str) -> Optional[tuple]:
        return tuple(json.loads(text)) if text else None

    return [Item(src, ident, opt(loc) or (), opt(lmk), opt(box), None if sc != sc else float(sc), err)
            for src, ident, loc, lmk, box, sc, err in zip(
                df["source"], df["identity"], df["loc"], df["landmarks"], df["box"], df["score"], df["error"])]


def write_listing(path: str | os.PathLike, items: Iterable[Item], meta: dict, chunk: int = 16384,
                  stamp: Optional[Callable[[Item], Optional[tuple]]] = None) -> dict:
    """Stream `items` into a parquet listing (row groups of `chunk`), atomically; returns the
    metadata written: `meta` plus rows, the items' fingerprint (every field of every item, in
    order, and `stamp(item)`: the size and mtime of its file, so that an image rewritten under
    the same name changes it) and whether any needs detection (no given landmarks)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .fsutil import atomic_path

    h = hashlib.sha256()
    rows, detect = 0, False
    with atomic_path(path) as tmp:
        writer = None
        buf: list[Item] = []

        def flush() -> None:
            nonlocal writer
            table = pa.Table.from_pandas(items_frame(buf), schema=_listing_schema(), preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table, row_group_size=chunk)
            buf.clear()

        try:
            for it in items:
                fields = (it.source, it.identity, it.loc, it.landmarks, it.box, it.score, it.error,
                          stamp(it) if stamp is not None else None)
                h.update(json.dumps(fields, default=str).encode("utf-8", "surrogatepass"))
                h.update(b"\0")
                detect = detect or (it.landmarks is None and not it.error)
                rows += 1
                buf.append(it)
                if len(buf) >= chunk:
                    flush()
            if buf or writer is None:
                flush()
            info = {**meta, "rows": rows, "items": h.hexdigest()[:16], "needs_detector": detect}
            writer.add_key_value_metadata({LISTING_META: json.dumps(info, sort_keys=True)})
        finally:
            if writer is not None:
                writer.close()
    return info


def row_item(source: str, identity: str, loc: str) -> Item:
    """The Item a manifest row stands for (its `loc` column is the locator as JSON)."""
    return Item(source, identity, tuple(json.loads(loc)) if loc else ())


def listing_meta(path: str | os.PathLike) -> dict:
    """The metadata write_listing stored ({} when the file is absent or not a listing)."""
    import pyarrow.parquet as pq

    try:
        return json.loads((pq.ParquetFile(path).metadata.metadata or {}).get(LISTING_META.encode(), b"{}"))
    except Exception:
        return {}


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
    file_per_item = True  # read() reads root/loc[0]; False where items live in container files

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.exists():
            raise PipelineError(f"{self.root}: input source does not exist")

    def items(self) -> list[Item]:  # pragma: no cover - abstract
        raise NotImplementedError

    def iter_items(self) -> Iterator[Item]:
        """The items in order; sources that can (the MS1M TSV) stream them instead of listing first."""
        return iter(self.items())

    def signature(self) -> Optional[list]:
        """A cheap fingerprint (path, size, mtime) of a source held in a few files, so a listing
        can be reused without reading them; None where only listing again can tell (folders)."""
        return None

    def stamp(self, item: Item) -> Optional[tuple]:
        """(size, mtime) of the file an item is read from, for sources of one file per item, so
        the listing's fingerprint changes when an image is rewritten under the same name; None
        for sources held in a few container files (their signature() covers the bytes)."""
        if item.error or not item.loc or not self.file_per_item:
            return None
        try:
            st = os.stat(self.root / item.loc[0])
        except OSError:
            return None  # read() names the problem
        return st.st_size, st.st_mtime_ns

    @staticmethod
    def _stat(paths) -> list:
        out = []
        for p in paths:
            st = os.stat(p)
            out.append([str(p), st.st_size, st.st_mtime_ns])
        return out

    def read(self, item: Item) -> bytes:
        if item.error:
            raise SourceError(item.error)
        path = os.path.join(self.root, item.loc[0])
        try:
            return _read_whole(path)
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


class FlatNamedSource(Source):
    """CALFW / CPLFW: a flat folder of <Name>_<N>.jpg; identity = Name. Only images are items (the
    releases keep landmark .txt files and the pairs list beside them)."""

    format = "calfw"

    def items(self) -> list[Item]:
        out = []
        for p in _sorted_files(self.root):
            if p.suffix.lower() not in IMAGE_EXTS:
                continue
            rel = p.relative_to(self.root).as_posix()
            name, _, number = p.stem.rpartition("_")
            out.append(Item(rel, name if name and number.isdigit() else "", (rel,)))
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
    file_per_item = False
    COLUMNS = 7

    def close(self) -> None:
        for fd in (getattr(self, "_h", None) or {}).values():
            os.close(fd)
        self._h = None

    def _files(self) -> list[Path]:
        if self.root.is_dir():
            return sorted(p for p in self.root.rglob("*.tsv"))
        return [self.root]

    def items(self) -> list[Item]:
        return list(self.iter_items())

    def signature(self) -> Optional[list]:
        return self._stat(self._files())

    def iter_items(self) -> Iterator[Item]:
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
                    key = f"{rel}:{lineno}"
                    ncols = body.count(b"\t") + 1
                    if ncols != self.COLUMNS:
                        yield Item(key, "", (), error=f"{f}: line {lineno}: expected {self.COLUMNS} "
                                                      f"tab-separated columns, got {ncols}")
                    else:
                        ident = body[:body.index(b"\t")].decode("utf-8", "replace")
                        yield Item(key, ident, (str(f), off, n, lineno))
                    off += n

    def read(self, item: Item) -> bytes:
        if item.error:
            raise SourceError(item.error)
        path, off, n, lineno = item.loc
        if getattr(self, "_h", None) is None:
            self._h = {}  # open files of this process, by path (unbuffered: pread reads exactly the row)
        fd = self._h.get(path)
        try:
            if fd is None:
                fd = self._h[path] = os.open(path, os.O_RDONLY)
            line = os.pread(fd, n, off)
        except OSError as e:
            raise SourceError(f"{path}: line {lineno}: cannot read: {e.strerror or e}") from None
        if len(line) != n:
            raise SourceError(f"{path}: line {lineno}: the file ends inside the row (it changed since listing)")
        col = line.rstrip(b"\r\n").split(b"\t")[self.COLUMNS - 1].strip()
        try:
            return base64.b64decode(col, validate=True)
        except (binascii.Error, ValueError) as e:
            raise SourceError(f"{path}: line {lineno}: face data is not valid base64 ({e})") from None


class ArchiveSource(Source):
    """tar (any compression tarfile reads) or zip, read in place. Identity = the member's parent
    folder name. Members with absolute paths, '..' parts, links or devices are refused."""

    format = "archive"
    file_per_item = False

    def __init__(self, root):
        super().__init__(root)
        self._h = None
        self._is_zip = zipfile.is_zipfile(self.root)
        if not self._is_zip and not tarfile.is_tarfile(self.root):
            raise PipelineError(f"{self.root}: not a tar or zip archive")

    def signature(self) -> Optional[list]:
        return self._stat([self.root])

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
    file_per_item = False

    def __init__(self, root):
        root = Path(root)
        if root.is_dir():
            recs = sorted(root.glob("*.rec"))
            if len(recs) != 1:
                raise PipelineError(f"{root}: expected one .rec file in the folder, found {len(recs)}")
            root = recs[0]
        super().__init__(root)
        self._h = None

    def signature(self) -> Optional[list]:
        idx = self.root.with_suffix(".idx")
        return self._stat([self.root] + ([idx] if idx.is_file() else []))

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
    "lfw": LFWSource, "cfp": CFPSource, "agedb": AgeDBSource, "calfw": FlatNamedSource, "cplfw": FlatNamedSource,
    "ijb": IJBSource, "megaface": MegaFaceSource,
}


def open_source(fmt: str, root: str | os.PathLike) -> Source:
    if fmt not in _CLASSES:
        raise PipelineError(f"input format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return _CLASSES[fmt](root)
