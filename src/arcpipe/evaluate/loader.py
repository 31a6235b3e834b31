"""Decode and align benchmark images in a worker pool; the model embeds them in the main process.

    for rows, crops, failed in ijb_crops(crop_dir, rows, names, landmarks, workers): ...
    for keys, rgb in aligned_images(aligned_set, keys, workers): ...

IJB: each worker reads <root>/loose_crop/<image> (cv2.imread, BGR) and aligns it from the meta
row's five landmarks (norm_crop, 112x112), then converts to RGB. Aligned sets (MegaFace, YTF):
this process reads the stored JPEG bytes (a slice of the mmapped .rec) and the workers decode
them to RGB. Either way a worker does exactly what the single-process loop did, so the crops,
and the embeddings of the batches the caller builds from them, are the same bytes for any
number of workers.

Work goes out in units of at most LOAD_UNIT images through arcpipe.shards.map_batches
(results in order; at most 2 x workers units in flight, each unit built only when it is
submitted), so the JPEG bytes and crops (37.6 KB each) waiting in memory are a few units, not
the whole benchmark, whichever side is slower. The forkserver preloads the workers' module
(map_batches does), so the pool starts in a fraction of a second. A set smaller than POOL_MIN_IMAGES is read in this
process.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from ..errors import PipelineError

__all__ = ["LOAD_UNIT", "unit_size", "ordered_units", "rebatch", "ijb_crops", "aligned_images"]

LOAD_UNIT = 64          # images per worker task
POOL_MIN_IMAGES = 2048  # fewer: read in this process (starting a pool costs ~1-2 s, ~3,000 images' work)
CROP = 112

_W: dict[str, Any] = {}


def unit_size(n: int, workers: int) -> int:
    """Images per task: LOAD_UNIT, smaller for a small set so that every worker gets some."""
    if workers <= 1 or n < POOL_MIN_IMAGES:
        return LOAD_UNIT
    return max(1, min(LOAD_UNIT, math.ceil(n / (4 * workers))))


def ordered_units(fn: Callable, n_images: int, per_unit: int, make_unit: Callable[[int], Any], workers: int,
                  initializer: Callable, initargs: tuple, desc: str) -> Iterator:
    """fn(make_unit(i)) for the units i of per_unit images covering n_images, in order, each unit
    made only when it is handed to the pool."""
    from ..shards import map_batches

    if n_images < POOL_MIN_IMAGES:
        workers = 1
    n_units = math.ceil(n_images / per_unit)
    yield from map_batches(fn, (make_unit(i) for i in range(n_units)), workers, initializer, initargs, desc,
                           total=n_units)


def rebatch(pieces: Iterable[tuple[np.ndarray, np.ndarray]], size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, images) pieces of any lengths -> pieces of exactly `size` rows (the last one shorter),
    in order: the model sees the same batches however the loading was cut up."""
    ids: list[np.ndarray] = []
    imgs: list[np.ndarray] = []
    held = 0
    for i, x in pieces:
        if len(i) == 0:
            continue
        ids.append(np.asarray(i))
        imgs.append(x)
        held += len(i)
        if held < size:
            continue
        all_i = np.concatenate(ids) if len(ids) > 1 else ids[0]
        all_x = np.concatenate(imgs) if len(imgs) > 1 else imgs[0]
        s = 0
        while held - s >= size:
            yield all_i[s:s + size], all_x[s:s + size]
            s += size
        ids, imgs = ([all_i[s:]], [all_x[s:]]) if s < held else ([], [])
        held -= s
    if held:
        yield (np.concatenate(ids) if len(ids) > 1 else ids[0]), (np.concatenate(imgs) if len(imgs) > 1 else imgs[0])


def _single_threaded_in_a_worker() -> None:
    """OpenCV's own threads only fight the pool: one each inside pool workers (not in the caller)."""
    import multiprocessing as mp

    if mp.parent_process() is not None:
        import cv2

        cv2.setNumThreads(1)


# ---------------------------------------------------------------- IJB: read + align from landmarks

def init_ijb(crop_dir: str) -> None:
    _single_threaded_in_a_worker()
    _W.clear()
    _W["crop_dir"] = Path(crop_dir)


def ijb_unit(unit: tuple[np.ndarray, list[str], np.ndarray]
             ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str, str]]]:
    """(meta rows, image names, landmarks (k, 5, 2)) -> (rows aligned, RGB crops, failures).

    A failure is (row, kind, reason): kind "skipped_unreadable" (missing or undecodable image)
    or "skipped_bad_landmarks" (landmarks the similarity fit refuses).
    """
    import cv2

    from ..align.transform import norm_crop

    rows, names, lmks = unit
    crop_dir: Path = _W["crop_dir"]
    out = np.empty((len(rows), CROP, CROP, 3), dtype=np.uint8)
    ok: list[int] = []
    failed: list[tuple[int, str, str]] = []
    for r, name, lm in zip(rows, names, lmks):
        path = crop_dir / name
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            failed.append((int(r), "skipped_unreadable", f"image {path} is missing or unreadable"))
            continue
        try:
            crop = norm_crop(bgr, lm, CROP)
        except ValueError as e:
            failed.append((int(r), "skipped_bad_landmarks", str(e)))
            continue
        out[len(ok)] = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
        ok.append(int(r))
    return np.asarray(ok, dtype=np.int64), out[:len(ok)], failed


def ijb_crops(crop_dir: str | Path, rows: np.ndarray, names: Sequence[str], landmarks: np.ndarray,
              workers: int = 1, desc: str = "ijb crops"
              ) -> Iterator[tuple[np.ndarray, np.ndarray, list[tuple[int, str, str]]]]:
    """Aligned RGB crops of the given meta rows, unit by unit, in row order (see ijb_unit)."""
    rows = np.asarray(rows, dtype=np.int64)
    size = unit_size(rows.size, workers)

    def unit(i: int):
        r = rows[i * size:(i + 1) * size]
        return r, [names[int(j)] for j in r], landmarks[r]

    yield from ordered_units(ijb_unit, rows.size, size, unit, workers, init_ijb, (str(crop_dir),), desc)


# ---------------------------------------------------------------- aligned sets: decode stored JPEGs

def init_decode() -> None:
    _single_threaded_in_a_worker()


def decode_unit(unit: tuple[str, list[int], list[bytes]]) -> tuple[Optional[np.ndarray], Optional[str]]:
    """(set's .rec path, keys, JPEG bytes) -> (RGB 112x112 faces (k, 112, 112, 3), None) or (None, error)."""
    import cv2

    rec, keys, blobs = unit
    out = np.empty((len(keys), CROP, CROP, 3), dtype=np.uint8)
    for i, (k, data) in enumerate(zip(keys, blobs)):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if len(data) else None
        if bgr is None:
            return None, f"{rec}: key {k}: stored JPEG does not decode"
        if bgr.shape[:2] != (CROP, CROP):
            return None, (f"{rec}: key {k}: stored face is {bgr.shape[1]}x{bgr.shape[0]}; "
                          f"evaluation takes {CROP}x{CROP} aligned faces (align.image_size)")
        out[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return out, None


def aligned_images(aset, keys: Sequence[int], workers: int = 1, desc: str = "decode"
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(keys, RGB faces) unit by unit, in the order given, of an AlignedSet's records. This
    process reads the JPEG bytes (a window at a time); the workers decode them."""
    keys = np.asarray(keys, dtype=np.int64)
    size = unit_size(keys.size, workers)
    rec = str(aset.dir / "faces.rec")

    def unit(i: int):
        k = keys[i * size:(i + 1) * size].tolist()
        return rec, k, [aset.read_jpeg(j) for j in k]

    s = 0
    for imgs, err in ordered_units(decode_unit, keys.size, size, unit, workers, init_decode, (), desc):
        if err is not None:
            raise PipelineError(err)
        yield keys[s:s + imgs.shape[0]], imgs
        s += imgs.shape[0]
