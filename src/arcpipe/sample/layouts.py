"""Text formats of the real data sets, written byte for byte the same for the same inputs."""
from __future__ import annotations

import base64
import struct
from typing import Iterable, Sequence

# --- MS-Celeb-1M TSV (the "cropped faces" release): 7 tab-separated columns -----------------


def face_rectangle_b64(box: Sequence[float], w: int, h: int) -> str:
    """Four little-endian float32: relative x, y of the upper-left then the bottom-right corner."""
    x0, y0, x1, y1 = box
    rel = (x0 / w, y0 / h, x1 / w, y1 / h)
    return base64.b64encode(struct.pack("<4f", *rel)).decode("ascii")


def ms1m_tsv_line(mid: str, rank: int, face_rect_b64: str, data_b64: str) -> str:
    image_url = f"http://images.example.org/{mid}/{rank}.jpg"
    page_url = f"http://www.example.org/{mid}/page{rank}.html"
    return "\t".join([mid, str(rank), image_url, page_url, "FaceId-0", face_rect_b64, data_b64]) + "\n"


# --- LFW pairs.txt ---------------------------------------------------------------------------


def lfw_file(name: str, index: int) -> str:
    return f"{name}/{name}_{index:04d}.jpg"


def lfw_pairs_text(folds: Sequence[tuple[Sequence[tuple[str, int, int]], Sequence[tuple[str, int, str, int]]]]) -> str:
    """'10\\tn', then per fold n matched 'Name\\ti\\tj' and n mismatched 'A\\ti\\tB\\tj' lines."""
    n = len(folds[0][0])
    lines = [f"{len(folds)}\t{n}"]
    for matched, mismatched in folds:
        assert len(matched) == n and len(mismatched) == n
        lines += [f"{a}\t{i}\t{j}" for a, i, j in matched]
        lines += [f"{a}\t{i}\t{b}\t{j}" for a, i, b, j in mismatched]
    return "\n".join(lines) + "\n"


# --- IJB meta files (space separated, as the insightface evaluation reads them) --------------


def ijb_face_tid_mid(rows: Iterable[tuple[str, int, int]]) -> str:
    return "".join(f"{name} {tid} {mid}\n" for name, tid, mid in rows)


def ijb_template_pair_label(rows: Iterable[tuple[int, int, int]]) -> str:
    return "".join(f"{a} {b} {label}\n" for a, b, label in rows)


def ijb_name_5pts_score(rows: Iterable[tuple[str, Sequence[float], float]]) -> str:
    out = []
    for name, lmk, score in rows:
        coords = " ".join(f"{v:.2f}" for xy in lmk for v in xy)
        out.append(f"{name} {coords} {score:.4f}\n")
    return "".join(out)


IJB_1N_HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT\n"


def ijb_1n_csv(rows: Iterable[tuple[int, int, str, int, Sequence[float]]]) -> str:
    out = [IJB_1N_HEADER]
    for tid, sid, name, media, box in rows:
        x0, y0, x1, y1 = box
        out.append(f"{tid},{sid},{name},{media},{x0:.1f},{y0:.1f},{x1 - x0:.1f},{y1 - y0:.1f}\n")
    return "".join(out)
