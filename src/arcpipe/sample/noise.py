"""Corrupt payloads for the cleaning stage to find: the same three faults in the folder and the TSV."""
from __future__ import annotations

import base64

import numpy as np

CORRUPT_KINDS = ("empty", "truncated", "garbage")


def corrupt_file_bytes(kind: str, jpeg: bytes, rng: np.random.Generator) -> bytes:
    """Bytes of a broken image file: empty, a JPEG cut in the middle, or random bytes."""
    if kind == "empty":
        return b""
    if kind == "truncated":
        cut = int(len(jpeg) * rng.uniform(0.35, 0.6))
        return jpeg[:cut]
    if kind == "garbage":
        n = int(rng.integers(600, 3000))
        data = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        # never start like a JPEG or PNG by accident
        return b"\x00GARBAGE" + data
    raise ValueError(f"unknown corrupt kind {kind!r}")


def corrupt_tsv_field(kind: str, file_bytes: bytes, rng: np.random.Generator) -> str:
    """The TSV's face-data column for the same fault: empty, base64 of a cut JPEG, not base64 at all."""
    if kind == "garbage":
        # characters outside the base64 alphabet, and a length that is not a multiple of 4
        alphabet = np.array(list("ABCDEFabcdef0123456789*!?#%&"))
        n = int(rng.integers(200, 800)) * 4 + 3
        return "".join(rng.choice(alphabet, size=n).tolist())
    return base64.b64encode(file_bytes).decode("ascii")
