"""The ArcFace training loop: one process or every rank of torchrun, resumable, bit for bit.

    result = train(params.train, place, rec_path, num_classes, log)

Each step: the backbone embeds this rank's share of the global batch (under autocast when
train.amp is set), the head (arcpipe.train.losses / partial_fc: class centres sharded across
ranks, embeddings all-gathered) gives the margin softmax loss over the global batch, SGD with
momentum and weight decay updates the backbone (DDP-averaged) and this rank's centres, at the
learning rate of the schedule for that step. Every checkpoint_every steps and at each epoch's
end a checkpoint is written (arcpipe.train.checkpoint); every verify_every steps rank 0 runs the
10-fold verification of the evaluate stage on train.verification. A loss that is not finite
stops the run naming the step; the last good checkpoint stays.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

from ..errors import PipelineError
from . import checkpoint as ck
from .amp import LossScaler, autocast_dtype
from .data import TorchBatches
from .dist import Place, all_finite, barrier, gather_objects
from .schedule import lr_at


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    batch: int = 0      # batches of `epoch` already done
    history: list = field(default_factory=list)  # (step, {metric: value}) of every logged step
    pending: list = field(default_factory=list)  # losses since the last logged step (a log window)


# oneDNN's AVX-512 1x1-convolution weight gradient (torch 2.13's CPU build) crashes the process
# (SIGSEGV) in channels-last for narrow layers: seen for 4 or 8 input channels (4->8, 8->8, 8->16
# with stride 2), not for 12 or more; such nets are only the tiny ones of tests and smoke runs.
_MIN_CHANNELS_LAST_1X1 = 16


def memory_layout(backbone: torch.nn.Module, device: torch.device) -> torch.memory_format:
    """channels-last, except on the CPU for a net with a 1x1 convolution narrower than
    _MIN_CHANNELS_LAST_1X1 input channels, which trains in the plain layout (same values)."""
    if device.type == "cpu":
        for m in backbone.modules():
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.in_channels < _MIN_CHANNELS_LAST_1X1:
                return torch.contiguous_format
    return torch.channels_last


def build_model(p, num_classes: int, place: Place):
    from .backbones import build_backbone
    from .losses import build_head

    torch.manual_seed(p.seed)
    backbone = build_backbone(p.backbone.name, embedding_size=p.backbone.embedding_size,
                              dropout=p.backbone.dropout, width=p.backbone.width, layers=p.backbone.layers)
    torch.manual_seed(p.seed + 1)
    head = build_head(p.head.kind, p.backbone.embedding_size, num_classes, s=p.head.s, m1=p.head.m1,
                      m2=p.head.m2, m3=p.head.m3, k=p.head.k, sample_rate=p.head.sample_rate, seed=p.seed,
                      falloff=p.head.falloff)
    return backbone.to(place.device), head.to(place.device)


def _sgd(params, p) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)


def _state(backbone, head, opt_b, opt_h, scaler, prog: Progress, place: Place) -> dict[str, Any]:
    """What a checkpoint holds; per-rank parts (head shard, its optimiser, RNG) gathered to all."""
    local = {"head": head.state_dict(), "opt_head": opt_h.state_dict(), "rng": ck.rng_states()}
    ranks = gather_objects(place, local)
    return {"backbone": backbone.state_dict(), "opt_backbone": opt_b.state_dict(),
            "scaler": scaler.state_dict(), "ranks": ranks,
            "epoch": prog.epoch, "batch": prog.batch, "history": prog.history, "pending": prog.pending}


def _restore(ckpt, backbone, head, opt_b, opt_h, scaler, place: Place) -> Progress:
    backbone.load_state_dict(ckpt["backbone"])
    opt_b.load_state_dict(ckpt["opt_backbone"])
    mine = ckpt["ranks"][place.rank]
    head.load_state_dict(mine["head"])
    opt_h.load_state_dict(mine["opt_head"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    ck.set_rng_states(mine["rng"])
    return Progress(int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["batch"]), list(ckpt.get("history", [])),
                    list(ckpt.get("pending", [])))


def _agreed_start(place: Place, mine: Optional[Path], section: str) -> Optional[Path]:
    """The checkpoint every rank resumes: rank 0's choice. A rank that cannot read it (a node that
    does not see rank 0's checkpoint_dir) stops all ranks together, instead of starting over while
    the others resume (which deadlocks them in mismatched collectives)."""
    chosen = gather_objects(place, None if mine is None else str(mine))[0]
    seen = gather_objects(place, chosen is None or Path(chosen).is_file())
    if not all(seen):
        blind = ", ".join(str(r) for r, ok in enumerate(seen) if not ok)
        raise PipelineError(f"{chosen}: rank 0 resumes this checkpoint, but rank(s) {blind} cannot read it: "
                            f"{section}.checkpoint_dir must be on a filesystem that every node shares")
    return None if chosen is None else Path(chosen)


def open_batches(p, place: Place, rec_path: Path, per_rank: int, section: str = "train"):
    """This rank's batch source: train.rec through torch's DataLoader, or (loader dali) the
    pack's flat shuffled copy beside it through DALI (arcpipe.train.dali)."""
    if p.loader == "dali":
        from .dali import DaliBatches, flat_files

        rec, idx = flat_files(Path(rec_path).parent)
        return DaliBatches(rec, idx, place.rank, place.world_size, p.seed, per_rank, p.workers, place.device)
    return TorchBatches(rec_path, place.rank, place.world_size, p.seed, per_rank, p.workers,
                        pin_memory=place.device.type == "cuda")


def train(p, place: Place, rec_path: Path, num_classes: int, log, live=None, verify=None,
          inputs: Optional[dict[str, Any]] = None, section: str = "train") -> dict[str, Any]:
    """Train to the end of the schedule (resuming this run's newest checkpoint); returns the
    backbone (unwrapped, on its device, eval mode) and what happened. `inputs`: what else decides
    the weights (the data's and the code's digests), part of the run id, so a checkpoint made from
    other data or other code is never resumed."""
    if p.batch_size % place.world_size:
        raise PipelineError(f"{section}.batch_size {p.batch_size} does not divide over {place.world_size} ranks "
                            f"(each rank takes an equal share of the global batch)")
    per_rank = p.batch_size // place.world_size
    batches = open_batches(p, place, rec_path, per_rank, section)
    steps_per_epoch = batches.steps()
    if steps_per_epoch == 0:
        raise PipelineError(f"{batches.source}: {len(batches)} images cannot make one batch of {p.batch_size} "
                            f"({section}.batch_size over {place.world_size} rank(s))")
    total = p.max_steps or p.epochs * steps_per_epoch
    backbone, head = build_model(p, num_classes, place)
    # channels-last (NHWC) convolutions: 1.4x the float32 step of the sample's net on 2 CPU cores
    # (mkldnn), faster on GPUs too; the values and the exported model are the same layout-free net
    layout = memory_layout(backbone, place.device)
    backbone = backbone.to(memory_format=layout)
    model = backbone
    if place.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            backbone, device_ids=[place.device.index] if place.device.type == "cuda" else None)
    opt_b, opt_h = _sgd(backbone.parameters(), p), _sgd(head.parameters(), p)
    scaler = LossScaler(enabled=p.amp == "fp16")
    dtype = autocast_dtype(p.amp)

    definition = ck.run_definition(p, num_classes, place.world_size, inputs)
    folder = ck.run_dir(p.checkpoint_dir, definition)
    prog = Progress()
    start = _agreed_start(place, Path(p.resume_from) if p.resume_from else ck.latest(folder), section)
    if start is not None:
        ckpt = ck.load(start, definition, p.restart, section)
        if ckpt is not None:
            prog = _restore(ckpt, backbone, head, opt_b, opt_h, scaler, place)
            log.info("resumed %s at step %d of %d (epoch %d, batch %d)", start, prog.step, total, prog.epoch, prog.batch)
        else:
            log.info("%s was made with other params: starting over (%s.restart)", start, section)
    if live is not None:
        live.start(prog.history)
    last_good: Optional[Path] = start if start is not None and prog.step else None

    def save() -> None:
        nonlocal last_good
        state = _state(backbone, head, opt_b, opt_h, scaler, prog, place)
        if place.main:
            last_good = ck.save(folder, definition, state, prog.step)
            log.info("checkpoint %s", last_good)
        barrier(place)

    bar = tqdm(total=total, initial=prog.step, desc=section, unit="step", disable=None if place.main else True)
    window_t, window_n = time.perf_counter(), 0
    model.train()
    head.train()
    while prog.step < total:
        for images, labels in batches.epoch(prog.epoch, prog.batch):
            lr = lr_at(prog.step, p.lr, p.schedule, total)
            for opt in (opt_b, opt_h):
                for g in opt.param_groups:
                    g["lr"] = lr
            images = images.to(place.device, non_blocking=True, memory_format=layout)
            labels = labels.to(place.device, non_blocking=True)
            with torch.autocast(place.device.type, dtype=dtype, enabled=dtype is not None):
                emb = model(images)
            loss = head(emb.float(), labels)
            if not all_finite(place, loss.detach()):
                raise PipelineError(f"step {prog.step + 1}: the loss is {loss.item()} (not finite): training "
                                    f"stopped; the last good checkpoint is {last_good or 'none (none saved yet)'}")
            opt_b.zero_grad(set_to_none=True)
            opt_h.zero_grad(set_to_none=True)
            scaler.scaled(loss).backward()
            if scaler.unscale_and_check(place, backbone, head, p.grad_clip):  # all ranks agree
                opt_b.step()
                opt_h.step()
            else:
                log.warning("step %d: fp16 gradients overflowed on some rank: step skipped, loss scale now %g",
                            prog.step + 1, scaler.scale)
            prog.step += 1
            prog.batch += 1
            window_n += images.shape[0] * place.world_size
            prog.pending.append(float(loss.detach()))
            bar.update(1)
            if prog.step % p.log_every == 0 or prog.step == total:
                now = time.perf_counter()
                rate = window_n / max(now - window_t, 1e-9)
                mean_loss = float(np.mean(prog.pending))
                eta = (total - prog.step) * p.batch_size / max(rate, 1e-9)
                logged = {"train/loss": mean_loss, "train/lr": lr}
                prog.history.append((prog.step, logged))
                if place.main:
                    log.info("step %d/%d epoch %d: loss %.4f, lr %.5f, %.1f samples/s, eta %s", prog.step, total,
                             prog.epoch, mean_loss, lr, rate, _hms(eta))
                    if live is not None:
                        live.log(prog.step, logged)
                window_t, window_n, prog.pending = now, 0, []
            if verify is not None and (prog.step % p.verify_every == 0 or prog.step == total):
                accs = verify(backbone, prog.step) if place.main else None
                accs = gather_objects(place, accs)[0]  # every rank keeps the same history
                if accs:
                    logged = {f"verify/{k}/acc": v for k, v in accs.items()}
                    prog.history.append((prog.step, logged))
                    if live is not None and place.main:
                        live.log(prog.step, logged)
                model.train()
            end_of_epoch = prog.batch >= steps_per_epoch
            if end_of_epoch:
                prog.epoch, prog.batch = prog.epoch + 1, 0
            if prog.step % p.checkpoint_every == 0 or end_of_epoch or prog.step == total:
                save()
            if prog.step >= total or end_of_epoch:
                break
    bar.close()
    if live is not None:
        live.finish()
    log.info("rank %d: backbone sha256 %s", place.rank, weights_digest(backbone))
    backbone = backbone.to(memory_format=torch.contiguous_format).eval()
    return {"backbone": backbone, "centres": class_centres(head), "steps": prog.step, "total_steps": total, "epochs": prog.epoch,
            "steps_per_epoch": steps_per_epoch, "world_size": place.world_size, "run_id": ck.run_id(definition),
            "checkpoint": str(last_good) if last_good else None, "history": prog.history,
            "final_loss": next((m["train/loss"] for _, m in reversed(prog.history) if "train/loss" in m), None)}


def class_centres(head) -> np.ndarray:
    """Every class's centres as float32 (C, K, D) unit rows (K = 1 but for sub-center ArcFace),
    gathered from all ranks (a collective call): what the cleaning stage measures angles to."""
    w = head.full_state_dict()["weight"].detach().float().cpu()
    w = w.unsqueeze(1) if w.dim() == 2 else w.transpose(0, 1)
    return torch.nn.functional.normalize(w, dim=-1).numpy().astype(np.float32)


def weights_digest(module) -> str:
    """sha256 of a module's parameters, in order: the ranks of one DDP run must agree (their
    BatchNorm running statistics may not: each rank's follow its own batches; rank 0's are saved)."""
    h = hashlib.sha256()
    for name, t in module.named_parameters():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
