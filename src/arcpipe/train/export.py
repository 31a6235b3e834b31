"""Export a trained backbone for the evaluate stage: ONNX and/or TorchScript plus one sidecar.

    paths = export_backbone(net, "models/export", sidecar_fields={"loss": "arcface", "trained_on": "sample"})
    # {"onnx": models/export/model.onnx, "torchscript": models/export/model.pt, "sidecar": models/export/model.json}

`evaluate.model: {kind: onnx, path: models/export/model.onnx}` (or kind torchscript and model.pt)
then loads it with no other setting: both files take the preprocessed float32 N x 3 x 112 x 112
batch ((rgb - 127.5) / 127.5, see arcpipe.evaluate.model) and return N x embedding_size, and the
sidecar beside them (model.json, shared by both) says so.

ONNX exporter: "dynamo" (default; torch's supported exporter, needs torch >= 2.5 and the
onnxscript package, a project dependency) or "legacy" (the TorchScript-based exporter torch has
deprecated; no extra package, works on any torch 2.x). Both write one self-contained file with a
dynamic batch dimension, input "data", output "embedding".

All or nothing: every file is written into a temporary folder beside `out_dir`, then loaded back
through the evaluate stage's loader and compared with the module; only then are they moved into
`out_dir` (models first, the sidecar last). On any failure nothing new appears and the error is
one line. A format not asked for this time is removed from `out_dir`, so the folder never holds
a model from an older export beside a newer sidecar.

The module is exported from a copy, on CPU, in float32 and eval mode; the caller's module
(its device, mode and autocast setting) is left as it was.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
from pydantic import ValidationError

from ..errors import PipelineError
from ..evaluate.model import Sidecar, export_torchscript, load_embedder, preprocess
from ..fsutil import write_json_atomic

__all__ = ["FORMATS", "EXPORTERS", "ARCFACE_INPUT", "export_backbone"]

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
EXPORTERS = ("dynamo", "legacy")
# what the training data loader feeds the backbone: aligned 112x112 RGB, (x - 127.5) / 127.5, NCHW
ARCFACE_INPUT = {"input_size": [112, 112], "crop": "arcface112", "mean": 127.5, "std": 127.5,
                 "channel_order": "rgb", "layout": "nchw"}
ONNX_OPSET = {"dynamo": 18, "legacy": 17}
CHECK_IMAGES = 3


def export_backbone(module: Any, out_dir: str | os.PathLike, formats: Sequence[str] = ("onnx", "torchscript"),
                    sidecar_fields: Optional[Mapping[str, Any]] = None, stem: str = "model",
                    exporter: str = "dynamo") -> dict[str, Path]:
    """Write `{stem}.onnx` / `{stem}.pt` and `{stem}.json` into `out_dir`; return their paths by
    format ("onnx", "torchscript", "sidecar"). `sidecar_fields` adds to or overrides ARCFACE_INPUT
    (name, architecture, loss, trained_on, notes, embedding_size, ...); architecture defaults to
    the module's `architecture` and embedding_size to its `embedding_size`."""
    out_dir = Path(out_dir)
    formats = tuple(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if not formats or bad:
        raise ValueError(f"formats: expected some of {', '.join(FORMATS)}, got {list(formats)}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter: expected one of {', '.join(EXPORTERS)}, got {exporter!r}")

    net = _cpu_float32_copy(module)
    sidecar = _sidecar(net, sidecar_fields, out_dir)
    _check_output(net, sidecar, out_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=out_dir.parent))
    try:
        staged = _write_all(net, sidecar, staging, stem, formats, exporter, out_dir)
        return _move_into(staged, out_dir, stem)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _cpu_float32_copy(module: Any):
    import torch

    while isinstance(module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        module = module.module
    module = getattr(module, "_orig_mod", module)  # torch.compile wrapper
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"export_backbone: expected a torch.nn.Module, got {type(module).__name__}")
    net = copy.deepcopy(module).to("cpu", torch.float32).eval()
    if hasattr(net, "amp_dtype"):
        net.amp_dtype = None  # exported graphs are float32 throughout
    return net


def _sidecar(net, fields: Optional[Mapping[str, Any]], out_dir: Path) -> Sidecar:
    data: dict[str, Any] = dict(ARCFACE_INPUT)
    for key in ("architecture", "embedding_size"):
        if getattr(net, key, None) is not None:
            data[key] = getattr(net, key)
    data.update(fields or {})
    if "embedding_size" not in data:
        data["embedding_size"] = _probe(net, data, out_dir)[-1]
    try:
        return Sidecar.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise PipelineError(f"{out_dir}: sidecar_fields: {loc}: {first['msg']}") from None


def _example(fields: Mapping[str, Any], n: int = 2):
    import torch

    h, w = fields["input_size"]
    shape = (n, 3, h, w) if fields.get("layout", "nchw") == "nchw" else (n, h, w, 3)
    return torch.zeros(shape, dtype=torch.float32)


def _probe(net, fields: Mapping[str, Any], out_dir: Path) -> tuple[int, ...]:
    """The module's output shape for a batch of 2 of the sidecar's input."""
    import torch

    example = _example(fields)
    try:
        with torch.no_grad():
            out = net(example)
    except Exception as e:  # a module that cannot run on the sidecar's input at all
        raise PipelineError(f"{out_dir}: cannot export: the module fails on a {list(example.shape)} input: "
                            f"{type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(out, torch.Tensor):
        raise PipelineError(f"{out_dir}: cannot export: the module returns {type(out).__name__}; expected one tensor")
    return tuple(out.shape)


def _check_output(net, sc: Sidecar, out_dir: Path) -> None:
    got = _probe(net, sc.model_dump(), out_dir)
    if got != (2, sc.embedding_size):
        raise PipelineError(f"{out_dir}: cannot export: the module's output is {list(got)} for a batch of 2; "
                            f"expected [2, {sc.embedding_size}] (embedding_size)")


def _write_all(net, sc: Sidecar, staging: Path, stem: str, formats: Sequence[str], exporter: str,
               out_dir: Path) -> dict[str, Path]:
    sidecar_path = staging / f"{stem}.json"
    write_json_atomic(sidecar_path, sc.model_dump(mode="json", exclude_none=True))
    staged = {}
    for fmt in formats:
        path = staging / f"{stem}{FORMATS[fmt]}"
        try:
            if fmt == "torchscript":
                export_torchscript(net, path, sc, sidecar_path)
            else:
                _export_onnx(net, path, sc, exporter)
        except PipelineError as e:
            raise PipelineError(f"{out_dir}: {fmt} export failed: {e}") from None
        except Exception as e:
            raise PipelineError(f"{out_dir}: {fmt} export failed: {type(e).__name__}: {_first_line(e)}") from None
        staged[fmt] = path
    for fmt, path in staged.items():
        _check_loaded(net, fmt, path, sc, out_dir)
    staged["sidecar"] = sidecar_path
    return staged


def _export_onnx(net, path: Path, sc: Sidecar, exporter: str) -> None:
    import torch

    example = _example(sc.model_dump())
    names = {"input_names": ["data"], "output_names": ["embedding"]}
    with warnings.catch_warnings(), _quiet_exporter_log():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        new_api = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)  # export(dynamo=...)
        if exporter == "legacy":
            torch.onnx.export(net, (example,), str(path), opset_version=ONNX_OPSET["legacy"],
                              dynamic_axes={"data": {0: "batch"}, "embedding": {0: "batch"}}, **names,
                              **({"dynamo": False} if new_api else {}))
            return
        if not new_api:
            raise PipelineError(f"the dynamo exporter needs torch >= 2.5 (this is {torch.__version__}); "
                                "use exporter='legacy'")
        try:
            import onnxscript  # noqa: F401  (the dynamo exporter's requirement: fail with a hint)
        except ImportError:
            raise PipelineError("the dynamo exporter needs the onnxscript package (pip install onnxscript); "
                                "or use exporter='legacy'") from None
        torch.onnx.export(net, (example,), str(path), dynamo=True, opset_version=ONNX_OPSET["dynamo"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False,
                          verbose=False, **names)


@contextlib.contextmanager
def _quiet_exporter_log() -> Iterator[None]:
    # the dynamo exporter logs a warning per optional op library it does not find (torchvision)
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _check_loaded(net, fmt: str, path: Path, sc: Sidecar, out_dir: Path) -> None:
    """Load the staged file as the evaluate stage will and compare with the module."""
    import torch

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (CHECK_IMAGES, 112, 112, 3), dtype=np.uint8)
    with torch.no_grad():
        want = net(torch.from_numpy(preprocess(rgb, sc))).numpy()
    try:
        got = load_embedder(SimpleNamespace(kind=fmt, path=str(path), sidecar=None)).embed(rgb, flip=False)
    except PipelineError as e:
        raise PipelineError(f"{out_dir}: the exported {fmt} model does not load for evaluation: "
                            f"{_first_line(e).replace(str(path.parent), str(out_dir))}") from None
    err = float(np.abs(got - want).max())
    tol = 1e-3 * max(1.0, float(np.abs(want).max()))
    if not err <= tol:
        raise PipelineError(f"{out_dir}: the exported {fmt} model differs from the module by {err:.3g} "
                            f"(allowed {tol:.3g}) on the same input")


def _move_into(staged: dict[str, Path], out_dir: Path, stem: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for fmt, suffix in FORMATS.items():
        if fmt not in staged:
            (out_dir / f"{stem}{suffix}").unlink(missing_ok=True)
    final = {}
    for fmt, src in staged.items():  # models first, the sidecar last (dict order)
        final[fmt] = out_dir / src.name
        os.replace(src, final[fmt])
    return final


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
