"""Verification packs (.bin): pickle of (bins, issame_list), as insightface ships lfw.bin, cfp_fp.bin, ...

bins: 2P encoded images (JPEG bytes), pairs consecutive; issame_list: P booleans.
Loading uses a restricted unpickler: a downloaded pack cannot run code. The `evalpack` stage
builds .bin packs from an aligned verification set and its protocol's pairs (arcpipe.pairlists).

The .bin keeps insightface's format, so it cannot say which official fold each pair came from;
once pairs were skipped, contiguous folds no longer match pairs.txt's. The stage writes a
sidecar <set>.json beside <set>.bin with the pack's sha256 and `pair_folds` (pairs.txt's fold of
each written pair); `read_pack_folds` gives the evaluation those folds back.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from .errors import PipelineError
from .fsutil import write_bytes_atomic

__all__ = ["load_bin", "write_bin", "dump_bin", "EvalPackError", "build_bin", "sidecar_path", "PackFolds",
           "read_pack_folds"]

log = logging.getLogger("arcpipe.evalpack")


class EvalPackError(PipelineError):
    """A .bin pack or pairs list is malformed; the message names the file and the item or line."""


# globals a real pack may name: bytes from python-3 protocol-2 pickles, and numpy scalars/arrays
_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, path: Path):
        super().__init__(f, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise EvalPackError(
            f"{self._path}: refused to load: the pickle asks for {module}.{name}; a verification pack may "
            f"only hold bytes, lists, tuples, bools and numpy arrays/scalars (it may try to run code)")

    def persistent_load(self, pid: Any) -> Any:
        raise EvalPackError(f"{self._path}: refused to load: the pickle uses persistent ids")


def _as_bytes(x: Any) -> Optional[bytes]:
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    if isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 1:
        return x.tobytes()
    return None


def _as_bool(x: Any) -> Optional[bool]:
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)) and int(x) in (0, 1):
        return bool(x)
    return None


def load_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """(list of 2P image byte strings, bool array of P pairs) from a .bin, safely."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EvalPackError(f"{path}: verification pack does not exist") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), path).load()
    except EvalPackError:
        raise
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... from a non-pickle
        raise EvalPackError(f"{path}: not a verification pack (not a readable pickle: "
                            f"{type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise EvalPackError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    raw_bins, raw_same = obj
    if isinstance(raw_same, np.ndarray):
        raw_same = raw_same.tolist()
    if not isinstance(raw_bins, (list, tuple)) or not isinstance(raw_same, (list, tuple)):
        raise EvalPackError(f"{path}: bins and issame_list must be lists, got "
                            f"{type(raw_bins).__name__} and {type(raw_same).__name__}")
    bins = []
    for i, b in enumerate(raw_bins):
        bb = _as_bytes(b)
        if bb is None:
            raise EvalPackError(f"{path}: bins[{i}]: expected encoded image bytes, got {type(b).__name__}")
        bins.append(bb)
    same = []
    for i, s in enumerate(raw_same):
        sb = _as_bool(s)
        if sb is None:
            raise EvalPackError(f"{path}: issame_list[{i}]: expected a bool, got {type(s).__name__} {s!r:.40}")
        same.append(sb)
    if len(bins) != 2 * len(same):
        raise EvalPackError(f"{path}: {len(bins)} images for {len(same)} pairs (expected {2 * len(same)})")
    return bins, np.array(same, dtype=bool)


def dump_bin(bins: Sequence[bytes], issame: Iterable[bool]) -> bytes:
    same = [bool(s) for s in issame]
    bins = [bytes(b) for b in bins]
    if len(bins) != 2 * len(same):
        raise ValueError(f"{len(bins)} images for {len(same)} pairs (expected {2 * len(same)})")
    return pickle.dumps((bins, same), protocol=4)


def write_bin(path: str | Path, bins: Sequence[bytes], issame: Iterable[bool]) -> str:
    """Write a .bin atomically; returns its sha256. insightface loads it with pickle.load(f, encoding='bytes')."""
    data = dump_bin(bins, issame)
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- packing pairs


def _tail(source: str, depth: int) -> str:
    parts = re.split(r"[\\/]+", str(source).strip())
    return "/".join(parts[-depth:])


class _ByTail:
    """The aligned set's rows by their source's last k path components, k the depth a protocol
    names its images with (LFW 2, CFP 3, CALFW 1); a tail two sources share is refused."""

    def __init__(self, manifest, where: str):
        self._rows = list(zip(manifest["source"].astype(str), manifest["key"].astype(int),
                              manifest["status"].astype(str)))
        self._where = where
        self._maps: dict[int, tuple[dict[str, tuple[int, str, str]], dict[str, tuple[str, str]]]] = {}

    def get(self, image: str) -> Optional[tuple[int, str]]:
        """(key, status) of the aligned image `image` names, or None where none has that tail."""
        depth = image.count("/") + 1
        if depth not in self._maps:
            found: dict[str, tuple[int, str, str]] = {}
            twins: dict[str, tuple[str, str]] = {}
            for src, key, status in self._rows:
                t = _tail(src, depth)
                if t in found and found[t][2] != src:
                    twins.setdefault(t, (found[t][2], src))
                found[t] = (key, status, src)
            self._maps[depth] = found, twins
        found, twins = self._maps[depth]
        if image in twins:
            a, b = twins[image]
            raise EvalPackError(f"{self._where}: image {image} names more than one image of the aligned set "
                                f"({a} and {b}); the pairs file must name it deeper")
        hit = found.get(image)
        return None if hit is None else hit[:2]


def build_bin(aligned, pairs: Sequence["Pair"], pairs_path: str | Path, on_missing: str = "skip"
              ) -> tuple[list[bytes], list[bool], dict]:
    """Collect the JPEGs of every pair from an aligned set; returns (bins, issame, report).

    A pair's image names (arcpipe.pairlists) are matched against the aligned sources by as many
    trailing path components as they have. An image counts as present when the aligned set holds
    a crop for it (a fallback crop too). Missing ones are counted; the pair is skipped, or with
    on_missing='fail' it is an error.
    """
    by_tail = _ByTail(aligned.manifest, str(pairs_path))
    bins: list[bytes] = []
    same: list[bool] = []
    folds: list[int] = []
    missing: dict[str, str] = {}
    skipped = []
    cache: dict[int, bytes] = {}
    for p in pairs:
        images = (p.image1, p.image2)
        hits = [by_tail.get(img) for img in images]
        absent = [(img, "not in the aligned set" if hit is None else f"no crop (status {hit[1]})")
                  for img, hit in zip(images, hits) if hit is None or hit[0] < 0]
        if absent:
            for img, why in absent:
                missing[img] = why
            if on_missing == "fail":
                img, why = absent[0]
                where = Path(pairs_path) / p.file if p.file else pairs_path
                raise EvalPackError(f"{where}: line {p.line}: image {img} is missing: {why}")
            skipped.append(f"{p.file}:{p.line}" if p.file else p.line)
            continue
        for k, _ in hits:
            if k not in cache:
                cache[k] = aligned.read_jpeg(k)
            bins.append(cache[k])
        same.append(p.same)
        folds.append(p.fold)
    report = {
        "pairs_listed": len(pairs),
        "pairs_written": len(same),
        "pairs_skipped": len(skipped),
        "skipped_lines": skipped,
        "same": int(sum(same)),
        "different": int(len(same) - sum(same)),
        "images_missing": len(missing),
        "missing": [{"image": k, "reason": v} for k, v in sorted(missing.items())],
        "folds": (max(p.fold for p in pairs) + 1) if pairs else 0,
        "pair_folds": folds,
    }
    return bins, same, report


# --------------------------------------------------------------------------- sidecar: official folds

def sidecar_path(bin_path: str | Path) -> Path:
    """<set>.json beside <set>.bin: what the evalpack stage wrote about the pack."""
    return Path(bin_path).with_suffix(".json")


@dataclass(frozen=True)
class PackFolds:
    """What a pack's sidecar says about its folds; pair_folds is None when it gives none."""
    sidecar: Optional[str]            # the sidecar's path, None when the .bin has none
    pair_folds: Optional[list[int]]   # pairs.txt's fold of each pair in the pack
    folds: Optional[int]              # pairs.txt's fold count
    pairs_listed: Optional[int]       # pairs in pairs.txt
    pairs_dropped: Optional[int]      # listed but not in the pack (an image was missing)


def read_pack_folds(bin_path: str | Path, sha256: str, n_pairs: int) -> PackFolds:
    """The official folds of a pack from its sidecar, checked against the pack itself.

    No sidecar (a downloaded pack): all None. A sidecar must be this pack's (same sha256) and
    give one fold per pair; one from before folds were recorded is accepted only when no pair
    was skipped (then contiguous folds are pairs.txt's anyway).
    """
    side = sidecar_path(bin_path)
    if not side.is_file():
        return PackFolds(None, None, None, None, None)
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EvalPackError(f"{side}: line {e.lineno}: not a readable pack sidecar ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EvalPackError(f"{side}: not a readable pack sidecar ({str(e).splitlines()[0]})") from None
    if not isinstance(info, dict) or "sha256" not in info:
        raise EvalPackError(f"{side}: beside {Path(bin_path).name} but not its evalpack sidecar (no sha256); "
                            "move it away or rebuild the pack with scripts/evalpack.py")
    if info["sha256"] != sha256:
        raise EvalPackError(f"{side}: describes another pack (sha256 {str(info['sha256'])[:16]}, "
                            f"{Path(bin_path).name} has {sha256[:16]}); rebuild with scripts/evalpack.py")

    def count(key: str) -> Optional[int]:
        v = info.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise EvalPackError(f"{side}: {key} must be a count, got {v!r:.40}")
        return v

    listed, dropped, folds = count("pairs_listed"), count("pairs_skipped"), count("folds")
    raw = info.get("pair_folds")
    if raw is None:
        if dropped:
            raise EvalPackError(f"{side}: {dropped} pairs were skipped but the sidecar has no pair_folds, so "
                                "pairs.txt's folds are lost; rebuild the pack with scripts/evalpack.py")
        return PackFolds(str(side), None, folds, listed, dropped)
    if not isinstance(raw, list) or len(raw) != n_pairs:
        got = len(raw) if isinstance(raw, list) else type(raw).__name__
        raise EvalPackError(f"{side}: pair_folds must list one fold per pair of the pack ({n_pairs}), got {got}")
    top = folds if folds is not None else 1 + max((f for f in raw if isinstance(f, int)), default=0)
    for i, f in enumerate(raw):
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < top:
            raise EvalPackError(f"{side}: pair_folds[{i}]: expected a fold number in [0, {top}), got {f!r:.40}")
    return PackFolds(str(side), list(raw), top, listed, dropped)
