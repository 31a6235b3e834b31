"""The IJB path of the evaluate stage, 1 vs 2 decode/align workers, with two models.

    python benchmarks/bench_eval_pool.py [--images 6000] [--workdir /tmp/bench_eval_pool] [--repeat 2]

Builds an IJB-style set once in --workdir: meta/ijbs_face_tid_mid.txt, _name_5pts_score.txt,
_template_pair_label.txt and loose_crop/*.jpg. The crops are views rendered the way the sample
renders its IJB look-alikes (arcpipe.sample.render: IJB-like sizes 80-320 px, pose, light,
blur, noise, JPEG quality 72-95) from the sample's IJB crops when data/sample/ijb/IJBS exists,
else from the sample's base faces. Templates of 1-3 media with 1-4 images each.

Then runs arcpipe.evaluate.ijb.run_ijb (read + align in the workers, embedding with the flip in
this process, pooling, pair scoring, TAR) with 1 and 2 workers, for
  pixels  the training-free baseline (cheap: the loaders set the pace)
  onnx    a small conv net built here with onnx.helper (3 strided 3x3 convs + ReLU, then a
          Gemm to 512-d; ~30 MFLOP per view), run by onnxruntime on the CPU
and prints images/s (best of --repeat runs) and the 2-worker / 1-worker ratio, plus the rate of
reading + aligning alone (no model). Both worker counts must give the same metrics; the
script checks that too. With 1 worker everything runs in one process; with 2, the two workers
and the model in this process share the CPUs, so on a 2-CPU machine the model's own CPU time
bounds the gain.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _canon_faces() -> list[tuple[np.ndarray, np.ndarray]]:
    """(BGR image, five landmarks) to render views from."""
    import cv2

    sample = REPO / "data" / "sample" / "ijb" / "IJBS"
    lmk_file = sample / "meta" / "ijbs_name_5pts_score.txt"
    out = []
    if lmk_file.is_file():
        for line in lmk_file.read_text().splitlines():
            parts = line.split()
            img = cv2.imread(str(sample / "loose_crop" / parts[0]), cv2.IMREAD_COLOR)
            if img is not None and min(img.shape[:2]) >= 80:
                out.append((img, np.array(parts[1:11], dtype=np.float64).reshape(5, 2)))
    if len(out) < 20:
        from arcpipe.sample.base_faces import base_faces

        out = [(f.image, f.landmarks) for f in base_faces()]
    return out


def build(work: Path, n_images: int, seed: int = 0) -> Path:
    root = work / f"IJBS_{n_images}"
    if (root / "done").is_file():
        return root
    from arcpipe.sample.render import render_view

    rng = np.random.default_rng(seed)
    faces = _canon_faces()
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "loose_crop").mkdir(exist_ok=True)
    tid_mid, pts, templates = [], [], []
    n_img = n_media = n_t = 0
    while n_img < n_images:
        subject = int(rng.integers(0, len(faces)))
        canon, lmk = faces[subject]
        n_t += 1
        for _m in range(int(rng.integers(1, 4))):
            n_media += 1
            for _f in range(int(rng.integers(1, 5))):
                n_img += 1
                v = render_view(canon, lmk, "ijb", rng)
                name = f"{n_img}.jpg"
                (root / "loose_crop" / name).write_bytes(v.jpeg())
                tid_mid.append(f"{name} {n_t} {n_media}")
                pts.append(f"{name} " + " ".join(f"{x:.2f}" for x in v.landmarks.ravel())
                           + f" {rng.uniform(0.6, 1.0):.4f}")
        templates.append((n_t, subject))
    # pairs: every template against 20 random others (IJB's pairs are many per template)
    ids = np.array([t for t, _ in templates])
    subj = np.array([s for _, s in templates])
    pairs = []
    for i in range(ids.size):
        for j in rng.choice(ids.size, 20, replace=False):
            if j != i:
                pairs.append(f"{ids[i]} {ids[j]} {int(subj[i] == subj[j])}")
    (root / "meta" / "ijbs_face_tid_mid.txt").write_text("\n".join(tid_mid) + "\n")
    (root / "meta" / "ijbs_name_5pts_score.txt").write_text("\n".join(pts) + "\n")
    (root / "meta" / "ijbs_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    (root / "done").write_text(json.dumps({"images": n_img, "templates": n_t, "pairs": len(pairs)}))
    return root


def small_onnx(work: Path) -> Path:
    """A conv + gemm net, 112x112x3 -> 512, random but fixed weights; with its sidecar."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = work / "small_net.onnx"
    if path.is_file():
        return path
    rng = np.random.default_rng(0)

    def w(name, *shape):
        fan_in = int(np.prod(shape[1:]))
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    inits = [w("W1", 16, 3, 3, 3), w("W2", 32, 16, 3, 3), w("W3", 64, 32, 3, 3), w("WF", 512, 64 * 14 * 14)]
    nodes = []
    x = "x"
    for k, name in enumerate(("W1", "W2", "W3"), 1):
        nodes.append(helper.make_node("Conv", [x, name], [f"c{k}"], kernel_shape=[3, 3], strides=[2, 2],
                                      pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"]))
        x = f"r{k}"
    nodes.append(helper.make_node("Flatten", [x], ["f"], axis=1))
    nodes.append(helper.make_node("Gemm", ["f", "WF"], ["emb"], transB=1))
    graph = helper.make_graph(nodes, "small_net",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", 512])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    path.with_suffix(".yaml").write_text("input_size: [112, 112]\ncrop: arcface112\nmean: 127.5\nstd: 127.5\n"
                                         "channel_order: rgb\nembedding_size: 512\nname: small-conv-gemm\n")
    return path


def run_once(root: Path, model, workers: int) -> tuple[float, dict]:
    from arcpipe.evaluate.ijb import run_ijb
    from arcpipe.evaluate.model import load_embedder
    from arcpipe.params.evaluate_bench import IJBParams

    embedder = load_embedder(model, "cpu", 64)
    params = IJBParams(root=str(root), target="IJBS", one_to_n=False)
    t = time.perf_counter()
    out = run_ijb(params, embedder, SimpleNamespace(workers=workers, log=None))
    return time.perf_counter() - t, out


def load_only(root: Path, workers: int) -> tuple[float, int]:
    """The workers' part alone: read + align every row, no model (what the pool parallelises)."""
    from arcpipe.evaluate.ijb import read_landmarks
    from arcpipe.evaluate.loader import ijb_crops

    lm = read_landmarks(root / "meta" / "ijbs_name_5pts_score.txt")
    rows = np.flatnonzero(lm.ok)
    t = time.perf_counter()
    n = sum(len(r) for r, _, _ in ijb_crops(root / "loose_crop", rows, lm.names, lm.landmarks, workers))
    return time.perf_counter() - t, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_eval_pool"))
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if args.images < 5000:
        ap.error("--images: at least 5000 (the benchmark's size)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    root = build(args.workdir, args.images)
    info = json.loads((root / "done").read_text())
    print(f"set: {root} ({info['images']} images, {info['templates']} templates, {info['pairs']} pairs; "
          f"ready in {time.perf_counter() - t:.1f} s)")
    onnx_path = small_onnx(args.workdir)
    models = {"pixels": SimpleNamespace(kind="pixels", path=None, sidecar=None),
              "onnx": SimpleNamespace(kind="onnx", path=str(onnx_path), sidecar=None)}
    cpus = len(os.sched_getaffinity(0))
    print(f"CPUs available: {cpus}; model in the main process, decode + align in the workers")
    rows = []
    rate = {}
    for workers in (1, 2):
        best = min(load_only(root, workers) for _ in range(args.repeat))
        rate[workers] = best[1] / best[0]
        print(f"  decode+align only workers={workers}: {best[1]} images in {best[0]:6.2f} s = "
              f"{rate[workers]:7.1f} images/s")
    rows.append(("(no model: decode+align only)", rate[1], rate[2], rate[2] / rate[1], None))
    for name, model in models.items():
        rate = {}
        metrics = {}
        for workers in (1, 2):
            best = None
            for _ in range(args.repeat):
                sec, out = run_once(root, model, workers)
                best = sec if best is None else min(best, sec)
            n = out["counts"]["images_embedded"]
            rate[workers] = n / best
            metrics[workers] = json.dumps(out["metrics"], sort_keys=True)
            print(f"  {name:6s} workers={workers}: {n} images in {best:6.2f} s = {rate[workers]:7.1f} images/s")
        same = metrics[1] == metrics[2]
        rows.append((name, rate[1], rate[2], rate[2] / rate[1], same))
        print(f"  {name:6s} 2 workers / 1 worker = {rate[2] / rate[1]:.2f}x; metrics identical: {same}")
    print(f"\n{'IJB path':30s} {'1 worker img/s':>15s} {'2 workers img/s':>16s} {'ratio':>6s}  same metrics")
    for name, r1, r2, ratio, same in rows:
        print(f"{name:30s} {r1:15.1f} {r2:16.1f} {ratio:6.2f}  {'-' if same is None else same}")


if __name__ == "__main__":
    main()
