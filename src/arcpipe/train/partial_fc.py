"""Partial FC: the class centres sharded over the ranks of torch.distributed.

    head = PartialFC("arcface", 512, num_classes, s=64, m1=1, m2=0.5, m3=0)   # or losses.build_head
    loss = head(local_embeddings, local_labels)    # the same scalar on every rank
    loss.backward()

- Rank r of W holds the contiguous classes class_range(C, W, r) = [r*C//W, (r+1)*C//W): centres
  (C_r, D), or (K, C_r, D) for sub-centres, and for "softmax" a bias (C_r,). Without an
  initialised process group (or with world size 1) one process holds all classes; nothing else
  changes.
- Each step gathers every rank's embeddings (with their gradient path back to each rank) and
  labels (batch sizes may differ between ranks); each rank computes the logits of its classes
  for the whole global batch; the softmax normaliser is all-reduced (max, then sum of exp); the
  loss is the mean over the global batch. With sample_rate 1 this is exactly the full softmax
  of one process over the global batch: the same loss and the same gradients.
- sample_rate < 1, in training mode only: each rank keeps the classes of the gathered batch it
  holds (the positives) plus random others, int(sample_rate * C_r) in all (all positives when
  there are more); the draw comes from a generator seeded by (seed, rank, step), so a run is
  repeatable and a resumed run draws what it would have drawn. Unsampled centres get a zero
  gradient (momentum and weight decay still move them: that is the optimiser's business).
  In eval mode every class takes part. `last_selection` holds the global class ids of the last
  step's selection on this rank (None when nothing was sampled).
- ddp_backbone (default True): the backbone is meant to be wrapped in DDP, which *averages* its
  gradients over ranks, so the gradient handed back to each rank's embeddings is the true one
  times W and the DDP average is then the gradient of the global-batch loss. False: the true
  gradient of the returned loss with respect to this rank's embeddings (what one process with
  the whole batch would see for those rows). No difference at world size 1. The head itself
  must not be wrapped in DDP (its centres differ per rank): give its parameters to their own
  optimiser.
- The head computes in float32 (autocast off inside; embeddings are cast to the centres' dtype).

Initial centres are N(0, 0.01) drawn per block of 4096 classes from a generator seeded by
(seed, block), so they do not depend on the world size: rank r's shard is the slice of what one
process would have drawn.

Checkpoints. state_dict() is this rank's shard plus an `_extra_state` entry (kind, class count,
its class range, world size, sampler seed and step). load_state_dict() takes the state of any
head whose class range contains this rank's: the same rank of the same world size (the usual
resume), or the full state that full_state_dict() gathers (collective; a world-size-1 state),
which any world size re-shards by slicing. A shard of other classes, or of another kind, class
count, embedding size or k, is refused with a ValueError.
Momentum buffers live in the head's optimiser, per rank, and are not re-sharded here: resume
them only at the same world size (re-sharded centres start with fresh momentum).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from .losses import CombinedMargin, check_head, class_cosines

_INIT_BLOCK = 4096
_INIT_STD = 0.01
_EXTRA = "_extra_state"


def class_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of the classes rank `rank` of `world_size` holds."""
    return rank * num_classes // world_size, (rank + 1) * num_classes // world_size


def _mixed_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0])


def _world(group) -> tuple[int, int]:
    """(world size, rank) of `group`; (1, 0) without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def _init_centres(seed: int, start: int, stop: int, dim: int, k: int | None) -> torch.Tensor:
    parts = []
    for block in range(start // _INIT_BLOCK, (stop - 1) // _INIT_BLOCK + 1):
        g = torch.Generator().manual_seed(_mixed_seed(seed, 0, block))
        drawn = torch.randn((k or 1, _INIT_BLOCK, dim), generator=g) * _INIT_STD
        lo = block * _INIT_BLOCK
        parts.append(drawn[:, max(start, lo) - lo:min(stop, lo + _INIT_BLOCK) - lo])
    w = torch.cat(parts, dim=1)
    return w if k else w[0]


def _gather_rows(x: torch.Tensor, group, world: int) -> tuple[torch.Tensor, list[int]]:
    """Every rank's rows, rank order, and how many came from each (sizes may differ)."""
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes_t = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes_t, n, group=group)
    sizes = [int(s) for s in sizes_t]
    padded = x.new_zeros((max(sizes),) + tuple(x.shape[1:]))
    padded[:x.shape[0]] = x
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded.contiguous(), group=group)
    return torch.cat([t[:s] for t, s in zip(out, sizes)]), sizes


class _GatherWithGrad(torch.autograd.Function):
    """All-gather of rows; backward sums every rank's gradient of this rank's rows."""

    @staticmethod
    def forward(ctx, x, group, world, rank, grad_scale):
        gathered, sizes = _gather_rows(x.detach(), group, world)
        ctx.group, ctx.rank, ctx.sizes, ctx.grad_scale = group, rank, sizes, grad_scale
        return gathered

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]] * ctx.grad_scale, None, None, None, None


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over rows whose classes are spread over the ranks: `logits`
    (N, C_local), `labels` the local column of each row's class or -1 (held elsewhere)."""

    @staticmethod
    def forward(ctx, logits, labels, group, world):
        def reduce(t, op):
            if world > 1:
                dist.all_reduce(t, op=op, group=group)
            return t

        top = reduce(logits.max(dim=1).values, dist.ReduceOp.MAX)
        exp = torch.exp(logits - top[:, None])
        total = reduce(exp.sum(dim=1), dist.ReduceOp.SUM)
        rows = torch.nonzero(labels >= 0).squeeze(1)
        target = logits.new_zeros(logits.shape[0])
        target[rows] = logits[rows, labels[rows]] - top[rows]
        target = reduce(target, dist.ReduceOp.SUM)
        ctx.save_for_backward(exp / total[:, None], labels)
        return (torch.log(total) - target).mean()

    @staticmethod
    def backward(ctx, grad):
        prob, labels = ctx.saved_tensors
        out = prob.clone()
        rows = torch.nonzero(labels >= 0).squeeze(1)
        out[rows, labels[rows]] -= 1
        return out * (grad / prob.shape[0]), None, None, None


class PartialFC(torch.nn.Module):
    """A loss head of `kind` (arcpipe.train.losses.HEAD_KINDS) with sharded class centres."""

    def __init__(self, kind: str, embedding_size: int, num_classes: int, *, s: float, m1: float, m2: float,
                 m3: float, k: int = 1, sample_rate: float = 1.0, seed: int = 0, process_group=None,
                 ddp_backbone: bool = True, falloff: str = "insightface"):
        super().__init__()
        check_head(kind, s=s, m1=m1, m2=m2, m3=m3, k=k, sample_rate=sample_rate, falloff=falloff)
        for name, value in (("embedding_size", embedding_size), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be an integer >= 1")
        self.group = process_group
        world, rank = _world(process_group)
        if num_classes < world:
            raise ValueError(f"num_classes={num_classes}: fewer classes than the {world} ranks to shard them over")
        self.kind, self.embedding_size, self.num_classes = kind, embedding_size, num_classes
        self.k, self.sample_rate, self.seed = k, float(sample_rate), int(seed)
        self.ddp_backbone = bool(ddp_backbone)
        self.world_size, self.rank = world, rank
        self.class_start, self.class_stop = class_range(num_classes, world, rank)
        self.num_local = self.class_stop - self.class_start
        sub = k if kind == "subcenter" else None
        centres = _init_centres(self.seed, self.class_start, self.class_stop, embedding_size, sub)
        self.weight = torch.nn.Parameter(centres)
        if kind == "softmax":
            self.bias = torch.nn.Parameter(torch.zeros(self.num_local))
            self.margin = None
        else:
            self.register_parameter("bias", None)
            self.margin = CombinedMargin(s, 1.0, 0.0, 0.0) if kind == "norm_softmax" else CombinedMargin(s, m1, m2, m3, falloff)
        self.sample_step = 0
        self.last_selection: torch.Tensor | None = None
        self.register_load_state_dict_pre_hook(_reshard_on_load)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings of shape {tuple(embeddings.shape)}: expected (batch, {self.embedding_size})")
        labels = labels.reshape(-1).to(device=embeddings.device, dtype=torch.long)
        if labels.numel() != embeddings.shape[0]:
            raise ValueError(f"{labels.numel()} labels for {embeddings.shape[0]} embeddings")
        with torch.autocast(embeddings.device.type, enabled=False):
            x, y = self._gather(embeddings.to(self.weight.dtype), labels)
            local = torch.where((y >= self.class_start) & (y < self.class_stop), y - self.class_start, -1)
            keep, local = self._sample(local)
            weight = self.weight if keep is None else self.weight.index_select(-2, keep)
            if self.kind == "softmax":
                bias = self.bias if keep is None else self.bias.index_select(0, keep)
                logits = torch.nn.functional.linear(x, weight, bias)
            else:
                logits = self.margin(class_cosines(x, weight), local)
            return _ShardedCrossEntropy.apply(logits, local, self.group, self.world_size)

    def _gather(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.world_size > 1:
            scale = float(self.world_size) if self.ddp_backbone else 1.0
            x = _GatherWithGrad.apply(x, self.group, self.world_size, self.rank, scale)
            labels = _gather_rows(labels, self.group, self.world_size)[0]
        check_labels(labels, self.num_classes)
        return x, labels

    def _sample(self, local: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(kept local class indices, sorted; labels renumbered into them) or (None, labels)."""
        self.last_selection = None
        if self.sample_rate >= 1.0 or not self.training:
            return None, local
        positives = torch.unique(local[local >= 0])
        wanted = math.floor(self.sample_rate * self.num_local + 1e-9)
        count = min(self.num_local, max(wanted, positives.numel(), 1))
        g = torch.Generator().manual_seed(_mixed_seed(self.seed, 1, self.rank, self.sample_step))
        score = torch.rand(self.num_local, generator=g).to(local.device)
        score[positives] = 2.0  # above any draw: always kept
        keep = torch.topk(score, count, sorted=False).indices.sort().values
        self.sample_step += 1
        renumbered = torch.where(local >= 0, torch.searchsorted(keep, local.clamp(min=0)), -1)
        self.last_selection = keep + self.class_start
        return keep, renumbered

    # --- checkpoints ---------------------------------------------------------------------

    def get_extra_state(self) -> dict:
        return {"kind": self.kind, "num_classes": self.num_classes, "embedding_size": self.embedding_size,
                "k": self.k, "class_start": self.class_start, "class_stop": self.class_stop,
                "world_size": self.world_size, "seed": self.seed, "sample_step": self.sample_step}

    def set_extra_state(self, state: dict) -> None:
        # the sampler carries on where the checkpoint's head left off
        self.seed, self.sample_step = int(state["seed"]), int(state["sample_step"])

    def full_state_dict(self) -> dict:
        """The whole head's state (all classes), as a world-size-1 head would save it; a
        collective call on every rank when sharded."""
        state = self.state_dict()
        state["weight"] = self._gather_classes(self.weight.detach(), class_dim=-2)
        if self.bias is not None:
            state["bias"] = self._gather_classes(self.bias.detach(), class_dim=0)
        state[_EXTRA] = {**state[_EXTRA], "class_start": 0, "class_stop": self.num_classes, "world_size": 1}
        return state

    def _gather_classes(self, t: torch.Tensor, class_dim: int) -> torch.Tensor:
        if self.world_size == 1:
            return t.clone()
        rows = t.movedim(class_dim, 0).contiguous()
        counts = [b - a for a, b in (class_range(self.num_classes, self.world_size, r) for r in range(self.world_size))]
        padded = rows.new_zeros((max(counts),) + tuple(rows.shape[1:]))
        padded[:rows.shape[0]] = rows
        out = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(out, padded, group=self.group)
        return torch.cat([o[:n] for o, n in zip(out, counts)]).movedim(0, class_dim).contiguous()

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, embedding_size={self.embedding_size}, classes [{self.class_start}, "
                f"{self.class_stop}) of {self.num_classes}, k={self.k}, sample_rate={self.sample_rate}, "
                f"rank {self.rank} of {self.world_size}")


def _reshard_on_load(module: PartialFC, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """Slice this rank's classes out of a checkpoint that holds more of them (see the docstring)."""
    extra = state_dict.get(prefix + _EXTRA)
    if not isinstance(extra, dict):
        return
    for key in ("kind", "num_classes", "embedding_size", "k"):
        if extra.get(key) != getattr(module, key):
            raise ValueError(f"head checkpoint: {key} is {extra.get(key)!r} there, {getattr(module, key)!r} here")
    start, stop = int(extra["class_start"]), int(extra["class_stop"])
    if (start, stop) == (module.class_start, module.class_stop):
        return
    if not (start <= module.class_start and module.class_stop <= stop):
        raise ValueError(f"head checkpoint holds classes [{start}, {stop}) (rank of {extra.get('world_size')}); "
                         f"this rank needs [{module.class_start}, {module.class_stop}): load the state of the "
                         f"same rank, or a full_state_dict()")
    a, b = module.class_start - start, module.class_stop - start
    for name, dim in (("weight", -2), ("bias", 0)):
        key = prefix + name
        if key in state_dict and state_dict[key] is not None:
            state_dict[key] = state_dict[key].narrow(dim, a, b - a).clone()


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"label {int(bad)}: outside the head's classes [0, {num_classes})")


# --- sub-centres, for the cleaning stage ----------------------------------------------------

@torch.no_grad()
def subcenter_cosines(head: PartialFC, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, K): the cosine of each embedding to each sub-centre of its own class (K = 1 for
    one-centre kinds). A collective call on every rank when the head is sharded; each rank gets
    the rows of its own embeddings."""
    if head.kind == "softmax":
        raise ValueError("kind 'softmax' has no normalised class centres to measure angles to")
    labels = labels.reshape(-1).to(device=embeddings.device, dtype=torch.long)
    x, y = embeddings.to(head.weight.dtype), labels
    sizes = [x.shape[0]]
    if head.world_size > 1:
        x, sizes = _gather_rows(x, head.group, head.world_size)
        y = _gather_rows(y, head.group, head.world_size)[0]
    check_labels(y, head.num_classes)
    centres = head.weight if head.weight.dim() == 3 else head.weight.unsqueeze(0)
    centres = torch.nn.functional.normalize(centres, dim=-1)
    mine = torch.nonzero((y >= head.class_start) & (y < head.class_stop)).squeeze(1)
    own = centres[:, y[mine] - head.class_start]                       # (K, n, D)
    x_mine = torch.nn.functional.normalize(x[mine], dim=1)
    out = x.new_zeros((x.shape[0], centres.shape[0]))
    out[mine] = torch.einsum("nd,knd->nk", x_mine, own)
    if head.world_size > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=head.group)
        start = sum(sizes[:head.rank])
        out = out[start:start + sizes[head.rank]]
    return out


def winning_subcenters(head: PartialFC, embeddings: torch.Tensor,
                       labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, cosine) per embedding: its class's nearest sub-centre and the cosine to it."""
    cos = subcenter_cosines(head, embeddings, labels)
    best = cos.max(dim=1)
    return best.indices, best.values


def winner_counts(winners: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int) -> torch.Tensor:
    """(C, K) int64: how many samples of each class chose each sub-centre; counts of several
    batches or shards add up."""
    flat = labels.reshape(-1).long() * k + winners.reshape(-1).long().to(labels.device)
    return torch.bincount(flat, minlength=num_classes * k).view(num_classes, k)


def dominant_subcenters(counts: torch.Tensor) -> torch.Tensor:
    """(C,) int64: the sub-centre most of each class's samples chose (the lowest index on a
    tie), -1 for a class without samples."""
    return torch.where(counts.sum(dim=1) > 0, counts.argmax(dim=1), -1)
