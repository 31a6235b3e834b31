"""Face models for evaluation: one interface over ONNX files, our TorchScript export, and a
pixel baseline.

    emb = load_embedder(params.evaluate.model, device="cpu").embed(rgb, flip=True)

`rgb` is N x 112 x 112 x 3 uint8, RGB, aligned with the ArcFace five-point template (what the
align stage and the verification .bin packs hold). `embed` returns float32 N x D, RAW (not
normalised); with flip=True it returns emb(img) + emb(horizontally flipped img).
`embed_views` returns the two views separately (the verification protocol adds them in float64,
as the reference does).

Sidecar (YAML or JSON) describing how a model wants its input; required for onnx and
torchscript, found at ModelParams.sidecar or next to the model with the suffix .json / .yaml:

    input_size: [112, 112]        # [h, w] the network takes
    crop: arcface112              # or sphereface112x96: columns 8..104 of the 112x112 crop
    mean: 127.5                   # pixel units 0..255; one number or three (in channel_order)
    std: 127.5
    channel_order: rgb            # rgb | bgr: order of the channels fed to the network
    embedding_size: 512
    layout: nchw                  # nchw | nhwc
    # optional, shown in the report: name, architecture, trained_on, loss, notes
    # optional (onnx): output: name of the output to use when the model has several

Preprocessing order: flip (if asked) -> crop -> resize to input_size with cv2 INTER_LINEAR when
it differs from the crop -> channel order -> (x - mean) / std in float32 -> layout.
A released insightface ONNX recognition model (e.g. w600k_r50.onnx) takes arcface112, 112x112,
mean 127.5, std 127.5, rgb, nchw.

Export format of our own training output (`export_torchscript`): a TorchScript file made by
torch.jit.trace of the backbone in eval mode on a 1-image example of the sidecar's shape, taking
the preprocessed float32 tensor and returning N x embedding_size; plus the sidecar as JSON with
the same path and suffix .json (model.pt -> model.json).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import PipelineError
from ..fsutil import atomic_path, sha256_file, write_json_atomic

__all__ = [
    "Sidecar",
    "Embedder",
    "OnnxEmbedder",
    "TorchScriptEmbedder",
    "PixelsEmbedder",
    "ModuleEmbedder",
    "load_embedder",
    "load_sidecar",
    "find_sidecar",
    "preprocess",
    "export_torchscript",
]

ALIGNED_SIZE = 112
SPHEREFACE_COLS = (8, 104)


class Sidecar(BaseModel):
    """How a recognition model wants its input (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: tuple[int, int]
    crop: Literal["arcface112", "sphereface112x96"]
    mean: Union[float, tuple[float, float, float]]
    std: Union[float, tuple[float, float, float]]
    channel_order: Literal["rgb", "bgr"]
    embedding_size: int = Field(gt=0)
    layout: Literal["nchw", "nhwc"] = "nchw"
    output: Optional[str] = None
    name: Optional[str] = None
    architecture: Optional[str] = None
    trained_on: Optional[str] = None
    loss: Optional[str] = None
    notes: Optional[str] = None

    @field_validator("input_size")
    @classmethod
    def _positive(cls, v):
        if v[0] <= 0 or v[1] <= 0:
            raise ValueError("input_size must be two positive integers [h, w]")
        return v

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v):
        if np.any(np.asarray(v, dtype=float) == 0):
            raise ValueError("std must not be 0")
        return v

    @property
    def crop_size(self) -> tuple[int, int]:
        return (ALIGNED_SIZE, SPHEREFACE_COLS[1] - SPHEREFACE_COLS[0]) if self.crop == "sphereface112x96" else (ALIGNED_SIZE, ALIGNED_SIZE)


def find_sidecar(model_path: str | os.PathLike, sidecar: Optional[str | os.PathLike] = None) -> Path:
    """The sidecar given, or the model path with suffix .json, .yaml or .yml."""
    if sidecar is not None:
        p = Path(sidecar)
        if not p.is_file():
            raise PipelineError(f"{p}: model sidecar file does not exist")
        return p
    mp = Path(model_path)
    for suf in (".json", ".yaml", ".yml"):
        p = mp.with_suffix(suf)
        if p.is_file():
            return p
    raise PipelineError(f"{mp}: no sidecar found (looked for {mp.with_suffix('.json').name}, "
                        f"{mp.with_suffix('.yaml').name}); give evaluate.model.sidecar")


def load_sidecar(path: str | os.PathLike) -> Sidecar:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    except (OSError, yaml.YAMLError) as e:
        raise PipelineError(f"{path}: cannot read model sidecar: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: model sidecar must be a mapping of keys, got {type(data).__name__}")
    try:
        return Sidecar.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise PipelineError(f"{path}: {loc}: {msg}") from None


def _check_aligned(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 4 or rgb.shape[1:] != (ALIGNED_SIZE, ALIGNED_SIZE, 3):
        raise ValueError(f"expected N x 112 x 112 x 3 uint8 aligned RGB crops, got {rgb.dtype} {rgb.shape}")
    return rgb


def preprocess(rgb: np.ndarray, sc: Sidecar) -> np.ndarray:
    """Aligned 112x112 RGB uint8 crops -> the float32 tensor the model takes (see module doc)."""
    import cv2

    x = _check_aligned(rgb)
    if sc.crop == "sphereface112x96":
        x = x[:, :, SPHEREFACE_COLS[0]: SPHEREFACE_COLS[1]]
    h, w = sc.input_size
    if x.shape[1:3] != (h, w):
        x = np.stack([cv2.resize(np.ascontiguousarray(im), (w, h), interpolation=cv2.INTER_LINEAR) for im in x])
    if sc.channel_order == "bgr":
        x = x[..., ::-1]
    mean = np.asarray(sc.mean, dtype=np.float32)
    std = np.asarray(sc.std, dtype=np.float32)
    x = (x.astype(np.float32) - mean) / std
    if sc.layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


class Embedder:
    """Base: batching, flip views, output checks. Subclasses implement `_run(batch) -> N x D`."""

    kind = "base"

    def __init__(self, embedding_size: int, batch_size: int = 64, source: str = "model"):
        self.embedding_size = int(embedding_size)
        self.batch_size = int(batch_size)
        self.source = source  # named in errors

    # subclasses -------------------------------------------------------------------------
    def _run(self, rgb: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "embedding_size": self.embedding_size}

    # public -----------------------------------------------------------------------------
    def _check_output(self, out: Any, n: int) -> np.ndarray:
        arr = np.asarray(out)
        if arr.ndim != 2:
            raise PipelineError(f"{self.source}: model output has shape {tuple(arr.shape)}; "
                                f"expected 2-D (batch, embedding_size={self.embedding_size})")
        if arr.shape != (n, self.embedding_size):
            raise PipelineError(f"{self.source}: model output has shape {tuple(arr.shape)} for a batch of {n}; "
                                f"expected ({n}, {self.embedding_size}) (sidecar embedding_size)")
        if not np.all(np.isfinite(arr)):
            raise PipelineError(f"{self.source}: model output holds NaN or Inf")
        return arr.astype(np.float32, copy=False)

    def _embed_one_view(self, rgb: np.ndarray) -> np.ndarray:
        n = rgb.shape[0]
        out = np.empty((n, self.embedding_size), dtype=np.float32)
        for s in range(0, n, self.batch_size):
            chunk = rgb[s: s + self.batch_size]
            out[s: s + chunk.shape[0]] = self._check_output(self._run(chunk), chunk.shape[0])
        return out

    def embed_views(self, rgb: np.ndarray, flip: bool = True) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(emb(img), emb(flipped img) or None), both float32 N x D, raw."""
        rgb = _check_aligned(rgb)
        a = self._embed_one_view(rgb)
        b = self._embed_one_view(np.ascontiguousarray(rgb[:, :, ::-1])) if flip else None
        return a, b

    def embed(self, rgb: np.ndarray, flip: bool = True) -> np.ndarray:
        a, b = self.embed_views(rgb, flip)
        if b is None:
            return a
        return (a.astype(np.float64) + b.astype(np.float64)).astype(np.float32)


class PixelsEmbedder(Embedder):
    """A SANITY BASELINE, NOT A FACE MODEL: the aligned crop in grayscale (cv2 RGB2GRAY),
    area-downsampled to 16 x 16 (7 x 7 pixel blocks), as float32 with its own mean subtracted:
    a 256-d vector. Deterministic and training-free, so the sample DAG has something to judge;
    it measures how much the alignment and the pairs alone give away (on real LFW such
    baselines score far below any trained model)."""

    kind = "pixels"
    GRID = 16

    def __init__(self, batch_size: int = 64):
        super().__init__(self.GRID * self.GRID, batch_size, source="pixels baseline")

    def _run(self, rgb: np.ndarray) -> np.ndarray:
        import cv2

        out = np.empty((rgb.shape[0], self.embedding_size), dtype=np.float32)
        for i, im in enumerate(rgb):
            g = cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY)
            small = cv2.resize(g, (self.GRID, self.GRID), interpolation=cv2.INTER_AREA).astype(np.float32)
            out[i] = (small - small.mean()).ravel()
        return out

    def identity(self) -> dict[str, Any]:
        return {"kind": "pixels", "embedding_size": self.embedding_size, "name": "pixels-16x16-gray (sanity baseline)",
                "description": "grayscale aligned crop, 16x16 area downsample, mean-centred; not a face model"}


class _SidecarEmbedder(Embedder):
    def __init__(self, path: Path, sidecar_path: Path, batch_size: int):
        self.path = Path(path)
        self.sidecar_path = Path(sidecar_path)
        self.sidecar = load_sidecar(sidecar_path)
        super().__init__(self.sidecar.embedding_size, batch_size, source=str(self.path))

    def identity(self) -> dict[str, Any]:
        sc = self.sidecar
        return {
            "kind": self.kind,
            "path": str(self.path),
            "sha256": sha256_file(self.path),
            "sidecar": str(self.sidecar_path),
            "sidecar_sha256": sha256_file(self.sidecar_path),
            "embedding_size": self.embedding_size,
            "name": sc.name or self.path.stem,
            "architecture": sc.architecture,
            "trained_on": sc.trained_on,
            "loss": sc.loss,
            "preprocess": sc.model_dump(include={"input_size", "crop", "mean", "std", "channel_order", "layout"}),
        }


class OnnxEmbedder(_SidecarEmbedder):
    kind = "onnx"

    def __init__(self, path: Path, sidecar_path: Path, device: str = "cpu", batch_size: int = 64):
        super().__init__(path, sidecar_path, batch_size)
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise PipelineError(f"{path}: device {device!r} asked for, but this onnxruntime has no CUDAExecutionProvider "
                                    "(install onnxruntime-gpu)")
            dev_id = int(device.split(":")[1]) if ":" in device else 0
            providers = [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise PipelineError(f"{path}: cannot load ONNX model: {str(e).splitlines()[0]}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise PipelineError(f"{path}: ONNX model has {len(inputs)} inputs; expected one image input")
        self.input = inputs[0]
        shape = list(self.input.shape)
        if len(shape) != 4:
            raise PipelineError(f"{path}: input {self.input.name!r} has shape {shape}; expected 4-D ({self.sidecar.layout})")
        h, w = self.sidecar.input_size
        hw = shape[2:4] if self.sidecar.layout == "nchw" else shape[1:3]
        for got, want, what in ((hw[0], h, "height"), (hw[1], w, "width")):
            if isinstance(got, int) and got != want:
                raise PipelineError(f"{path}: input {what} is {got} but the sidecar says input_size {[h, w]}")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        if self.sidecar.output is not None:
            if self.sidecar.output not in names:
                raise PipelineError(f"{path}: sidecar output {self.sidecar.output!r} is not one of the model outputs {names}")
            self.output = next(o for o in outputs if o.name == self.sidecar.output)
        else:
            self.output = outputs[0]
        oshape = self.output.shape
        if oshape is not None and len(oshape) != 2:
            raise PipelineError(f"{path}: output {self.output.name!r} has shape {list(oshape)}; "
                                "expected 2-D (batch, embedding_size)")
        if oshape is not None and isinstance(oshape[1], int) and oshape[1] != self.embedding_size:
            raise PipelineError(f"{path}: output {self.output.name!r} has {oshape[1]} dimensions but the sidecar "
                                f"says embedding_size {self.embedding_size}")
        self.input_dtype = np.float16 if self.input.type == "tensor(float16)" else np.float32

    def _run(self, rgb: np.ndarray) -> np.ndarray:
        x = preprocess(rgb, self.sidecar).astype(self.input_dtype, copy=False)
        n = x.shape[0]
        if self.fixed_batch is None or self.fixed_batch == n:
            return self.session.run([self.output.name], {self.input.name: x})[0]
        fb = self.fixed_batch
        outs = []
        for s in range(0, n, fb):
            part = x[s: s + fb]
            k = part.shape[0]
            if k < fb:  # pad the last chunk of a fixed-batch model
                part = np.concatenate([part, np.zeros((fb - k,) + part.shape[1:], part.dtype)])
            o = np.asarray(self.session.run([self.output.name], {self.input.name: part})[0])
            if o.ndim != 2 or o.shape[0] != fb:
                return o  # the output check names the bad shape
            outs.append(o[:k])
        return np.concatenate(outs)


def _torch_device(device: str):
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"evaluate.device: {device!r} asked for, but torch sees no CUDA device")
    return torch.device(device)


class TorchScriptEmbedder(_SidecarEmbedder):
    kind = "torchscript"

    def __init__(self, path: Path, sidecar_path: Path, device: str = "cpu", batch_size: int = 64):
        super().__init__(path, sidecar_path, batch_size)
        import torch

        self.device = _torch_device(device)
        try:
            self.module = torch.jit.load(str(path), map_location=self.device)
        except Exception as e:  # torch raises RuntimeError and friends
            raise PipelineError(f"{path}: cannot load TorchScript model: {str(e).splitlines()[0]}") from None
        self.module.eval()

    def _run(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(preprocess(rgb, self.sidecar)).to(self.device)
        with torch.inference_mode():
            out = self.module(x)
        if not isinstance(out, torch.Tensor):
            raise PipelineError(f"{self.path}: TorchScript model returned {type(out).__name__}; expected one tensor")
        return out.float().cpu().numpy()


class ModuleEmbedder(Embedder):
    """An in-memory torch module (a backbone being trained) behind the same interface: the
    training loop verifies with exactly the preprocessing and protocol of the evaluate stage."""

    kind = "module"

    def __init__(self, module: Any, sidecar: Sidecar | dict, device: Any = "cpu", batch_size: int = 64,
                 name: str = "in-training backbone"):
        import torch

        self.sidecar = sidecar if isinstance(sidecar, Sidecar) else Sidecar.model_validate(sidecar)
        super().__init__(self.sidecar.embedding_size, batch_size, source=name)
        self.module = module
        self.device = torch.device(device)
        self.name = name

    def _run(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(preprocess(rgb, self.sidecar)).to(self.device)
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.inference_mode():
                out = self.module(x)
        finally:
            self.module.train(was_training)
        return out.float().cpu().numpy()

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "embedding_size": self.embedding_size}


def load_embedder(model_params: Any, device: str = "cpu", batch_size: int = 64) -> Embedder:
    """Build the embedder that evaluate.model describes (kind, path, sidecar)."""
    kind = getattr(model_params, "kind", None)
    if kind == "pixels":
        return PixelsEmbedder(batch_size=batch_size)
    if kind not in ("onnx", "torchscript"):
        raise PipelineError(f"evaluate.model.kind: unknown model kind {kind!r} (onnx, torchscript, pixels)")
    path = getattr(model_params, "path", None)
    if not path:
        raise PipelineError(f"evaluate.model.path: required for kind {kind}")
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: model file does not exist (evaluate.model.path)")
    sidecar = find_sidecar(path, getattr(model_params, "sidecar", None))
    cls = OnnxEmbedder if kind == "onnx" else TorchScriptEmbedder
    return cls(path, sidecar, device=device, batch_size=batch_size)


def export_torchscript(module: Any, path: str | os.PathLike, sidecar: Sidecar | dict,
                       sidecar_path: Optional[str | os.PathLike] = None) -> tuple[Path, Path]:
    """Export a backbone as our evaluation format: TorchScript (traced in eval mode, on CPU) +
    the sidecar as JSON (default: `path` with suffix .json). Both written atomically.

    The module must map the preprocessed float32 batch (see `preprocess`) to N x embedding_size.
    Returns (model path, sidecar path).
    """
    import torch

    sc = sidecar if isinstance(sidecar, Sidecar) else Sidecar.model_validate(sidecar)
    path = Path(path)
    sidecar_path = Path(sidecar_path) if sidecar_path is not None else path.with_suffix(".json")
    if sidecar_path == path:
        raise ValueError(f"{path}: the model path must not end in .json (the sidecar goes there)")
    h, w = sc.input_size
    shape = (2, 3, h, w) if sc.layout == "nchw" else (2, h, w, 3)
    was_training = getattr(module, "training", False)
    module = module.eval()
    example = torch.zeros(shape, dtype=torch.float32)
    try:
        with torch.no_grad():
            traced = torch.jit.trace(module, example, check_trace=False)
            out = traced(example)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, sc.embedding_size):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{path}: module output is {got} for a batch of 2; expected (2, {sc.embedding_size})")
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp))
        write_json_atomic(sidecar_path, sc.model_dump(mode="json", exclude_none=True))
    finally:
        if was_training:
            module.train()
    return path, sidecar_path
