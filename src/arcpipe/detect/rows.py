"""Detection rows: what the detect stage records for each input image (library, no I/O of outputs).

A process-pool worker is set up once (`init_worker`: the source, the preset, an MTCNN) and turns
a batch of Items into manifest rows (`detect_batch`): the chosen face's box, landmarks and score,
the data set's fallback when there is none, or the status and reason why the image is rejected.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..columns import BOX_COLUMNS, LANDMARK_COLUMNS
from ..imageio import decode_image
from ..sources import Item, SourceError, content_hash, json_text, open_source



def resolved_preset(cfg) -> dict[str, Any]:
    from . import preset_for

    p = preset_for(cfg.preset)
    return {
        "name": cfg.preset,
        "minsize": cfg.minsize if cfg.minsize is not None else p.minsize,
        "thresholds": list(cfg.thresholds) if cfg.thresholds is not None else list(p.thresholds),
        "factor": cfg.factor if cfg.factor is not None else p.factor,
        "no_face": cfg.no_face if cfg.no_face is not None else p.no_face,
    }


def empty_row(index: int, item: Item) -> dict[str, Any]:
    row: dict[str, Any] = {"row": index, "source": item.source, "identity": item.identity,
                           "status": "", "reason": "", "note": "", "origin": "", "width": 0, "height": 0,
                           "n_faces": 0, "score": np.nan, "content": "", "loc": json_text(item.loc)}
    for c in BOX_COLUMNS + LANDMARK_COLUMNS:
        row[c] = np.nan
    return row


COLUMNS = list(empty_row(0, Item("")).keys())

_W: dict[str, Any] = {}


def init_worker(fmt: str, root: str, preset: dict, device: str, max_pixels: int, min_score: float,
                 need_detector: bool) -> None:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    _W.clear()
    _W.update(source=open_source(fmt, root), preset=preset, max_pixels=max_pixels, min_score=min_score)
    if need_detector:
        from . import MTCNN

        _W["det"] = MTCNN(device=device, minsize=preset["minsize"], thresholds=tuple(preset["thresholds"]),
                          factor=preset["factor"])


def detect_batch(work: tuple[int, list[Item]]) -> pd.DataFrame:
    from . import fallback_box, keep_face

    start, items = work
    src, preset = _W["source"], _W["preset"]
    rows, todo = [], []
    for k, item in enumerate(items):
        row = empty_row(start + k, item)
        rows.append(row)
        try:
            data = src.read(item)
        except SourceError as e:
            row["status"], row["reason"] = "unreadable", str(e)
            continue
        row["content"] = content_hash(data)
        d = decode_image(data, _W["max_pixels"])
        row["note"] = d.note
        if not d.ok:
            row["status"], row["reason"] = d.status, d.reason
            continue
        h, w = d.image.shape[:2]
        row["width"], row["height"] = w, h
        if item.landmarks is not None:  # IJB: the protocol's landmarks, no detection
            lm = np.asarray(item.landmarks, dtype=np.float64)
            if not np.isfinite(lm).all():
                row["status"], row["reason"] = "no_face", "given landmarks are not finite"
                continue
            row.update(zip(LANDMARK_COLUMNS, lm.tolist()))
            xs, ys = lm[0::2], lm[1::2]
            row.update(zip(BOX_COLUMNS, [xs.min(), ys.min(), xs.max(), ys.max()]))
            row["status"], row["origin"] = "ok", "given_landmarks"
            row["score"] = np.nan if item.score is None else float(item.score)
            continue
        todo.append((row, item, d.image))
    if todo:
        dets = _W["det"].detect([im for _, _, im in todo])
        for (row, item, img), det in zip(todo, dets):
            row["n_faces"] = len(det)
            keep, kept = keep_face(det, img.shape, _W["min_score"])
            if kept:
                row["status"], row["origin"] = "ok", "detected"
                row["score"] = float(det.scores[keep])
                row.update(zip(BOX_COLUMNS, np.asarray(det.boxes[keep], np.float64).tolist()))
                row.update(zip(LANDMARK_COLUMNS, np.asarray(det.landmarks[keep], np.float64).reshape(-1).tolist()))
                continue
            why = "no face found" if keep is None else \
                f"best face score {float(det.scores[keep]):.3f} < min_face_score {_W['min_score']}"
            policy = preset["no_face"]
            if policy == "center_crop":
                row["status"], row["origin"], row["reason"] = "fallback", "center_crop", f"{why}: centre crop"
                row.update(zip(BOX_COLUMNS, [float(v) for v in fallback_box(img.shape)]))
            elif policy == "given_box" and item.box is not None:
                row["status"], row["origin"], row["reason"] = "fallback", "given_box", f"{why}: box given with the data"
                row.update(zip(BOX_COLUMNS, [float(v) for v in item.box]))
            else:
                extra = " and no given box" if policy == "given_box" else ""
                row["status"], row["reason"] = "no_face", f"{why}{extra} (policy {policy})"
    return frame(rows)


def frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("row", "width", "height", "n_faces"):
        df[c] = df[c].astype("int64")
    for c in BOX_COLUMNS + LANDMARK_COLUMNS + ["score"]:
        df[c] = df[c].astype("float64")
    return df


