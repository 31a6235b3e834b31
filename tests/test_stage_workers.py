"""Process pools: detect and align over two data sets in one process, with 2 workers, give the same
bytes as with one. (The fork deadlock that forkserver avoids shows on the sample: the slow
end-to-end tests run it with workers: 2.)"""
import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

from test_detect_stage import _weights_or_skip, portrait, write_params

REPO = Path(__file__).resolve().parents[1]


def _faces(root: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    face = portrait()
    for i in range(n):
        ident = root / f"id{i % 2}"
        ident.mkdir(parents=True, exist_ok=True)
        a = np.deg2rad(rng.uniform(-12, 12))
        s = rng.uniform(0.8, 1.1)
        M = cv2.getRotationMatrix2D((128, 150), np.rad2deg(a), s)
        img = cv2.warpAffine(face, M, (256, 300), borderMode=cv2.BORDER_REFLECT)
        cv2.imwrite(str(ident / f"{i:03d}.jpg"), img[:, :, ::-1])
    (root / "id0" / "corrupt.jpg").write_bytes(b"not a jpeg")  # rejects go on the contact sheet too
    cv2.imwrite(str(root / "id1" / "blank.jpg"), np.full((120, 120, 3), 128, np.uint8))


def _run(tmp: Path, workers: int) -> dict[str, str]:
    params = write_params(tmp, {
        "a": {"source": str(tmp.parent / "raw_a"), "format": "folder", "preset": "deploy"},
        "b": {"source": str(tmp.parent / "raw_b"), "format": "folder", "preset": "deploy"},
    })
    cfg = yaml.safe_load(params.read_text())
    cfg["align"]["contact_sheet"] = 48  # a big sheet: OpenCV runs its thread pool in the parent
    params.write_text(yaml.safe_dump(cfg))
    for stage in ("detect", "align"):
        r = subprocess.run([sys.executable, str(REPO / "scripts" / f"{stage}.py"), "--params", str(params),
                            "--workers", str(workers)], cwd=tmp, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    return {str(p.relative_to(tmp)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tmp.glob("align/*/faces.rec")) + sorted(tmp.glob("detect/*/manifest.parquet"))}


def test_two_workers_two_datasets_same_bytes_as_one(tmp_path):
    _weights_or_skip()
    _faces(tmp_path / "raw_a", 12, 1)
    _faces(tmp_path / "raw_b", 6, 2)
    (tmp_path / "w1").mkdir()
    (tmp_path / "w2").mkdir()
    one = _run(tmp_path / "w1", 1)
    two = _run(tmp_path / "w2", 2)
    assert len(one) == 4 and one == two
