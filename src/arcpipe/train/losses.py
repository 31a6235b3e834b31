"""Margin heads: the logits ArcFace-style training takes its softmax loss over.

    head = build_head("arcface", 512, num_classes, s=64, m1=1.0, m2=0.5, m3=0.0)
    loss = head(embeddings, labels)      # scalar, mean over the global batch

Head kinds (HEAD_KINDS, params `train.head.kind`); theta is the angle between the embedding and
its class centre, the margin touches the target class only, every other class gets s * cos:

  softmax       a plain linear classifier on the raw embedding, with bias: no normalisation, no
                scale (s is not used), no margin
  norm_softmax  embedding and centres L2-normalised, logits s * cos(theta), no margin
  arcface       s * cos(theta + m2)                      (m1 = 1, m3 = 0)
  cosface       s * (cos(theta) - m3)                    (m1 = 1, m2 = 0)
  sphereface    s * cos(m1 * theta), multiplicative      (m2 = 0, m3 = 0; the paper's m1 = 1.35)
  combined      s * (cos(m1 * theta + m2) - m3), all three free: (1, 0.3, 0.2), (0.9, 0.4, 0.15)
  subcenter     sub-center ArcFace: k centres per class, cos(theta_j) = max_k cos(W_jk, x), then
                the combined margin (ArcFace: 1, 0.5, 0); k = 3 trains the model that cleans data

A kind refuses margin terms it does not have (they must be neutral: m1 = 1, m2 = 0, m3 = 0), so
a params file cannot say one loss and run another; only "subcenter" takes k > 1. PAPER_MARGINS
holds the paper's (m1, m2, m3) settings.

Every kind is built as a Partial FC head (arcpipe.train.partial_fc.PartialFC): the class
centres are sharded over the ranks of torch.distributed, or all in one process without a process
group. This module holds the margin arithmetic and the checks; build_head lives here.

Fall-off past pi. cos(m1*theta + m2) decreases only while m1*theta + m2 <= pi, i.e. up to
theta_t = (pi - m2) / m1. Past theta_t (when theta_t < pi) the target logit must go on falling;
`falloff` says how:

  insightface (default)  the reference's rule (arcface_torch's ArcFace, insightface's mxnet
                         scripts): for m1 = 1, past theta_t the logit is cos(theta) - m2*sin(m2) - m3,
                         with theta_t's test cos(theta) > cos(pi - m2) as there. The shift is the
                         first-order estimate of the penalty, so the curve steps down at theta_t
                         (by m2*sin(m2) - (1 - cos(m2)), 0.117 at m2 = 0.5); above m2 ~ 2.33 it
                         would step up, and such margins are refused. The reference has no rule
                         for m1 != 1 (its cos(m1*theta) rises again past theta_t), so m1 != 1 takes
                         the exact rule below.
  exact                  cos(theta) - m3 - (1 + cos(theta_t)): the plain cosine shifted down by the
                         penalty the margin had reached at theta_t (there cos(m1*theta_t + m2) = -1,
                         so the penalty is cos(theta_t) + 1). Continuous at theta_t and strictly
                         decreasing on (theta_t, pi) whatever m1 and m2; for m1 = 1 the shift is
                         1 - cos(m2). (The classic rule's general form for m1 != 1, a shift of
                         (pi - theta_t) * sin(theta_t), jumps *up* once theta_t < ~0.81 rad.)

Infinite slopes: d acos(c)/dc is infinite at c = +-1, so acos sees c clamped to
[-1 + ACOS_EPS, 1 - ACOS_EPS] (zero gradient beyond, finite everywhere; theta within ~0.08
degree of 0 or pi). Branches are chosen with torch.where, whose unused branch still gets a zero
gradient, so it must be finite too: it is.
"""
from __future__ import annotations

import math

import torch

HEAD_KINDS = ("softmax", "norm_softmax", "arcface", "cosface", "sphereface", "combined", "subcenter")

# the margin terms each kind does not have: they must keep their neutral value
_NEUTRAL = {"m1": 1.0, "m2": 0.0, "m3": 0.0}
_FIXED_TERMS = {
    "softmax": ("m1", "m2", "m3"),
    "norm_softmax": ("m1", "m2", "m3"),
    "arcface": ("m1", "m3"),
    "cosface": ("m1", "m2"),
    "sphereface": ("m2", "m3"),
    "combined": (),
    "subcenter": (),
}

# (m1, m2, m3) of the paper's loss ablation (Table 2), s = 64
PAPER_MARGINS = {
    "arcface": (1.0, 0.5, 0.0),
    "cosface": (1.0, 0.0, 0.35),
    "sphereface": (1.35, 0.0, 0.0),
    "combined_1": (1.0, 0.3, 0.2),
    "combined_2": (0.9, 0.4, 0.15),
}

ACOS_EPS = 1e-6
FALLOFFS = ("insightface", "exact")


def _finite(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}={value}: must be a finite number")
    return value


def check_margin(s: float, m1: float, m2: float, m3: float,
                 falloff: str = "insightface") -> tuple[float, float, float, float]:
    """The validated (s, m1, m2, m3) of a combined margin; ValueError naming the bad parameter."""
    if falloff not in FALLOFFS:
        raise ValueError(f"falloff={falloff!r}: expected one of {', '.join(FALLOFFS)}")
    s, m1, m2, m3 = (_finite(n, v) for n, v in (("s", s), ("m1", m1), ("m2", m2), ("m3", m3)))
    if s <= 0:
        raise ValueError(f"s={s}: the logit scale must be > 0")
    if m1 <= 0:
        raise ValueError(f"m1={m1}: must be > 0 (m1 <= 0 makes the target logit grow with the angle)")
    if not 0 <= m2 < math.pi:
        raise ValueError(f"m2={m2}: must be in [0, pi) (m2 < 0 makes the target logit rise near theta = 0)")
    if m3 < 0:
        raise ValueError(f"m3={m3}: must be >= 0 (a negative margin raises the target logit)")
    if m3 >= 1 + math.cos(m2):
        raise ValueError(f"m3={m3}: must be < 1 + cos(m2) = {1 + math.cos(m2):.4f}, or the target logit "
                         f"could never exceed any other class's")
    theta = torch.linspace(0, math.pi, 4097, dtype=torch.float64)
    target = margin_target(torch.cos(theta), m1, m2, m3, falloff)
    gain = target - torch.cos(theta)
    if float(gain.max()) > 1e-12:
        at = float(theta[int(gain.argmax())])
        raise ValueError(f"m1={m1}: with m2={m2}, m3={m3} the margin raises the target logit above "
                         f"cos(theta) at theta = {at:.3f} rad; with m1 < 1 raise m2 to at least "
                         f"(1 - m1) * pi or m3")
    if float(torch.diff(target).max()) > 1e-12:
        raise ValueError(f"m2={m2}: the insightface fall-off past theta = pi - m2 would raise the target "
                         f"logit there (m2 above ~2.33); set falloff: exact")
    return s, m1, m2, m3


def check_head(kind: str, *, s: float, m1: float, m2: float, m3: float, k: int, sample_rate: float,
               falloff: str = "insightface") -> None:
    """ValueError (one line, naming the parameter) for a head that cannot be built as asked."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"kind={kind!r}: unknown head; expected one of {', '.join(HEAD_KINDS)}")
    for name in _FIXED_TERMS[kind]:
        value = _finite(name, {"m1": m1, "m2": m2, "m3": m3}[name])
        if value != _NEUTRAL[name]:
            raise ValueError(f"{name}={value}: kind {kind!r} has no such margin term, set it to "
                             f"{_NEUTRAL[name]:g} (kind 'combined' takes m1, m2 and m3 together)")
    if kind == "softmax":
        _finite("s", s)
    else:
        check_margin(s, m1, m2, m3, falloff)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}: the number of sub-centres per class must be an integer >= 1")
    if k > 1 and kind != "subcenter":
        raise ValueError(f"k={k}: sub-centres need kind 'subcenter' (kind {kind!r} has one centre per class)")
    rate = _finite("sample_rate", sample_rate)
    if not 0 < rate <= 1:
        raise ValueError(f"sample_rate={rate}: must be in (0, 1]")


def margin_target(cos: torch.Tensor, m1: float, m2: float, m3: float, falloff: str = "insightface") -> torch.Tensor:
    """cos(m1*theta + m2) - m3 elementwise from cos(theta), with the `falloff` rule past
    theta_t = (pi - m2) / m1 (see the module docstring); no scale."""
    if m1 == 1 and m2 == 0:
        return cos - m3
    theta = torch.acos(cos.clamp(-1 + ACOS_EPS, 1 - ACOS_EPS))
    main = torch.cos(m1 * theta + m2) - m3
    theta_t = (math.pi - m2) / m1
    if theta_t >= math.pi:
        return main
    if falloff == "insightface" and m1 == 1:
        return torch.where(cos > math.cos(theta_t), main, cos - m2 * math.sin(m2) - m3)
    return torch.where(cos >= math.cos(theta_t), main, cos - (1 + math.cos(theta_t)) - m3)


class CombinedMargin(torch.nn.Module):
    """s * cos for every class, s * margin_target(cos) for the target class.

    Works on a slice of the classes: `local_labels` is the column of each row's class in `cos`,
    or -1 where the class lives elsewhere (that row gets no margin here)."""

    def __init__(self, s: float, m1: float, m2: float, m3: float, falloff: str = "insightface"):
        super().__init__()
        self.s, self.m1, self.m2, self.m3 = check_margin(s, m1, m2, m3, falloff)
        self.falloff = falloff

    def forward(self, cos: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
        rows = torch.nonzero(local_labels >= 0).squeeze(1)
        cols = local_labels[rows]
        target = margin_target(cos[rows, cols], self.m1, self.m2, self.m3, self.falloff)
        return cos.index_put((rows, cols), target) * self.s

    def extra_repr(self) -> str:
        return f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, falloff={self.falloff}"


def class_cosines(embeddings: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """cos(x, centre) for every embedding row and class: centres (C, D), or (K, C, D) for
    sub-centres, where a class's cosine is the largest of its K. Both sides are L2-normalised."""
    x = torch.nn.functional.normalize(embeddings, dim=1)
    w = torch.nn.functional.normalize(centres, dim=-1)
    if w.dim() == 2:
        return x @ w.t()
    k, c, d = w.shape
    return (x @ w.reshape(k * c, d).t()).view(x.shape[0], k, c).max(dim=1).values


def build_head(kind: str, embedding_size: int, num_classes: int, *, s: float, m1: float, m2: float,
               m3: float, k: int = 1, sample_rate: float = 1.0, seed: int = 0, process_group=None,
               ddp_backbone: bool = True, falloff: str = "insightface") -> torch.nn.Module:
    """The loss head of `kind` (HEAD_KINDS) as a Partial FC module: forward(embeddings, labels)
    gives the mean loss over the global batch, in one process or on every rank of a process
    group. ddp_backbone: see arcpipe.train.partial_fc.PartialFC."""
    from .partial_fc import PartialFC

    return PartialFC(kind, embedding_size, num_classes, s=s, m1=m1, m2=m2, m3=m3, k=k, sample_rate=sample_rate,
                     seed=seed, process_group=process_group, ddp_backbone=ddp_backbone, falloff=falloff)
