"""Train the face embedding (ArcFace and its relatives) on the pack stage's train.rec: models/train/.

    python scripts/train.py                                  # one process (CPU or one GPU), or
                                                             # train.processes x train.nodes ranks it starts
    torchrun --standalone --nproc-per-node N scripts/train.py   # DDP on one machine (NCCL / gloo)
    torchrun --nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT ... scripts/train.py

Reads <train.pack_dir>/train.rec and its property (the class count); resumes the newest
checkpoint of this run from <train.checkpoint_dir> (arcpipe.train.checkpoint); logs loss, learning
rate, samples/s and an ETA, and every verify_every steps the 10-fold accuracy on
train.verification; DVCLive metrics and plots in <train.live_dir>. Rank 0 alone writes outputs:
<train.out_dir>/backbone.onnx and backbone.pt with their sidecars (what the evaluate stage reads),
the same network untrained (untrained.onnx / .pt, the baseline a trained model must beat), and
train.json, all renamed into place together at the end.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from ..errors import PipelineError
from ..fsutil import atomic_path, write_json_atomic
from ..recordio import read_property
from ..train import dist
from ..train.launch import check_world, launcher_command, run_launcher

__all__ = ["run"]


def sidecar_fields(p, name: str, trained: bool = True) -> dict[str, Any]:
    """How the exported backbone wants its input: the training transform (RGB, x / 127.5 - 1)."""
    bb = p.backbone
    arch = f"{bb.name} (width {bb.width}, layers {bb.layers or 'standard'})"
    return {"input_size": [112, 112], "crop": "arcface112", "mean": 127.5, "std": 127.5, "channel_order": "rgb",
            "embedding_size": bb.embedding_size, "layout": "nchw", "name": name, "architecture": arch,
            "loss": f"{p.head.kind} (s={p.head.s}, m1={p.head.m1}, m2={p.head.m2}, m3={p.head.m3}, k={p.head.k})",
            "trained_on": str(Path(p.pack_dir) / ("train_flat.rec" if p.loader == "dali" else "train.rec")) if trained else None,
            "notes": None if trained else f"the initial weights of this run (seed {p.seed}), never trained"}


def _class_count(ctx, p, pack: Path) -> int:
    prop_c = read_property(pack / "property")[0]
    if p.num_classes is not None and p.num_classes != prop_c:
        raise PipelineError(f"{ctx.name}.num_classes = {p.num_classes}, but {pack / 'property'} says {prop_c} classes")
    manifest = pack / "manifest.parquet"
    if manifest.is_file():  # every label the pack holds is a class the head has
        labels = pd.read_parquet(manifest, columns=["label", "packed"])
        top = int(labels.loc[labels["packed"], "label"].max()) if labels["packed"].any() else -1
        if top >= prop_c:
            raise PipelineError(f"{pack / 'train.rec'}: holds label {top}, beyond the {prop_c} classes of "
                                f"{pack / 'property'}")
    return prop_c


def _check_model_params(ctx, p) -> None:
    """The backbone and the head as asked can be built: one line naming the key otherwise."""
    from ..params import origin_of
    from ..train.backbones import BACKBONES
    from ..train.losses import check_head

    if p.backbone.name not in BACKBONES:
        key = f"{ctx.name}.backbone.name"
        raise PipelineError(f"{origin_of(key, ctx.params_files)}: {key}: "
                            f"{p.backbone.name!r} is not one of {', '.join(BACKBONES)}")
    h = p.head
    try:
        check_head(h.kind, s=h.s, m1=h.m1, m2=h.m2, m3=h.m3, k=h.k, sample_rate=h.sample_rate, falloff=h.falloff)
    except ValueError as e:
        key = f"{ctx.name}.head"
        raise PipelineError(f"{origin_of(key, ctx.params_files)}: {key}: {e}") from None


def _quiet_other_ranks(ctx, place) -> None:
    """Ranks other than 0 log to logs/<stage>.rank<R>.log only (rank 0 keeps the terminal)."""
    for h in list(ctx.log.handlers):
        ctx.log.removeHandler(h)
        h.close()
    fh = logging.FileHandler(Path("logs") / f"{ctx.name}.rank{place.rank}.log", mode="a", encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s rank%(process)d %(levelname)s %(message)s"))
    ctx.log.addHandler(fh)


def _verifier(ctx, p, place):
    if not p.verification:
        return None
    from ..evaluate.model import ModuleEmbedder
    from ..evaluate.packs import verify_bin

    paths = {n: ctx.require_path(f"{ctx.name}.verification.{n}", v) for n, v in sorted(p.verification.items())}
    sc = sidecar_fields(p, "in training")

    def verify(backbone, step: int) -> dict[str, float]:
        emb = ModuleEmbedder(backbone, sc, place.device, batch_size=64)
        out = {}
        for name, path in paths.items():
            metrics, _ = verify_bin(name, str(path), emb, True, 10, 1e-3)
            out[name] = float(metrics["acc_mean"])
            ctx.log.info("step %d: %s 10-fold accuracy %.4f", step, name, out[name])
        return out

    return verify


def run_inputs(pack: Path, stage: str = "train", flat: bool = False) -> dict[str, Any]:
    """What decides the weights besides the params: the pack (its index and property, which change
    with any record, and the .rec's size; `flat`: the flat copy's too, which DALI reads) and the
    code the stage runs (every file's sha256)."""
    from ..fsutil import digest_of, sha256_file
    from .code import REPO, stage_code_files

    try:
        files = {f: REPO / f for f in stage_code_files(stage)}
    except ValueError:  # an installed package without the checkout's scripts/: the library itself
        here = Path(__file__).resolve().parents[1]
        files = {str(f.relative_to(here)): f for f in sorted(here.rglob("*.py"))}
    code = digest_of([[name, sha256_file(f)] for name, f in sorted(files.items())])
    packed = {"rec_bytes": (pack / "train.rec").stat().st_size, "idx_sha256": sha256_file(pack / "train.idx"),
              "property_sha256": sha256_file(pack / "property")}
    if flat:
        from ..train.dali import flat_files

        rec, idx = flat_files(pack)
        packed.update(flat_rec_bytes=rec.stat().st_size, flat_idx_sha256=sha256_file(idx))
    return {"pack": packed, "code": code}


def run(ctx) -> dict[str, Any]:
    return run_section(ctx, ctx.params.train)


def run_section(ctx, p) -> dict[str, Any]:
    """The train stage on params section `p` (ctx.name names it: train, train_bootstrap)."""
    from ..train.live import LiveLog
    from ..train.loop import build_model, train

    _check_model_params(ctx, p)
    pack = ctx.require_path(f"{ctx.name}.pack_dir", p.pack_dir)
    for f in ("train.rec", "train.idx", "property"):
        ctx.require_path(f"{ctx.name}.pack_dir", pack / f)
    if p.loader == "dali":
        from ..train.dali import flat_files, require_dali

        require_dali(ctx.name)
        for f in flat_files(pack):
            if not f.is_file():
                raise PipelineError(f"{f}: no such file: {ctx.name}.loader dali reads the pack's flat shuffled copy, "
                                    f"which the pack stages write when their flat_shuffled is true")
    num_classes = _class_count(ctx, p, pack)
    verify_paths = {n: ctx.require_path(f"{ctx.name}.verification.{n}", v) for n, v in p.verification.items()}
    started = _start_ranks(ctx, p)
    if started is not None:
        return started
    place = dist.setup(p.device, section=ctx.name)
    check_world(ctx.name, p, place.world_size)
    try:
        if not place.main:
            _quiet_other_ranks(ctx, place)
        ctx.log.info("rank %d of %d on %s; %d classes; run %s; %s loader", place.rank, place.world_size,
                     place.device, num_classes, p.backbone.name, p.loader)
        with ctx.working_on(f"training {p.backbone.name} on {pack} ({p.loader} loader)"):
            result = train(p, place, pack / "train.rec", num_classes, ctx.log,
                           live=LiveLog(p.live_dir) if place.main else None, verify=_verifier(ctx, p, place),
                           inputs=run_inputs(pack, ctx.name, flat=p.loader == "dali"),
                           section=ctx.name)
        counts = {"rank": place.rank, "world_size": place.world_size, "steps": result["steps"],
                  "epochs": result["epochs"], "final_loss": result["final_loss"], "run_id": result["run_id"]}
        if place.main:
            with ctx.working_on(f"exporting to {p.out_dir}"):
                untrained, _ = build_model(p, num_classes, place)
                counts["files"] = _export(ctx, p, result, untrained.eval(), num_classes, verify_paths)
        dist.barrier(place)
        return counts
    finally:
        dist.teardown(place)


def _start_ranks(ctx, p) -> Optional[dict[str, Any]]:
    """Where params ask for more ranks than this one process (train.processes, train.nodes), run
    them through torchrun and wait; None: this process trains (it is a rank, or the only one)."""
    from .code import REPO

    args = ["--params", *ctx.params_files]
    if getattr(ctx.args, "workers", None) is not None:
        args += ["--workers", str(ctx.args.workers)]
    cmd = launcher_command(ctx.name, p, str(REPO / "scripts" / f"{ctx.name}.py"), args)
    if cmd is None:
        return None
    ranks = p.processes * p.nodes
    ctx.log.info("starting %d ranks (%d here): %s", ranks, p.processes, " ".join(cmd))
    run_launcher(ctx.name, p, cmd)
    return {"launched": ranks, "world_size": ranks, "processes_here": p.processes}


def _export(ctx, p, result: dict, untrained, num_classes: int, verify_paths: dict) -> list[str]:
    from ..train.export import export_backbone

    out = Path(p.out_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        files = export_backbone(result["backbone"].cpu(), tmp, formats=p.export, stem="backbone",
                                sidecar_fields=sidecar_fields(p, f"arcpipe {p.backbone.name} {p.head.kind}"))
        files.update({f"untrained_{k}": v for k, v in export_backbone(
            untrained.cpu(), tmp, formats=p.export, stem="untrained",
            sidecar_fields=sidecar_fields(p, f"arcpipe {p.backbone.name} untrained", trained=False)).items()})
        np.save(tmp / "centres.npy", result["centres"])  # (C, K, D): for the cleaning stage
        files["centres"] = tmp / "centres.npy"
        history = [{"step": s, **m} for s, m in result["history"]]
        write_json_atomic(tmp / "train.json", {
            "run_id": result["run_id"], "steps": result["steps"], "total_steps": result["total_steps"],
            "epochs": result["epochs"], "steps_per_epoch": result["steps_per_epoch"],
            "world_size": result["world_size"], "num_classes": num_classes, "final_loss": result["final_loss"],
            "backbone": p.backbone.model_dump(mode="json"), "head": p.head.model_dump(mode="json"),
            "verification": {k: str(v) for k, v in verify_paths.items()},
            "centres": {"file": "centres.npy", "shape": list(result["centres"].shape), "layout": "(classes, sub-centres, dim), unit rows"},
            "history": history})
    ctx.log.info("exported %s", ", ".join(sorted(str(Path(v).name) for v in files.values())))
    return sorted(str(out / Path(v).name) for v in files.values())
