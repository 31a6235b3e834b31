"""Real photographs with faces that come with pip-installed packages (no download): used by the
detector's tests and benchmark. Each loader returns an RGB uint8 HxWx3 array or raises
FileNotFoundError naming what is missing."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    if not path.is_file():
        raise FileNotFoundError(str(path))
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{path}: not readable as an image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def insightface_image(name: str) -> np.ndarray:
    """insightface/data/images/<name>, e.g. t1.jpg (group photo, 6 faces), Tom_Hanks_54745.png."""
    return _read_rgb(_package_dir("insightface") / "data" / "images" / name)


def grace_hopper() -> np.ndarray:
    """matplotlib's sample_data/grace_hopper.jpg (512x600 portrait)."""
    return _read_rgb(_package_dir("matplotlib") / "mpl-data" / "sample_data" / "grace_hopper.jpg")


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
