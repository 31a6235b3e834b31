"""Face recognition backbones as a small registry: iResNet 18..200 and MobileFaceNet.

    net = build_backbone("r50", embedding_size=512)          # 112x112 RGB, (x - 127.5) / 127.5
    emb = net(x)                                             # N x 3 x 112 x 112 -> N x 512 (raw)

Every backbone is a `Backbone`: a `body` (convolutions; runs under autocast when half precision
is asked for) and a `head` (the embedding layers; always float32, as the reference trains them).

- iResNet ("r18", "r34", "r50", "r100", "r200"): a 3x3 stem at full resolution, four stages of
  improved residual blocks (BN-conv3x3-BN-PReLU-conv3x3(stride)-BN, plus a 1x1 conv + BN shortcut
  where the shape changes), each stage halving the size (112 -> 7), then the paper's head
  BN2d -> Dropout -> FC(512*7*7 -> D) -> BN1d. The last BN1d's scale is fixed at 1 (not trained),
  as in the reference implementation; it still counts as a parameter.
- MobileFaceNet ("mbf"): depthwise-separable bottlenecks (1x1 expand, 3x3 depthwise, linear 1x1),
  a 7x7 global depthwise conv, then a linear FC (no bias) -> BN1d.

Knobs for small machines: `width` multiplies every channel count (rounded to a multiple of 8,
at least 8); `layers` overrides the blocks per stage (four numbers). The embedded sample trains
on CPU with `build_backbone("r18", width=0.25, layers=[1, 1, 1, 1])` (see SMALL_SAMPLE).

Half precision (`fp16`): False (float32 throughout), True (float16 on CUDA, bfloat16 on CPU,
where float16 autocast is slow or missing) or an explicit torch dtype. The choice is the
module's `amp_dtype` attribute (None for float32); export sets it to None. A caller may instead
run the whole module under its own torch.autocast: the head still runs in float32.

Initialisation uses torch's global RNG only, so `torch.manual_seed(s)` before `build_backbone`
gives the same weights every time.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

__all__ = ["BACKBONES", "SMALL_SAMPLE", "Backbone", "build_backbone", "count_parameters"]

INPUT_SIZE = 112
IRESNET_LAYERS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
MBF_LAYERS = (1, 4, 6, 2)
BACKBONES = tuple(IRESNET_LAYERS) + ("mbf",)
# the setting that trains the embedded sample on 2 CPU cores in minutes
SMALL_SAMPLE = {"name": "r18", "width": 0.25, "layers": [1, 1, 1, 1]}


def _channels(c: int, width: float) -> int:
    return max(8, int(round(c * width / 8)) * 8)


def _amp_dtype(fp16: Union[bool, torch.dtype, None]) -> Optional[torch.dtype]:
    if fp16 is None or fp16 is False:
        return None
    if fp16 is True:
        return torch.float16 if torch.cuda.is_available() else torch.bfloat16
    if isinstance(fp16, torch.dtype) and fp16 in (torch.float16, torch.bfloat16):
        return fp16
    raise ValueError(f"fp16: expected True, False, torch.float16 or torch.bfloat16, got {fp16!r}")


class Backbone(nn.Module):
    """`body` (under autocast when `amp_dtype` is set) then `head` in float32, also when the
    caller runs the whole module under its own autocast."""

    def __init__(self, body: nn.Module, head: nn.Module, embedding_size: int, architecture: str,
                 amp_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.body = body
        self.head = head
        self.embedding_size = embedding_size
        self.architecture = architecture
        self.amp_dtype = amp_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if self.amp_dtype is None:
            x = self.body(x)
        else:
            # float16 autocast is for CUDA: CPU inputs get bfloat16
            dtype = self.amp_dtype if device == "cuda" else torch.bfloat16
            with torch.autocast(device_type=device, dtype=dtype):
                x = self.body(x)
        if _autocast_enabled(device):
            with torch.autocast(device_type=device, enabled=False):
                return self.head(x.float())
        return self.head(x.float())


def _autocast_enabled(device: str) -> bool:
    try:
        return torch.is_autocast_enabled(device)
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_enabled() if device == "cuda" else torch.is_autocast_cpu_enabled()


# iResNet -------------------------------------------------------------------------------------

def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Improved residual block: BN-conv-BN-PReLU-conv(stride)-BN, plus the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(cin), _conv3x3(cin, cout), nn.BatchNorm2d(cout), nn.PReLU(cout),
            _conv3x3(cout, cout, stride), nn.BatchNorm2d(cout),
        )
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.residual(x) + identity


def _iresnet(layers: Sequence[int], embedding_size: int, dropout: float, width: float) -> tuple[nn.Module, nn.Module]:
    widths = [_channels(c, width) for c in (64, 128, 256, 512)]
    body = [_conv3x3(3, widths[0]), nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0])]
    cin = widths[0]
    for cout, blocks in zip(widths, layers):
        body += [IBasicBlock(cin, cout, stride=2)] + [IBasicBlock(cout, cout, stride=1) for _ in range(blocks - 1)]
        cin = cout
    side = INPUT_SIZE // 16
    body += [nn.BatchNorm2d(cin), nn.Flatten(1), nn.Dropout(dropout)]
    features = nn.BatchNorm1d(embedding_size)
    head = nn.Sequential(nn.Linear(cin * side * side, embedding_size), features)
    body = nn.Sequential(*body)
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.ones_(features.weight)
    features.weight.requires_grad_(False)
    return body, head


# MobileFaceNet -------------------------------------------------------------------------------

def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, prelu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2 if kernel == 3 else 0,
                        groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if prelu:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class DepthWiseBlock(nn.Module):
    """1x1 expand (PReLU) -> 3x3 depthwise (PReLU) -> linear 1x1; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, inner: int, stride: int, residual: bool):
        super().__init__()
        self.layers = nn.Sequential(
            _conv_bn(cin, inner, 1), _conv_bn(inner, inner, 3, stride=stride, groups=inner),
            _conv_bn(inner, cout, 1, prelu=False),
        )
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x) if self.residual else self.layers(x)


def _mobilefacenet(layers: Sequence[int], embedding_size: int, width: float) -> tuple[nn.Module, nn.Module]:
    c1, c2, top = _channels(128, width), _channels(256, width), _channels(512, width)
    body = [_conv_bn(3, c1, 3, stride=2)]  # 56x56
    if layers[0] == 1:
        body.append(_conv_bn(c1, c1, 3, groups=c1 // 2))  # grouped (2 channels a group), not depthwise
    else:
        body += [DepthWiseBlock(c1, c1, c1, 1, residual=True) for _ in range(layers[0])]
    cin = c1
    # each stage: a strided block (out channels, its inner width), then `blocks` residual blocks
    for cout, inner, blocks in ((c1, c1, layers[1]), (c2, c2, layers[2]), (c2, top, layers[3])):
        body.append(DepthWiseBlock(cin, cout, inner, stride=2, residual=False))
        body += [DepthWiseBlock(cout, cout, cout, 1, residual=True) for _ in range(blocks)]
        cin = cout
    body = nn.Sequential(*body)
    head = nn.Sequential(
        _conv_bn(c2, top, 1),
        _conv_bn(top, top, 7, groups=top, prelu=False),  # global depthwise conv: 7x7 -> 1x1
        nn.Flatten(1), nn.Linear(top, embedding_size, bias=False), nn.BatchNorm1d(embedding_size),
    )
    for m in list(body.modules()) + list(head.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return body, head


# registry ------------------------------------------------------------------------------------

def build_backbone(name: str, embedding_size: int = 512, dropout: float = 0.0, width: float = 1.0,
                   layers: Optional[Sequence[int]] = None, fp16: Union[bool, torch.dtype] = False) -> Backbone:
    """The backbone `name` (one of BACKBONES) mapping N x 3 x 112 x 112 to N x embedding_size."""
    if name not in BACKBONES:
        raise ValueError(f"backbone {name!r} is not one of {', '.join(BACKBONES)}")
    if embedding_size <= 0:
        raise ValueError(f"embedding_size must be positive, got {embedding_size}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    default = MBF_LAYERS if name == "mbf" else IRESNET_LAYERS[name]
    layers = tuple(default if layers is None else layers)
    # iResNet stages start with their strided block; MobileFaceNet's strided blocks sit between stages
    low = (1, 1, 1, 1) if name != "mbf" else (1, 0, 0, 0)
    if len(layers) != 4 or any(not isinstance(n, int) or n < lo for n, lo in zip(layers, low)):
        raise ValueError(f"layers must be four block counts (at least {list(low)}), got {list(layers)}")
    if name == "mbf":
        if dropout:
            raise ValueError("dropout: MobileFaceNet's head has no dropout; leave it at 0")
        body, head = _mobilefacenet(layers, embedding_size, width)
    else:
        body, head = _iresnet(layers, embedding_size, dropout, width)
    arch = name if (width == 1.0 and layers == default) else f"{name} (width {width:g}, layers {list(layers)})"
    return Backbone(body, head, embedding_size, arch, _amp_dtype(fp16))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
