"""MegaFace at 1M distractors: identification and TAR@FAR=1e-6 in bounded memory.

    python benchmarks/bench_megaface.py [--distractors 1000000] [--chunk 16384]

Synthetic 512-d features: 3,530 probe images of 80 identities (the FaceScrub set the MegaFace
challenge uses), 605 of them on a noise list (the published FaceScrub list's size), and
1,000,000 distractors (719 on a noise list), generated chunk by chunk from a seed as an embedder
would hand them over, so that no 2 GB distractor matrix and no probes x distractors score matrix
ever exists. Raw and refined modes, sizes 10 ... 1M, in one pass. Prints the time spent in the
evaluation (generation excluded), the peak RSS, and the metrics.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from arcpipe.evaluate.megaface import MegaFaceStream, l2n, refine_probes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distractors", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    d, n_id, n_probe = 512, 80, 3530
    labels = np.sort(rng.integers(0, n_id, n_probe))
    centres = rng.standard_normal((n_id, d)).astype(np.float32)
    probes = l2n(centres[labels] + rng.standard_normal((n_probe, d), dtype=np.float32) * 2.0)
    noisy_p = np.zeros(n_probe, bool)
    noisy_p[rng.choice(n_probe, 605, replace=False)] = True
    probes[noisy_p] = l2n(rng.standard_normal((605, d), dtype=np.float32))     # mislabelled images
    noisy_d = np.zeros(a.distractors, bool)
    noisy_d[rng.choice(a.distractors, 719, replace=False)] = True
    sizes = [s for s in (10, 100, 1000, 10_000, 100_000, 1_000_000) if s <= a.distractors]
    refined = refine_probes(probes, labels, noisy_p, seed=0)
    stream = MegaFaceStream(probes, labels, sizes, ranks=(1, 10), fars=(1e-6,), probes_refined=refined)

    t_eval = t_gen = 0.0
    for s in range(0, a.distractors, a.chunk):
        e = min(a.distractors, s + a.chunk)
        t0 = time.perf_counter()
        crng = np.random.default_rng([a.seed, s])
        x = crng.standard_normal((e - s, d), dtype=np.float32)
        nd = noisy_d[s:e]
        if nd.any():       # a noisy distractor is a probe identity's face filed as a distractor
            x[nd] = centres[crng.integers(0, n_id, int(nd.sum()))] + x[nd] * 2.0
        x = l2n(x)
        t1 = time.perf_counter()
        stream.feed(x, nd)
        t2 = time.perf_counter()
        t_gen += t1 - t0
        t_eval += t2 - t1
    res = stream.finish()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    full_gb = n_probe * a.distractors * 4 / 1e9
    print(f"probes {n_probe} (ids {n_id}, noisy {int(noisy_p.sum())}), distractors {a.distractors} "
          f"(noisy {int(noisy_d.sum())}), 512-d, chunk {a.chunk}")
    print(f"evaluation time {t_eval:.1f} s (feature generation {t_gen:.1f} s, excluded); peak RSS {peak:.0f} MB "
          f"(a full float32 score matrix would be {full_gb:.1f} GB)")
    for mode in res:
        for size, r in res[mode].items():
            print(f"  {mode:>7} {int(size):>8}: rank-1 {r['rank']['1']:.4f}  rank-10 {r['rank']['10']:.4f}  "
                  f"TAR@FAR=1e-6 {r['tar_at_far']['1e-06']:.4f}")
    print(json.dumps({"seconds": round(t_eval, 2), "peak_rss_mb": round(peak)}))


if __name__ == "__main__":
    main()
