"""Every stage of the DAG, one short module each: read its params section, call the library,
write its outputs. `scripts/<stage>.py` is a one-line shim over `main("<stage>")`.

    download   data/download/NAME/    data sets fetched (http(s), file, fsspec) or placed by hand, checked, unpacked (arcpipe.download)
    sample     data/sample/           the embedded sample (arcpipe.sample)
    detect     data/detect/NAME/      MTCNN or given landmarks, one row per input (arcpipe.detect)
    align      data/align/NAME/       five-point alignment, crops in RecordIO (arcpipe.align)
    pack       data/pack/             insightface training RecordIO (arcpipe.pack)
    train_bootstrap  models/train_bootstrap/  the train stage on the raw pack (sub-center ArcFace): the cleaning model
    train      models/train/          ArcFace training, DDP under torchrun, exported for evaluate (arcpipe.train)
    features   data/features/NAME/    embeddings of a pack or an aligned set under one model (arcpipe.clean)
    clean      data/clean/            MS1MV2-style cleaning of the pack by the bootstrap features (arcpipe.clean)
    pack_clean data/pack_clean/       the pack's kept images under their new labels, records copied (arcpipe.pack)
    evalpack   data/evalpack/         verification .bin packs (arcpipe.evalpack)
    evaluate   metrics/, plots/       the benchmark protocols (arcpipe.evaluate)
    report     reports/               our numbers beside the paper's (arcpipe.report)

A stage module defines `run(ctx) -> summary counts` and, where it takes more arguments than
the common ones, `add_arguments(parser)`. Nothing here imports a stage module until it runs,
so each stage's code is exactly what its own module imports (tests/test_stage_code.py).
"""
from __future__ import annotations

import importlib
from typing import Optional, Sequence

STAGES = ("download", "sample", "detect", "align", "pack", "evalpack", "train_bootstrap", "train", "features", "clean", "pack_clean", "evaluate", "report")


def main(name: str, argv: Optional[Sequence[str]] = None) -> int:
    """Run stage `name` as `python scripts/<name>.py ...` does; returns the exit code."""
    from ..runner import run_stage

    mod = importlib.import_module(f"{__name__}.{name}")
    return run_stage(name, mod.run, argv, description=(mod.__doc__ or "").strip().splitlines()[0],
                     add_arguments=getattr(mod, "add_arguments", None))
