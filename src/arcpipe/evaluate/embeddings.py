"""The embeddings a benchmark run computed, kept for reuse: <evaluate.embeddings_dir>/<name>.npz.

    t = read_embeddings("data/evaluate/ijbc.npz")     # {name: array}, no pickle involved
    t["key"], t["embedding"], t["norm"]

Arrays, one row per embedded image, in the order the benchmark embedded them:

    key        the image: its index in a verification pack (int64), the IJB image name (the
               first column of the meta files), the aligned-set manifest `source` of a MegaFace
               or YTF face (str)
    embedding  float16 (n, D): the model's feature of that image as the protocol starts from it
               (emb(img) + emb(mirrored img) when evaluate.flip / the benchmark's flip is on),
               divided by its L2 norm (a zero feature stays zero). Unit vectors keep float16's
               relative precision in every row and cannot overflow it, whatever a model's scale.
    norm       float32 (n,): that L2 norm; embedding * norm is the raw feature to float16 precision
    (per benchmark) IJB `row`: line of the meta files; MegaFace `role` (probe | distractor) and
               `record` (aligned-set key); YTF `record` and `video` ("<person>/<video>")

The file is a plain .npz (a zip of .npy files) written with fixed timestamps, so the same
embeddings give the same bytes.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..fsutil import atomic_path

__all__ = ["EmbeddingTable", "write_npz", "read_embeddings"]

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_CHUNK = 65536


class EmbeddingTable:
    """Rows added chunk by chunk (features stored as float16 unit vectors at once)."""

    def __init__(self, key_kind: str):
        self.key_kind = key_kind            # what `key` holds, for the summary
        self._keys: list[np.ndarray] = []
        self._emb: list[np.ndarray] = []
        self._norm: list[np.ndarray] = []
        self._extra: dict[str, list[np.ndarray]] = {}

    def add(self, keys, feats, **extra) -> None:
        x = np.asarray(feats)
        keys = np.asarray(keys)
        if x.ndim != 2 or keys.shape != (x.shape[0],):
            raise ValueError(f"{keys.shape[0] if keys.ndim else 1} keys for features of shape {x.shape}")
        emb = np.empty(x.shape, dtype=np.float16)
        norm = np.empty(x.shape[0], dtype=np.float32)
        for s in range(0, x.shape[0], _CHUNK):       # float64 temporaries a chunk at a time
            x64 = x[s:s + _CHUNK].astype(np.float64)
            n = np.sqrt(np.einsum("ij,ij->i", x64, x64))
            emb[s:s + _CHUNK] = x64 / np.where(n > 0, n, 1.0)[:, None]
            norm[s:s + _CHUNK] = n
        self._emb.append(emb)
        self._norm.append(norm)
        self._keys.append(keys)
        if self._extra and set(extra) != set(self._extra):
            raise ValueError(f"columns {sorted(extra)} differ from the first chunk's {sorted(self._extra)}")
        for k, v in extra.items():
            v = np.asarray(v)
            if v.shape != (x.shape[0],):
                raise ValueError(f"column {k}: {v.shape} for {x.shape[0]} rows")
            self._extra.setdefault(k, []).append(v)

    def __len__(self) -> int:
        return int(sum(k.shape[0] for k in self._keys))

    @property
    def dim(self) -> int:
        return int(self._emb[0].shape[1]) if self._emb else 0

    def arrays(self) -> dict[str, np.ndarray]:
        def cat(parts, empty):
            return np.concatenate(parts) if parts else empty

        out = {"key": cat(self._keys, np.empty(0, np.int64)),
               "embedding": cat(self._emb, np.empty((0, 0), np.float16)),
               "norm": cat(self._norm, np.empty(0, np.float32))}
        for k, v in self._extra.items():
            out[k] = np.concatenate(v)
        return out

    def write(self, path: str | os.PathLike) -> dict[str, Any]:
        """Write the .npz; returns its summary entry (file, rows, dim, key)."""
        write_npz(path, self.arrays())
        return {"file": str(path), "rows": len(self), "dim": self.dim, "key": self.key_kind,
                "columns": ["key", "embedding", "norm", *self._extra]}


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """np.savez's format (uncompressed), byte-for-byte reproducible, written atomically."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for name, arr in arrays.items():
                arr = np.asarray(arr)
                if arr.dtype == object:
                    raise ValueError(f"{path}: column {name} holds Python objects")
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
                info.external_attr = 0o644 << 16
                with z.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


def read_embeddings(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(Path(path), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
