"""Generate the embedded sample data set (data/sample) from params.yaml `sample`.

    python scripts/sample.py

Real photos that installed wheels ship, turned into distinct identities (arcpipe.sample), with
known noise in ground_truth.json; built whole in a temporary folder and renamed into place.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..fsutil import atomic_path
from ..params.sample import SampleParams
from ..sample.generate import build


def run(ctx) -> dict[str, Any]:
    params: SampleParams = ctx.params.sample
    out = Path(params.out_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        counts = build(params, tmp, ctx.log)
        ctx.write_summary(tmp / "summary.json", counts)
    ctx.log.info("wrote %s: %d files, %.1f MB", out, counts["files"], counts["bytes"] / 1e6)
    return counts
