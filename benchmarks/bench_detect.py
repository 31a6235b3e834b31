"""MTCNN detection speed, ours vs facenet-pytorch's, side by side in one run, on LFW-like images.

Images: 250x250 crops of real photographs that pip installs (insightface's t1.jpg group photo and
Tom_Hanks_54745.png, scikit-image's astronaut, matplotlib's grace_hopper.jpg), each centred on one
face scaled to an LFW-like size (eye distance 40-52 px), rotated up to 10 degrees, some mirrored.
Settings: the LFW preset (minsize 20, thresholds 0.6/0.7/0.9, factor 0.85).

The reference runs in a side venv (never committed) that has torchvision: .venv-fnp, which
`make test` builds (alone: `make fnp-ref`, pins in benchmarks/reference/requirements-fnp.txt); then
    .venv/bin/python benchmarks/bench_detect.py --ref-python .venv-fnp/bin/python

Printed: images/s of each side at 1 thread one image per call, 1 thread batches of --batch-size,
all threads batched (the reference as a new user runs it), ours with one single-threaded
worker process per core; the ratios; and the largest box / landmark difference in pixels.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
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
    from arcpipe.photos import all_photos

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


def _ours_run(m, images, batch_size):
    m.detect(images[:2])  # warm-up
    t, c = time.perf_counter(), time.process_time()
    res = []
    for i in range(0, len(images), batch_size):
        res += m.detect(images[i:i + batch_size])
    return time.perf_counter() - t, time.process_time() - c, res


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
        pool.map(_worker_detect, [[np.zeros((250, 250, 3), np.uint8)]] * workers, chunksize=1)
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
    with np.load(out) as z:
        r = {k: z[k] for k in z.files}
    return float(r["seconds"]), float(r["cpu_seconds"]), r


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
    ap.add_argument("-n", type=int, default=128, help="number of 250x250 images")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="alternate ours/reference this many times, keep the best")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", help="also time ours batched on this device (e.g. cuda)")
    a = ap.parse_args()

    import torch

    from arcpipe.detect import MTCNN

    images = lfw_like_images(a.n)
    cores = os.cpu_count()
    n = a.n
    print(f"{n} LFW-like 250x250 images, LFW settings {LFW}, {cores} cores, torch {torch.__version__}, "
          f"load average before: {os.getloadavg()[0]:.1f}")
    tmp = tempfile.mkdtemp(prefix="bench_detect_")
    npz = os.path.join(tmp, "in.npz")
    np.savez(npz, images=np.stack(images))

    # 1 thread, one image per call and batched: alternate ours and the reference, keep the best
    torch.set_num_threads(1)
    m = MTCNN(**LFW)
    best: dict = {}
    results: dict = {}
    for _ in range(a.rounds):
        for key, bs in (("one", 1), ("batch", a.batch_size)):
            w, c, res = _ours_run(m, images, bs)
            results[key] = res
            best[("ours", key)] = min(best.get(("ours", key), (1e9, 1e9)), (w, c))
            if a.ref_python:
                w, c, r = reference(a.ref_python, npz, os.path.join(tmp, f"out_{key}.npz"), bs, 1)
                results[("ref", key)] = r
                best[("ref", key)] = min(best.get(("ref", key), (1e9, 1e9)), (w, c))
    # all cores: ours as one process per core (1 thread each); the reference with torch's default threads
    sw = ours_workers(images, a.batch_size, a.workers)
    if a.ref_python:
        best[("ref", "all_one")] = reference(a.ref_python, npz, os.path.join(tmp, "out_all1.npz"), 1, 0)[:2]
        best[("ref", "all_batch")] = reference(a.ref_python, npz, os.path.join(tmp, "out_all.npz"), a.batch_size, 0)[:2]

    def fmt(v):
        return "-" if v is None else f"{v:.1f}"

    print(f"{'setting':<58} {'ours img/s':>10} {'ref img/s':>10} {'ratio':>7}   (per CPU-second: ours, ref, ratio)")
    for key, label in (("one", "1 thread, one image per call"), ("batch", f"1 thread, batches of {a.batch_size}")):
        ow, oc = best[("ours", key)]
        rw, rc = best.get(("ref", key), (None, None))
        line = f"{label:<58} {n / ow:>10.1f} {fmt(rw and n / rw):>10} {fmt(rw and ow and rw / ow):>6}x"
        line += f"   ({n / oc:.1f}, {fmt(rc and n / rc)}, {fmt(rc and rc / oc)}x)"
        print(line)
    for key, label in (("all_one", "one image per call"), ("all_batch", f"batches of {a.batch_size}")):
        rw = best.get(("ref", key), (None,))[0]
        print(f"{'all cores: ours ' + str(a.workers) + ' workers x 1 thread vs ref ' + label:<58} {n / sw:>10.1f} {fmt(rw and n / rw):>10} {fmt(rw and rw / sw):>6}x")
    ow = best[("ours", "batch")][0]
    print(f"ours per core: {n / ow:.1f} img/s (1 thread, batched); {a.workers} workers: {n / sw:.1f} img/s = "
          f"{n / sw / a.workers:.1f} per worker (scaling {ow / sw:.2f}x on {a.workers} cores)")
    if a.ref_python:
        for key in ("one", "batch"):
            dbox, dlm, mism = max_difference(results[key], results[("ref", key)])
            print(f"vs reference ({key}): max box diff {dbox:.4f} px, max landmark diff {dlm:.4f} px, "
                  f"images with a different face count: {mism} of {n}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if a.device != "cpu":
        if a.device.startswith("cuda") and not torch.cuda.is_available():
            print(f"device {a.device}: not available, GPU throughput unmeasured")
            return
        g = MTCNN(device=a.device, **LFW)
        big = 256
        g.detect(images[:big])
        for size in (a.batch_size, big):
            torch.cuda.synchronize()
            t = time.perf_counter()
            for i in range(0, n, size):
                g.detect(images[i:i + size])
            torch.cuda.synchronize()
            print(f"{a.device}, batches of {size}: {n / (time.perf_counter() - t):.1f} img/s")


if __name__ == "__main__":
    main()
