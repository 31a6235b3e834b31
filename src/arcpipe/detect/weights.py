"""Locate and verify the published MTCNN weights (P-Net, R-Net, O-Net state dicts).

The weights ship inside the facenet-pytorch 2.6.0 wheel as facenet_pytorch/data/{pnet,rnet,onet}.pt.
We only read those three files: the package is installed with --no-deps and never imported
(it needs torchvision and pins torch<2.3, numpy<2). See WEIGHTS.md for origin and licence.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from arcpipe.errors import PipelineError
from arcpipe.fsutil import sha256_file

NETS = ("pnet", "rnet", "onet")

# sha256 of the files in facenet_pytorch-2.6.0-py3-none-any.whl (facenet_pytorch/data/*.pt)
SHA256 = {
    "pnet": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}

ENV_VAR = "ARCPIPE_MTCNN_WEIGHTS"
HOW_TO_GET = "install them with: pip install --no-deps facenet-pytorch==2.6.0 (or set ARCPIPE_MTCNN_WEIGHTS to a folder holding pnet.pt, rnet.pt, onet.pt)"

_verified: dict[str, str] = {}


def _package_data_dir() -> Path | None:
    """facenet_pytorch/data without importing facenet_pytorch (its __init__ needs torchvision)."""
    try:
        spec = importlib.util.find_spec("facenet_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "data"
        if d.is_dir():
            return d
    return None


def find_weights_dir(weights_dir: str | os.PathLike | None = None) -> Path:
    """Explicit folder, else $ARCPIPE_MTCNN_WEIGHTS, else the installed facenet-pytorch wheel."""
    if weights_dir is not None:
        d, origin = Path(weights_dir), "weights_dir"
    elif os.environ.get(ENV_VAR):
        d, origin = Path(os.environ[ENV_VAR]), ENV_VAR
    else:
        d, origin = _package_data_dir(), "facenet_pytorch package"
        if d is None:
            raise PipelineError(f"MTCNN weights not found (facenet_pytorch is not installed): {HOW_TO_GET}")
    missing = [n for n in NETS if not (d / f"{n}.pt").is_file()]
    if missing:
        raise PipelineError(f"{d}: MTCNN weights missing ({', '.join(m + '.pt' for m in missing)}; from {origin}): {HOW_TO_GET}")
    return d


def load_state_dicts(weights_dir: str | os.PathLike | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """The three state dicts as published (keys such as conv1.weight, prelu1.weight, dense4.weight),
    after checking each file's pinned sha256."""
    d = find_weights_dir(weights_dir)
    out = {}
    for name in NETS:
        path = d / f"{name}.pt"
        key = str(path.resolve())
        if _verified.get(key) != SHA256[name]:
            digest = sha256_file(path)
            if digest != SHA256[name]:
                raise PipelineError(f"{path}: sha256 {digest} is not the pinned {SHA256[name]} of facenet-pytorch 2.6.0's {name}.pt: {HOW_TO_GET}")
            _verified[key] = digest
        try:
            out[name] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a file with the right hash always loads; keep the message one line
            raise PipelineError(f"{path}: cannot load MTCNN state dict: {e}".splitlines()[0]) from e
    return out
