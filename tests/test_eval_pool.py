"""Decode/align in a worker pool: the evaluate stage gives the same metrics, plots and embeddings
with 1 and 2 workers (several pools per benchmark), and the saved embeddings are the features
the protocols use, keyed as documented."""
import json

import cv2
import numpy as np
import pytest
import yaml

from arcpipe.align.transform import norm_crop
from arcpipe.evaluate import loader
from arcpipe.evaluate.embeddings import EmbeddingTable, read_embeddings, write_npz
from arcpipe.evaluate.ijb import read_landmarks
from arcpipe.evaluate.loader import rebatch
from arcpipe.evaluate.model import PixelsEmbedder
from arcpipe.params import ParamsError, load_params
from arcpipe.stages import main
from test_evaluate_stage import _decode, make_pack
from test_ijb import _write_ijb
from test_megaface import _write_aligned_set
from test_ytf import _write_ytf


def _all_benchmarks(tmp_path):
    rng = np.random.default_rng(4)
    _write_ijb(tmp_path / "IJBS", bad_line=3)
    (tmp_path / "IJBS" / "loose_crop" / "6.jpg").unlink()           # an unreadable image, skipped
    _write_aligned_set(tmp_path / "fs", [n for n in ("Ann", "Bob", "Cid") for _ in range(3)], rng)
    _write_aligned_set(tmp_path / "mf", [""] * 60, rng)
    frames, splits = _write_ytf(tmp_path)
    make_pack(tmp_path / "lfw.bin", pairs=20, seed=1)
    return {
        "model": {"kind": "pixels"}, "batch_size": 7,
        "verification": {"lfw": str(tmp_path / "lfw.bin")},
        "ijb": {"ijbs": {"root": str(tmp_path / "IJBS"), "target": "IJBS", "fars": [0.01, 0.1, 0.5],
                         "fpirs": [0.01, 0.1]}},
        "megaface": {"probe_set": str(tmp_path / "fs"), "distractor_set": str(tmp_path / "mf"),
                     "sizes": [10, 50], "fars": [0.001, 0.1], "chunk": 14},
        "ytf": {"frames": str(frames), "pairs": str(splits)},
    }


def _run(tmp_path, ev, out, workers):
    ev = dict(ev, metrics_dir=str(tmp_path / out / "metrics"), plots_dir=str(tmp_path / out / "plots"),
              embeddings_dir=str(tmp_path / out / "emb"))
    p = tmp_path / f"params_{out}.yaml"
    p.write_text(yaml.safe_dump({"evaluate": ev}))
    assert main("evaluate", ["--params", str(p), "--workers", str(workers)]) == 0
    return tmp_path / out


def test_one_and_two_workers_give_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loader, "POOL_MIN_IMAGES", 0)    # a pool even for these small sets
    monkeypatch.setattr(loader, "LOAD_UNIT", 4)          # many units in flight per benchmark
    ev = _all_benchmarks(tmp_path)
    one = _run(tmp_path, ev, "one", 1)
    assert "crop_dir" in loader._W                        # 1 worker: IJB read and aligned in this process
    loader._W.clear()
    two = _run(tmp_path, ev, "two", 2)
    assert "crop_dir" not in loader._W                    # 2 workers: in the pool's processes
    names = sorted(p.name for p in (one / "metrics").iterdir())
    assert names == ["ijbs.json", "lfw.json", "megaface.json", "summary.json", "ytf.json"]
    for name in (n for n in names if n != "summary.json"):   # the summary holds the params digest
        a = json.loads((one / "metrics" / name).read_text().replace("/one/", "/x/"))
        b = json.loads((two / "metrics" / name).read_text().replace("/two/", "/x/"))
        assert a == b, name
    for f in sorted((one / "plots").iterdir()):
        assert f.read_bytes() == (two / "plots" / f.name).read_bytes(), f.name
    embs = sorted(p.name for p in (one / "emb").iterdir())
    assert embs == ["ijbs.npz", "lfw.npz", "megaface.npz", "summary.json", "ytf.npz"]
    for name in embs:
        a, b = (one / "emb" / name).read_bytes(), (two / "emb" / name).read_bytes()
        assert a.replace(b"/one/", b"/x/") == b.replace(b"/two/", b"/x/"), name

    ijb = json.loads((one / "metrics" / "ijbs.json").read_text())
    assert ijb["counts"]["skipped_bad_landmarks"] == 1 and ijb["counts"]["skipped_unreadable"] == 1
    assert ijb["counts"]["images_embedded"] == 14
    summary = json.loads((one / "emb" / "summary.json").read_text())
    assert {k: v["rows"] for k, v in summary["files"].items()} == {"ijbs": 14, "lfw": 40, "megaface": 59, "ytf": 68}
    assert summary["model"]["kind"] == "pixels"


def test_saved_embeddings_are_the_protocol_features(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loader, "POOL_MIN_IMAGES", 0)
    ev = _all_benchmarks(tmp_path)
    ev.pop("ytf")
    out = _run(tmp_path, ev, "run", 2)
    px = PixelsEmbedder()

    def check(table, raw):
        emb = table["embedding"]
        assert emb.dtype == np.float16 and table["norm"].dtype == np.float32
        np.testing.assert_allclose(table["norm"], np.linalg.norm(raw.astype(np.float64), axis=1), rtol=1e-6)
        np.testing.assert_allclose(emb.astype(np.float64), raw / np.linalg.norm(raw, axis=1, keepdims=True),
                                   atol=1e-3)

    # verification pack: key = image index, feature = emb(img) + emb(flip)
    lfw = read_embeddings(out / "emb" / "lfw.npz")
    import pickle

    with open(tmp_path / "lfw.bin", "rb") as f:
        bins, _ = pickle.load(f)
    assert lfw["key"].tolist() == list(range(40))
    check(lfw, px.embed(_decode(bins), flip=True))

    # IJB: key = image name, row = meta line; the skipped rows (line 3: bad landmarks, 6.jpg) are absent
    ijb = read_embeddings(out / "emb" / "ijbs.npz")
    lm = read_landmarks(tmp_path / "IJBS" / "meta" / "ijbs_name_5pts_score.txt")
    assert "2.jpg" not in ijb["key"] and "6.jpg" not in ijb["key"] and ijb["key"].size == 14
    assert [lm.names[r - 1] for r in ijb["row"]] == ijb["key"].tolist()
    crops = np.stack([cv2.cvtColor(norm_crop(cv2.imread(str(tmp_path / "IJBS" / "loose_crop" / k)),
                                             lm.landmarks[r - 1], 112), cv2.COLOR_BGR2RGB)
                      for k, r in zip(ijb["key"], ijb["row"])])
    check(ijb, px.embed(crops, flip=True))

    # MegaFace: probes then the distractors used, keyed by source
    mf = read_embeddings(out / "emb" / "megaface.npz")
    assert mf["role"].tolist() == ["probe"] * 9 + ["distractor"] * 50
    assert mf["key"][0] == "Ann/Ann_0.jpg" and mf["record"].tolist() == list(range(9)) + list(range(50))


def test_rebatch_cuts_fixed_batches_from_any_pieces():
    rng = np.random.default_rng(0)
    for size in (1, 3, 7, 64):
        cuts = np.sort(rng.choice(np.arange(1, 200), 20, replace=False))
        ids = np.arange(200)
        pieces = [(ids[a:b], ids[a:b, None] * 10) for a, b in zip(np.r_[0, cuts], np.r_[cuts, 200])]
        pieces.insert(3, (ids[:0], ids[:0, None]))          # an empty piece (every row of a unit skipped)
        got = list(rebatch(pieces, size))
        assert [len(i) for i, _ in got] == [size] * (200 // size) + ([200 % size] if 200 % size else [])
        assert np.array_equal(np.concatenate([i for i, _ in got]), ids)
        assert np.array_equal(np.concatenate([x for _, x in got])[:, 0], ids * 10)


def test_embeddings_file_is_reproducible_and_plain(tmp_path):
    t = EmbeddingTable("test")
    t.add(np.array(["a", "b"]), np.array([[3, 4], [0, 0]], np.float32), row=np.array([1, 2]))
    t.add(np.array(["c"]), np.array([[1e30, 0]], np.float32), row=np.array([5]))   # beyond float16's range
    t.write(tmp_path / "x.npz")
    first = (tmp_path / "x.npz").read_bytes()
    t.write(tmp_path / "x.npz")
    assert (tmp_path / "x.npz").read_bytes() == first
    z = read_embeddings(tmp_path / "x.npz")
    assert z["key"].tolist() == ["a", "b", "c"] and z["row"].tolist() == [1, 2, 5]
    assert z["embedding"].dtype == np.float16
    np.testing.assert_allclose(z["embedding"].astype(np.float64), [[0.6, 0.8], [0, 0], [1, 0]], atol=5e-4)
    assert z["norm"].tolist() == [5.0, 0.0, np.float32(1e30)]
    with pytest.raises(ValueError, match="objects"):
        write_npz(tmp_path / "y.npz", {"key": np.array([{"a": 1}], dtype=object)})
    assert not (tmp_path / "y.npz").exists()


@pytest.mark.parametrize("ev,pattern", [
    ({"embeddings_dir": "metrics"}, "metrics_dir 'metrics' and embeddings_dir 'metrics' must be separate"),
    ({"embeddings_dir": "out", "plots_dir": "out/plots"}, "plots_dir 'out/plots' and embeddings_dir 'out'"),
    ({"workers": 0}, "workers"),
    ({"worker": 2}, "worker: unknown key"),
])
def test_params_refuse_clashing_folders_and_bad_workers(tmp_path, ev, pattern):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"evaluate": ev}))
    with pytest.raises(ParamsError, match=pattern):
        load_params([p])
