"""Fetch the data sets params.yaml `download` lists into data/download/, checksummed. (arcpipe.download)

    python scripts/download.py [--dataset NAME]

    data/download/
      NAME/FILE              the file, its sha256 (and size, when given) checked before it lands
      NAME/STEM/             an archive extracted (zip, tar, tar.gz, tgz), every member checked
      NAME/FILE.state.json   what a rerun trusts without re-reading an unchanged file
      manifest.json          one entry per set: file, sha256, size, url, source, extracted
      summary.json           in (the sets) = out; bytes

With --dataset NAME (one DAG stage per set: download@NAME, its output data/download/NAME/) only
that set, and its manifest.json and summary.json go into NAME/.

A set already in place with the right sha256 is not fetched again; an interrupted download resumes
from NAME/FILE.part. A set with `url: null` is a file the user places at its `path` (MS1MV2, IJB,
MegaFace): each missing one gets a line saying where to get it and where to put it, and the stage
fails after bringing in everything else.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..download import download_all
from ..errors import PipelineError
from ..params.download import DownloadParams

__all__ = ["add_arguments", "run"]


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="which entry of download.datasets to bring in (default: all of them)")


def run(ctx) -> dict[str, Any]:
    params: DownloadParams = ctx.params.download
    name = getattr(ctx.args, "dataset", None)
    where = Path(params.out_dir)
    if name is not None:
        if name not in params.datasets:
            known = ", ".join(params.datasets) or "none"
            raise PipelineError(f"--dataset {name}: not in download.datasets ({known})")
        params = params.model_copy(update={"datasets": {name: params.datasets[name]}})
        where = where / name
    result = download_all(params, ctx.log, ctx.working_on, manifest=where / "manifest.json")
    sets = result["datasets"]
    counts = {
        "in": len(params.datasets), "out": len(sets), "rejected": {},
        "bytes": sum(e["size"] for e in sets.values()),
        "extracted": sorted(name for name, e in sets.items() if e["extracted"]),
    }
    ctx.write_summary(where / "summary.json", counts)
    ctx.log.info("%d data sets in %s: %d fetched, %d already in place", len(sets), params.out_dir,
                 len(result["fetched"]), len(result["present"]))
    return {**counts, "fetched": result["fetched"], "present": result["present"]}
