"""Training throughput on the CPU, side by side with insightface's arcface_torch, in one run.

Each side trains the same math on the same input: the backbone (iResNet-50 or MobileFaceNet,
512-d), ArcFace (s = 64, m = 0.5) over Partial FC at sample rate 1, SGD (momentum 0.9, weight
decay 5e-4), float32, batch --batch per process (each side in the memory layout its own training
loop uses: ours channels-last, arcface_torch's train_v2.py the default); one process and two gloo processes
(torchrun --standalone). Samples per second are taken over --steps steps after two warm-up steps,
from rank 0, the best of --repeat runs.

arcface_torch runs from a copy you fetch (never committed), unchanged: its iresnet / get_mbf,
CombinedMarginLoss and PartialFC_V2. Its PartialFC_V2 puts its gather buffers on `.cuda()`; on a
machine without CUDA the harness makes Tensor.cuda() return the tensor itself in that process
(the only shim; their code is not edited).

Also: how fast the data loader (RecDataset over train.rec, --loader-workers processes) delivers
images, against what one training step consumes; and the DALI loader (train.loader: dali, over
train_flat.rec, --loader-workers threads) where nvidia-dali is installed.

    git -C <insightface checkout> archive HEAD recognition/arcface_torch | tar -x -C /tmp/ref
    python benchmarks/bench_train.py --reference /tmp/ref/recognition/arcface_torch [--rec data/pack/train.rec]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 2000


def worker(a) -> None:
    """One rank of one side: time --steps training steps after two warm-up steps."""
    import torch
    import torch.distributed as dist

    torch.manual_seed(0)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_initialized():
        if world == 1:  # PartialFC_V2 needs a process group even alone
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(29400 + os.getpid() % 1000))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    if a.side == "ours":
        sys.path.insert(0, str(REPO / "src"))
        from arcpipe.train.backbones import build_backbone
        from arcpipe.train.losses import build_head

        net = build_backbone(a.model, embedding_size=512)
        head = build_head("arcface", 512, NUM_CLASSES, s=64.0, m1=1.0, m2=0.5, m3=0.0)
        layout = torch.channels_last  # as the train stage's loop runs it
    else:
        if not torch.cuda.is_available():
            torch.Tensor.cuda = lambda self, *args, **kw: self  # noqa: E731  (see the docstring)
        sys.path.insert(0, str(a.reference))
        from backbones import get_model
        from losses import CombinedMarginLoss
        from partial_fc_v2 import PartialFC_V2

        net = get_model(a.model, fp16=False, num_features=512)
        layout = torch.contiguous_format  # as train_v2.py runs it
        head = PartialFC_V2(CombinedMarginLoss(64.0, 1.0, 0.5, 0.0), 512, NUM_CLASSES, 1.0, False)
    net = net.to(memory_format=layout)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD([{"params": net.parameters()}, {"params": head.parameters()}], lr=0.1, momentum=0.9,
                          weight_decay=5e-4)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(a.batch, 3, 112, 112, generator=g).contiguous(memory_format=layout)
    y = torch.randint(0, NUM_CLASSES, (a.batch,), generator=g)
    net.train()
    for i in range(2 + a.steps):
        if i == 2:
            dist.barrier()
            t0 = time.perf_counter()
        loss = head(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dist.barrier()
    dt = time.perf_counter() - t0
    if rank == 0:
        print(json.dumps({"samples_per_s": a.batch * world * a.steps / dt, "loss": float(loss)}))
    dist.destroy_process_group()


def run_side(a, side: str, model: str, procs: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, a.threads // procs)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
           __file__, "--worker", "--side", side, "--model", model, "--batch", str(a.batch), "--steps",
           str(a.steps), "--reference", str(a.reference)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{side} {model} x{procs} failed:\n{r.stderr[-3000:]}")
    return json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])["samples_per_s"]


def _images_per_second(epochs, batches: int) -> float:
    """Images a second over `batches` batches of `epochs()` (an iterator of one-epoch iterables,
    the next epoch begun where one ends), after a first batch that starts the workers."""
    it = iter(next(epochs))
    next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(next(epochs))
            x, _ = next(it)
        n += x.shape[0]
    return n / (time.perf_counter() - t0)


def loader_rate(rec: Path, batch: int, workers: int, batches: int = 40) -> float:
    sys.path.insert(0, str(REPO / "src"))
    from torch.utils.data import DataLoader

    from arcpipe.datasets import RecDataset

    dl = DataLoader(RecDataset(rec, train=True), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    return _images_per_second(iter(lambda: dl, None), batches)


def dali_rate(rec: Path, batch: int, threads: int, batches: int = 40) -> float | None:
    """The same for train.loader dali (DALI on the CPU over train_flat.rec beside `rec`); None
    where nvidia-dali is not installed or the pack has no flat copy."""
    sys.path.insert(0, str(REPO / "src"))
    import itertools

    import torch

    from arcpipe.train.dali import DaliBatches, flat_files

    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return None
    flat, idx = flat_files(rec.parent)
    if not flat.is_file():
        return None
    b = DaliBatches(flat, idx, 0, 1, 0, batch, threads, torch.device("cpu"))
    return _images_per_second((b.epoch(e) for e in itertools.count()), batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=True, help="an extracted arcface_torch folder")
    ap.add_argument("--models", nargs="+", default=["mbf", "r50"])
    ap.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--rec", type=Path, default=REPO / "data" / "pack" / "train.rec")
    ap.add_argument("--loader-workers", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--side", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    res = {}
    for model in a.models:
        for procs in a.procs:
            for rep in range(a.repeat):  # alternate the sides, keep each one's best
                for side in ("ours", "theirs"):
                    rate = run_side(a, side, model, procs)
                    key = (model, procs, side)
                    res[key] = max(res.get(key, 0.0), rate)
                    print(f"  {model} x{procs} {side}: {rate:.2f} samples/s", flush=True)
    print(f"\nbatch {a.batch} per process, {NUM_CLASSES} classes, float32, {a.threads} threads in all; best of {a.repeat}")
    print(f"{'backbone':<10}{'processes':>10}{'ours':>10}{'arcface_torch':>15}{'ratio':>8}")
    for model in a.models:
        for procs in a.procs:
            o, t = res[(model, procs, "ours")], res[(model, procs, "theirs")]
            print(f"{model:<10}{procs:>10}{o:>10.2f}{t:>15.2f}{o / t:>7.2f}x")
    if a.rec.is_file():
        rate = loader_rate(a.rec, a.batch, a.loader_workers)
        step = max(res[(m, 1, "ours")] for m in a.models)
        print(f"\ndata loader ({a.rec}, {a.loader_workers} workers): {rate:.0f} images/s, "
              f"{rate / step:.1f}x what the fastest training step above consumes ({step:.1f} samples/s)")
        rate = dali_rate(a.rec, a.batch, a.loader_workers)
        if rate is not None:
            print(f"DALI loader (train_flat.rec, CPU, {a.loader_workers} threads): {rate:.0f} images/s, "
                  f"{rate / step:.1f}x that")


if __name__ == "__main__":
    main()
