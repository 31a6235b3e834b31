"""The features stage: a pack's (or an aligned set's) images embedded into a feature store equal a
direct embedding of the same images; 3 shards + merge give the bytes of one go; finished parts are
reused and failed or killed ones leave nothing; bad input exits 2 with one line naming it."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from arcpipe.clean.features import identity_bounds, open_feature_source
from arcpipe.clean.store import FeatureStore
from arcpipe.evaluate.model import load_embedder
from arcpipe.imageio import decode_rgb
from arcpipe.params import load_params
from arcpipe.recordio import RecordReader, image_label, read_idx, unpack
from arcpipe.stages import main
from test_pack import make_aligned

REPO = Path(__file__).resolve().parents[1]
COUNTS = [3, 5, 2, 4, 6, 1, 3]  # images per identity: 24 images, 7 identities
STORE_FILES = ("features.npy", "index.parquet", "meta.json", "identities.parquet")
OUTPUTS = STORE_FILES + ("summary.json",)


def _in(path: Path):
    """A context that runs a stage from `path` (its logs/ go there)."""
    class _Cwd:
        def __enter__(self):
            self.old = os.getcwd()
            os.chdir(path)

        def __exit__(self, *exc):
            os.chdir(self.old)
    return _Cwd()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A tiny pack (identities of uneven sizes), its aligned set, and a small ONNX model."""
    root = tmp_path_factory.mktemp("features")
    rows = [(f"id{i}/{j}.jpg", f"id{i}", "ok") for i, n in enumerate(COUNTS) for j in range(n)]
    make_aligned(root / "align" / "train", rows)
    (root / "pack.yaml").write_text(yaml.safe_dump({
        "align": {"out_dir": str(root / "align")},
        "pack": {"dataset": "train", "out_dir": str(root / "pack"), "flat_shuffled": False}}))
    with _in(root):
        assert main("pack", ["--params", str(root / "pack.yaml")]) == 0
    from arcpipe.train.backbones import build_backbone
    from arcpipe.train.export import export_backbone

    torch.manual_seed(0)
    net = build_backbone("r18", embedding_size=32, width=0.125, layers=[1, 1, 1, 1])
    export_backbone(net, root / "model", formats=("onnx",), stem="backbone", exporter="legacy")
    return root


def _params(tmp: Path, root: Path, sets=None, model=None, **over) -> Path:
    feats = {"out_dir": str(tmp / "features"),
             "model": model or {"kind": "onnx", "path": str(root / "model" / "backbone.onnx")},
             "sets": sets or {"train": {"source": str(root / "pack"), "format": "pack"}},
             "batch_size": 4, "workers": 1, **over}
    path = tmp / f"params_{len(list(tmp.glob('params_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({"features": feats}))
    return path


def _run(tmp: Path, params: Path, *args: str) -> int:
    with _in(tmp):
        return main("features", ["--params", str(params), *args])


def _pack_images(pack: Path):
    """(keys, labels, RGB faces) of the pack's image records, read directly."""
    r = RecordReader(pack / "train.rec", pack / "train.idx")
    keys = list(range(1, int(unpack(r.read(0))[0].label[0])))
    rgb = np.stack([decode_rgb(unpack(r.read(k))[1]) for k in keys])
    return keys, [image_label(r, k) for k in keys], rgb


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_pack_features_equal_a_direct_embedding(root, tmp_path):
    assert _run(tmp_path, _params(tmp_path, root)) == 0
    out = tmp_path / "features" / "train"
    st = FeatureStore(out)
    keys, labels, rgb = _pack_images(root / "pack")
    assert st.keys.tolist() == [str(k) for k in keys]
    assert st.labels.tolist() == labels == [i for i, n in enumerate(COUNTS) for _ in range(n)]
    emb = load_embedder(SimpleNamespace(kind="onnx", path=str(root / "model" / "backbone.onnx"), sidecar=None))
    direct = emb.embed(rgb, flip=False)
    feats = st.read(0, st.count)
    assert st.dim == 32 and feats.shape == (24, 32)
    np.testing.assert_allclose(feats, _unit(direct), atol=1e-3)      # float16 precision of unit rows
    np.testing.assert_allclose(st.index["norm"], np.linalg.norm(direct, axis=1), rtol=1e-5)
    assert st.meta["model"]["sha256"] and st.meta["flip"] is False and st.meta["format"] == "pack"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["in"] == summary["out"] == 24 and summary["identities"] == 7 and summary["unlabelled"] == 0
    assert "seconds" not in summary and summary["stage"] == "features"
    ids = pd.read_parquet(out / "identities.parquet")
    assert ids["label"].tolist() == list(range(7)) and ids["images"].tolist() == COUNTS
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)


def test_flip_adds_the_mirrored_view(root, tmp_path):
    assert _run(tmp_path, _params(tmp_path, root, model={"kind": "pixels"}, flip=True, workers=2)) == 0
    st = FeatureStore(tmp_path / "features" / "train")
    _, _, rgb = _pack_images(root / "pack")
    emb = load_embedder(SimpleNamespace(kind="pixels"))
    np.testing.assert_allclose(st.read(0, st.count), _unit(emb.embed(rgb, flip=True)), atol=1e-3)
    assert st.dim == 256


def test_identity_range_shard_bounds():
    starts = np.array([0, 3, 8, 10, 14, 20, 21])  # COUNTS
    cuts = [identity_bounds(starts, 24, i, 3) for i in range(3)]
    assert cuts == [(0, 8), (8, 14), (14, 24)]      # equal-rows cuts 8 and 16 moved to 8 and 14
    assert identity_bounds(starts, 24, 0, 1) == (0, 24)
    many = [identity_bounds(np.array([0, 5]), 6, i, 4) for i in range(4)]  # more shards than identities
    assert many[0][0] == 0 and many[-1][1] == 6 and all(a[1] == b[0] for a, b in zip(many, many[1:]))
    assert {lo for lo, hi in many if hi > lo} <= {0, 5}


def test_three_shards_and_merge_give_the_bytes_of_one_go(root, tmp_path):
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    one.mkdir(), sharded.mkdir()
    assert _run(one, _params(one, root)) == 0
    params = _params(sharded, root, shards=3)
    assert _run(sharded, params, "--shard", "0/3") == 0
    assert _run(sharded, params, "--shard", "2/3") == 0
    parts = sharded / "features" / "train" / "parts"
    assert not (sharded / "features" / "train" / "summary.json").exists()
    before = {p.name: p.stat().st_mtime_ns for p in parts.iterdir()}
    assert sorted(before) == [f"part-0000{i}-of-00003.{s}" for i in (0, 2) for s in ("npy", "parquet")]
    assert _run(sharded, params) == 0  # computes part 1, reuses 0 and 2, merges
    after = {p.name: p.stat().st_mtime_ns for p in parts.iterdir()}
    assert all(after[n] == t for n, t in before.items()) and len(after) == 6
    log = (sharded / "logs" / "features.log").read_text()
    assert "part 0/3 complete, reused" in log and "part 2/3 complete, reused" in log
    for f in STORE_FILES:
        assert (one / "features" / "train" / f).read_bytes() == (sharded / "features" / "train" / f).read_bytes(), f
    # each part holds whole identities: the shard cuts fall where the labels change
    labels = [pd.read_parquet(parts / f"part-0000{i}-of-00003.parquet")["label"].tolist() for i in range(3)]
    assert [len(x) for x in labels] == [8, 6, 10]
    assert not set(labels[0]) & set(labels[1]) and not set(labels[1]) & set(labels[2])
    # a second run reuses every part and writes the same bytes
    assert _run(sharded, params) == 0
    assert {p.name: p.stat().st_mtime_ns for p in parts.iterdir()} == after
    for f in STORE_FILES:
        assert (one / "features" / "train" / f).read_bytes() == (sharded / "features" / "train" / f).read_bytes(), f


def test_killed_or_failed_parts_leave_nothing(root, tmp_path):
    pack = tmp_path / "pack"
    shutil.copytree(root / "pack", pack)
    params = _params(tmp_path, root, sets={"train": {"source": str(pack), "format": "pack"}}, shards=3,
                     model={"kind": "pixels"})
    parts = tmp_path / "features" / "train" / "parts"
    # what a SIGKILL leaves: a temporary .npy being written, or a .npy whose .parquet never came
    parts.mkdir(parents=True)
    (parts / ".part-00001-of-00003.npy.tmp-999999").write_bytes(b"\x93NUMPY half")
    (parts / "part-00000-of-00003.npy").write_bytes(b"\x93NUMPY half")
    assert _run(tmp_path, params, "--shard", "0/3") == 0
    assert _run(tmp_path, params, "--shard", "1/3") == 0
    assert sorted(p.name for p in parts.iterdir()) == [f"part-0000{i}-of-00003.{s}" for i in (0, 1)
                                                        for s in ("npy", "parquet")]
    # a part that fails (a stored JPEG in shard 2 no longer decodes): no part 2, no store
    keys, offs = read_idx(pack / "train.idx")
    off = int(offs[list(keys).index(20)])
    with open(pack / "train.rec", "r+b") as f:
        f.seek(off + 8 + 24)
        f.write(b"\0\0\0\0")
    assert _run(tmp_path, params) == 2
    assert sorted(p.name for p in parts.iterdir()) == [f"part-0000{i}-of-00003.{s}" for i in (0, 1)
                                                        for s in ("npy", "parquet")]
    out = tmp_path / "features" / "train"
    assert not any((out / f).exists() for f in OUTPUTS)
    assert not [p for p in out.iterdir() if p.name != "parts"]


def test_aligned_set_source(root, tmp_path):
    rows = [("c/0.jpg", "carol", "ok"), ("a/0.jpg", "alice", "ok"), ("a/1.jpg", "alice", "no_face"),
            ("stray.jpg", "", "fallback"), ("b/0.jpg", "bob", "ok"), ("a/2.jpg", "alice", "ok")]
    aset = tmp_path / "align" / "lfw"
    man = make_aligned(aset, rows)
    params = _params(tmp_path, root, sets={"lfw": {"source": str(aset), "format": "aligned"}},
                     model={"kind": "pixels"})
    assert _run(tmp_path, params, "--dataset", "lfw") == 0
    out = tmp_path / "features" / "lfw"
    st = FeatureStore(out)
    faces = man[man["key"] >= 0]
    assert st.keys.tolist() == faces["source"].tolist() == ["c/0.jpg", "a/0.jpg", "stray.jpg", "b/0.jpg", "a/2.jpg"]
    assert st.labels.tolist() == [2, 0, -1, 1, 0]
    ids = pd.read_parquet(out / "identities.parquet")
    assert ids["identity"].tolist() == ["alice", "bob", "carol"] and ids["images"].tolist() == [2, 1, 1]
    r = RecordReader(aset / "faces.rec", aset / "faces.idx")
    rgb = np.stack([decode_rgb(unpack(r.read(int(k)))[1]) for k in faces["key"]])
    direct = load_embedder(SimpleNamespace(kind="pixels")).embed(rgb, flip=False)
    np.testing.assert_allclose(st.read(0, st.count), _unit(direct), atol=1e-3)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["in"], summary["out"], summary["rejected"]) == (6, 5, {"no_crop": 1})
    assert summary["unlabelled"] == 1 and summary["identities"] == 3


def _bad(tmp: Path, params: Path, capsys, *args: str) -> str:
    capsys.readouterr()
    assert _run(tmp, params, *args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1, errors
    out = tmp / "features" / "train"
    assert not out.exists() or not any(p.name in OUTPUTS or p.name.startswith(".") for p in out.iterdir())
    return errors[0]


def test_bad_input_exits_2_naming_the_culprit(root, tmp_path, capsys):
    # a model whose output is not the sidecar's embedding_size
    model = tmp_path / "wrong"
    shutil.copytree(root / "model", model)
    sc = json.loads((model / "backbone.json").read_text())
    (model / "backbone.json").write_text(json.dumps({**sc, "embedding_size": 16}))
    line = _bad(tmp_path, _params(tmp_path, root, model={"kind": "onnx", "path": str(model / "backbone.onnx")}),
                capsys)
    assert str(model / "backbone.onnx") in line and "16" in line
    # a missing source, a missing model
    line = _bad(tmp_path, _params(tmp_path, root, sets={"train": {"source": str(tmp_path / "nope"),
                                                                  "format": "pack"}}), capsys)
    assert "features.sets.train.source" in line and "nope" in line
    line = _bad(tmp_path, _params(tmp_path, root, model={"kind": "onnx", "path": str(tmp_path / "m.onnx")}), capsys)
    assert "features.model.path" in line
    # a truncated .rec
    pack = tmp_path / "pack"
    shutil.copytree(root / "pack", pack)
    with open(pack / "train.rec", "r+b") as f:
        f.truncate(os.path.getsize(pack / "train.rec") - 9)
    line = _bad(tmp_path, _params(tmp_path, root, sets={"train": {"source": str(pack), "format": "pack"}}), capsys)
    assert str(pack / "train.rec") in line and "truncated" in line
    # an aligned set given as a pack, an unknown set
    line = _bad(tmp_path, _params(tmp_path, root, sets={"train": {"source": str(root / "align" / "train"),
                                                                  "format": "pack"}}), capsys)
    assert "train.rec" in line
    line = _bad(tmp_path, _params(tmp_path, root), capsys, "--dataset", "lfw")
    assert "--dataset lfw" in line


def test_default_params_validate_with_the_features_section():
    p = load_params([REPO / "params.yaml"]).features
    assert p.model.kind == "onnx" and p.model.path == "models/train_bootstrap/backbone.onnx"
    assert p.sets["train"].source == "data/pack" and p.sets["train"].format == "pack"
    # the overlap rule's evaluation sets, embedded like evaluate does (with the mirror image)
    assert {n for n, s in p.sets.items() if s.format == "aligned"} == {"lfw", "megaface_probe", "ijbs"} and p.flip


def test_listing_reads_labels_from_the_records(root):
    src = open_feature_source(root / "pack", "pack")
    assert len(src) == 24 and src.run_starts().tolist() == [0, 3, 8, 10, 14, 20, 21]
    assert src.shard_bounds(1, 3) == (8, 14)
