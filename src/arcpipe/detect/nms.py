"""Greedy non-maximum suppression, vectorised in torch (CPU or CUDA), many groups at once.

Exactly the classic greedy rule: visit boxes by descending score; a box is kept unless a box
kept before it (same group) overlaps it by more than the threshold. Instead of a Python loop
per box we build each group's "i suppresses j" matrix and solve keep[j] = not any(keep[i] and
S[i, j], i before j) by fixed-point iteration; that system has one solution (S is a DAG), reached
after at most (longest suppression chain) steps. Groups are padded into buckets of similar size.
"""
from __future__ import annotations

import torch

_MAX_ELEMS = 1 << 24  # per pairwise-matrix chunk (bool/float32 entries)
_JACOBI_STEPS = 24
_MAX_WIDTH = 4096


def _overlap(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    """Overlap of every box in a (..., A, 4) with every box in b (..., B, 4) -> (..., A, B).

    mode "union": IoU with area (x2-x1)*(y2-y1) (as torchvision.ops.nms);
    mode "min": intersection over the smaller area, pixel-inclusive (+1) widths (as the original MTCNN)."""
    one = 1.0 if mode == "min" else 0.0
    ax1, ay1, ax2, ay2 = (t.unsqueeze(-1) for t in a.unbind(-1))
    bx1, by1, bx2, by2 = (t.unsqueeze(-2) for t in b.unbind(-1))
    area_a = (ax2 - ax1 + one) * (ay2 - ay1 + one)
    area_b = (bx2 - bx1 + one) * (by2 - by1 + one)
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1) + one).clamp_(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1) + one).clamp_(min=0)
    inter = iw * ih
    if mode == "min":
        return inter / torch.minimum(area_a, area_b)
    return inter / (area_a + area_b - inter)


def _greedy_keep(sup: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """sup (G, B, B) bool: i suppresses j (only i < j set); valid (G, B). Returns keep (G, B)."""
    keep = valid.clone()
    for _ in range(_JACOBI_STEPS):
        new = valid & ~(keep.unsqueeze(2) & sup).any(1)
        if torch.equal(new, keep):
            return keep
        keep = new
    # long suppression chains: finish column by column (still exact, B steps)
    keep = valid.clone()
    for j in range(1, sup.shape[1]):
        keep[:, j] &= ~(keep[:, :j] & sup[:, :j, j]).any(1)
    return keep


def _greedy_loop(b: torch.Tensor, threshold: float, mode: str) -> torch.Tensor:
    """Greedy NMS of one group of boxes already sorted by descending score (one step per kept box)."""
    alive = torch.ones(b.shape[0], dtype=torch.bool, device=b.device)
    keep = torch.zeros_like(alive)
    while True:
        rest = torch.nonzero(alive).flatten()
        if rest.numel() == 0:
            return keep
        i, rest = rest[0], rest[1:]
        keep[i] = True
        alive[i] = False
        if rest.numel():
            ov = _overlap(b[i].unsqueeze(0), b[rest], mode)[0]
            alive[rest[ov > threshold]] = False


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float, mode: str = "union") -> torch.Tensor:
    """Indices of the kept boxes, ordered by group, then by descending score.

    boxes (N, 4) x1, y1, x2, y2; scores (N,); groups (N,) int64: boxes in different groups never
    suppress each other; suppress when overlap > threshold."""
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    _, counts = torch.unique_consecutive(groups[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    sorted_boxes = boxes[order]
    keep_sorted = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    keep_sorted[starts[counts == 1]] = True  # singletons are always kept
    counts_cpu = counts.cpu()
    # bucket groups by the next power of two of their size, to bound padding waste
    bucket = torch.ceil(torch.log2(counts_cpu.double())).long()
    for bexp in torch.unique(bucket).tolist():
        sel = torch.nonzero((bucket == bexp) & (counts_cpu > 1)).flatten()
        if sel.numel() == 0:
            continue
        width = int(counts_cpu[sel].max())
        if width > _MAX_WIDTH:  # a huge group: the plain loop, one step per kept box
            for gi in sel.tolist():
                st, ct = int(starts[gi]), int(counts_cpu[gi])
                keep_sorted[st:st + ct] = _greedy_loop(sorted_boxes[st:st + ct], threshold, mode)
            continue
        per_chunk = max(1, _MAX_ELEMS // (width * width))
        ar = torch.arange(width, device=boxes.device)
        for c0 in range(0, sel.numel(), per_chunk):
            gsel = sel[c0:c0 + per_chunk].to(boxes.device)
            st, ct = starts[gsel], counts[gsel]
            valid = ar[None, :] < ct[:, None]
            pos = torch.where(valid, st[:, None] + ar[None, :], st[:, None])
            b = sorted_boxes[pos]
            sup = _overlap(b, b, mode) > threshold
            sup &= torch.ones(width, width, dtype=torch.bool, device=boxes.device).triu_(1)
            sup &= valid[:, :, None] & valid[:, None, :]
            keep = _greedy_keep(sup, valid)
            keep_sorted[pos[keep]] = True
    return order[keep_sorted]
