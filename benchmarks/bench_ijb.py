"""IJB-C scale: template pooling + pair scoring, ours vs the reference's algorithm, side by side.

    python benchmarks/bench_ijb.py --reference /tmp/eval_ijbc.py [--workdir /tmp/ijb_bench]

--reference is insightface's recognition/arcface_torch/eval_ijbc.py, fetched by hand (it is not
part of this repository), e.g.
    curl -o /tmp/eval_ijbc.py https://raw.githubusercontent.com/deepinsight/insightface/master/recognition/arcface_torch/eval_ijbc.py
That script runs its whole evaluation at import time (argument parsing, a GPU model, menpo), so
its two functions `image2template_feature` and `verification` are taken out of its syntax tree
and executed unchanged beside numpy and sklearn.

Synthetic data with IJB-C's shape (written once to --workdir as .npy):
469,375 images of 512-d float32 features with detector scores, 23,124 templates (3,531 gallery
templates of 3,531 subjects + 19,593 probe templates, media groups inside templates), and
15,658,489 pairs, each a probe template against a gallery template (the structure of IJB-C's
1:1 mixed protocol: gallery G1+G2 vs probe templates), 1 mated pair per probe (19,593; IJB-C has
19,557) plus random non-mated ones. Features = subject centre + noise, noisy enough that TAR is
well below 1 at small FAR, so that the TAR comparison means something. Each side runs in its own process (peak memory = that process's max RSS, the
features loaded in both); switches N1 D1 (keep norm, multiply by detector score); F is already
in the features. Prints both times, the ratio, peak memory, and TAR@FAR on both score sets.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_IMAGES = 469_375
N_GALLERY = 3_531
N_PROBE = 19_593
N_PAIRS = 15_658_489
DIM = 512
FARS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]


def generate(work: Path, seed: int = 0) -> None:
    if (work / "done").exists():
        return
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_t = N_GALLERY + N_PROBE
    subject = np.concatenate([np.arange(N_GALLERY), rng.integers(0, N_GALLERY, N_PROBE)])
    template_ids = rng.permutation(np.arange(1, 3 * n_t, 3))[:n_t]          # sparse, unsorted ids
    # images per template: at least one, ~20 on average
    per = 1 + rng.multinomial(N_IMAGES - n_t, np.full(n_t, 1 / n_t))
    t_of_img = np.repeat(np.arange(n_t), per)
    media = t_of_img * 8 + rng.integers(0, 1 + rng.integers(0, 8, n_t)[t_of_img])
    order = rng.permutation(N_IMAGES)                                         # rows in no special order
    t_of_img, media = t_of_img[order], media[order]
    centres = rng.standard_normal((N_GALLERY, DIM)).astype(np.float32)
    feats = np.lib.format.open_memmap(work / "feats.npy", "w+", np.float32, (N_IMAGES, DIM))
    for s in range(0, N_IMAGES, 50_000):
        e = min(N_IMAGES, s + 50_000)
        noise = rng.standard_normal((e - s, DIM), dtype=np.float32) * 10.0     # TARs well below 1
        feats[s:e] = centres[subject[t_of_img[s:e]]] + noise
    feats.flush()
    del feats
    np.save(work / "templates.npy", template_ids[t_of_img])
    np.save(work / "medias.npy", media)
    np.save(work / "scores.npy", rng.uniform(0.5, 1.0, N_IMAGES).astype(np.float32))
    # pairs: probe p vs gallery g; per probe one mated pair plus random gallery templates
    n_each = rng.multinomial(N_PAIRS - N_PROBE, np.full(N_PROBE, 1 / N_PROBE)) + 1
    probe_t = np.repeat(np.arange(N_GALLERY, n_t), n_each)
    gal_t = rng.integers(0, N_GALLERY, N_PAIRS)
    first = np.concatenate([[0], np.cumsum(n_each)[:-1]])
    clash = subject[probe_t] == gal_t                                         # random ones stay non-mated
    gal_t[clash] = (gal_t[clash] + 1) % N_GALLERY
    gal_t[first] = subject[N_GALLERY:]                                        # the mated pair
    label = (subject[probe_t] == subject[gal_t]).astype(np.int64)
    np.save(work / "p1.npy", template_ids[gal_t])
    np.save(work / "p2.npy", template_ids[probe_t])
    np.save(work / "label.npy", label)
    (work / "done").write_text("ok\n")


def _load(work: Path):
    return (np.load(work / "feats.npy"), np.load(work / "templates.npy"), np.load(work / "medias.npy"),
            np.load(work / "scores.npy"), np.load(work / "p1.npy"), np.load(work / "p2.npy"))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(work: Path) -> dict:
    from arcpipe.evaluate.ijb import pool_templates, score_pairs, template_index

    feats, templates, medias, det, p1, p2 = _load(work)
    t0 = time.perf_counter()
    uniq, tf = pool_templates(feats, templates, medias, det, keep_norm=True)
    t1 = time.perf_counter()
    s = score_pairs(tf, template_index(uniq, p1), template_index(uniq, p2))
    t2 = time.perf_counter()
    np.save(work / "score_ours.npy", s)
    return {"pool_s": t1 - t0, "score_s": t2 - t1, "peak_mb": _peak_mb()}


def _reference_functions(path: Path) -> dict:
    import sklearn.preprocessing  # noqa: F401 - the reference's image2template_feature uses it

    tree = ast.parse(path.read_text(encoding="utf-8"))
    wanted = {"image2template_feature", "verification"}
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    if {f.name for f in funcs} != wanted:
        raise SystemExit(f"{path}: does not define {sorted(wanted)}")
    ns = {"np": np, "sklearn": sys.modules["sklearn"]}
    exec(compile(ast.Module(body=funcs, type_ignores=[]), str(path), "exec"), ns)
    return ns


def run_reference(work: Path, ref: Path) -> dict:
    import contextlib
    import io

    ns = _reference_functions(ref)
    feats, templates, medias, det, p1, p2 = _load(work)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        x = feats * det[:, np.newaxis]                      # D1 (N1: norm kept), as the script does
        tf, uniq = ns["image2template_feature"](x, templates, medias)
        t1 = time.perf_counter()
        s = ns["verification"](tf, uniq, p1, p2)
    t2 = time.perf_counter()
    np.save(work / "score_ref.npy", s)
    return {"pool_s": t1 - t0, "score_s": t2 - t1, "peak_mb": _peak_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=False)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ijb_bench"))
    ap.add_argument("--side", choices=["ours", "ref"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side == "ours":
        print(json.dumps(run_ours(a.workdir)))
        return
    if a.side == "ref":
        print(json.dumps(run_reference(a.workdir, a.reference)))
        return
    if a.reference is None or not a.reference.is_file():
        raise SystemExit("--reference: path to insightface's eval_ijbc.py (see the docstring)")
    t = time.perf_counter()
    generate(a.workdir)
    print(f"data: {N_IMAGES} images x {DIM}, {N_GALLERY + N_PROBE} templates, {N_PAIRS} pairs "
          f"({time.perf_counter() - t:.1f} s to prepare) in {a.workdir}")
    res = {}
    for side in ("ours", "ref"):
        cmd = [sys.executable, __file__, "--side", side, "--workdir", str(a.workdir)]
        if side == "ref":
            cmd += ["--reference", str(a.reference)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        res[side] = json.loads(out.stdout.strip().splitlines()[-1])
        r = res[side]
        print(f"{side:>4}: pooling {r['pool_s']:7.2f} s   pair scoring {r['score_s']:7.2f} s   "
              f"total {r['pool_s'] + r['score_s']:7.2f} s   peak RSS {r['peak_mb']:7.0f} MB")
    o, r = res["ours"], res["ref"]
    print(f"ratio (reference / ours): pooling {r['pool_s'] / o['pool_s']:.1f}x, scoring "
          f"{r['score_s'] / o['score_s']:.1f}x, total {(r['pool_s'] + r['score_s']) / (o['pool_s'] + o['score_s']):.1f}x; "
          f"peak memory ours/reference {o['peak_mb'] / r['peak_mb']:.2f}")

    from arcpipe.evaluate.roc import tar_at_far

    label = np.load(a.workdir / "label.npy")
    so = np.load(a.workdir / "score_ours.npy")
    sr = np.load(a.workdir / "score_ref.npy")
    print(f"genuine pairs {int(label.sum())}; max |score ours - score reference| = {np.abs(so - sr).max():.2e}")
    to = tar_at_far(label, so, FARS)
    tr = tar_at_far(label, sr, FARS)
    for f in FARS:
        k = repr(f)
        print(f"  TAR@FAR={f:g}: ours {to[k]:.6f}  reference {tr[k]:.6f}  {'same' if to[k] == tr[k] else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
