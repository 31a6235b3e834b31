"""MTCNN (Zhang et al. 2016) in PyTorch: P-Net over an image pyramid, R-Net, O-Net, box
regression, NMS and five landmarks, batched across images of any sizes, CPU or CUDA.

It reproduces the detection rules of facenet-pytorch's MTCNN (same weights, same pyramid,
same "area" resampling, same box arithmetic and NMS rules), but does the work in bulk:
- the pyramid levels of all images that share a size are resized in one call, and all levels
  of the same resized size (across images) go through P-Net as one batch; levels of different
  sizes are zero-padded into one batch, with the padding masked out before the first max-pool
  so that valid outputs are exactly those of the unpadded level;
- box bookkeeping and NMS are vectorised over all images and levels at once;
- the R-Net and O-Net crops of all boxes of all images are cut and "area"-resampled in one
  gather from per-image integral images (each output pixel is the mean over its source bin,
  which is what adaptive average pooling computes), then each net runs once.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .nms import batched_nms
from .weights import load_state_dicts

MinSize = Union[int, str]


@dataclass
class Detections:
    """Faces found in one image, by descending score. Pixel coordinates (x right, y down)."""

    boxes: np.ndarray  # float32 (N, 4) x1, y1, x2, y2
    scores: np.ndarray  # float32 (N,)
    landmarks: np.ndarray  # float32 (N, 5, 2): left eye, right eye, nose, left mouth, right mouth

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))


# ---------------------------------------------------------------------------------------------
# The three networks. Layer shapes follow the published MTCNN; the two-way softmax of each net
# is folded into one logit (softmax(a)[1] == sigmoid(a1 - a0)) and the heads share one layer.


class PNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.head = nn.Conv2d(32, 5, 1)  # face logit, 4 box offsets

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.prelu1(self.conv1(x))
        if pad_mask is not None:  # padding must never win a max-pool window of a real level
            x = x.masked_fill(pad_mask, float("-inf"))
        x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        if pad_mask is not None:
            x = torch.nan_to_num(x, neginf=0.0)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.head(x)


class RNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.head = nn.Linear(128, 5)  # face logit, 4 box offsets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.flatten(1)))
        return self.head(x)


class ONet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.head = nn.Linear(256, 15)  # face logit, 4 box offsets, 5 x then 5 y landmarks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.flatten(1)))
        return self.head(x)


def _fold_head(sd: dict, cls: str, reg: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Published heads: a 2-way softmax layer `cls` plus regression layers -> one stacked layer
    whose first output is the logit difference (face minus background)."""
    w, b = sd[f"{cls}.weight"], sd[f"{cls}.bias"]
    ws = [(w[1] - w[0]).unsqueeze(0)] + [sd[f"{r}.weight"] for r in reg]
    bs = [(b[1] - b[0]).reshape(1)] + [sd[f"{r}.bias"] for r in reg]
    return torch.cat(ws, 0), torch.cat(bs, 0)


def _dense_from_whc(w: torch.Tensor, c: int, h: int, wd: int) -> torch.Tensor:
    """The published dense layers read the last feature map flattened as (width, height, channel);
    reorder their input columns for a plain (channel, height, width) flatten."""
    return w.reshape(w.shape[0], wd, h, c).permute(0, 3, 2, 1).reshape(w.shape[0], -1)


def _shared_layers(sd: dict, names: Sequence[str]) -> dict:
    out = {}
    for n in names:
        for k in ("weight", "bias"):
            if f"{n}.{k}" in sd:
                out[f"{n}.{k}"] = sd[f"{n}.{k}"]
    return out


def build_nets(weights_dir=None) -> tuple[PNet, RNet, ONet]:
    sds = load_state_dicts(weights_dir)
    pnet, rnet, onet = PNet(), RNet(), ONet()
    p = sds["pnet"]
    psd = _shared_layers(p, ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3"])
    w, b = _fold_head(p, "conv4_1", ["conv4_2"])
    psd["head.weight"], psd["head.bias"] = w, b
    pnet.load_state_dict(psd, strict=True)

    r = sds["rnet"]
    rsd = _shared_layers(r, ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "dense4", "prelu4"])
    rsd["dense4.weight"] = _dense_from_whc(r["dense4.weight"], 64, 3, 3)
    rsd["head.weight"], rsd["head.bias"] = _fold_head(r, "dense5_1", ["dense5_2"])
    rnet.load_state_dict(rsd, strict=True)

    o = sds["onet"]
    osd = _shared_layers(o, ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4", "dense5", "prelu5"])
    osd["dense5.weight"] = _dense_from_whc(o["dense5.weight"], 128, 3, 3)
    osd["head.weight"], osd["head.bias"] = _fold_head(o, "dense6_1", ["dense6_2", "dense6_3"])
    onet.load_state_dict(osd, strict=True)
    for net in (pnet, rnet, onet):
        net.eval().requires_grad_(False)
    return pnet, rnet, onet


# ---------------------------------------------------------------------------------------------
# Pipeline helpers


def pyramid_scales(h: int, w: int, minsize: int, factor: float) -> list[float]:
    """Scales at which P-Net's 12x12 window sees faces from `minsize` px up to the whole image."""
    m = 12.0 / minsize
    minl = min(h, w) * m
    scales, s = [], m
    while minl >= 12:
        scales.append(s)
        s *= factor
        minl *= factor
    return scales


def _pnet_out_size(n: int) -> int:
    """P-Net output length for an input length n (conv3, pool2 ceil, conv3, conv3)."""
    return (n - 1) // 2 - 4


def _square(b: torch.Tensor) -> torch.Tensor:
    """Make boxes square around their centre, side = the longer side (x2-x1 / y2-y1)."""
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    side = torch.maximum(w, h)
    x1 = b[:, 0] + w * 0.5 - side * 0.5
    y1 = b[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], 1)


def _regress(b: torch.Tensor, reg: torch.Tensor, plus_one: bool) -> torch.Tensor:
    one = 1.0 if plus_one else 0.0
    w = b[:, 2] - b[:, 0] + one
    h = b[:, 3] - b[:, 1] + one
    return b + reg * torch.stack([w, h, w, h], 1)


class _Integral:
    """Summed-area tables of all images in one flat float64 buffer (exact sums of uint8 pixels),
    to cut and "area"-resample any number of boxes with one gather."""

    def __init__(self, images: Sequence[torch.Tensor]) -> None:  # each (3, H, W) uint8
        tabs, offsets, widths, heights = [], [], [], []
        off = 0
        for img in images:
            _, h, w = img.shape
            s = torch.zeros(h + 1, w + 1, 3, dtype=torch.float64, device=img.device)
            s[1:, 1:] = img.permute(1, 2, 0).to(torch.float64).cumsum(0).cumsum(1)
            tabs.append(s.reshape(-1, 3))
            offsets.append(off)
            widths.append(w)
            heights.append(h)
            off += (h + 1) * (w + 1)
        dev = images[0].device
        self.table = torch.cat(tabs, 0)
        self.offset = torch.tensor(offsets, dtype=torch.long, device=dev)
        self.width = torch.tensor(widths, dtype=torch.long, device=dev)
        self.height = torch.tensor(heights, dtype=torch.long, device=dev)

    def crops(self, img_idx: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor, size: int) -> torch.Tensor:
        """Mean-resample pixel ranges [y0, y1) x [x0, x1) of the given images to size x size.
        Output bin i covers [floor(i*n/size), ceil((i+1)*n/size)), as adaptive average pooling."""
        i = torch.arange(size, device=x0.device)

        def bins(a0, a1):
            n = (a1 - a0)[:, None]
            lo = a0[:, None] + torch.div(i[None] * n, size, rounding_mode="floor")
            hi = a0[:, None] - torch.div(-(i[None] + 1) * n, size, rounding_mode="floor")
            return lo, hi

        r0, r1 = bins(y0, y1)
        c0, c1 = bins(x0, x1)
        stride = (self.width[img_idx] + 1)[:, None, None]
        base = self.offset[img_idx][:, None, None]
        r0s, r1s = r0[:, :, None] * stride, r1[:, :, None] * stride
        c0e, c1e = c0[:, None, :], c1[:, None, :]
        t = self.table
        total = t[base + r1s + c1e] - t[base + r0s + c1e] - t[base + r1s + c0e] + t[base + r0s + c0e]
        area = ((r1 - r0)[:, :, None] * (c1 - c0)[:, None, :]).to(torch.float64)
        return (total / area[..., None]).to(torch.float32).permute(0, 3, 1, 2)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


class MTCNN:
    """Batched MTCNN face detector.

    minsize: smallest face side in pixels, or "fifth" for min(h, w) // 5 per image (MS1M scripts).
    thresholds: P-Net, R-Net, O-Net face-probability thresholds. factor: pyramid scale step.
    """

    def __init__(self, weights_dir=None, device="cpu", minsize: MinSize = 20, thresholds=(0.6, 0.7, 0.8), factor: float = 0.709,
                 max_batch_pixels: int = 1 << 23, max_crops: int = 4096) -> None:
        if not (isinstance(minsize, int) and minsize > 0) and minsize != "fifth":
            raise ValueError(f"minsize must be a positive int or 'fifth', got {minsize!r}")
        if len(thresholds) != 3:
            raise ValueError(f"thresholds must be three numbers (P-Net, R-Net, O-Net), got {thresholds!r}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        self.device = torch.device(device)
        self.minsize = minsize
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.max_batch_pixels = int(max_batch_pixels)
        self.max_crops = int(max_crops)
        self.pnet, self.rnet, self.onet = (n.to(self.device) for n in build_nets(weights_dir))

    def __repr__(self) -> str:
        return f"MTCNN(device={str(self.device)!r}, minsize={self.minsize!r}, thresholds={self.thresholds}, factor={self.factor})"

    def minsize_for(self, h: int, w: int) -> int:
        if self.minsize == "fifth":
            return max(min(h, w) // 5, 1)
        return int(self.minsize)

    def detect_one(self, image: np.ndarray) -> Detections:
        return self.detect([image])[0]

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect faces in RGB uint8 HxWx3 images (any sizes, processed as one batch)."""
        images = list(images)
        for k, im in enumerate(images):
            if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(f"image {k}: expected an RGB uint8 array of shape HxWx3, got "
                                 f"{type(im).__name__} {getattr(im, 'dtype', '')} {getattr(im, 'shape', '')}")
        if not images:
            return []
        tensors = [torch.from_numpy(np.ascontiguousarray(im)).to(self.device).permute(2, 0, 1) for im in images]
        cand = self._stage1(tensors)
        integral = None
        if cand is not None:
            integral = _Integral(tensors)
            cand = self._stage2(cand, integral)
        out = self._stage3(cand, integral) if cand is not None else None
        return self._split(out, len(images))

    # --- stage 1: P-Net over the pyramid -----------------------------------------------------
    def _levels(self, tensors: list[torch.Tensor]):
        """Yield (resized normalised levels (n, 3, oh, ow), image indices (n,), scale)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for k, t in enumerate(tensors):
            groups.setdefault(tuple(t.shape[1:]), []).append(k)
        for (h, w), idx in groups.items():
            scales = pyramid_scales(h, w, self.minsize_for(h, w), self.factor)
            if not scales:
                continue
            stack = torch.stack([tensors[k] for k in idx]).float()
            idx_t = torch.tensor(idx, dtype=torch.long, device=self.device)
            for s in scales:
                size = (int(h * s + 1), int(w * s + 1))
                yield _normalise(F.interpolate(stack, size=size, mode="area")), idx_t, s

    def _pnet_batches(self, levels):
        """Pack levels into P-Net batches: equal sizes stack; different sizes are zero-padded
        (the level must still be at least half the batch's area, to bound the waste)."""
        levels = sorted(levels, key=lambda L: (-(L[0].shape[2] * L[0].shape[3]), -L[0].shape[2]))
        batch: list = []
        bh = bw = 0
        npix = 0
        for lv in levels:
            x = lv[0]
            h, w = x.shape[2:]
            if batch and (h * w * 2 < bh * bw or npix + bh * bw * x.shape[0] > self.max_batch_pixels):
                yield batch
                batch, npix = [], 0
            if not batch:
                bh, bw = h, w
            # split a level whose images alone exceed the pixel budget
            per = max(1, self.max_batch_pixels // max(1, bh * bw))
            for a in range(0, x.shape[0], per):
                part = (x[a:a + per], lv[1][a:a + per], lv[2])
                if batch and npix + bh * bw * part[0].shape[0] > self.max_batch_pixels:
                    yield batch
                    batch, npix = [], 0
                    bh, bw = h, w
                batch.append(part)
                npix += bh * bw * part[0].shape[0]
        if batch:
            yield batch

    def _stage1(self, tensors: list[torch.Tensor]):
        t0 = self.thresholds[0]
        dev = self.device
        all_boxes, all_scores, all_reg, all_img, all_grp = [], [], [], [], []
        level_id = 0
        for batch in self._pnet_batches(list(self._levels(tensors))):
            bh = max(p[0].shape[2] for p in batch)
            bw = max(p[0].shape[3] for p in batch)
            same = all(p[0].shape[2] == bh and p[0].shape[3] == bw for p in batch)
            if same:
                x = torch.cat([p[0] for p in batch]) if len(batch) > 1 else batch[0][0]
                mask = None
            else:
                n = sum(p[0].shape[0] for p in batch)
                x = torch.zeros(n, 3, bh, bw, device=dev)
                mask = torch.ones(n, 1, bh - 2, bw - 2, dtype=torch.bool, device=dev)
                a = 0
                for p in batch:
                    m, _, h, w = p[0].shape
                    x[a:a + m, :, :h, :w] = p[0]
                    mask[a:a + m, :, :h - 2, :w - 2] = False
                    a += m
            out = self.pnet(x, mask)
            logit, reg = out[:, 0], out[:, 1:]
            # per-row image index, scale, valid output extent and level id
            img = torch.cat([p[1] for p in batch])
            scale = torch.cat([torch.full((p[0].shape[0],), p[2], dtype=torch.float32, device=dev) for p in batch])
            vh = torch.cat([torch.full((p[0].shape[0],), _pnet_out_size(p[0].shape[2]), device=dev) for p in batch])
            vw = torch.cat([torch.full((p[0].shape[0],), _pnet_out_size(p[0].shape[3]), device=dev) for p in batch])
            lid = torch.cat([torch.full((p[0].shape[0],), level_id + j, dtype=torch.long, device=dev) for j, p in enumerate(batch)])
            level_id += len(batch)
            prob = torch.sigmoid(logit)
            hit = prob >= t0
            if not same:
                oh, ow = hit.shape[1:]
                hit &= (torch.arange(oh, device=dev)[None, :, None] < vh[:, None, None]) & (torch.arange(ow, device=dev)[None, None, :] < vw[:, None, None])
            b, yy, xx = torch.nonzero(hit, as_tuple=True)
            if b.numel() == 0:
                continue
            sc = scale[b]
            xy = torch.stack([xx, yy], 1).to(torch.float32)
            q1 = torch.floor((2 * xy + 1) / sc[:, None])
            q2 = torch.floor((2 * xy + 12) / sc[:, None])
            all_boxes.append(torch.cat([q1, q2], 1))
            all_scores.append(prob[b, yy, xx])
            all_reg.append(reg[b, :, yy, xx])
            all_img.append(img[b])
            all_grp.append(lid[b] * len(tensors) + img[b])
        if not all_boxes:
            return None
        boxes, scores, reg = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_reg)
        img, grp = torch.cat(all_img), torch.cat(all_grp)
        keep = batched_nms(boxes, scores, grp, 0.5)  # within each pyramid level of each image
        boxes, scores, reg, img = boxes[keep], scores[keep], reg[keep], img[keep]
        keep = batched_nms(boxes, scores, img, 0.7)  # across levels, per image
        boxes, scores, reg, img = boxes[keep], scores[keep], reg[keep], img[keep]
        boxes = _square(_regress(boxes, reg, plus_one=False))
        return boxes, scores, img

    # --- stages 2 and 3: R-Net and O-Net on crops ------------------------------------------------
    def _cut(self, boxes: torch.Tensor, img: torch.Tensor, integral: _Integral, size: int):
        """Crops of the boxes, truncated to integers and clipped to the image, as the reference
        does; boxes whose clipped crop is empty are dropped. Returns (crops, kept mask)."""
        b = boxes.trunc().to(torch.long)
        w, h = integral.width[img], integral.height[img]
        x0 = b[:, 0].clamp(min=1) - 1
        y0 = b[:, 1].clamp(min=1) - 1
        x1 = torch.minimum(b[:, 2], w)
        y1 = torch.minimum(b[:, 3], h)
        ok = (x1 > x0) & (y1 > y0)
        if not bool(ok.all()):
            x0, y0, x1, y1, img = x0[ok], y0[ok], x1[ok], y1[ok], img[ok]
        parts = []
        for a in range(0, x0.shape[0], self.max_crops):
            sl = slice(a, a + self.max_crops)
            parts.append(integral.crops(img[sl], x0[sl], y0[sl], x1[sl], y1[sl], size))
        crops = torch.cat(parts) if parts else torch.zeros(0, 3, size, size, device=boxes.device)
        return _normalise(crops), ok

    def _run(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(x[a:a + self.max_crops]) for a in range(0, x.shape[0], self.max_crops)])

    def _stage2(self, cand, integral: _Integral):
        boxes, _, img = cand
        crops, ok = self._cut(boxes, integral=integral, img=img, size=24)
        boxes, img = boxes[ok], img[ok]
        if boxes.shape[0] == 0:
            return None
        out = self._run(self.rnet, crops)
        score = torch.sigmoid(out[:, 0])
        p = score > self.thresholds[1]
        boxes, score, reg, img = boxes[p], score[p], out[p, 1:5], img[p]
        keep = batched_nms(boxes, score, img, 0.7)
        boxes, score, reg, img = boxes[keep], score[keep], reg[keep], img[keep]
        if boxes.shape[0] == 0:
            return None
        return _square(_regress(boxes, reg, plus_one=True)), score, img

    def _stage3(self, cand, integral: _Integral):
        boxes, _, img = cand
        crops, ok = self._cut(boxes, integral=integral, img=img, size=48)
        boxes, img = boxes[ok], img[ok]
        if boxes.shape[0] == 0:
            return None
        out = self._run(self.onet, crops)
        score = torch.sigmoid(out[:, 0])
        p = score > self.thresholds[2]
        boxes, score, out, img = boxes[p], score[p], out[p], img[p]
        if boxes.shape[0] == 0:
            return None
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        lx = w[:, None] * out[:, 5:10] + boxes[:, 0:1] - 1
        ly = h[:, None] * out[:, 10:15] + boxes[:, 1:2] - 1
        points = torch.stack([lx, ly], 2)
        boxes = _regress(boxes, out[:, 1:5], plus_one=True)
        keep = batched_nms(boxes, score, img, 0.7, mode="min")
        return boxes[keep], score[keep], points[keep], img[keep]

    @staticmethod
    def _split(out, n: int) -> list[Detections]:
        if out is None:
            return [Detections.empty() for _ in range(n)]
        boxes, score, points, img = (t.cpu() for t in out)
        boxes, score, points, img = boxes.numpy(), score.numpy(), points.numpy(), img.numpy()
        res = []
        for k in range(n):
            sel = np.flatnonzero(img == k)  # kept in descending-score order by the NMS
            res.append(Detections(boxes[sel].astype(np.float32), score[sel].astype(np.float32), points[sel].astype(np.float32)))
        return res
