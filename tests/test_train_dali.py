"""The DALI loader (train.loader: dali) run for real, on the CPU: nvidia-dali reads the pack's flat
shuffled copy and gives the torch loader's images; its epochs are seeded, sharded over ranks and
resumable; the train stage trains with it and resumes a checkpoint to the same weights; what
cannot work is one line."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from arcpipe.datasets import RecDataset
from arcpipe.stages import main
from test_train_stage import TINY, tiny_pack

dali = pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (pip install -e '.[test]')")
pytestmark = pytest.mark.dali

from arcpipe.train.dali import DaliBatches, flat_files  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    """5 identities x 7 images, with the flat shuffled copy (35 records)."""
    return tiny_pack(tmp_path_factory.mktemp("dalipack"), identities=5, per=7, flat=True)


def _batches(pack: Path, **kw) -> DaliBatches:
    args = dict(rank=0, world_size=1, seed=0, batch_size=5, threads=2, device=CPU)
    args.update(kw)
    return DaliBatches(*flat_files(pack), **args)


def _key(image: torch.Tensor) -> str:
    """One image's identity whatever its flip: the digest of the unflipped or mirrored pixels, the smaller."""
    q = torch.round((image + 1) * 127.5).to(torch.uint8).numpy()  # back to the decoded pixels
    return min(hashlib.sha1(q.tobytes()).hexdigest(), hashlib.sha1(q[:, :, ::-1].copy().tobytes()).hexdigest())


def _epoch(b: DaliBatches, epoch: int, skip: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in b.epoch(epoch, skip)]


def test_dali_gives_the_torch_loaders_images_and_labels(pack):
    ref = RecDataset(flat_files(pack)[0], train=False)
    assert len(ref) == 35
    plain = _batches(pack, shuffle=False, flip=False, batch_size=7)
    got = _epoch(plain, 0)
    assert len(got) == plain.steps() == 5
    images = torch.cat([x for x, _ in got])
    labels = torch.cat([y for _, y in got])
    want = torch.stack([ref[i][0] for i in range(35)])
    assert images.dtype == torch.float32 and images.shape == (35, 3, 112, 112)
    assert labels.dtype == torch.int64 and labels.tolist() == [ref[i][1] for i in range(35)]
    assert float((images - want).abs().max()) < 1e-4  # the same decode, RGB, x / 127.5 - 1
    # the training transform: every image unflipped or mirrored, both happen
    flipped = torch.cat([x for x, _ in _epoch(_batches(pack, shuffle=False, batch_size=7), 0)])
    same = [torch.allclose(a, b, atol=1e-4) for a, b in zip(flipped, want)]
    mirrored = [torch.allclose(a, b.flip(-1), atol=1e-4) for a, b in zip(flipped, want)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)


def test_dali_epochs_are_seeded_sharded_over_ranks_and_resumable(pack):
    ref = RecDataset(flat_files(pack)[0], train=False)
    shards = [{_key(ref[i][0]) for i in range(35 * s // 2, 35 * (s + 1) // 2)} for s in (0, 1)]  # DALI's cut
    ranks = [_batches(pack, rank=r, world_size=2, batch_size=4) for r in (0, 1)]
    assert [b.steps() for b in ranks] == [4, 4]  # floor(floor(35 / 2) / 4): the smallest shard's full batches
    e0 = [_epoch(b, 0) for b in ranks]
    for epoch, batches in ((0, e0), (1, [_epoch(b, 1) for b in ranks])):
        for rank, ep in enumerate(batches):
            keys = [_key(x) for xs, _ in ep for x in xs]
            assert len(keys) == len(set(keys)) == 16  # no image twice in an epoch
            assert set(keys) <= shards[(rank + epoch) % 2]  # rank r reads shard (r + e) mod 2
    # seeded: the same epoch again is the same batches, bit for bit; a resumed epoch drops its first batches
    again = _epoch(_batches(pack, rank=0, world_size=2, batch_size=4), 0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(e0[0], again))
    resumed = _epoch(ranks[0], 0, skip=3)
    assert len(resumed) == 1 and torch.equal(resumed[0][0], e0[0][3][0])
    other_seed = _epoch(_batches(pack, rank=0, world_size=2, batch_size=4, seed=1), 0)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(e0[0], other_seed))


def _params(root: Path, pack: Path, **over) -> Path:
    train = {**TINY, "batch_size": 7, "epochs": 2, "loader": "dali", "export": ["torchscript"],
             "pack_dir": str(pack), "out_dir": str(root / "models" / "train"),
             "checkpoint_dir": str(root / "models" / "checkpoints"), "live_dir": str(root / "dvclive"), **over}
    p = root / "params.yaml"
    p.write_text(yaml.safe_dump({"train": train}))
    return p


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=False)["backbone"]


def test_train_stage_trains_with_dali_and_resumes_to_the_same_weights(tmp_path, monkeypatch, pack):
    whole = tmp_path / "whole"
    whole.mkdir()
    monkeypatch.chdir(whole)
    assert main("train", ["--params", str(_params(whole, pack))]) == 0
    info = json.loads((whole / "models" / "train" / "train.json").read_text())
    assert info["steps"] == info["total_steps"] == 2 * (35 // 7) and np.isfinite(info["final_loss"])
    side = json.loads((whole / "models" / "train" / "backbone.json").read_text())
    assert side["trained_on"].endswith("train_flat.rec")
    assert "; dali loader" in (whole / "logs" / "train.log").read_text()
    ckpts = sorted((whole / "models" / "checkpoints").glob("*/step-*.pt"))
    mid = next(c for c in ckpts if int(c.stem.split("-")[1]) % 5)  # the older ones are pruned: step 8

    # a run resumed mid-epoch (batch 3 of the second epoch) from that checkpoint ends with the same weights
    cut = tmp_path / "cut"
    cut.mkdir()
    monkeypatch.chdir(cut)
    params = _params(cut, pack)
    run_dir = cut / "models" / "checkpoints" / mid.parent.name
    run_dir.mkdir(parents=True)
    shutil.copy2(mid, run_dir / mid.name)
    assert main("train", ["--params", str(params)]) == 0
    assert f"resumed {run_dir / mid.name} at step 8 of 10 (epoch 1, batch 3)" in (cut / "logs" / "train.log").read_text()
    a = _weights(ckpts[-1])
    b = _weights(sorted(run_dir.glob("step-*.pt"))[-1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the torch loader on the same pack is another run (its own run id), not a resume of this one
    monkeypatch.chdir(whole)
    assert main("train", ["--params", str(_params(whole, pack, loader="torch"))]) == 0
    assert json.loads((whole / "models" / "train" / "train.json").read_text())["run_id"] != info["run_id"]


def test_what_dali_cannot_do_is_one_line(tmp_path, monkeypatch, pack, capsys):
    monkeypatch.chdir(tmp_path)
    bare = tmp_path / "bare"
    shutil.copytree(pack, bare)
    for f in flat_files(bare):
        f.unlink()
    assert main("train", ["--params", str(_params(tmp_path, bare))]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if " start: " not in ln]
    assert len(err) == 1 and "train_flat.rec: no such file" in err[0] and "flat_shuffled" in err[0]
    # a flat copy cut short: DALI's message brought down to its cause, the file named, nothing exported
    rec = flat_files(bare)[0]
    shutil.copy2(flat_files(pack)[1], flat_files(bare)[1])
    rec.write_bytes(flat_files(pack)[0].read_bytes()[:20000])
    assert main("train", ["--params", str(_params(tmp_path, bare))]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if " error: " in ln]
    assert len(err) == 1 and f"{rec}: DALI failed in batch" in err[0] and "corrupted record" in err[0], err
    assert not (tmp_path / "models" / "train").exists()
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as on a machine without the package
    assert main("train", ["--params", str(_params(tmp_path, pack))]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if " start: " not in ln]
    assert len(err) == 1 and "nvidia-dali cannot be imported" in err[0] and "train.loader: torch" in err[0]
    assert not (tmp_path / "models" / "train").exists()


def test_two_gloo_ranks_train_with_dali_on_their_own_shards(tmp_path, pack):
    """torchrun --nproc-per-node 2 with loader dali: each rank reads its shard through DALI, DDP
    keeps their backbones identical."""
    import os
    import subprocess

    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).resolve().parents[1] / "scripts" / "train.py"), "--params",
           str(_params(tmp_path, pack, batch_size=8, workers=1))]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    sums = []
    for log in ("train.log", "train.rank1.log"):
        text = (tmp_path / "logs" / log).read_text()
        assert "dali loader" in text
        sums.append([ln.split("backbone sha256 ")[1].split()[0] for ln in text.splitlines() if "backbone sha256 " in ln][-1])
    assert sums[0] == sums[1]
    info = json.loads((tmp_path / "models" / "train" / "train.json").read_text())
    assert info["world_size"] == 2 and info["steps_per_epoch"] == (35 // 2) // 4
