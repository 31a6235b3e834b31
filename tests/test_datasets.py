"""Training datasets over .rec and folders: decode, flip, normalise; sampler sharding; workers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from arcpipe.datasets import FolderDataset, RecDataset, flip_of, make_sampler, to_tensor
from arcpipe.imageio import decode_rgb, encode_jpeg
from arcpipe.recordio import IRHeader, RecordWriter, pack

from test_pack import face


def _write_rec(d, per_id=(3, 2, 4), header=True):
    d.mkdir(parents=True, exist_ok=True)
    n, k = sum(per_id), len(per_id)
    imgs = {}
    with RecordWriter(d / "train.rec") as w:
        if header:
            w.write(0, pack(IRHeader(0, [n + 1, n + k + 1], 0, 0), b""))
        key = 1 if header else 0
        for lab, cnt in enumerate(per_id):
            for _ in range(cnt):
                img = face(key)
                imgs[key] = (img, lab)
                w.write(key, pack(IRHeader(0, float(lab), key, 0), encode_jpeg(img, 95)))
                key += 1
        if header:
            s = 1
            for j, cnt in enumerate(per_id):
                w.write(n + 1 + j, pack(IRHeader(0, [s, s + cnt], 0, 0), b""))
                s += cnt
    return imgs


def test_to_tensor_normalises_and_flips():
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[0, 0] = (0, 0, 255)  # red pixel, top-left
    t = to_tensor(bgr, flip=False)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    assert t[0, 0, 0] == 1.0 and t[2, 0, 0] == -1.0 and t.min() == -1.0
    f = to_tensor(bgr, flip=True)
    assert f[0, 0, 2] == 1.0 and f[0, 0, 0] == -1.0


def test_flip_coin_is_deterministic_and_fair():
    coins = [flip_of(0, 0, i) for i in range(4000)]
    assert coins == [flip_of(0, 0, i) for i in range(4000)]
    assert 0.45 < np.mean(coins) < 0.55
    assert coins != [flip_of(0, 1, i) for i in range(4000)]  # epochs differ


def test_rec_dataset_items(tmp_path):
    imgs = _write_rec(tmp_path)
    ds = RecDataset(tmp_path / "train.rec", train=False)
    assert len(ds) == 9 and ds.layout == "insightface" and ds.num_classes == 3
    for i in range(len(ds)):
        x, y = ds[i]
        img, lab = imgs[i + 1]
        assert y == lab and x.shape == (3, 112, 112) and -1 <= x.min() and x.max() <= 1
        rgb = ((x.numpy().transpose(1, 2, 0) + 1) * 127.5).round()
        stored = decode_rgb(ds.reader.unpack(i + 1)[1])
        assert np.array_equal(rgb, stored.astype(np.float32))  # exactly the decoded RGB pixels
        assert np.abs(rgb - img.astype(np.float32)).mean() < 8  # JPEG q95 of the noisy source
    train = RecDataset(tmp_path / "train.rec", train=True, seed=5)
    flipped = [i for i in range(len(ds)) if flip_of(5, 0, i)]
    assert flipped
    for i in range(len(ds)):
        want = ds[i][0].flip(-1) if i in flipped else ds[i][0]
        assert torch.equal(train[i][0], want)


def test_plain_pack_and_property(tmp_path):
    _write_rec(tmp_path, header=False)
    ds = RecDataset(tmp_path / "train.rec")
    assert ds.layout == "plain" and len(ds) == 9 and ds.num_classes == 3
    (tmp_path / "property").write_text("10,112,112\n")
    assert RecDataset(tmp_path / "train.rec").num_classes == 10


def test_dataloader_workers_match_single_process(tmp_path):
    _write_rec(tmp_path)
    ds = RecDataset(tmp_path / "train.rec", seed=1)
    ds[0]  # open the map in the parent: workers must reopen after fork
    one = [(x, y) for x, y in DataLoader(ds, batch_size=4, num_workers=0)]
    two = [(x, y) for x, y in DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork")]
    assert len(one) == len(two)
    for (xa, ya), (xb, yb) in zip(one, two):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_sampler_shards_disjoint_and_cover(tmp_path):
    _write_rec(tmp_path)
    ds = RecDataset(tmp_path / "train.rec")
    parts = []
    for rank in range(3):
        s = make_sampler(ds, rank=rank, world_size=3, seed=7)
        s.set_epoch(0)
        parts.append(list(s))
    assert all(len(p) == 3 for p in parts)
    assert sorted(sum(parts, [])) == list(range(9))
    s0 = make_sampler(ds, rank=0, world_size=3, seed=7)
    s0.set_epoch(1)
    assert list(s0) != parts[0] or list(make_sampler(ds, 0, 3, seed=8)) != parts[0]
    # uneven: padded to equal length per rank (DistributedSampler semantics)
    parts4 = [list(make_sampler(ds, rank=r, world_size=4, seed=7)) for r in range(4)]
    assert all(len(p) == 3 for p in parts4) and set(sum(parts4, [])) == set(range(9))
    assert list(make_sampler(ds)) and len(make_sampler(ds)) == 9  # no process group: rank 0 of 1


def test_folder_dataset(tmp_path):
    for name, n in [("zed", 2), ("amy", 1)]:
        (tmp_path / name).mkdir()
        for j in range(n):
            (tmp_path / name / f"{j}.jpg").write_bytes(encode_jpeg(face(j), 95))
    (tmp_path / "amy" / "notes.txt").write_text("not an image")
    ds = FolderDataset(tmp_path, train=False)
    assert len(ds) == 3 and ds.classes == ["amy", "zed"] and [ds.label(i) for i in range(3)] == [0, 1, 1]
    x, y = ds[1]
    assert x.shape == (3, 112, 112) and y == 1
    (tmp_path / "zed" / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(Exception, match="bad.jpg: image does not decode"):
        FolderDataset(tmp_path)[3]
