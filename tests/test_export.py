"""Export for evaluation: the ONNX (onnxruntime) and TorchScript files agree with the module through
the evaluate stage's own loader, the stage judges them with no extra setting, and a failed export
leaves nothing behind and says why in one line."""
from __future__ import annotations

import json
import pickle
import shutil
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from arcpipe.errors import PipelineError
from arcpipe.evaluate.model import load_embedder, load_sidecar, preprocess
from arcpipe.stages import main
from arcpipe.train import export as export_mod
from arcpipe.train.backbones import build_backbone
from arcpipe.train.export import export_backbone

FIELDS = {"name": "tiny-r18", "loss": "arcface", "trained_on": "synthetic"}


def _tiny_trained_backbone(fp16=False):
    """A small iResNet whose BN statistics come from data, so eval outputs are of order 1."""
    torch.manual_seed(0)
    net = build_backbone("r18", embedding_size=64, width=0.125, layers=[1, 1, 1, 1], fp16=fp16)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batches
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(2):  # body then head: float32 even when the module autocasts
            net.head(net.body(torch.rand(8, 3, 112, 112, generator=g) * 2 - 1))
    return net


def _faces(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


def _in_memory(net, rgb, sidecar):
    was, amp = net.training, getattr(net, "amp_dtype", None)
    net.eval()
    net.amp_dtype = None
    try:
        with torch.no_grad():
            return net(torch.from_numpy(preprocess(rgb, sidecar))).numpy()
    finally:
        net.train(was)
        net.amp_dtype = amp


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export with the defaults (dynamo ONNX + TorchScript), shared by the tests here."""
    net = _tiny_trained_backbone()
    out = tmp_path_factory.mktemp("export") / "model"
    paths = export_backbone(net, out, sidecar_fields=FIELDS)
    return net, out, paths


def _embedder(kind, path, batch_size=64):
    return load_embedder(SimpleNamespace(kind=kind, path=str(path), sidecar=None), batch_size=batch_size)


def test_export_writes_both_models_and_one_sidecar(exported):
    net, out, paths = exported
    assert set(paths) == {"onnx", "torchscript", "sidecar"}
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx", "model.pt"]
    sc = json.loads(paths["sidecar"].read_text())
    assert sc == {"input_size": [112, 112], "crop": "arcface112", "mean": 127.5, "std": 127.5,
                  "channel_order": "rgb", "layout": "nchw", "embedding_size": 64,
                  "architecture": "r18 (width 0.125, layers [1, 1, 1, 1])", **FIELDS}
    assert not list(out.parent.glob(".*"))  # no staging folder left


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_exported_model_agrees_with_the_module(exported, kind):
    net, out, paths = exported
    rgb = _faces(5)
    emb = _embedder(kind, paths[kind], batch_size=3)  # batches of 3 and 2: the batch axis is free
    want = _in_memory(net, rgb, emb.sidecar)
    got = emb.embed(rgb, flip=False)
    assert got.shape == (5, 64) and np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert net.training  # the caller's module is left in its mode


def test_legacy_exporter_and_formats_not_asked_are_removed(exported, tmp_path):
    net, src, _ = exported
    out = tmp_path / "model"
    shutil.copytree(src, out)
    paths = export_backbone(net, out, formats=["onnx"], sidecar_fields=FIELDS, exporter="legacy")
    assert set(paths) == {"onnx", "sidecar"}
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]
    rgb = _faces(4, seed=1)
    emb = _embedder("onnx", paths["onnx"])
    np.testing.assert_allclose(emb.embed(rgb, flip=False), _in_memory(net, rgb, emb.sidecar), rtol=0, atol=1e-4)


def test_bf16_module_exports_as_float32_and_stays_as_it_was(tmp_path):
    net = _tiny_trained_backbone(fp16=True)
    paths = export_backbone(net, tmp_path / "m", formats=["torchscript"])
    assert net.amp_dtype == torch.bfloat16 and net.training
    rgb = _faces(3, seed=2)
    emb = _embedder("torchscript", paths["torchscript"])
    np.testing.assert_allclose(emb.embed(rgb, flip=False), _in_memory(net, rgb, emb.sidecar), rtol=0, atol=1e-4)


def _write_pack(path, pairs=20, seed=0):
    """A verification .bin as the published packs: (list of JPEG bytes, list of issame)."""
    rng = np.random.default_rng(seed)
    ids = [cv2.resize(rng.uniform(0, 255, (6, 6, 3)), (112, 112), interpolation=cv2.INTER_CUBIC) for _ in range(pairs + 1)]
    bins, issame = [], []
    for p in range(pairs):
        same = p % 2 == 0
        for base in (ids[p], ids[p] if same else ids[p + 1]):
            img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            bins.append(cv2.imencode(".jpg", img[:, :, ::-1])[1].tobytes())
        issame.append(same)
    with open(path, "wb") as f:
        pickle.dump((bins, issame), f, protocol=4)


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_evaluate_stage_judges_the_export_with_no_extra_setting(exported, tmp_path, monkeypatch, kind):
    _, _, paths = exported
    monkeypatch.chdir(tmp_path)
    _write_pack(tmp_path / "lfw.bin")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {
        "model": {"kind": kind, "path": str(paths[kind])},
        "verification": {"lfw": str(tmp_path / "lfw.bin")},
        "metrics_dir": str(tmp_path / "metrics"), "plots_dir": str(tmp_path / "plots")}}))
    assert main("evaluate", ["--params", str(params)]) == 0
    m = json.loads((tmp_path / "metrics" / "lfw.json").read_text())
    assert m["pairs"] == 20 and 0.0 <= m["acc_mean"] <= 1.0
    assert m["model"]["kind"] == kind and m["model"]["name"] == "tiny-r18"
    assert m["model"]["architecture"] == "r18 (width 0.125, layers [1, 1, 1, 1])"
    assert m["model"]["loss"] == "arcface" and m["model"]["embedding_size"] == 64


class _WrongSize(nn.Module):
    embedding_size = 512

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 112 * 112, 100)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("module,fields,pattern", [
    (_WrongSize(), None, r"module's output is \[2, 100\] for a batch of 2; expected \[2, 512\] \(embedding_size\)"),
    (nn.Conv2d(3, 8, 3), {"embedding_size": 8}, r"module's output is \[2, 8, 110, 110\]"),
    (nn.Linear(5, 5), None, r"the module fails on a \[2, 3, 112, 112\] input: RuntimeError"),
    (_WrongSize(), {"crop": "square"}, r"sidecar_fields: crop: "),
], ids=["wrong-size", "not-2d", "wrong-input", "bad-sidecar"])
def test_bad_module_leaves_nothing_and_says_why_in_one_line(tmp_path, module, fields, pattern):
    with pytest.raises(PipelineError, match=pattern) as e:
        export_backbone(module, tmp_path / "out", sidecar_fields=fields)
    assert "\n" not in str(e.value) and str(tmp_path / "out") in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_failure_half_way_keeps_the_previous_export_whole(exported, tmp_path, monkeypatch):
    net, src, _ = exported
    out = tmp_path / "model"
    shutil.copytree(src, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):  # the ONNX file is already written when this runs
        raise RuntimeError("disk full\nsecond line")

    monkeypatch.setattr(export_mod, "export_torchscript", broken)
    with pytest.raises(PipelineError, match=r"model: torchscript export failed: RuntimeError: disk full$") as e:
        export_backbone(net, out, formats=["onnx", "torchscript"], sidecar_fields={"loss": "cosface"},
                        exporter="legacy")
    assert "\n" not in str(e.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging folder left
    assert load_sidecar(out / "model.json").loss == "arcface"
