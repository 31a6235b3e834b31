"""A feature store: the embeddings of a set of images, as the cleaning stage reads them.

One folder:

    features.npy    float16 (N, D), unit rows (a standard .npy file: np.load(..., mmap_mode="r") works)
    index.parquet   one row per feature row, in the same order: key (str: the image's key in its
                    source, e.g. the .rec record index or the aligned set's path), label (int64:
                    the identity label, -1 where it has none), norm (float32: the embedding's norm
                    before normalising)
    meta.json       count, dim, dtype, and what made it (model, source), as the writer was told

Rows of one label need not be contiguous, but a training pack gives them so.

Reading never maps the whole file into memory: `FeatureStore.read(start, stop)` reads that slice
with one explicit read, so a caller that walks the store in chunks keeps its memory bounded by the
chunk (5.8M x 512 float16 is 5.9 GB; a chunk of 65,536 rows is 64 MB).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import pandas as pd

from ..errors import PipelineError
from ..fsutil import atomic_path

FEATURES, INDEX, META = "features.npy", "index.parquet", "meta.json"
DTYPE = np.float16

__all__ = ["FeatureStore", "FeatureWriter", "FEATURES", "INDEX", "META"]


class FeatureStore:
    """Read side. Raises PipelineError (one line, naming the file) on a store that does not hold together."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        for name in (FEATURES, INDEX, META):
            if not (self.path / name).is_file():
                raise PipelineError(f"{self.path}: not a feature store ({name} is missing)")
        self.meta: dict[str, Any] = json.loads((self.path / META).read_text())
        with open(self.path / FEATURES, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f"npy format version {version}")
                shape, fortran, dtype = read_header(f)
            except ValueError as e:
                raise PipelineError(f"{self.path / FEATURES}: not a .npy file ({e})") from None
            self._offset = f.tell()
        if dtype != DTYPE or fortran or len(shape) != 2:
            raise PipelineError(f"{self.path / FEATURES}: expected a C-order float16 (N, D) array, "
                                f"found {dtype} {shape}{' fortran' if fortran else ''}")
        self.count, self.dim = int(shape[0]), int(shape[1])
        size = (self.path / FEATURES).stat().st_size
        if size != self._offset + self.count * self.dim * 2:
            raise PipelineError(f"{self.path / FEATURES}: {size} bytes, expected "
                                f"{self._offset + self.count * self.dim * 2} for {self.count} x {self.dim} (truncated?)")
        if self.meta.get("count") != self.count or self.meta.get("dim") != self.dim:
            raise PipelineError(f"{self.path / META}: says {self.meta.get('count')} x {self.meta.get('dim')}, "
                                f"{FEATURES} holds {self.count} x {self.dim}")
        self._index: Optional[pd.DataFrame] = None

    @property
    def index(self) -> pd.DataFrame:
        if self._index is None:
            idx = pd.read_parquet(self.path / INDEX, columns=["key", "label", "norm"])
            if len(idx) != self.count:
                raise PipelineError(f"{self.path / INDEX}: {len(idx)} rows, {FEATURES} holds {self.count}")
            self._index = idx
        return self._index

    @property
    def labels(self) -> np.ndarray:
        return self.index["label"].to_numpy(np.int64)

    @property
    def keys(self) -> np.ndarray:
        return self.index["key"].to_numpy(str)

    def read(self, start: int, stop: int, dtype=np.float32) -> np.ndarray:
        """Rows [start, stop) as a fresh (stop - start, D) array of `dtype`."""
        start, stop = max(0, int(start)), min(self.count, int(stop))
        n = max(0, stop - start)
        out = np.empty((n, self.dim), dtype=DTYPE)
        if n:
            with open(self.path / FEATURES, "rb") as f:
                f.seek(self._offset + start * self.dim * 2)
                got = f.readinto(memoryview(out).cast("B"))
            if got != out.nbytes:
                raise PipelineError(f"{self.path / FEATURES}: short read at rows {start}..{stop}")
        return out if dtype == DTYPE else out.astype(dtype)

    def chunks(self, rows: int = 65536, dtype=np.float32) -> Iterator[tuple[int, np.ndarray]]:
        """(start, rows) for consecutive chunks of at most `rows` rows."""
        for start in range(0, self.count, rows):
            yield start, self.read(start, start + rows, dtype)

    def check_keys(self, expected_keys, what: str) -> None:
        """PipelineError unless the store's keys are exactly `expected_keys`, in order."""
        expected = np.asarray(list(expected_keys), dtype=str)
        keys = self.keys
        if len(expected) != len(keys):
            raise PipelineError(f"{self.path}: {len(keys)} features, {what} has {len(expected)} images")
        bad = np.flatnonzero(expected != keys)
        if len(bad):
            i = int(bad[0])
            raise PipelineError(f"{self.path}: row {i} has key {str(keys[i])!r}, {what} has {str(expected[i])!r} "
                                f"({len(bad)} keys differ)")


class FeatureWriter:
    """Write side: append batches, then `close()` renames the finished folder into place.

    Used as a context manager, an error leaves nothing at `path`. Rows are normalised here."""

    def __init__(self, path: str | os.PathLike, dim: int, meta: Optional[Mapping[str, Any]] = None):
        self.path, self.dim = Path(path), int(dim)
        self.meta = dict(meta or {})
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._tmp.mkdir(parents=True)
        self._raw = open(self._tmp / "features.raw", "wb")
        self._keys: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._norms: list[np.ndarray] = []
        self.count = 0

    def append(self, keys, labels, features: np.ndarray) -> None:
        feats = np.asarray(features, dtype=np.float32)
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise PipelineError(f"{self.path}: the model gave features of shape {tuple(feats.shape)}, "
                                f"expected (n, {self.dim})")
        keys = np.asarray(list(keys), dtype=object).astype(str)
        labels = np.asarray(list(labels), dtype=np.int64)
        if not (len(keys) == len(labels) == len(feats)):
            raise PipelineError(f"{self.path}: {len(keys)} keys, {len(labels)} labels, {len(feats)} features")
        finite = np.isfinite(feats).all(axis=1)
        if not finite.all():
            raise PipelineError(f"{self.path}: the model gave a non-finite feature (key {str(keys[~finite][0])!r})")
        norms = np.linalg.norm(feats, axis=1)
        unit = feats / np.maximum(norms, 1e-12)[:, None]
        self._raw.write(unit.astype(DTYPE).tobytes())
        self._keys.append(keys)
        self._labels.append(labels)
        self._norms.append(norms.astype(np.float32))
        self.count += len(feats)

    def close(self) -> Path:
        self._raw.close()
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(DTYPE)), "fortran_order": False,
                  "shape": (self.count, self.dim)}
        with open(self._tmp / FEATURES, "wb") as out, open(self._tmp / "features.raw", "rb") as raw:
            np.lib.format.write_array_header_1_0(out, header)
            while block := raw.read(1 << 24):
                out.write(block)
        os.remove(self._tmp / "features.raw")
        cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))
        pd.DataFrame({"key": cat(self._keys, str), "label": cat(self._labels, np.int64),
                      "norm": cat(self._norms, np.float32)}).to_parquet(self._tmp / INDEX, index=False)
        meta = {**self.meta, "count": self.count, "dim": self.dim, "dtype": "float16", "unit_rows": True}
        (self._tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self._atomic.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        """Remove what was written; nothing appears at `path`."""
        err = RuntimeError("aborted")
        self.__exit__(RuntimeError, err, None)

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self._raw.close()
            self._atomic.__exit__(exc_type, exc, tb)  # removes the temporary folder
        return False
