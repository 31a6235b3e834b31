"""The aligned-face set: what the align stage writes and later stages read (data/align/<name>/).

    faces.rec + faces.idx   RecordIO; key = manifest `key`, IRHeader label = `label`,
                            payload = JPEG of the aligned RGB face (cv2, from BGR)
    manifest.parquet        one row per input image, rejected ones included
    summary.json            counts that reconcile: in = aligned + rejected by status

    s = AlignedSet("data/align/train")     # from arcpipe.align import AlignedSet
    s.faces                       # rows with a crop (key >= 0)
    s.read_rgb(key)               # HxWx3 uint8 RGB
    for row, rgb in s.iter_faces(): ...
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ..columns import BOX_COLUMNS, LANDMARK_COLUMNS
from ..errors import PipelineError

MANIFEST = "manifest.parquet"
SUMMARY = "summary.json"
REC = "faces.rec"
IDX = "faces.idx"
CONTACT_SHEET = "contact_sheet.jpg"



def landmarks_of(row) -> np.ndarray:
    """(5, 2) float64 landmarks of a manifest row (NaN when none)."""
    return np.array([row[c] for c in LANDMARK_COLUMNS], dtype=np.float64).reshape(5, 2)


def box_of(row) -> np.ndarray:
    return np.array([row[c] for c in BOX_COLUMNS], dtype=np.float64)


def identity_labels(identities) -> dict[str, int]:
    """Contiguous labels 0..C-1 over the sorted non-empty identities."""
    names = sorted({str(i) for i in identities if isinstance(i, str) and i != ""})
    return {n: k for k, n in enumerate(names)}


class AlignedSet:
    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        mpath = self.dir / MANIFEST
        if not mpath.is_file():
            raise PipelineError(f"{mpath}: aligned-set manifest does not exist (run the align stage)")
        self.manifest: pd.DataFrame = pd.read_parquet(mpath)
        self._reader = None

    @property
    def faces(self) -> pd.DataFrame:
        return self.manifest[self.manifest["key"] >= 0]

    @property
    def num_classes(self) -> int:
        lab = self.manifest["label"]
        return int(lab.max()) + 1 if len(lab) and lab.max() >= 0 else 0

    def _rec(self):
        if self._reader is None:
            from ..recordio import RecordReader

            self._reader = RecordReader(self.dir / REC, self.dir / IDX)
        return self._reader

    def read_record(self, key: int):
        """(IRHeader, JPEG bytes) stored under `key`."""
        from ..recordio import unpack

        return unpack(self._rec().read(int(key)))

    def read_jpeg(self, key: int) -> bytes:
        return self.read_record(key)[1]

    def read_rgb(self, key: int) -> np.ndarray:
        import cv2

        data = self.read_jpeg(key)
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise PipelineError(f"{self.dir / REC}: key {key}: stored JPEG does not decode")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def iter_faces(self) -> Iterator[tuple[pd.Series, np.ndarray]]:
        for _, row in self.faces.iterrows():
            yield row, self.read_rgb(int(row["key"]))

    def __len__(self) -> int:
        return int((self.manifest["key"] >= 0).sum())

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
