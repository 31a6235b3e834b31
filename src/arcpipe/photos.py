"""Real photographs with faces that come with pip-installed packages (no download): the base of
the embedded sample and of the detector's tests and benchmark. Each loader returns an RGB uint8
HxWx3 array or raises PipelineError naming what is missing."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .errors import PipelineError


def package_dir(name: str) -> Path:
    """Where an installed package's files are, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"package '{name}' is not installed (the real photos we use ship in it)")
    return Path(list(spec.submodule_search_locations)[0])


def read_bgr(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
    if bgr is None:
        raise PipelineError(f"{path}: missing or not readable as an image")
    return bgr


def _read_rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(read_bgr(path)[:, :, ::-1])


def insightface_images() -> Path:
    return package_dir("insightface") / "data" / "images"


def grace_hopper_path() -> Path:
    return package_dir("matplotlib") / "mpl-data" / "sample_data" / "grace_hopper.jpg"


def insightface_image(name: str) -> np.ndarray:
    """insightface/data/images/<name>, e.g. t1.jpg (group photo, 6 faces), Tom_Hanks_54745.png."""
    return _read_rgb(insightface_images() / name)


def grace_hopper() -> np.ndarray:
    """matplotlib's sample_data/grace_hopper.jpg (512x600 portrait)."""
    return _read_rgb(grace_hopper_path())


def astronaut() -> np.ndarray:
    """scikit-image's astronaut (Eileen Collins, 512x512)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def all_photos() -> dict[str, np.ndarray]:
    return {
        "t1": insightface_image("t1.jpg"),
        "tom_hanks": insightface_image("Tom_Hanks_54745.png"),
        "astronaut": astronaut(),
        "grace_hopper": grace_hopper(),
    }
