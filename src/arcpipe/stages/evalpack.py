"""Build verification .bin packs from aligned sets and their releases' pairs: data/evalpack/<set>.bin.

    python scripts/evalpack.py

One <set>.bin (insightface's format, arcpipe.evalpack) and <set>.json (which pairs were written,
skipped, and why; the protocol's fold of each written pair, `pair_folds`, so that evaluation keeps
the official folds when pairs were skipped) per evalpack.sets entry, and summary.json beside them.
Each entry names its protocol (arcpipe.pairlists): LFW's pairs.txt, CFP-FP/FF's Protocol folder,
CALFW's and CPLFW's pairs files, or a plain list (AgeDB-30).
"""
from __future__ import annotations

from pathlib import Path

from ..align.aligned_set import AlignedSet
from ..evalpack import EvalPackError, build_bin, write_bin
from ..fsutil import write_json_atomic
from ..pairlists import read_pairs


def run(ctx) -> dict:
    p = ctx.params.evalpack
    out_dir = Path(p.out_dir)
    align_dir = Path(ctx.params.align.out_dir)
    sets_out = {}
    totals = {"sets": 0, "pairs_listed": 0, "pairs_written": 0, "pairs_skipped": 0, "images_missing": 0}
    for name, spec in sorted(p.sets.items()):
        aligned = AlignedSet(ctx.require_path(f"evalpack.sets.{name}.dataset", align_dir / spec.dataset))
        pairs_path = ctx.require_path(f"evalpack.sets.{name}.pairs", spec.pairs)
        pairs = read_pairs(spec.protocol, pairs_path, spec.folds)
        bins, same, report = build_bin(aligned, pairs, pairs_path, p.on_missing)
        if not same:
            raise EvalPackError(f"{pairs_path}: no pair has both images in {align_dir / spec.dataset}")
        sha = write_bin(out_dir / f"{name}.bin", bins, same)
        fold_counts = [0] * report["folds"]
        for f in report["pair_folds"]:
            fold_counts[f] += 1
        info = {"set": name, "dataset": spec.dataset, "protocol": spec.protocol, "pairs_file": str(pairs_path),
                "sha256": sha,
                "on_missing": p.on_missing, **report, "fold_pairs_written": fold_counts}
        write_json_atomic(out_dir / f"{name}.json", info)
        ctx.log.info("%s: %d pairs written, %d skipped, %d images missing, sha256 %s",
                     name, report["pairs_written"], report["pairs_skipped"], report["images_missing"], sha[:16])
        sets_out[name] = {k: v for k, v in info.items() if k not in ("missing", "skipped_lines", "pair_folds")}
        totals["sets"] += 1
        for k in ("pairs_listed", "pairs_written", "pairs_skipped", "images_missing"):
            totals[k] += report[k]
    counts = {"in": totals["pairs_listed"], "out": totals["pairs_written"],
              "rejected": {"pair_with_missing_image": totals["pairs_skipped"]}, **totals, "per_set": sets_out}
    ctx.write_summary(out_dir / "summary.json", counts)
    return counts
