"""MTCNN detection speed, ours vs facenet-pytorch's, side by side in one run, on LFW-like images.

Images: 250x250 crops of real photographs that pip installs (insightface's t1.jpg group photo and
Tom_Hanks_54745.png, scikit-image's astronaut, matplotlib's grace_hopper.jpg), each centred on one
face scaled to an LFW-like size (eye distance 40-52 px), rotated up to 10 degrees, some mirrored.
Settings: the LFW preset (minsize 20, thresholds 0.6/0.7/0.9, factor 0.85).

The reference runs in a side venv (never committed) that has torchvision; build it with
    python3 -m venv /tmp/venv-fnp
    /tmp/venv-fnp/bin/pip install torch torchvision numpy pillow requests tqdm
    /tmp/venv-fnp/bin/pip install --no-deps facenet-pytorch==2.6.0
then
    .venv/bin/python benchmarks/bench_detect.py --ref-python /tmp/venv-fnp/bin/python

Printed: images/s of each side at 1 thread one image per call, 1 thread batches of --batch-size,
all threads batched (the reference as a new user runs it), ours with one single-threaded
worker process per core; the ratios; and the largest box / landmark difference in pixels.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
LFW = dict(minsize=20, thresholds=(0.6, 0.7, 0.9), factor=0.85)


def lfw_like_images(n: int, seed: int = 0, size: int = 250) -> list[np.ndarray]:
    """n size x size RGB crops of real photos, one face in the middle as in LFW."""
    import torch

    torch.set_num_threads(1)
    from arcpipe.detect import MTCNN
    from arcpipe.detect.photos import all_photos

    det = MTCNN(**LFW)
    faces = []  # (photo, eye-centre, eye distance, eye angle)
    for img in all_photos().values():
        for lm in det.detect_one(img).landmarks:
            eyes = lm[:2]
            c = (eyes.mean(0) + lm[3:].mean(0)) / 2
            d = eyes[1] - eyes[0]
            faces.append((img, c, float(np.hypot(*d)), float(np.degrees(np.arctan2(d[1], d[0])))))
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        img, c, iod, ang = faces[k % len(faces)]
        target = rng.uniform(40, 52)
        rot = ang + rng.uniform(-10, 10)
        M = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), rot, target / iod)
        M[:, 2] += np.array([size / 2, size / 2 + 5]) - c + rng.uniform(-6, 6, 2)
        crop = cv2.warpAffine(img, M, (size, size), flags=cv2.INTER_AREA if target < iod else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(np.ascontiguousarray(crop))
    return out


def _ours_run(images, batch_size):
    from arcpipe.detect import MTCNN

    m = MTCNN(**LFW)
    m.detect(images[:2])  # warm-up
    t = time.perf_counter()
    res = []
    for i in range(0, len(images), batch_size):
        res += m.detect(images[i:i + batch_size])
    return time.perf_counter() - t, res


def _worker_init():
    import torch

    torch.set_num_threads(1)
    global _W
    from arcpipe.detect import MTCNN

    _W = MTCNN(**LFW)
    _W.detect([np.zeros((250, 250, 3), np.uint8)])


def _worker_detect(batch):
    return len(_W.detect(batch))


def ours_workers(images, batch_size, workers):
    chunks = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    with mp.get_context("fork").Pool(workers, initializer=_worker_init) as pool:
        pool.map(_worker_detect, [[np.zeros((250, 250, 3), np.uint8)]] * workers)
        t = time.perf_counter()
        n = sum(pool.map(_worker_detect, chunks, chunksize=1))
        secs = time.perf_counter() - t
    assert n == len(images)
    return secs


def reference(ref_python, npz, out, batch_size, threads):
    cmd = [ref_python, str(HERE / "reference" / "fnp_detect.py"), "--images", npz, "--out", out, "--minsize", str(LFW["minsize"]),
           "--thresholds", *map(str, LFW["thresholds"]), "--factor", str(LFW["factor"]), "--batch-size", str(batch_size)]
    if threads:
        cmd += ["--threads", str(threads)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    r = np.load(out)
    return float(r["seconds"]), r


def max_difference(ours, ref):
    """Largest |box| and |landmark| difference (px) between matched faces; count mismatches."""
    off, dbox, dlm, mismatched = 0, 0.0, 0.0, 0
    for d, c in zip(ours, ref["counts"]):
        rb, rl = ref["boxes"][off:off + c], ref["landmarks"][off:off + c]
        off += c
        if len(d) != c:
            mismatched += 1
        for box, lm in zip(d.boxes, d.landmarks):
            if c == 0:
                continue
            j = int(np.abs(rb - box).max(1).argmin())
            dbox = max(dbox, float(np.abs(rb[j] - box).max()))
            dlm = max(dlm, float(np.abs(rl[j] - lm).max()))
    return dbox, dlm, mismatched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref-python", help="python of a venv with facenet-pytorch + torchvision (omit: ours only)")
    ap.add_argument("-n", type=int, default=256, help="number of 250x250 images")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", help="also time ours batched on this device (e.g. cuda)")
    a = ap.parse_args()

    import torch

    images = lfw_like_images(a.n)
    cores = os.cpu_count()
    print(f"{a.n} LFW-like 250x250 images, LFW settings {LFW}, {cores} cores, torch {torch.__version__}")
    rows = []  # (label, ours img/s, ref img/s)
    tmp = tempfile.mkdtemp(prefix="bench_detect_")
    npz, out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
    np.savez(npz, images=np.stack(images))

    torch.set_num_threads(1)
    s1, res1 = _ours_run(images, 1)
    sb, resb = _ours_run(images, a.batch_size)
    torch.set_num_threads(cores)
    sa, _ = _ours_run(images, a.batch_size)
    sw = ours_workers(images, a.batch_size, a.workers)
    torch.set_num_threads(1)

    ref = {}
    if a.ref_python:
        ref["one"] = reference(a.ref_python, npz, out, 1, 1)
        ref["batch"] = reference(a.ref_python, npz, out, a.batch_size, 1)
        ref["all"] = reference(a.ref_python, npz, out, a.batch_size, 0)
        ref["all1"] = reference(a.ref_python, npz, out, 1, 0)
    n = a.n
    rows.append(("1 thread, one image per call", n / s1, n / ref["one"][0] if ref else None))
    rows.append((f"1 thread, batches of {a.batch_size}", n / sb, n / ref["batch"][0] if ref else None))
    rows.append((f"{cores} threads, batches of {a.batch_size}", n / sa, n / ref["all"][0] if ref else None))
    rows.append((f"ours: {a.workers} workers x 1 thread; ref: {cores} threads, one image per call", n / sw, n / ref["all1"][0] if ref else None))
    print(f"{'setting':<72} {'ours img/s':>10} {'ref img/s':>10} {'ratio':>7}")
    for label, o, r in rows:
        print(f"{label:<72} {o:>10.1f} {r if r is None else round(r, 1)!s:>10} {'' if r is None else f'{o / r:.2f}x':>7}")
    print(f"ours per core: {n / sb:.1f} img/s (1 thread, batched); {n / sw / a.workers:.1f} img/s per worker with {a.workers} workers "
          f"(scaling {sb / sw:.2f}x on {a.workers} workers)")
    if ref:
        for key, res in (("one", res1), ("batch", resb)):
            dbox, dlm, mism = max_difference(res, ref[key][1])
            print(f"vs reference ({key}): max box diff {dbox:.4f} px, max landmark diff {dlm:.4f} px, images with a different face count: {mism}")
    if a.device != "cpu":
        if not torch.cuda.is_available() and a.device.startswith("cuda"):
            print(f"device {a.device}: not available, GPU throughput unmeasured")
        else:
            from arcpipe.detect import MTCNN

            m = MTCNN(device=a.device, **LFW)
            m.detect(images[:a.batch_size])
            big = max(a.batch_size, 128)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for i in range(0, n, big):
                m.detect(images[i:i + big])
            torch.cuda.synchronize()
            print(f"{a.device}, batches of {big}: {n / (time.perf_counter() - t):.1f} img/s")


if __name__ == "__main__":
    main()
