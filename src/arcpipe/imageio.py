"""Robust image decoding: bytes -> RGB uint8, or a status and a reason. Never raises on bad bytes.

Order of checks, cheapest first:
1. empty, unknown signature (not an image)          -> unreadable
2. the header's width x height over `max_pixels`     -> too_large (checked BEFORE any decoding,
   so a decompression bomb costs nothing)
3. JPEG without an end-of-image marker after its scan, PNG without IEND -> unreadable (truncated;
   OpenCV would otherwise hand back a silently grey-filled image)
4. decode with OpenCV (EXIF orientation ignored there and applied here, so it does not depend on
   the OpenCV version); failure -> unreadable
Gray, 16-bit, CMYK and alpha inputs decode to 3-channel 8-bit RGB (alpha dropped, as cv2.imread
does in the reference scripts); `note` says which conversion happened.

A caller that needs only the top rows (the align stage: a face crop reads a box of the photo)
says so with `rows=`; a sequential JPEG is then decoded only a little past them, by lowering the
height its frame header gives (libjpeg stops after that many rows), and those rows are exactly a
full decode's.
"""
from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

OK = "ok"
UNREADABLE = "unreadable"
TOO_LARGE = "too_large"

_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


@dataclass
class Header:
    format: str
    width: int = 0
    height: int = 0
    channels: int = 0  # JPEG components / PNG samples per pixel, 0 if unknown
    bit_depth: int = 8
    orientation: int = 1  # EXIF orientation 1..8
    has_alpha: bool = False
    truncated: str = ""  # why the file looks truncated, '' if it does not
    sof_offset: int = -1  # JPEG: byte offset of the frame header's height field
    sof_marker: int = 0  # JPEG: which start-of-frame (0xC0 baseline, 0xC2 progressive, ...)
    mcu_rows: int = 8  # JPEG: rows of one MCU (8 x the largest vertical sampling factor)


@dataclass
class Decoded:
    image: Optional[np.ndarray]  # HxWx3 uint8 RGB, None unless status == ok
    status: str
    reason: str = ""
    note: str = ""
    width: int = 0  # as stored (before EXIF rotation)
    height: int = 0
    format: str = ""
    notes: list = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == OK


def sniff(data: bytes) -> str:
    """Format from the first bytes: jpeg, png, gif, bmp, webp, tiff, or ''."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return ""


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_header(data: bytes) -> Header:
    h = Header("jpeg")
    n = len(data)
    i = 2
    sos = -1
    while i < n:
        if data[i] != 0xFF:
            h.truncated = f"bad JPEG marker at byte {i}"
            return h
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue
        if marker == 0xD9:
            break
        if i + 2 > n:
            break
        seg_len = struct.unpack(">H", data[i:i + 2])[0]
        seg = data[i + 2:i + seg_len]
        if marker in _SOF and len(seg) >= 6:
            h.bit_depth = seg[0]
            h.height, h.width = struct.unpack(">HH", seg[1:5])
            h.channels = seg[5]
            h.sof_offset, h.sof_marker = i + 3, marker
            vs = [seg[7 + 3 * k] & 15 for k in range(h.channels) if 7 + 3 * k < len(seg)]
            h.mcu_rows = 8 * max(vs + [1])
        elif marker == 0xE1 and seg[:6] == b"Exif\x00\x00":
            h.orientation = _exif_orientation(seg[6:])
        elif marker == 0xDA:
            sos = i + seg_len
            break
        i += seg_len
    if sos < 0:
        h.truncated = "truncated JPEG (no image data: start-of-scan marker missing)"
    elif data.rfind(b"\xff\xd9") < sos:
        h.truncated = "truncated JPEG (no end-of-image marker after the scan data)"
    return h


def _exif_orientation(tiff: bytes) -> int:
    """Orientation tag (0x0112) of IFD0 in an EXIF TIFF block; 1 if absent or malformed."""
    try:
        if tiff[:2] == b"II":
            e = "<"
        elif tiff[:2] == b"MM":
            e = ">"
        else:
            return 1
        off = struct.unpack(e + "I", tiff[4:8])[0]
        count = struct.unpack(e + "H", tiff[off:off + 2])[0]
        for k in range(count):
            p = off + 2 + 12 * k
            tag, typ = struct.unpack(e + "HH", tiff[p:p + 4])
            if tag == 0x0112:
                val = struct.unpack(e + "H", tiff[p + 8:p + 10])[0] if typ == 3 else 1
                return val if 1 <= val <= 8 else 1
    except (struct.error, IndexError):
        pass
    return 1


def _png_header(data: bytes) -> Header:
    h = Header("png")
    if len(data) < 33 or data[12:16] != b"IHDR":
        h.truncated = "truncated PNG (no IHDR header)"
        return h
    h.width, h.height, h.bit_depth, ctype = struct.unpack(">IIBB", data[16:26])
    h.channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(ctype, 0)
    h.has_alpha = ctype in (4, 6)
    if data.rfind(b"IEND") < 33:
        h.truncated = "truncated PNG (no IEND chunk)"
    return h


def _pil_header(data: bytes, fmt: str) -> Header:
    h = Header(fmt)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        return h
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data)) as im:
                h.width, h.height = im.size
                h.has_alpha = "A" in im.mode
        except Image.DecompressionBombError as e:  # PIL's own limit, far above ours by default
            h.width = h.height = 1 << 20
            h.truncated = ""
            del e
        except Exception:
            pass
    return h


def read_header(data: bytes) -> Optional[Header]:
    fmt = sniff(data)
    if fmt == "jpeg":
        return _jpeg_header(data)
    if fmt == "png":
        return _png_header(data)
    if fmt:
        return _pil_header(data, fmt)
    return None


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image stored with EXIF orientation 1..8 upright."""
    if orientation == 2:
        img = img[:, ::-1]
    elif orientation == 3:
        img = img[::-1, ::-1]
    elif orientation == 4:
        img = img[::-1]
    elif orientation == 5:
        img = img.transpose(1, 0, 2)
    elif orientation == 6:
        img = img.transpose(1, 0, 2)[:, ::-1]
    elif orientation == 7:
        img = img[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:
        img = img.transpose(1, 0, 2)[::-1]
    return np.ascontiguousarray(img)


def _cv2_decode(data: bytes, bgr: bool = False) -> Optional[np.ndarray]:
    buf = np.frombuffer(data, dtype=np.uint8)
    if bgr:
        return cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if _IMREAD_RGB is not None:
        return cv2.imdecode(buf, _IMREAD_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


_DEVNULL: list = []


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for the duration: libjpeg prints its warnings there itself."""
    if not _DEVNULL:
        _DEVNULL.append(os.open(os.devnull, os.O_WRONLY))
    saved = os.dup(2)
    os.dup2(_DEVNULL[0], 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _top_rows_decode(data: bytes, h: Header, rows: int, bgr: bool) -> Optional[np.ndarray]:
    """Only the top of a sequential JPEG: the frame header says fewer rows, so libjpeg stops after
    them (no Huffman decoding, IDCT or colour conversion of the rest). One MCU row more than asked
    is decoded, so chroma upsampling at the new bottom edge cannot reach the rows asked for: they are
    byte-identical to a full decode. None when it would not pay or does not apply."""
    mcu = h.mcu_rows
    cut = -(-max(rows, 1) // mcu) * mcu + mcu
    if h.sof_marker not in (0xC0, 0xC1) or h.orientation != 1 or cut >= h.height:  # set with sof_offset
        return None
    patched = b"".join((data[:h.sof_offset], struct.pack(">H", cut), data[h.sof_offset + 2:]))
    with _quiet_stderr():  # "N extraneous bytes before marker 0xd9": the rows left undecoded
        img = _cv2_decode(patched, bgr)
    if img is None or img.shape[0] != cut or img.shape[1] != h.width:
        return None
    return img


def _pil_decode(data: bytes) -> Optional[np.ndarray]:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                im.seek(0)
                return np.asarray(im.convert("RGB"))
    except Exception:
        return None


def decode_image(data: bytes, max_pixels: int = 50_000_000, *, bgr: bool = False,
                 rows: Optional[int] = None) -> Decoded:
    """Decode `data` to RGB uint8 (HxWx3), or say why not. Never raises on bad bytes.

    bgr: channels in OpenCV's order instead (for code that encodes with OpenCV again).
    rows: only the image's rows [0, rows) are wanted, by a caller that already knows the bytes
    decode (the align stage: detect decoded the same content). A sequential JPEG stored upright
    is then decoded down to a little more than those rows (the image has fewer rows than the
    header's `height`), which are exactly a full decode's; other images decode whole."""
    try:
        return _decode(data, max_pixels, bgr, rows)
    except Exception as e:  # a parser bug must cost one row, not the data set
        return Decoded(None, UNREADABLE, f"decoder error: {type(e).__name__}: {str(e)[:120]}")


def _decode(data: bytes, max_pixels: int, bgr: bool = False, rows: Optional[int] = None) -> Decoded:
    if not data:
        return Decoded(None, UNREADABLE, "empty file (0 bytes)")
    h = read_header(data)
    if h is None:
        head = bytes(data[:8]).hex()
        return Decoded(None, UNREADABLE, f"not an image (unknown signature {head})")
    d = Decoded(None, OK, width=h.width, height=h.height, format=h.format)
    if h.width * h.height > max_pixels:
        d.status, d.reason = TOO_LARGE, (f"{h.format} header says {h.width}x{h.height} = "
                                         f"{h.width * h.height} pixels > max_pixels {max_pixels}")
        return d
    if h.truncated:
        d.status, d.reason = UNREADABLE, h.truncated
        return d
    try:
        img = _top_rows_decode(data, h, rows, bgr) if rows is not None and h.format == "jpeg" else None
        if img is None:
            img = _cv2_decode(data, bgr)
    except cv2.error as e:  # OpenCV asserts (its own pixel limit, corrupt headers) instead of returning None
        msg = str(e).strip().splitlines()[-1][:120]
        d.status, d.reason = UNREADABLE, f"{h.format} decoder failed: {msg}"
        return d
    if img is None:
        img = _pil_decode(data)
        if img is not None and bgr:
            img = np.ascontiguousarray(img[:, :, ::-1])
    if img is None:
        d.status, d.reason = UNREADABLE, f"{h.format} decoder failed (corrupt data)"
        return d
    if img.ndim == 2:
        img = np.dstack([img] * 3)
    if img.dtype != np.uint8:  # pragma: no cover - IMREAD_COLOR always gives 8 bits
        img = (img >> 8).astype(np.uint8) if img.dtype == np.uint16 else img.astype(np.uint8)
    if img.shape[0] * img.shape[1] > max_pixels:  # headers without a size (rare formats)
        d.status, d.reason = TOO_LARGE, f"{img.shape[1]}x{img.shape[0]} pixels > max_pixels {max_pixels}"
        return d
    notes = []
    if h.channels in (1, 2) or (h.format == "jpeg" and h.channels == 1):
        notes.append("grayscale to RGB")
    if h.channels == 4 and h.format == "jpeg":
        notes.append("CMYK to RGB")
    if h.has_alpha:
        notes.append("alpha dropped")
    if h.bit_depth == 16:
        notes.append("16-bit to 8-bit")
    if h.orientation != 1:
        img = apply_orientation(img, h.orientation)
        notes.append(f"EXIF orientation {h.orientation} applied")
    d.image = img
    d.notes = notes
    d.note = "; ".join(notes)
    if not d.width:
        d.height, d.width = img.shape[:2]
    return d


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an RGB image, encoded by cv2 from BGR (as insightface's packers do; the
    contract of the aligned set)."""
    return encode_jpeg_bgr(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), quality)


def encode_jpeg_bgr(bgr: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of a BGR image (cv2's own channel order)."""
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - cv2 always encodes uint8 images
        raise ValueError("cv2.imencode failed")
    return buf.tobytes()


def decode_rgb(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 HxWx3 (cv2, 8-bit colour); ValueError when it is not an image.

    For stored crops and packs; raw inputs go through decode_image, which handles every odd case."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if len(data) else None
    if img is None:
        raise ValueError("payload is not a decodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
