"""Training Dataset throughput (decode + flip + normalise), images per second per core.

    .venv/bin/python benchmarks/bench_dataset.py [--n 5000] [--workers 2]

Side by side in one run:
  RecDataset over a .rec pack            (arcpipe.datasets, what training uses)
  FolderDataset over the same JPEGs       (arcpipe.datasets, identity folders)
  PIL decode + flip + normalise baseline  (the usual torchvision-style path, written inline)
Per core = single process, torch and cv2 held to one thread. Then a DataLoader with --workers
processes. The target: 8 loader workers feed 4,000 images/s, i.e. >= 500 images/s per core.
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import cv2  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from arcpipe.datasets import FolderDataset, RecDataset  # noqa: E402
from arcpipe.recordio import RecordWriter  # noqa: E402
from bench_recordio import make_payloads  # noqa: E402


def pil_item(path: Path, flip: bool) -> torch.Tensor:
    from PIL import Image

    img = Image.open(io.BytesIO(path.read_bytes())).convert("RGB")
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
    return (x / 255.0 - 0.5) / 0.5


def rate(fn, n: int, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - t)
    return n / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/arcpipe_bench_dataset")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    work = Path(a.dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    distinct = make_payloads(500)
    payloads = [distinct[i % len(distinct)] for i in range(a.n)]
    labels = [i // 20 for i in range(a.n)]
    with RecordWriter(work / "train.rec") as w:
        w.write_images(range(a.n), [float(x) for x in labels], payloads)
    paths = []
    for i, (p, lab) in enumerate(zip(payloads, labels)):
        d = work / "folder" / f"{lab:05d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:06d}.jpg").write_bytes(p)
        paths.append(d / f"{i:06d}.jpg")
    rec_ds = RecDataset(work / "train.rec", train=True)
    folder_ds = FolderDataset(work / "folder", train=True)
    r_rec = rate(lambda i: rec_ds[i], a.n)
    r_folder = rate(lambda i: folder_ds[i], a.n)
    try:
        r_pil = rate(lambda i: pil_item(paths[i], i % 2 == 0), a.n)
    except ImportError:
        r_pil = float("nan")
    loader = DataLoader(rec_ds, batch_size=128, shuffle=True, num_workers=a.workers, persistent_workers=False)
    t = time.perf_counter()
    seen = sum(len(y) for _, y in loader)
    r_loader = seen / (time.perf_counter() - t)
    print(f"images: {a.n} (112x112 JPEG, mean {np.mean([len(p) for p in distinct]) / 1024:.1f} KiB)")
    print(f"{'path':<44}{'images/s':>10}")
    print(f"{'RecDataset, 1 core':<44}{r_rec:>10,.0f}")
    print(f"{'FolderDataset, 1 core':<44}{r_folder:>10,.0f}")
    print(f"{'PIL decode+flip+normalise baseline, 1 core':<44}{r_pil:>10,.0f}")
    print(f"{f'RecDataset via DataLoader, {a.workers} workers':<44}{r_loader:>10,.0f}")
    print(f"RecDataset vs PIL baseline: {r_rec / r_pil:.2f}x; "
          f"8 workers at 1-core rate: {8 * r_rec:,.0f} images/s (target 4,000)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
