"""YouTube Faces: video-pair verification with mean-of-frames features.

* Frames come from an aligned set (contract 2) whose manifest `source` ends in
  <person>/<video>/<frame file>; the video id is "<person>/<video>", as splits.txt names it.
* Frame feature = emb(frame) (+ emb(mirrored frame) with flip), L2-normalised when
  normalize_frames; video feature = the mean of its frames' features.
* Pairs: splits.txt, "split number, first name, second name, match, same" after a header line;
  the label is the match column (the same column, when present, must agree).
* Protocol: the 10-fold verification of arcpipe.evaluate.verification (video features added and
  L2-normalised, squared L2 distance, best train threshold on np.arange(0, 4, 0.01)). Its folds
  are contiguous; the pairs are ordered by split number, so with the official 10 x 500 pairs
  every fold is one official split (a warning is returned when the split sizes differ).
* A pair whose video has no aligned frame is skipped, counted and listed.

The runner writes nothing: it returns {"metrics", "plots", "counts", "problems", "embeddings"}.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import PipelineError
from .embeddings import EmbeddingTable

__all__ = ["read_splits", "video_of", "video_features", "evaluate_ytf", "run_ytf"]


def read_splits(path: str | os.PathLike) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    """splits.txt -> (split numbers, first videos, second videos, same bool)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: YTF pair list does not exist")
    splits, a, b, same = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            parts = [p.strip() for p in line.split(",")]
            if not line.strip():
                continue
            if ln == 1 and not parts[0].isdigit():
                continue            # header
            if len(parts) < 4:
                raise PipelineError(f"{path}:{ln}: expected 'split, video1, video2, match[, same]', got {len(parts)} fields")
            try:
                sp = int(parts[0])
                m = int(parts[3])
                s = int(parts[4]) if len(parts) > 4 and parts[4] != "" else m
            except ValueError:
                raise PipelineError(f"{path}:{ln}: split, match and same must be integers") from None
            if m not in (0, 1) or s != m:
                raise PipelineError(f"{path}:{ln}: match {m} and same {s} must be equal, 0 or 1")
            splits.append(sp)
            a.append(parts[1].replace("\\", "/").strip("/"))
            b.append(parts[2].replace("\\", "/").strip("/"))
            same.append(bool(m))
    if not splits:
        raise PipelineError(f"{path}: no pairs")
    return np.asarray(splits), a, b, np.asarray(same, dtype=bool)


def video_of(source: str) -> str:
    """'.../<person>/<video>/<frame>.jpg' -> '<person>/<video>'."""
    parts = str(source).replace("\\", "/").split("/")
    if len(parts) < 3:
        raise ValueError(f"frame path {source!r} has no <person>/<video>/ folders")
    return "/".join(parts[-3:-1])


def video_features(frame_feats: np.ndarray, video_index: np.ndarray, n_videos: int,
                   normalize_frames: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(n_videos, D) mean of each video's frame features (float64) and the frame count per video."""
    x = np.asarray(frame_feats, dtype=np.float64)
    if normalize_frames:
        n = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(n > 0, n, 1)
    idx = np.asarray(video_index, dtype=np.int64)
    out = np.zeros((n_videos, x.shape[1]), dtype=np.float64)
    np.add.at(out, idx, x)
    cnt = np.bincount(idx, minlength=n_videos)
    out /= np.maximum(cnt, 1)[:, None]
    return out, cnt


def evaluate_ytf(v1: np.ndarray, v2: np.ndarray, same: np.ndarray) -> dict[str, Any]:
    """10-fold verification over the pairs (v1[i], v2[i]) in the given order."""
    from .verification import evaluate_embeddings

    emb = np.empty((2 * len(same), v1.shape[1]), dtype=np.float64)
    emb[0::2] = v1
    emb[1::2] = v2
    res = evaluate_embeddings(emb, same, folds=10)
    return {
        "accuracy": res.acc_mean,
        "accuracy_std": res.acc_std,
        "fold_accuracy": [float(x) for x in res.accuracy],
        "fold_threshold": [float(x) for x in res.best_threshold],
        "pairs": int(len(same)),
        "same": int(np.count_nonzero(same)),
        "_roc": (res.fpr, res.tpr),
    }


def _pick_frames(n: int, max_frames: Optional[int]) -> np.ndarray:
    if max_frames is None or n <= max_frames:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_frames).round().astype(int))


def run_ytf(params, embedder, ctx=None) -> dict[str, Any]:
    """Frames decoded in ctx.workers processes (arcpipe.evaluate.loader), embedded here."""
    from ..align.aligned_set import AlignedSet
    from .loader import aligned_images, rebatch

    splits, a, b, same = read_splits(params.pairs)
    aset = AlignedSet(params.frames)
    faces = aset.faces
    try:
        vids = [video_of(s) for s in faces["source"]]
    except ValueError as e:
        raise PipelineError(f"{aset.dir}: {e}") from None
    wanted = set(a) | set(b)
    names = sorted(wanted)
    vindex = {v: i for i, v in enumerate(names)}
    by_video: dict[str, list[int]] = {}
    for k, v in zip(faces["key"].to_numpy(), vids):
        if v in vindex:
            by_video.setdefault(v, []).append(int(k))
    keys, vidx = [], []
    for v, ks in by_video.items():
        for j in _pick_frames(len(ks), params.max_frames):
            keys.append(ks[j])
            vidx.append(vindex[v])
    problems: list[str] = []
    counts: dict[str, Any] = {"pairs": int(len(same)), "videos": len(names), "frames_used": len(keys)}
    bs = max(1, int(getattr(embedder, "batch_size", 64) or 64))
    workers = max(1, int(getattr(ctx, "workers", 1) or 1))
    source_of = dict(zip(faces["key"].to_numpy().tolist(), faces["source"].astype(str)))
    table = EmbeddingTable("aligned-set manifest source of the frame; record = aligned-set key, "
                           "video = <person>/<video>")
    feats = []
    s = 0
    for k, imgs in rebatch(aligned_images(aset, keys, workers, "ytf frames"), bs):
        f = np.asarray(embedder.embed(imgs, flip=params.flip), dtype=np.float32)
        feats.append(f)
        table.add(np.asarray([source_of[int(j)] for j in k]), f, record=k,
                  video=np.asarray([names[v] for v in vidx[s:s + k.size]]))
        s += k.size
    aset.close()
    if not feats:
        raise PipelineError(f"{aset.dir}: no frame of any video in {params.pairs}")
    vf, cnt = video_features(np.concatenate(feats), np.asarray(vidx), len(names), params.normalize_frames)
    ia = np.array([vindex[x] for x in a])
    ib = np.array([vindex[x] for x in b])
    ok = (cnt[ia] > 0) & (cnt[ib] > 0)
    counts["videos_without_frames"] = int(np.count_nonzero(cnt == 0))
    counts["pairs_skipped_no_frames"] = int(np.count_nonzero(~ok))
    for i in np.flatnonzero(~ok)[:20]:
        miss = a[i] if cnt[ia[i]] == 0 else b[i]
        problems.append(f"{params.pairs}: pair {i + 1} ({a[i]}, {b[i]}): video {miss} has no aligned frame; skipped")
    order = np.argsort(splits, kind="stable")
    order = order[ok[order]]
    sizes = np.bincount(np.unique(splits[order], return_inverse=True)[1])
    if len(sizes) != 10 or np.any(sizes != sizes[0]):
        problems.append(f"{params.pairs}: split sizes {sizes.tolist()}: the 10 contiguous folds are not the official splits")
    if order.size < 10:
        raise PipelineError(f"{params.pairs}: only {order.size} usable pairs, fewer than the 10 folds")
    res = evaluate_ytf(vf[ia[order]], vf[ib[order]], same[order])
    fpr, tpr = res.pop("_roc")
    plot = [{"fpr": float(x), "tpr": float(y)} for x, y in sorted(zip(fpr, tpr))]
    return {"benchmark": "ytf", "metrics": res, "plots": {"roc": plot}, "counts": counts, "problems": problems,
            "embeddings": table}
