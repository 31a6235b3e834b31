"""One shard of an MS1M-scale source: what it reads and how much memory it takes, ours vs before.

Builds a synthetic MS-Celeb-1M TSV (default 200,000 rows of small real-looking JPEG faces, made
from the real photos the sample uses), then runs detect and align for one shard of 64 with this
checkout and with an older checkout of the project side by side (`--before DIR`, for example
`git worktree add /tmp/arcpipe-before <commit>`), and prints for each:

  bytes read from the TSV    (strace of every process: each read/pread of that file, workers included)
  bytes read, all files      (rchar summed over the process tree)
  wall seconds, peak memory  (PSS summed over the process tree, sampled every 20 ms)

Align is also run on a 4x larger shard (1 of 16) to show whether its peak memory grows with the
shard's image count. The align runs start from a detect manifest the benchmark writes itself
(given landmarks of the synthetic faces), so no full detection of the 200,000 rows is needed.

    python benchmarks/bench_shards.py --before /tmp/arcpipe-before [--rows 200000] [--work /tmp/bench-shards]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

SIZE = 112  # synthetic face crops, as MS1M's TSV holds small face crops


def faces(n_base: int = 24) -> list[tuple[np.ndarray, np.ndarray]]:
    """(BGR 112x112 face, its five landmarks) from the real photos the sample starts from."""
    import cv2

    from arcpipe.sample.base_faces import CANVAS, base_faces

    out = []
    for f in base_faces()[:n_base]:
        s = SIZE / (CANVAS * 0.6)
        m = np.array([[s, 0, SIZE / 2 - s * CANVAS / 2], [0, s, SIZE / 2 - s * CANVAS / 2]])
        img = cv2.warpAffine(f.image, m, (SIZE, SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        out.append((img, f.landmarks @ m[:, :2].T + m[:, 2]))
    return out


def build(work: Path, rows: int, ids: int) -> tuple[Path, Path]:
    """The TSV and a detect manifest for it (status ok, the faces' own landmarks)."""
    import cv2
    import pandas as pd

    from arcpipe.columns import BOX_COLUMNS, LANDMARK_COLUMNS
    from arcpipe.sources import content_hash

    tsv = work / "ms1m.tsv"
    man_dir = work / "detect_input"
    if tsv.is_file() and (man_dir / "manifest.parquet").is_file():
        return tsv, man_dir
    base = faces()
    rng = np.random.default_rng(0)
    cols: dict[str, list] = {c: [] for c in ["row", "source", "identity", "status", "reason", "note", "origin",
                                              "width", "height", "n_faces", "score", "content", "loc",
                                              *BOX_COLUMNS, *LANDMARK_COLUMNS]}
    t0 = time.time()
    with open(tsv, "wb") as fh:
        for r in range(rows):
            ident = r * ids // rows
            img, lmk = base[ident % len(base)]
            shift = rng.integers(-3, 4, size=2)
            gain = rng.uniform(0.8, 1.2)
            view = np.clip(np.roll(img, tuple(shift), axis=(0, 1)).astype(np.float32) * gain, 0, 255).astype(np.uint8)
            jpeg = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            off = fh.tell()
            line = b"\t".join([f"m.{ident:07d}".encode(), b"%d" % (r % 50), b"http://x/%d.jpg" % r, b"http://x/",
                               b"%d" % r, base64.b64encode(b"rect"), base64.b64encode(jpeg)]) + b"\n"
            fh.write(line)
            pts = lmk + shift[::-1]
            vals = dict(row=r, source=f"ms1m.tsv:{r + 1}", identity=f"m.{ident:07d}", status="ok", reason="",
                        note="", origin="given", width=SIZE, height=SIZE, n_faces=1, score=1.0,
                        content=content_hash(jpeg), loc=json.dumps([str(tsv), off, len(line), r + 1]))
            vals.update(zip(BOX_COLUMNS, [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()]))
            vals.update(zip(LANDMARK_COLUMNS, pts.reshape(-1).tolist()))
            for k, v in vals.items():
                cols[k].append(v)
    man_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(cols).to_parquet(man_dir / "manifest.parquet", index=False, row_group_size=16384)
    from arcpipe.fsutil import sha256_file

    (man_dir / "summary.json").write_text(json.dumps({"manifest_sha256": sha256_file(man_dir / "manifest.parquet")}))
    print(f"built {rows:,} rows ({tsv.stat().st_size / 1e9:.2f} GB TSV) in {time.time() - t0:.0f} s", flush=True)
    return tsv, man_dir


def params(work: Path, side: str, checkout: Path, tsv: Path, shards: int, workers: int) -> Path:
    import yaml

    p = yaml.safe_load((checkout / "params.yaml").read_text())  # each side its own schema
    root = work / side
    p["detect"].update(out_dir=str(root / "detect"), shards=shards, workers=workers,
                       datasets={"ms1m": {"source": str(tsv), "format": "ms1m_tsv", "preset": "ms1m"}})
    p["align"].update(out_dir=str(root / "align"), shards=shards, workers=workers)
    p["pack"]["dataset"] = "ms1m"
    p["evalpack"]["sets"] = {}
    path = work / f"params-{side}-{shards}.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def measure(cmd: list[str], cwd: Path, env: dict) -> dict:
    """Wall time, peak PSS of the process tree, rchar of the tree."""
    import psutil

    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak, chars = 0, {}
    while proc.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        total = 0
        for p in tree:
            try:
                total += p.memory_full_info().pss
                chars[p.pid] = p.io_counters().read_chars
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        peak = max(peak, total)
        time.sleep(0.02)
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"seconds": time.time() - t0, "peak_mb": peak / 2**20, "rchar_mb": sum(chars.values()) / 2**20}


def tsv_bytes(cmd: list[str], cwd: Path, env: dict, tsv: Path) -> int:
    """Bytes the command and its children read from `tsv` (strace, one trace file per process so
    no call is split across lines, -y to name each call's file)."""
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(["strace", "-ff", "-qq", "-y", "-e", "trace=read,pread64,readv,preadv", "-o",
                            f"{d}/trace", *cmd], cwd=cwd, env=env, capture_output=True)
        if r.returncode != 0:
            raise SystemExit(r.stderr.decode(errors="replace")[-3000:])
        pat = re.compile(rf"<{re.escape(str(tsv))}>.*= (\d+)$")
        return sum(int(m.group(1)) for f in Path(d).iterdir()
                   for line in open(f, errors="replace") if (m := pat.search(line.rstrip())))


def side_env(checkout: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout / "src"), TQDM_DISABLE="1")
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="an older checkout of this project to compare with")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--ids", type=int, default=4_000)
    ap.add_argument("--shard", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-shards")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    tsv, man_dir = build(a.work, a.rows, a.ids)
    py = sys.executable
    sides = {"before": a.before.resolve(), "ours": REPO}
    results = {}
    for side, checkout in sides.items():
        env = side_env(checkout)
        root = a.work / side
        shutil.rmtree(root, ignore_errors=True)
        res = {}
        p64 = params(a.work, side, checkout, tsv, 64, a.workers)
        if side == "ours":  # the listing: once per data set, read by every shard job
            cmd = [py, "scripts/detect.py", "--params", str(p64), "--dataset", "ms1m", "--list"]
            res["list"] = measure(cmd, checkout, env)
            res["list"]["tsv_mb"] = tsv_bytes(cmd, checkout, env, tsv) / 2**20
        cmd = [py, "scripts/detect.py", "--params", str(p64), "--dataset", "ms1m", "--shard", f"{a.shard}/64"]
        res["detect"] = measure(cmd, checkout, env)
        shutil.rmtree(root / "detect" / "ms1m" / "parts")
        res["detect"]["tsv_mb"] = tsv_bytes(cmd, checkout, env, tsv) / 2**20
        for shards in (64, 16):
            pk = params(a.work, side, checkout, tsv, shards, a.workers)
            det = root / "detect" / "ms1m"
            det.mkdir(parents=True, exist_ok=True)
            shutil.copy(man_dir / "manifest.parquet", det / "manifest.parquet")
            shutil.copy(man_dir / "summary.json", det / "summary.json")
            shutil.rmtree(root / "align", ignore_errors=True)
            cmd = [py, "scripts/align.py", "--params", str(pk), "--dataset", "ms1m", "--shard", f"{a.shard * shards // 64}/{shards}"]
            res[f"align_1of{shards}"] = measure(cmd, checkout, env)
            shutil.rmtree(root / "align", ignore_errors=True)
            res[f"align_1of{shards}"]["tsv_mb"] = tsv_bytes(cmd, checkout, env, tsv) / 2**20
        results[side] = res
        print(side, json.dumps(res, indent=1), flush=True)
    size = tsv.stat().st_size / 2**20
    print(f"\nTSV {size:,.0f} MB, {a.rows:,} rows; shard {a.shard} of 64 = {a.rows // 64:,} rows; {a.workers} workers")
    print(f"{'run':<16}{'side':<8}{'TSV MB read':>12}{'of the file':>12}{'all files MB':>14}{'seconds':>9}{'peak MB':>9}")
    for job in ["list", "detect", "align_1of64", "align_1of16"]:
        for side in sides:
            r = results[side].get(job)
            if r:
                print(f"{job:<16}{side:<8}{r['tsv_mb']:>12,.1f}{r['tsv_mb'] / size:>12.4f}{r['rchar_mb']:>14,.0f}"
                      f"{r['seconds']:>9.1f}{r['peak_mb']:>9.0f}")
    for job in ["detect", "align_1of64"]:
        b, o = results["before"][job], results["ours"][job]
        print(f"{job}: TSV read {b['tsv_mb'] / max(o['tsv_mb'], 1e-9):.1f}x less, "
              f"{b['seconds'] / o['seconds']:.2f}x faster, peak {b['peak_mb'] / o['peak_mb']:.2f}x lower")
    for side in sides:
        r = results[side]
        print(f"{side}: align peak 1/16 shard vs 1/64 shard (4x the images): "
              f"{r['align_1of16']['peak_mb']:.0f} vs {r['align_1of64']['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
