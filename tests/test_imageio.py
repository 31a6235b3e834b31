"""Robust decoding: every bad input becomes a status and a reason, never an exception."""
from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest

from arcpipe.imageio import apply_orientation, decode_image, read_header

PIL = pytest.importorskip("PIL", reason="Pillow (a matplotlib dependency) is needed to write CMYK/EXIF cases")
from PIL import Image, ImageOps  # noqa: E402


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()[100:300, 150:350].copy()  # RGB, 200x200


def _jpeg(rgb, quality=95) -> bytes:
    return cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def test_good_jpeg_and_png_decode_to_rgb(photo):
    d = decode_image(_jpeg(photo))
    assert d.ok and d.image.shape == (200, 200, 3) and d.image.dtype == np.uint8
    assert np.abs(d.image.astype(int) - photo).mean() < 3  # RGB order kept, not BGR
    png = cv2.imencode(".png", photo[:, :, ::-1])[1].tobytes()
    d = decode_image(png)
    assert d.ok and np.array_equal(d.image, photo) and d.note == ""


def test_empty_text_and_truncated_are_unreadable(photo):
    d = decode_image(b"")
    assert (d.status, d.reason) == ("unreadable", "empty file (0 bytes)")
    d = decode_image(b"name,age\nbob,3\n")
    assert d.status == "unreadable" and "not an image" in d.reason
    full = _jpeg(photo)
    for cut in (len(full) // 2, len(full) - 10, 200):
        d = decode_image(full[:cut])
        assert d.status == "unreadable" and "truncated JPEG" in d.reason, (cut, d.reason)
    png = cv2.imencode(".png", photo)[1].tobytes()
    d = decode_image(png[: len(png) // 2])
    assert d.status == "unreadable" and "truncated PNG" in d.reason
    # a JPEG header followed by garbage scan data: the decoder fails, we say so
    d = decode_image(full[:600] + bytes(range(256)) * 4 + b"\xff\xd9")
    assert d.status in ("unreadable", "ok")  # libjpeg may conceal; it must not raise
    assert decode_image(b"\xff\xd8\xff").status == "unreadable"


def test_rgba_16bit_gray_png(photo):
    rgba = np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])
    d = decode_image(cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))[1].tobytes())
    assert d.ok and d.image.shape == (200, 200, 3) and "alpha dropped" in d.note
    assert np.array_equal(d.image, photo)

    p16 = photo.astype(np.uint16) * 257
    d = decode_image(cv2.imencode(".png", p16[:, :, ::-1])[1].tobytes())
    assert d.ok and d.image.dtype == np.uint8 and "16-bit to 8-bit" in d.note
    assert np.abs(d.image.astype(int) - photo).max() <= 1

    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    for blob in (cv2.imencode(".png", gray)[1].tobytes(), cv2.imencode(".jpg", gray)[1].tobytes()):
        d = decode_image(blob)
        assert d.ok and d.image.shape == (200, 200, 3) and "grayscale to RGB" in d.note
        assert np.array_equal(d.image[:, :, 0], d.image[:, :, 2])


def test_cmyk_jpeg(photo):
    buf = io.BytesIO()
    Image.fromarray(photo).convert("CMYK").save(buf, "JPEG", quality=95)
    d = decode_image(buf.getvalue())
    assert d.ok and "CMYK to RGB" in d.note and d.image.shape == (200, 200, 3)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.abs(d.image.astype(int) - ref).mean() < 4
    assert np.abs(d.image.astype(int) - photo).mean() < 12  # colours survive, not inverted


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(photo, orientation):
    img = photo[:, :150]  # not square, so rotations show in the shape
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    data = buf.getvalue()
    assert read_header(data).orientation == orientation
    d = decode_image(data)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert d.ok and d.image.shape == upright.shape
    assert np.abs(d.image.astype(int) - upright).mean() < 2
    assert ("EXIF orientation" in d.note) == (orientation != 1)


def test_decompression_bomb_header_refused_before_decoding():
    # a 40-byte-ish PNG whose header claims 100000 x 100000 pixels
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + _png_chunk(b"IEND", b"")
    d = decode_image(bomb, max_pixels=50_000_000)
    assert d.status == "too_large" and "100000x100000" in d.reason
    # the same trick in a JPEG: patch the frame header of a real tiny JPEG
    small = _jpeg(np.zeros((8, 8, 3), np.uint8))
    i = small.index(b"\xff\xc0")
    patched = small[: i + 5] + struct.pack(">HH", 60000, 60000) + small[i + 9:]
    d = decode_image(patched, max_pixels=50_000_000)
    assert d.status == "too_large" and "60000x60000" in d.reason
    # below the limit the same file is judged on its content, not refused
    assert decode_image(patched, max_pixels=10**10).status != "too_large"


def test_apply_orientation_is_pil_compatible():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        im = Image.fromarray(img)
        im.info["exif"] = exif.tobytes()
        im.getexif()[0x0112] = o
        ref = np.asarray(ImageOps.exif_transpose(im))
        assert np.array_equal(apply_orientation(img, o), ref), o


def _cv2_jpeg(rgb, **params) -> bytes:
    flags = [cv2.IMWRITE_JPEG_QUALITY, 95]
    for k, v in params.items():
        flags += [getattr(cv2, k), v]
    return cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), flags)[1].tobytes()


def _pil_jpeg(img, mode="RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).convert(mode).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("case", ["420", "422", "444", "440", "411", "gray", "restarts", "cmyk", "odd_height"])
def test_top_rows_decode_matches_the_full_decode(photo, case, capfd):
    """rows=N decodes a sequential JPEG only down to a little past row N; those rows are a full
    decode's exactly, and libjpeg's note about the bytes it left is not printed."""
    img = np.ascontiguousarray(np.vstack([photo, photo[::-1]])[:397])  # 397 x 200: not a multiple of 16
    sampling = {"420": "IMWRITE_JPEG_SAMPLING_FACTOR_420", "422": "IMWRITE_JPEG_SAMPLING_FACTOR_422",
                "444": "IMWRITE_JPEG_SAMPLING_FACTOR_444", "440": "IMWRITE_JPEG_SAMPLING_FACTOR_440",
                "411": "IMWRITE_JPEG_SAMPLING_FACTOR_411"}
    if case in sampling:
        data = _cv2_jpeg(img, IMWRITE_JPEG_SAMPLING_FACTOR=getattr(cv2, sampling[case]))
    elif case == "gray":
        data = _pil_jpeg(img, "L")
    elif case == "restarts":
        data = _cv2_jpeg(img, IMWRITE_JPEG_RST_INTERVAL=3)
    elif case == "cmyk":
        data = _pil_jpeg(img, "CMYK")
    else:
        data = _cv2_jpeg(img[:389])
    full = decode_image(data)
    assert full.ok
    for rows in (1, 48, 50, 112, 200, 300):  # whole MCU rows too: the last one asked is exact
        part = decode_image(data, rows=rows)
        assert part.ok and (part.width, part.height) == (full.width, full.height)  # as stored
        assert rows <= part.image.shape[0] < full.image.shape[0], (rows, part.image.shape)
        assert np.array_equal(part.image[:rows], full.image[:rows]), rows
        bgr = decode_image(data, bgr=True, rows=rows)
        assert np.array_equal(bgr.image[:rows], full.image[:rows, :, ::-1])
    assert decode_image(data, rows=full.image.shape[0]).image.shape == full.image.shape  # nothing to save
    assert "Corrupt JPEG" not in capfd.readouterr().err


def test_top_rows_decode_only_where_it_is_exact(photo):
    """Progressive JPEGs, EXIF-rotated ones and PNGs decode whole under rows=N."""
    img = np.ascontiguousarray(np.vstack([photo, photo]))
    exif = Image.Exif()
    exif[0x0112] = 6
    for data in (_pil_jpeg(img, progressive=True), _pil_jpeg(img, exif=exif.tobytes()),
                 cv2.imencode(".png", img)[1].tobytes()):
        full = decode_image(data)
        part = decode_image(data, rows=20)
        assert part.ok and np.array_equal(part.image, full.image)
