"""Real photographs with faces that come with pip-installed packages (no download): the base of
the embedded sample and of the detector's tests and benchmark. Each loader returns an RGB uint8
HxWx3 array or raises PipelineError naming what is missing."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import PipelineError


def package_dir(name: str) -> Path:
    """Where an installed package's files are, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"package '{name}' is not installed (the real photos we use ship in it)")
    return Path(list(spec.submodule_search_locations)[0])


# The files the embedded sample is made from, as data sets of params `download` (one file each,
# url package://<package>/<path>, sha256 pinned): the download stage brings them into
# <download.out_dir>/<set>/ and the sample stage reads them from there.
SAMPLE_PHOTOS: dict[str, tuple[str, str]] = {
    "photo_t1": ("insightface", "data/images/t1.jpg"),
    "photo_tom_hanks": ("insightface", "data/images/Tom_Hanks_54745.png"),
    "photo_mask_black": ("insightface", "data/images/mask_black.jpg"),
    "photo_mask_blue": ("insightface", "data/images/mask_blue.jpg"),
    "photo_mask_green": ("insightface", "data/images/mask_green.jpg"),
    "photo_mask_white": ("insightface", "data/images/mask_white.jpg"),
    "photo_astronaut": ("skimage", "data/astronaut.png"),
    "photo_lfw_subset": ("skimage", "data/lfw_subset.npy"),
    "photo_grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}


def sample_photo(name: str, root: Optional[str | Path] = None) -> Path:
    """Where the sample's photo `name` (a key of SAMPLE_PHOTOS) is: <root>/<name>/<file> when the
    download stage brought it into `root`, else the file in its installed package."""
    package, rel = SAMPLE_PHOTOS[name]
    if root is None:
        return package_dir(package) / rel
    return Path(root) / name / Path(rel).name


def package_url(name: str) -> str:
    """The download url of the sample's photo `name`: package://<package>/<path>."""
    package, rel = SAMPLE_PHOTOS[name]
    return f"package://{package}/{rel}"


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
