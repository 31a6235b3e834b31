"""Verification packs (.bin) as the evaluate stage judges them: decode, embed (with the flip),
10-fold verification, metrics and the ROC.

Folds: a pack the evalpack stage built has a sidecar (<set>.json beside <set>.bin) with the
official fold of each pair (pairs.txt's); those folds are used, so skipped pairs do not shift
the others into neighbouring folds. A pack without one (a downloaded lfw.bin) gets the
reference's contiguous KFold. The metrics say which: `fold_rule`, `pairs_listed`, `pairs_dropped`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import PipelineError
from ..evalpack import load_bin, read_pack_folds
from ..fsutil import sha256_file
from .model import Embedder
from .verification import evaluate_embeddings

DECODE_CHUNK = 1024


def decode_bin_images(bins: list[bytes], start: int, stop: int, path: str) -> np.ndarray:
    """JPEG/PNG bytes bins[start:stop] -> RGB uint8 (n, 112, 112, 3); errors name the image."""
    import cv2

    out = np.empty((stop - start, 112, 112, 3), dtype=np.uint8)
    for i in range(start, stop):
        b = bins[i]
        img = cv2.imdecode(np.frombuffer(b, dtype=np.uint8), cv2.IMREAD_COLOR) if len(b) else None
        if img is None:
            raise PipelineError(f"{path}: image {i} (pair {i // 2}) is not a decodable image")
        if img.shape[:2] != (112, 112):
            raise PipelineError(f"{path}: image {i} (pair {i // 2}) is {img.shape[1]}x{img.shape[0]}; "
                                "expected an aligned 112x112 face")
        out[i - start] = img[:, :, ::-1]
    return out


def embed_bins(bins: list[bytes], embedder: Embedder, flip: bool, path: str, desc: str = "") -> tuple[np.ndarray, np.ndarray | None]:
    """Embed every image of a pack (decoded in chunks): (raw, raw of the flip or None), float32."""
    n = len(bins)
    a = np.empty((n, embedder.embedding_size), dtype=np.float32)
    b = np.empty_like(a) if flip else None
    with tqdm(total=n, desc=desc or Path(path).name, unit="img", disable=None) as bar:
        for s in range(0, n, DECODE_CHUNK):
            e = min(n, s + DECODE_CHUNK)
            va, vb = embedder.embed_views(decode_bin_images(bins, s, e, path), flip)
            a[s:e] = va
            if b is not None:
                b[s:e] = vb
            bar.update(e - s)
    return a, b


def _load_pack(path: str) -> tuple[list[bytes], np.ndarray]:
    bins, issame = load_bin(path)
    issame = np.asarray(issame, dtype=bool).reshape(-1)
    if len(bins) != 2 * issame.shape[0]:
        raise PipelineError(f"{path}: {len(bins)} images for {issame.shape[0]} pairs; "
                            f"a verification pack holds exactly 2 images per pair")
    return bins, issame


def verify_bin(name: str, path: str, embedder: Embedder, flip: bool, folds: int, far_target: float,
               log=None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One verification set: (metrics dict, ROC columns)."""
    bins, issame = _load_pack(path)
    if issame.shape[0] < folds:
        raise PipelineError(f"{path}: {issame.shape[0]} pairs cannot make {folds} folds (evaluate.folds)")
    sha = sha256_file(path)
    pack = read_pack_folds(path, sha, int(issame.shape[0]))
    pair_folds = pack.pair_folds
    if pair_folds is not None and pack.folds != folds:
        if log is not None:
            log.warning("%s: evaluate.folds is %d but %s has %d official folds: using contiguous KFold(%d)",
                        name, folds, pack.sidecar, pack.folds, folds)
        pair_folds = None
    a, b = embed_bins(bins, embedder, flip, path, desc=name)
    try:
        res = evaluate_embeddings(a, issame, folds=folds, far_target=far_target, flipped=b, pair_folds=pair_folds)
    except ValueError as e:  # e.g. too few official folds left with pairs in them
        raise PipelineError(f"{pack.sidecar or path}: {e}") from None
    raw = a.astype(np.float64) if b is None else a.astype(np.float64) + b.astype(np.float64)
    metrics = {
        "benchmark": name,
        "protocol": "verification-10fold" if res.folds == 10 else f"verification-{res.folds}fold",
        **res.to_dict(),
        "pairs_listed": pack.pairs_listed,
        "pairs_dropped": pack.pairs_dropped,
        "flip": bool(flip),
        "xnorm": float(np.mean(np.linalg.norm(raw, axis=1))),
        "data": {"path": str(path), "sha256": sha, "images": len(bins), "sidecar": pack.sidecar},
    }
    roc = {"threshold": np.round(res.roc_thresholds, 6), "fpr": res.fpr, "tpr": res.tpr}
    if log is not None:
        val = ("VAL not resolvable at FAR %g (%d impostor pairs in the smallest training split)"
               % (far_target, int(np.min(res.val_train_impostors)))) if res.not_resolvable() else \
            "VAL %.5f @ FAR %.5f (target %g)" % (res.val_mean, res.far_mean, far_target)
        log.info("%s: acc %.5f +- %.5f, %s, %d pairs, folds %s", name, res.acc_mean, res.acc_std, val,
                 res.n_pairs, res.fold_rule)
    return metrics, roc
