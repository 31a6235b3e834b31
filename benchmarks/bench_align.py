"""Alignment speed: arcpipe.align.norm_crop against insightface's norm_crop, same crops, one run.

    .venv/bin/python benchmarks/bench_align.py [--crops 400] [--repeat 5] [--size 112]

Prints the best-of-repeat time per crop for each, the ratio, and the largest pixel difference.
Both run single-threaded in OpenCV (cv2.setNumThreads(1)), as a worker of a process pool does.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from arcpipe import align


def photos() -> list[np.ndarray]:
    import matplotlib
    import skimage.data

    imgs = [skimage.data.astronaut(), skimage.data.chelsea()]
    p = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    imgs.append(cv2.imread(str(p))[:, :, ::-1].copy())
    try:
        import insightface

        p = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
        imgs.append(cv2.imread(str(p))[:, :, ::-1].copy())
    except ImportError:
        pass
    return imgs


def crops(n: int, seed: int = 0):
    """(image, landmarks) pairs: a face-shaped set of points, of realistic size, on real photos."""
    rng = np.random.default_rng(seed)
    imgs = photos()
    t = align.template(112) - 56.0
    out = []
    for i in range(n):
        img = imgs[i % len(imgs)]
        h, w = img.shape[:2]
        ang = rng.uniform(-0.4, 0.4)
        s = rng.uniform(0.8, 2.0)  # faces of 90..220 px, as in MS1M / LFW photos
        R = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        c = rng.uniform([0.2 * w, 0.2 * h], [0.8 * w, 0.8 * h])
        out.append((img, ((t @ R.T) * s + c + rng.normal(0, 1.5, (5, 2))).astype(np.float32)))
    return out


def best_time(fn, items, size: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for img, lm in items:
            fn(img, lm, size)
        best = min(best, time.perf_counter() - t0)
    return best / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--size", type=int, default=112)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    warnings.simplefilter("ignore")  # skimage's deprecation warning inside the reference
    from insightface.utils.face_align import norm_crop as ref_norm_crop

    items = crops(args.crops)
    ours = lambda img, lm, s: align.norm_crop(img, lm, s)  # noqa: E731
    ref = lambda img, lm, s: ref_norm_crop(img, lm, image_size=s)  # noqa: E731
    diff = max(int(np.abs(ours(i, l, args.size).astype(int) - ref(i, l, args.size)).max()) for i, l in items)
    # interleave the two so that load from other processes hits both alike
    t_ref, t_ours = [], []
    for _ in range(3):
        t_ref.append(best_time(ref, items, args.size, args.repeat))
        t_ours.append(best_time(ours, items, args.size, args.repeat))
    r, o = min(t_ref), min(t_ours)
    t_est_ours = best_time(lambda img, lm, s: align.estimate_norm(lm, s), items, args.size, args.repeat)
    from insightface.utils.face_align import estimate_norm as ref_estimate

    t_est_ref = best_time(lambda img, lm, s: ref_estimate(lm, s), items, args.size, args.repeat)
    t_cv = best_time(lambda img, lm, s: cv2.warpAffine(img, align.estimate_norm(lm, s), (s, s)), items,
                     args.size, args.repeat)
    print(f"crops: {len(items)} at {args.size}x{args.size}, best of {args.repeat}, OpenCV {cv2.__version__}, 1 thread")
    print(f"insightface norm_crop      {r * 1e6:8.1f} us/crop")
    print(f"arcpipe norm_crop          {o * 1e6:8.1f} us/crop")
    print(f"ratio                      {r / o:8.2f} x   (max pixel difference {diff})")
    print(f"  estimate: insightface {t_est_ref * 1e6:.1f} us, arcpipe {t_est_ours * 1e6:.1f} us "
          f"({t_est_ref / t_est_ours:.0f} x)")
    print(f"  plain 3-channel cv2.warpAffine alone: {t_cv * 1e6:.1f} us/crop")


if __name__ == "__main__":
    main()
