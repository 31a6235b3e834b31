"""The cleaning rules at MS1M scale: wall time per step and the peak memory of the process.

    .venv/bin/python benchmarks/bench_clean_scale.py [--scale 1.0] [--work DIR] [--keep] [--chunk 65536]

Builds, in a child process, a synthetic FeatureStore of MS1M's size (85,742 identities, 5,822,653
images at --scale 1, 512-d float16: 5.9 GB on disk, about twice that while the writer finishes):
each identity a random unit centre, its images the centre plus noise (cosine about 0.7), with
planted noise: 1% of images random (outliers), 0.1% of identities a second label of another one
(split), 100 identities also in a 5,700-identity "evaluation set", 0.2% with a single image; and
the bootstrap head's (C, 3, 512) sub-centres (sub-centre 0 on the identity, two random ones).
Then, in this process, runs the default `clean` params' chain (subcenter, intra with robust
centres, inter over all pairs of identity centres, overlap against the evaluation set,
min_images) and prints the seconds of each step, what each removed (next to what was planted),
and the peak RSS of this whole process (resource.getrusage ru_maxrss: the interpreter, the
store's index with every key, the sub-centres as mapped, and every step; not the child that
built the store).

The issue's goal is under 10 minutes and 4 GB on 2 cores. Where the folder's disk cannot hold the
store, the scale shrinks to what fits and says so. The store is removed at the end unless --keep.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

IDS, IMAGES, DIM, K, EVAL_IDS = 85_742, 5_822_653, 512, 3, 5_700
OUTLIERS, SPLITS, SINGLES, OVERLAPS = 0.01, 0.001, 0.002, 100
BATCH = 65_536


def sizes(scale: float) -> tuple[int, int]:
    return max(10, round(IDS * scale)), max(100, round(IMAGES * scale))


def disk_needed(images: int) -> int:
    """The writer holds its raw rows and the finished .npy at once, plus the index and sub-centres."""
    return int(images * DIM * 2 * 2 * 1.05 + IDS * K * DIM * 4)


def build(work: Path, scale: float, seed: int = 0) -> dict:
    """The store, centres.npy (sub-centres) and eval_centres.npy in `work`; what was planted, as JSON."""
    from arcpipe.clean.store import FeatureWriter

    rng = np.random.default_rng(seed)
    ids, images = sizes(scale)
    centres = rng.standard_normal((ids, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    split = rng.choice(np.arange(1, ids), size=max(1, round(ids * SPLITS)), replace=False)
    centres[split] = centres[split - 1]  # label s is person s-1 again
    single = rng.choice(np.setdiff1d(np.arange(ids), split), size=max(1, round(ids * SINGLES)), replace=False)
    weights = rng.lognormal(0.0, 0.5, ids)
    weights[single] = 0.0  # one image each: for min_images
    counts = 1 + rng.multinomial(images - ids, weights / weights.sum())
    labels = np.repeat(np.arange(ids), counts)
    outliers = 0
    with FeatureWriter(work / "store", DIM, meta={"model": "synthetic", "source": "bench_clean_scale"}) as w:
        for s in range(0, images, BATCH):
            lab = labels[s:s + BATCH]
            x = centres[lab] + rng.standard_normal((len(lab), DIM), dtype=np.float32) / np.sqrt(DIM)
            out = rng.random(len(lab)) < OUTLIERS
            x[out] = rng.standard_normal((int(out.sum()), DIM), dtype=np.float32)
            outliers += int(out.sum())
            w.append(np.arange(s, s + len(lab)).astype(str), lab, x)
    sub = np.lib.format.open_memmap(work / "centres.npy", "w+", np.float32, (ids, K, DIM))
    for s in range(0, ids, 8192):
        e = min(ids, s + 8192)
        sub[s:e, 0] = centres[s:e]
        sub[s:e, 1:] = rng.standard_normal((e - s, K - 1, DIM), dtype=np.float32) / np.sqrt(DIM)
    sub.flush()
    del sub
    free = np.setdiff1d(np.arange(ids), np.r_[split, split - 1, single])
    overlap = rng.choice(free, size=min(OVERLAPS, ids // 4), replace=False)
    ev = rng.standard_normal((EVAL_IDS, DIM), dtype=np.float32)
    near = 0.5 * rng.standard_normal((len(overlap), DIM), dtype=np.float32) / np.sqrt(DIM)
    ev[:len(overlap)] = centres[overlap] + near  # the same people, seen in other photos
    np.save(work / "eval_centres.npy", ev)
    return {"identities": ids, "images": images, "outliers": outliers, "splits": len(split),
            "overlaps": len(overlap), "single_image": int((counts < 2).sum())}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run(work: Path, planted: dict, chunk: int) -> None:
    from arcpipe.clean.centres import label_sums
    from arcpipe.clean.rules import EvalSet, clean, rules_from_params
    from arcpipe.clean.store import FeatureStore
    from arcpipe.params.clean import CleanParams

    t0 = time.perf_counter()
    store = FeatureStore(work / "store")
    _ = store.index
    t_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    label_sums(store, chunk=chunk)
    t_read = time.perf_counter() - t0
    sub = np.load(work / "centres.npy", mmap_mode="r")
    ev = np.load(work / "eval_centres.npy")
    params = CleanParams(chunk=chunk)
    t0 = time.perf_counter()
    eval_set = EvalSet("eval", ev, [f"e{i}" for i in range(len(ev))])
    res = clean(store, rules_from_params(params), subcentres=sub, eval_sets=[eval_set], chunk=chunk)
    total = time.perf_counter() - t0
    s = res.summary
    print(f"\nstore: {store.count:,} images x {store.dim} float16, {planted['identities']:,} identities, "
          f"{(work / 'store' / 'features.npy').stat().st_size / 1e9:.2f} GB; chunk {chunk:,} rows")
    print(f"planted: {planted['outliers']:,} outlier images, {planted['splits']} split identities, "
          f"{planted['overlaps']} identities in the eval set ({len(ev):,} identities), "
          f"{planted['single_image']} single-image identities")
    print(f"\n{'step':<34}{'seconds':>9}  removed")
    print(f"{'open store + index (' + format(store.count, ',') + ' keys)':<34}{t_open:>9.1f}")
    print(f"{'one plain read (label_sums)':<34}{t_read:>9.1f}  (for scale: each full read of the store)")
    for name in s["order"]:
        r = s["rules"][name]
        print(f"{name:<34}{res.seconds[name]:>9.1f}  {r['images']:,} images, {r['identities']:,} identities")
    print(f"{'whole chain':<34}{total:>9.1f}  kept {s['images_kept']:,} of {s['images_in']:,} images, "
          f"{s['identities_kept']:,} of {s['identities_in']:,} identities")
    print(f"\npeak RSS of this whole process (ru_maxrss, the store's builder excluded): {peak_rss_gb():.2f} GB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of MS1M's identities and images")
    ap.add_argument("--work", type=Path, default=None, help="folder for the store (default: a temp folder)")
    ap.add_argument("--chunk", type=int, default=65_536)
    ap.add_argument("--keep", action="store_true", help="leave the store in --work")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_only:
        print(json.dumps(build(args.work, args.scale)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-clean-", dir=args.work))
    try:
        free = shutil.disk_usage(work).free
        scale = args.scale
        if disk_needed(sizes(scale)[1]) > free:
            scale = scale * free / disk_needed(sizes(scale)[1]) * 0.95
            print(f"{work}: {free / 1e9:.1f} GB free, too little for --scale {args.scale}; using --scale {scale:.3f}")
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--build-only", "--work", str(work), "--scale", str(scale)],
                             check=True, capture_output=True, text=True).stdout
        planted = json.loads(out.strip().splitlines()[-1])
        print(f"built the synthetic store in {time.perf_counter() - t0:.0f} s (child process, "
              f"peak RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20:.2f} GB)")
        run(work, planted, args.chunk)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
