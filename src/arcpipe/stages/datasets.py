"""The per-data-set plumbing of detect and align: --dataset NAME, its params entry, and running
every entry of detect.datasets one after another when no name is given."""
from __future__ import annotations

from typing import Any, Callable, Optional

from ..errors import PipelineError


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="which entry of detect.datasets to process (default: all, one after another)")


def dataset_config(ctx, name: Optional[str]) -> tuple[str, Any]:
    ds = ctx.params.detect.datasets
    if not ds:
        raise PipelineError(f"{ctx.params_files[0]}: detect.datasets is empty")
    if name is None:
        raise PipelineError(f"--dataset is required: one of {', '.join(ds)}")
    if name not in ds:
        raise PipelineError(f"--dataset {name}: not in detect.datasets ({', '.join(ds)})")
    return name, ds[name]


def run_each(ctx, one: Callable[[Any, str], dict[str, Any]]) -> dict[str, Any]:
    """`one(ctx, name)` for --dataset NAME, or for every data set when none is named."""
    name = getattr(ctx.args, "dataset", None)
    datasets = ctx.params.detect.datasets
    if name is None and ctx.shard is None and len(datasets) > 1:
        return {"datasets": {n: one(ctx, n) for n in datasets}}
    if name is None and len(datasets) == 1:
        name = next(iter(datasets))
    return one(ctx, name)
