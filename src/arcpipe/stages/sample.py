"""Generate the embedded sample data set (data/sample) from params.yaml `sample`.

    python scripts/sample.py

Real photos that installed wheels ship, turned into distinct identities (arcpipe.sample), with
known noise in ground_truth.json; built whole in a temporary folder and renamed into place.
The photos come through the download stage: params `download.datasets` lists each one
(photo_t1, ..., url package://<package>/<path>, sha256 pinned) and the stage reads them from
<download.out_dir>/<set>/. Params that list none of them (a test's, a bare params file) read the
installed wheels directly, and the log says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..errors import PipelineError
from ..fsutil import atomic_path
from ..params.sample import SampleParams
from ..photos import SAMPLE_PHOTOS, sample_photo
from ..sample.generate import build


def photo_dir(ctx) -> Optional[str]:
    """The folder the download stage brought the sample's photos into; None: the installed wheels."""
    section = ctx.params.download
    listed = [name for name in SAMPLE_PHOTOS if name in section.datasets]
    if not listed:
        ctx.log.info("photos: from the installed wheels (download.datasets lists none of %s)",
                     ", ".join(SAMPLE_PHOTOS))
        return None
    unlisted = [name for name in SAMPLE_PHOTOS if name not in section.datasets]
    if unlisted:
        raise PipelineError(f"download.datasets lists some of the sample's photos but not "
                            f"{', '.join(unlisted)}: list all of {', '.join(SAMPLE_PHOTOS)} or none")
    for name in SAMPLE_PHOTOS:
        path = sample_photo(name, section.out_dir)
        if not path.is_file():
            raise PipelineError(f"{path} is missing: run the download stage first "
                                f"(`python scripts/download.py --dataset {name}`, or `dvc repro download@{name}`)")
    ctx.log.info("photos: %d files from %s (the download stage's, checksummed)", len(SAMPLE_PHOTOS), section.out_dir)
    return section.out_dir


def run(ctx) -> dict[str, Any]:
    params: SampleParams = ctx.params.sample
    out = Path(params.out_dir)
    photos = photo_dir(ctx)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        counts = build(params, tmp, ctx.log, photos=photos)
        ctx.write_summary(tmp / "summary.json", counts)
    ctx.log.info("wrote %s: %d files, %.1f MB", out, counts["files"], counts["bytes"] / 1e6)
    return counts
