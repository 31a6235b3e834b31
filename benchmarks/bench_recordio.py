"""RecordIO speed, side by side with mxnet 1.9.1's MXIndexedRecordIO in one run, as ratios.

    .venv/bin/python benchmarks/bench_recordio.py [--n 100000] [--repeat 3] [--dir /tmp/bench_rec]

Both sides get the same 112x112 JPEG payloads (about 5 KB; 2,000 distinct faces, cycled) and
scalar labels, and write .rec + .idx with keys 0..n-1:
  write       ours: RecordWriter.write_images (durable=False, like mxnet: no fsync); also reported
              with durable=True. mxnet: write_idx(key, pack(IRHeader, payload)) per record.
  random      every key once in a shuffled order, header + payload unpacked.
  sequential  a full scan in file order, header + payload unpacked.
Best of --repeat runs per side, the sides interleaved so load on the machine hits both; also
records per CPU-second (process time, all threads), which a loaded machine disturbs less.
The mxnet side runs in its own venv ($ARCPIPE_MXNET_PYTHON or .venv-mxnet/bin/python).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from arcpipe.imageio import encode_jpeg  # noqa: E402
from arcpipe.recordio import RecordReader, RecordWriter, unpack  # noqa: E402

MX_SIDE = textwrap.dedent('''
    import json, random, sys, time
    import numpy as np
    import mxnet as mx
    task, data_dir, out_dir, n, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    lens = np.load(data_dir + "/lens.npy")
    blob = open(data_dir + "/payloads.bin", "rb").read()
    offs = np.concatenate([[0], np.cumsum(lens)]).tolist()
    distinct = [blob[offs[i]:offs[i + 1]] for i in range(len(lens))]
    payloads = [distinct[i % len(distinct)] for i in range(n)]
    labels = [float(i // 50) for i in range(n)]
    rec, idx = out_dir + "/mx.rec", out_dir + "/mx.idx"
    c = time.process_time()
    if task == "write":
        t = time.perf_counter()
        w = mx.recordio.MXIndexedRecordIO(idx, rec, "w")
        pack, H = mx.recordio.pack, mx.recordio.IRHeader
        for i in range(n):
            w.write_idx(i, pack(H(0, labels[i], i, 0), payloads[i]))
        w.close()
        dt = time.perf_counter() - t
    elif task == "random":
        r = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
        order = list(range(n)); random.Random(seed).shuffle(order)
        t = time.perf_counter()
        unpack = mx.recordio.unpack
        for k in order:
            unpack(r.read_idx(k))
        dt = time.perf_counter() - t
    else:
        r = mx.recordio.MXRecordIO(rec, "r")
        t = time.perf_counter()
        unpack = mx.recordio.unpack
        count = 0
        while True:
            s = r.read()
            if s is None:
                break
            unpack(s)
            count += 1
        dt = time.perf_counter() - t
        assert count == n, count
    print(json.dumps({"seconds": dt, "cpu": time.process_time() - c, "version": mx.__version__}))
''')


def mxnet_python() -> str | None:
    env = os.environ.get("ARCPIPE_MXNET_PYTHON")
    p = Path(env) if env else REPO / ".venv-mxnet" / "bin" / "python"
    return str(p) if p.is_file() else None


def make_payloads(k: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:112, 0:112].astype(np.float32)
    out = []
    for i in range(k):
        cx, cy, r = 56 + rng.normal(0, 6), 56 + rng.normal(0, 6), 34 + rng.normal(0, 4)
        disk = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img = np.stack([disk * (120 + 80 * rng.random()) + xx * 0.6,
                        disk * (90 + 60 * rng.random()) + yy * 0.5,
                        disk * (70 + 50 * rng.random()) + 30], -1)
        img += rng.normal(0, 3.5, img.shape)
        out.append(encode_jpeg(np.clip(img, 0, 255).astype(np.uint8), 95))
    return out


def ours_write(rec: Path, payloads, labels, durable: bool) -> float:
    n = len(payloads)
    t = time.perf_counter()
    with RecordWriter(rec, durable=durable) as w:
        w.write_images(range(n), labels, payloads)
    return time.perf_counter() - t


def ours_random(rec: Path, n: int, seed: int) -> float:
    r = RecordReader(rec)
    r.keys  # the index is parsed at open time on both sides
    order = list(range(n))
    random.Random(seed).shuffle(order)
    t = time.perf_counter()
    up = r.unpack
    for k in order:
        up(k)
    dt = time.perf_counter() - t
    r.close()
    return dt


def ours_sequential(rec: Path, n: int) -> float:
    r = RecordReader(rec)
    t = time.perf_counter()
    count = 0
    for rec_bytes in r:
        unpack(rec_bytes)
        count += 1
    dt = time.perf_counter() - t
    assert count == n
    r.close()
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--distinct", type=int, default=2000)
    ap.add_argument("--dir", default="/tmp/arcpipe_bench_recordio")
    a = ap.parse_args()
    work = Path(a.dir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    distinct = make_payloads(a.distinct)
    np.save(work / "data" / "lens.npy", np.array([len(p) for p in distinct]))
    (work / "data" / "payloads.bin").write_bytes(b"".join(distinct))
    payloads = [distinct[i % len(distinct)] for i in range(a.n)]
    labels = [float(i // 50) for i in range(a.n)]
    mean_kb = np.mean([len(p) for p in distinct]) / 1024
    mx_py = mxnet_python()
    print(f"records: {a.n}, payload mean {mean_kb:.1f} KiB, best of {a.repeat}; CPUs: {os.cpu_count()}; "
          f"mxnet python: {mx_py or 'not found (ours only)'}")

    script = work / "mx_side.py"
    script.write_text(MX_SIDE)

    def mx(task: str) -> float:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        p = subprocess.run([mx_py, str(script), task, str(work / "data"), str(work), str(a.n), "0"],
                           capture_output=True, text=True, env=env)
        if p.returncode:
            raise SystemExit(f"mxnet side failed:\n{p.stderr[-2000:]}")
        out = json.loads(p.stdout.strip().splitlines()[-1])
        return out["seconds"], out["cpu"]

    rec = work / "ours.rec"
    best: dict[str, float] = {}

    best_cpu: dict[str, float] = {}

    def keep(name: str, res) -> None:
        dt, cpu = res
        best[name] = min(best.get(name, float("inf")), dt)
        best_cpu[name] = min(best_cpu.get(name, float("inf")), cpu)

    def timed(fn, *args):
        c = time.process_time()
        dt = fn(*args)
        return dt, time.process_time() - c

    for _ in range(a.repeat):
        if mx_py:
            keep("mx_write", mx("write"))
        keep("ours_write", timed(ours_write, rec, payloads, labels, False))
    keep("ours_write_durable", timed(ours_write, rec, payloads, labels, True))
    if mx_py:
        same = (rec.read_bytes() == (work / "mx.rec").read_bytes()
                and (work / "ours.idx").read_bytes() == (work / "mx.idx").read_bytes())
        print(f"our .rec/.idx byte-identical to mxnet's: {same}")
    for _ in range(a.repeat):
        if mx_py:
            keep("mx_random", mx("random"))
        keep("ours_random", timed(ours_random, rec, a.n, 0))
    for _ in range(a.repeat):
        if mx_py:
            keep("mx_sequential", mx("sequential"))
        keep("ours_sequential", timed(ours_sequential, rec, a.n))

    print(f"{'task':<22}{'ours rec/s':>14}{'mxnet rec/s':>14}{'ratio':>9}{'target':>9}"
          f"{'ours rec/cpu-s':>16}{'mxnet rec/cpu-s':>17}{'cpu ratio':>11}")
    rows = [("write", "ours_write", "mx_write", 3.0), ("write (fsync)", "ours_write_durable", "mx_write", None),
            ("random read", "ours_random", "mx_random", 3.0), ("sequential scan", "ours_sequential", "mx_sequential", 2.0)]
    result = {}
    for label, ours_k, mx_k, target in rows:
        o = a.n / best[ours_k]
        m = a.n / best[mx_k] if mx_k in best else float("nan")
        ratio = o / m if mx_k in best else float("nan")
        oc = a.n / best_cpu[ours_k]
        mc = a.n / best_cpu[mx_k] if mx_k in best_cpu else float("nan")
        result[label] = {"ours": o, "mxnet": m, "ratio": ratio, "ours_per_cpu_s": oc, "mxnet_per_cpu_s": mc,
                         "cpu_ratio": oc / mc}
        print(f"{label:<22}{o:>14,.0f}{m:>14,.0f}{ratio:>9.2f}{(f'>= {target:g}' if target else ''):>9}"
              f"{oc:>16,.0f}{mc:>17,.0f}{oc / mc:>11.2f}")
    print(json.dumps(result))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
