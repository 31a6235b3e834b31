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

from dataclasses import dataclass
from typing import Sequence, Union

import cv2
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        return self._tail(x)

    def _tail(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.head(x)


class _MaskedPNet(nn.Module):
    """P-Net over zero-padded levels of different sizes: the padding is set to -inf before the
    first max-pool, so that a ceil-mode window at a level's edge sees only that level's pixels,
    as it would unpadded. Outputs beyond a level's own extent are to be ignored."""

    def __init__(self, pnet: PNet) -> None:
        super().__init__()
        self.pnet = pnet

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        p = self.pnet
        x = p.prelu1(p.conv1(x)).masked_fill(pad_mask, float("-inf"))
        x = F.max_pool2d(x, 2, 2, ceil_mode=True).clamp(min=-1e30)
        return p._tail(x)


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


def _frozen(net: nn.Module, example_shape: tuple[int, ...], masked: bool = False):
    """The net traced, frozen and optimised for CPU inference; the eager net if that fails."""
    try:
        x = torch.zeros(example_shape)
        args = (x,)
        if masked:
            args = (x, torch.zeros(example_shape[0], 1, example_shape[2] - 2, example_shape[3] - 2, dtype=torch.bool))
        with torch.no_grad():
            fast = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net.eval(), args).eval()))
            fast(*args)
        return fast
    except Exception:  # an exotic build without oneDNN / TorchScript: eager is still correct
        return net


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


def _bins(a0: torch.Tensor, a1: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source ranges [lo, hi) of `size` output bins over [a0, a1) (broadcast over leading dims):
    bin i covers [floor(i*n/size), ceil((i+1)*n/size)), as adaptive average pooling does."""
    i = torch.arange(size, device=a0.device)
    n = (a1 - a0).unsqueeze(-1)
    lo = a0.unsqueeze(-1) + torch.div(i * n, size, rounding_mode="floor")
    hi = a0.unsqueeze(-1) - torch.div(-(i + 1) * n, size, rounding_mode="floor")
    return lo, hi


class _Integral:
    """Summed-area tables of a batch of images. Any "area" resampling (a pyramid level, or a box
    cut out and resized) is then four corner lookups per output pixel; the corners of a whole
    output grid (rows r0 then r1 by columns c0 then c1) are one index_select call (the fastest
    row gather in torch), and the sums follow by differences along rows, then columns.
    Equal-size images share one table laid out (H+1, W+1, B, 3), so that a pyramid level
    gathers all B images' pixels in one contiguous row; crops read a per-image (B, H+1, W+1, 3)
    copy. On CPU the tables come from OpenCV's integral (the same integers, several times faster
    than torch's cumsum). Sums of uint8 pixels are exact in float32 up to 65,793 px per image,
    in float64 beyond."""

    def __init__(self, images: Sequence[torch.Tensor], device: torch.device) -> None:  # each (H, W, 3) uint8
        self.groups: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # (h, w, image indices, table)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for k, t in enumerate(images):
            by_shape.setdefault(tuple(t.shape[:2]), []).append(k)
        exact32 = max(t.shape[0] * t.shape[1] for t in images) * 255 < 2**24
        self.dtype = torch.float32 if exact32 else torch.float64
        n = len(images)
        base = [0] * n
        flat, off = [], 0
        for (h, w), idx in by_shape.items():
            if device.type == "cpu":  # OpenCV's summed-area table: same integers, ~7x faster than two cumsums
                depth = cv2.CV_32F if exact32 else cv2.CV_64F
                per_image = torch.empty(len(idx), h + 1, w + 1, 3, dtype=self.dtype)
                dst = per_image.numpy()
                for j, k in enumerate(idx):  # written in place (no stacking copy)
                    got = cv2.integral(images[k].numpy(), sum=dst[j], sdepth=depth)
                    if not np.shares_memory(got, dst):
                        dst[j] = got
            else:
                x = torch.stack([images[k] for k in idx]).to(device=device, dtype=self.dtype)  # (B, H, W, 3)
                per_image = torch.zeros(len(idx), h + 1, w + 1, 3, dtype=self.dtype, device=device)
                inner = per_image[:, 1:, 1:]
                torch.cumsum(x, 1, out=inner)
                inner.cumsum_(2)
            # crops read small windows of one image from the per-image layout (cache-local);
            # pyramid levels gather every image at once from the batch-innermost copy
            self.groups.append((h, w, torch.tensor(idx, dtype=torch.long, device=device), per_image.permute(1, 2, 0, 3).contiguous()))
            flat.append(per_image.view(-1, 3))
            for j, k in enumerate(idx):
                base[k] = off + j * (h + 1) * (w + 1)
            off += per_image.numel() // 3
        self.table = torch.cat(flat) if len(flat) > 1 else flat[0]
        self.base = torch.tensor(base, dtype=torch.long, device=device)
        self.width = torch.tensor([t.shape[1] for t in images], dtype=torch.long, device=device)
        self.height = torch.tensor([t.shape[0] for t in images], dtype=torch.long, device=device)

    def level(self, group: int, oh: int, ow: int) -> torch.Tensor:
        """All images of one equal-size group resampled to oh x ow and normalised
        -> (B, oh, ow, 3) float32, a view of NCHW-contiguous memory."""
        h, w, idx, tab = self.groups[group]
        dev = idx.device
        zero = torch.zeros((), dtype=torch.long, device=dev)
        r0, r1 = _bins(zero, zero + h, oh)
        c0, c1 = _bins(zero, zero + w, ow)
        t = tab.view((h + 1) * (w + 1), -1)  # one row = the pixel in every image of the group
        it = torch.int32 if t.shape[0] < 2**31 else torch.long
        rows = (torch.cat([r0, r1]) * (w + 1)).to(it)
        cols = torch.cat([c0, c1]).to(it)
        area = ((r1 - r0)[:, None] * (c1 - c0)[None, :]).to(torch.float32)
        out = torch.empty(idx.shape[0], 3, oh, ow, device=dev)
        # blocks of output rows, so that the gathered corners stay in the CPU cache
        step = oh if dev.type != "cpu" else max(1, (1 << 18) // (ow * t.shape[1]))
        for y in range(0, oh, step):
            k = min(step, oh - y)
            rr = torch.cat([rows[y:y + k], rows[oh + y:oh + y + k]])
            g = t.index_select(0, (rr[:, None] + cols[None, :]).view(-1)).view(2 * k, 2 * ow, -1)
            d = g[k:] - g[:k]  # same sums, same order as four corner gathers
            total = (d[:, ow:] - d[:, :ow]).to(torch.float32)
            x = _normalise_(total.view(k, ow, -1, 3).div_(area[y:y + k, :, None, None]))
            out[:, :, y:y + k] = x.permute(2, 3, 0, 1)
        return out.permute(0, 2, 3, 1)

    def crops(self, img_idx: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor, size: int) -> torch.Tensor:
        """Pixel ranges [y0, y1) x [x0, x1) of the given images resampled to size x size and
        normalised -> (N, size, size, 3) float32, a view of NCHW-contiguous memory."""
        r0, r1 = _bins(y0, y1, size)
        c0, c1 = _bins(x0, x1, size)
        # one gather of the 2size x 2size grid of corners (rows r0 then r1, columns c0 then c1),
        # then differences along rows and columns: the same sums, in the same order, as four
        # separate corner gathers, with a quarter of the index arithmetic and one call
        rs = (self.width[img_idx] + 1).unsqueeze(1)
        rows = torch.cat([r0, r1], 1).mul_(rs).add_(self.base[img_idx].unsqueeze(1))
        cols = torch.cat([c0, c1], 1)
        it = torch.int32 if self.table.shape[0] < 2**31 else torch.long
        idx = rows.to(it).unsqueeze(2) + cols.to(it).unsqueeze(1)
        n = idx.shape[0]
        g = self.table.index_select(0, idx.view(-1)).view(n, 2 * size, 2 * size, 3).permute(0, 3, 1, 2)
        d = torch.empty(n, 3, size, 2 * size, dtype=g.dtype, device=g.device)
        torch.sub(g[:, :, size:], g[:, :, :size], out=d)
        total = (d[..., size:] - d[..., :size]).to(torch.float32)
        area = (r1 - r0).to(torch.float32).unsqueeze(2) * (c1 - c0).to(torch.float32).unsqueeze(1)
        return _normalise_(total.div_(area.unsqueeze(1))).permute(0, 2, 3, 1)


def _normalise_(x: torch.Tensor) -> torch.Tensor:
    """Pixel values to the nets' input range, in place: (x - 127.5) / 128."""
    return x.sub_(127.5).mul_(0.0078125)


class MTCNN:
    """Batched MTCNN face detector.

    minsize: smallest face side in pixels, or "fifth" for min(h, w) // 5 per image (MS1M scripts).
    thresholds: P-Net, R-Net, O-Net face-probability thresholds. factor: pyramid scale step.
    """

    def __init__(self, weights_dir=None, device="cpu", minsize: MinSize = 20, thresholds=(0.6, 0.7, 0.8), factor: float = 0.709,
                 max_batch_pixels: int = 1 << 17, min_batch_pixels: int = 1 << 13, rnet_chunk: int = 96, onet_chunk: int = 24,
                 max_crops: int = 8192, optimize: bool = True) -> None:
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
        self.min_batch_pixels = int(min_batch_pixels)
        # Small calls keep each layer's output in the CPU cache: conv, PReLU and max-pool are
        # memory-bound here, and chunking measured about 2x faster than one big call.
        self.rnet_chunk, self.onet_chunk = int(rnet_chunk), int(onet_chunk)
        self.max_crops = int(max_crops)
        if self.device.type != "cpu":  # on a GPU, big calls are what pays
            self.max_batch_pixels = max(self.max_batch_pixels, 1 << 24)
            self.min_batch_pixels = max(self.min_batch_pixels, 1 << 20)
            self.rnet_chunk = self.onet_chunk = self.max_crops
        self.pnet, self.rnet, self.onet = (n.to(self.device, memory_format=torch.channels_last) for n in build_nets(weights_dir))
        # On CPU, frozen TorchScript graphs run the convolutions in oneDNN's blocked layout,
        # about 20% faster than eager; results agree to ~1e-5. Eager stays as the fallback.
        self._pnet_masked = _MaskedPNet(self.pnet)
        self._pnet_fast, self._rnet_fast, self._onet_fast = self.pnet, self.rnet, self.onet
        if optimize and self.device.type == "cpu":
            self._pnet_fast = _frozen(self.pnet, (4, 3, 24, 24))
            self._pnet_masked = _frozen(self._pnet_masked, (4, 3, 24, 24), masked=True)
            self._rnet_fast = _frozen(self.rnet, (4, 3, 24, 24))
            self._onet_fast = _frozen(self.onet, (4, 3, 48, 48))

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
        integral = _Integral([torch.from_numpy(np.ascontiguousarray(im)) for im in images], self.device)
        cand = self._stage1(integral)
        if cand is not None:
            cand = self._stage2(cand, integral)
        out = self._stage3(cand, integral) if cand is not None else None
        return self._split(out, len(images))

    # --- stage 1: P-Net over the pyramid -----------------------------------------------------
    def _levels(self, integral: _Integral) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """Pyramid levels: (normalised images (n, oh, ow, 3), image indices (n,), scale)."""
        levels = []
        for g, (h, w, idx, _) in enumerate(integral.groups):
            for s in pyramid_scales(h, w, self.minsize_for(h, w), self.factor):
                levels.append((integral.level(g, int(h * s + 1), int(w * s + 1)), idx, s))
        return levels

    def _pnet_batches(self, levels):
        """Group levels into P-Net batches. A large level runs alone; small ones (which would
        waste time in per-call overhead) are zero-padded into a shared batch, each at least half
        the batch's area, up to min_batch_pixels."""
        levels = sorted(levels, key=lambda L: (-(L[0].shape[1] * L[0].shape[2]), -L[0].shape[1]))
        batch, npix, bh, bw = [], 0, 0, 0
        for lv in levels:
            n, h, w = lv[0].shape[:3]
            if batch and (npix >= self.min_batch_pixels or 2 * h * w < bh * bw):
                yield batch
                batch, npix = [], 0
            if not batch:
                bh, bw = h, w
            per = max(1, self.max_batch_pixels // (bh * bw))
            for a in range(0, n, per):  # a level too large for one call is split
                if batch and npix + bh * bw * min(per, n - a) > self.max_batch_pixels:
                    yield batch
                    batch, npix = [], 0
                batch.append((lv[0][a:a + per], lv[1][a:a + per], lv[2]))
                npix += bh * bw * min(per, n - a)
        if batch:
            yield batch

    def _stage1(self, integral: _Integral):
        t0 = self.thresholds[0]
        dev = self.device
        n_img = integral.base.shape[0]
        all_boxes, all_scores, all_reg, all_img, all_grp = [], [], [], [], []
        level_id = 0
        for batch in self._pnet_batches(self._levels(integral)):
            bh = max(p[0].shape[1] for p in batch)
            bw = max(p[0].shape[2] for p in batch)
            sizes = [p[0].shape[0] for p in batch]
            same = all(p[0].shape[1] == bh and p[0].shape[2] == bw for p in batch)
            mask = None
            # levels are (n, h, w, 3) views of NCHW memory: the nets get NCHW-contiguous input,
            # which oneDNN takes as it is (an NHWC input costs it an extra reordering copy)
            if same:
                x = torch.cat([p[0].permute(0, 3, 1, 2) for p in batch]) if len(batch) > 1 else batch[0][0].permute(0, 3, 1, 2)
            else:
                x = torch.zeros(sum(sizes), 3, bh, bw, device=dev)
                mask = torch.ones(sum(sizes), 1, bh - 2, bw - 2, dtype=torch.bool, device=dev)
                a = 0
                for p in batch:
                    m, h, w = p[0].shape[:3]
                    x[a:a + m, :, :h, :w] = p[0].permute(0, 3, 1, 2)
                    mask[a:a + m, :, :h - 2, :w - 2] = False
                    a += m
            out = self._pnet_fast(x) if mask is None else self._pnet_masked(x, mask)
            prob = torch.sigmoid(out[:, 0])
            hit = prob >= t0
            if not same:
                vh = torch.tensor([_pnet_out_size(p[0].shape[1]) for p in batch], device=dev).repeat_interleave(torch.tensor(sizes, device=dev))
                vw = torch.tensor([_pnet_out_size(p[0].shape[2]) for p in batch], device=dev).repeat_interleave(torch.tensor(sizes, device=dev))
                oh, ow = hit.shape[1:]
                hit &= (torch.arange(oh, device=dev)[None, :, None] < vh[:, None, None]) & (torch.arange(ow, device=dev)[None, None, :] < vw[:, None, None])
            b, yy, xx = torch.nonzero(hit, as_tuple=True)
            if b.numel() == 0:
                level_id += len(batch)
                continue
            # per batch row: image index, scale, level id
            img = torch.cat([p[1] for p in batch])[b]
            scale = torch.tensor([p[2] for p in batch], dtype=torch.float32, device=dev).repeat_interleave(torch.tensor(sizes, device=dev))[b]
            lid = (level_id + torch.arange(len(batch), device=dev)).repeat_interleave(torch.tensor(sizes, device=dev))[b]
            level_id += len(batch)
            xy = torch.stack([xx, yy], 1).to(torch.float32)
            q1 = torch.floor((2 * xy + 1) / scale[:, None])
            q2 = torch.floor((2 * xy + 12) / scale[:, None])
            all_boxes.append(torch.cat([q1, q2], 1))
            all_scores.append(prob[b, yy, xx])
            all_reg.append(out[b, 1:, yy, xx])
            all_img.append(img)
            all_grp.append(lid * n_img + img)
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
    def _cut(self, boxes: torch.Tensor, img: torch.Tensor, integral: _Integral):
        """Crop ranges of the boxes, truncated to integers and clipped to the image, as the
        reference does; boxes whose clipped crop is empty are dropped. Returns ((image index,
        x0, y0, x1, y1) of the kept boxes, kept mask)."""
        b = boxes.trunc().to(torch.long)
        w, h = integral.width[img], integral.height[img]
        x0 = b[:, 0].clamp(min=1) - 1
        y0 = b[:, 1].clamp(min=1) - 1
        x1 = torch.minimum(b[:, 2], w)
        y1 = torch.minimum(b[:, 3], h)
        ok = (x1 > x0) & (y1 > y0)
        if not bool(ok.all()):
            x0, y0, x1, y1, img = x0[ok], y0[ok], x1[ok], y1[ok], img[ok]
        return (img, x0, y0, x1, y1), ok

    def _run_on_crops(self, net: nn.Module, integral: _Integral, ranges, size: int, chunk: int) -> torch.Tensor:
        """The net on the crops, `chunk` at a time: each chunk is cut and resampled just before
        its net call, so that it is still in the CPU cache (and no full crop batch is stored)."""
        n = ranges[0].shape[0]
        outs = []
        for a in range(0, n, chunk):
            sl = slice(a, a + chunk)
            x = integral.crops(*(t[sl] for t in ranges), size)
            outs.append(net(x.permute(0, 3, 1, 2)))  # NCHW-contiguous, as oneDNN takes it
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _stage2(self, cand, integral: _Integral):
        boxes, _, img = cand
        ranges, ok = self._cut(boxes, img, integral)
        boxes, img = boxes[ok], img[ok]
        if boxes.shape[0] == 0:
            return None
        out = self._run_on_crops(self._rnet_fast, integral, ranges, 24, self.rnet_chunk)
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
        ranges, ok = self._cut(boxes, img, integral)
        boxes, img = boxes[ok], img[ok]
        if boxes.shape[0] == 0:
            return None
        out = self._run_on_crops(self._onet_fast, integral, ranges, 48, self.onet_chunk)
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
