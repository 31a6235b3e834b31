"""Run facenet-pytorch's MTCNN (the reference) on images from an .npz and save its detections.

Runs in a side venv that has torch, torchvision and facenet-pytorch 2.6.0: .venv-fnp, which
`make fnp-ref` builds from requirements-fnp.txt beside this file. Reads `images` (either one uint8
array NxHxWx3 or keys img0000.. of any sizes); writes boxes/scores/landmarks concatenated over
images with per-image counts, the seconds the detection took, and which reference ran
(`reference`: "facenet-pytorch <version>").

  python fnp_detect.py --images in.npz --out out.npz --minsize 20 --thresholds 0.6 0.7 0.9 \
      --factor 0.85 --batch-size 32 --threads 1
"""
import argparse
import time
from importlib.metadata import version

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minsize", type=int, default=20)
    ap.add_argument("--thresholds", type=float, nargs=3, default=[0.6, 0.7, 0.9])
    ap.add_argument("--factor", type=float, default=0.85)
    ap.add_argument("--batch-size", type=int, default=1, help="1: one image per call; >1: stacked equal-size batches")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from facenet_pytorch import MTCNN

    z = np.load(a.images)
    if "images" in z:
        images = list(z["images"])
    else:
        images = [z[k] for k in sorted(z.files)]
    m = MTCNN(min_face_size=a.minsize, thresholds=list(a.thresholds), factor=a.factor, keep_all=True, select_largest=False, device="cpu")

    def run(batch):
        if len(batch) == 1:
            b, p, pts = m.detect(batch[0], landmarks=True)
            return [(b, p, pts)]
        b, p, pts = m.detect(np.stack(batch), landmarks=True)
        return list(zip(b, p, pts))

    for i in range(min(a.warmup, len(images))):
        run(images[i:i + 1])
    results = []
    t, c = time.perf_counter(), time.process_time()
    for i in range(0, len(images), a.batch_size):
        results += run(images[i:i + a.batch_size])
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    boxes, scores, lms, counts = [], [], [], []
    for b, p, pts in results:
        if b is None:
            counts.append(0)
            continue
        boxes.append(np.asarray(b, np.float32).reshape(-1, 4))
        scores.append(np.asarray(p, np.float32).reshape(-1))
        lms.append(np.asarray(pts, np.float32).reshape(-1, 5, 2))
        counts.append(len(boxes[-1]))
    cat = lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape, np.float32)
    np.savez(a.out, boxes=cat(boxes, (0, 4)), scores=cat(scores, (0,)), landmarks=cat(lms, (0, 5, 2)),
             counts=np.asarray(counts, np.int64), seconds=np.float64(secs), cpu_seconds=np.float64(cpu), threads=np.int64(torch.get_num_threads()),
             reference=np.str_(f"facenet-pytorch {version('facenet-pytorch')}"))
    print(f"reference: {len(images)} images in {secs:.2f} s, {len(images) / secs:.1f} images/s, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
