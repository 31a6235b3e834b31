"""Model interface: sidecar, preprocessing, a real tiny ONNX model against the same net in torch,
TorchScript export round trip, the pixel baseline, and clear errors on bad models."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arcpipe.errors import PipelineError
from arcpipe.evaluate.model import (
    PixelsEmbedder,
    Sidecar,
    export_torchscript,
    load_embedder,
    load_sidecar,
    preprocess,
)

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SIDECAR = dict(input_size=[112, 112], crop="arcface112", mean=127.5, std=127.5, channel_order="rgb",
               embedding_size=8, layout="nchw")


def _faces(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 112, 112, 3), dtype=np.uint8)


class TinyNet(torch.nn.Module):
    def __init__(self, emb=8, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(4, 3, 3, 3, generator=g) * 0.2)
        self.b = torch.nn.Parameter(torch.randn(4, generator=g) * 0.1)
        self.fc = torch.nn.Parameter(torch.randn(emb, 4, generator=g))
        self.fb = torch.nn.Parameter(torch.randn(emb, generator=g) * 0.1)

    def forward(self, x):
        y = F.relu(F.conv2d(x, self.w, self.b, stride=2))
        y = y.mean(dim=(2, 3))
        return y @ self.fc.t() + self.fb


def _onnx_from(net: TinyNet, path, h=112, w=112, batch="N", out_rank=2):
    """The same network written with onnx.helper: Conv, Relu, GlobalAveragePool, Flatten, Gemm."""
    inits = [numpy_helper.from_array(t.detach().numpy().astype(np.float32), n)
             for t, n in ((net.w, "W"), (net.b, "B"), (net.fc, "FC"), (net.fb, "FB"))]
    nodes = [
        helper.make_node("Conv", ["data", "W", "B"], ["c"], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "FC", "FB"], ["emb"], transB=1),
    ]
    out_name, out_shape = "emb", [batch, net.fc.shape[0]]
    if out_rank == 4:  # a model that forgot to flatten: N x D x 1 x 1
        inits.append(numpy_helper.from_array(np.array([0, -1, 1, 1], dtype=np.int64), "shape4"))
        nodes.append(helper.make_node("Reshape", ["emb", "shape4"], ["emb4"]))
        out_name, out_shape = "emb4", [batch, net.fc.shape[0], 1, 1]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, h, w])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _params(kind, path=None, sidecar=None):
    return SimpleNamespace(kind=kind, path=None if path is None else str(path), sidecar=None if sidecar is None else str(sidecar))


def _torch_embed(net, rgb, sc: Sidecar):
    with torch.no_grad():
        return net(torch.from_numpy(preprocess(rgb, sc))).numpy()


# ------------------------------------------------------------------------------------- ONNX
def test_onnx_matches_torch_with_flip(tmp_path):
    net = TinyNet()
    _onnx_from(net, tmp_path / "tiny.onnx")
    (tmp_path / "tiny.json").write_text(json.dumps(SIDECAR))  # found next to the model
    emb = load_embedder(_params("onnx", tmp_path / "tiny.onnx"), "cpu", batch_size=3)
    assert emb.embedding_size == 8
    rgb = _faces(7)
    sc = Sidecar.model_validate(SIDECAR)
    a, b = emb.embed_views(rgb, flip=True)
    np.testing.assert_allclose(a, _torch_embed(net, rgb, sc), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b, _torch_embed(net, rgb[:, :, ::-1].copy(), sc), rtol=1e-4, atol=1e-5)
    both = emb.embed(rgb, flip=True)
    assert both.dtype == np.float32 and both.shape == (7, 8)
    np.testing.assert_allclose(both, a + b, rtol=1e-6)
    np.testing.assert_array_equal(emb.embed(rgb, flip=False), a)
    ident = emb.identity()
    assert ident["kind"] == "onnx" and len(ident["sha256"]) == 64 and ident["name"] == "tiny"


def test_onnx_sphereface_crop_bgr_fixed_batch(tmp_path):
    net = TinyNet(seed=1)
    _onnx_from(net, tmp_path / "sf.onnx", h=112, w=96, batch=4)
    side = dict(SIDECAR, input_size=[112, 96], crop="sphereface112x96", channel_order="bgr", mean=[10, 20, 30], std=[50, 60, 70])
    (tmp_path / "side.yaml").write_text(json.dumps(side))
    emb = load_embedder(_params("onnx", tmp_path / "sf.onnx", tmp_path / "side.yaml"), "cpu", batch_size=64)
    rgb = _faces(6, seed=2)
    got = emb.embed(rgb, flip=False)
    # by hand: columns 8..104, reverse channels, normalise per channel
    x = rgb[:, :, 8:104, ::-1].astype(np.float32)
    x = ((x - np.array([10, 20, 30], np.float32)) / np.array([50, 60, 70], np.float32)).transpose(0, 3, 1, 2)
    with torch.no_grad():
        want = net(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_onnx_output_not_2d_is_a_clear_error(tmp_path):
    _onnx_from(TinyNet(), tmp_path / "bad.onnx", out_rank=4)
    (tmp_path / "bad.json").write_text(json.dumps(SIDECAR))
    with pytest.raises(PipelineError, match=r"bad\.onnx.*expected 2-D"):
        load_embedder(_params("onnx", tmp_path / "bad.onnx"), "cpu")


def test_onnx_wrong_embedding_size_and_input_size(tmp_path):
    _onnx_from(TinyNet(), tmp_path / "m.onnx")
    (tmp_path / "m.json").write_text(json.dumps(dict(SIDECAR, embedding_size=16)))
    with pytest.raises(PipelineError, match=r"m\.onnx.*embedding_size 16"):
        load_embedder(_params("onnx", tmp_path / "m.onnx"), "cpu")
    (tmp_path / "m.json").write_text(json.dumps(dict(SIDECAR, input_size=[112, 96])))
    with pytest.raises(PipelineError, match=r"m\.onnx: input width is 112"):
        load_embedder(_params("onnx", tmp_path / "m.onnx"), "cpu")


def test_missing_model_or_sidecar_and_bad_sidecar(tmp_path):
    with pytest.raises(PipelineError, match="model file does not exist"):
        load_embedder(_params("onnx", tmp_path / "none.onnx"), "cpu")
    _onnx_from(TinyNet(), tmp_path / "m.onnx")
    with pytest.raises(PipelineError, match=r"m\.onnx: no sidecar found"):
        load_embedder(_params("onnx", tmp_path / "m.onnx"), "cpu")
    (tmp_path / "m.yaml").write_text("input_size: [112, 112]\ncrop: arcface112\nmean: 0\nstd: 1\n"
                                     "channel_order: rgb\nembedding_size: 8\nlayuot: nchw\n")
    with pytest.raises(PipelineError, match=r"m\.yaml: layuot: unknown key"):
        load_embedder(_params("onnx", tmp_path / "m.onnx"), "cpu")
    (tmp_path / "m.yaml").write_text("input_size: [112, 112]\ncrop: square\nmean: 0\nstd: 1\nchannel_order: rgb\nembedding_size: 8\n")
    with pytest.raises(PipelineError, match=r"m\.yaml: crop:"):
        load_sidecar(tmp_path / "m.yaml")
    with pytest.raises(PipelineError, match=r"evaluate.model.path: required"):
        load_embedder(_params("torchscript"), "cpu")


def test_input_must_be_aligned_uint8():
    emb = PixelsEmbedder()
    with pytest.raises(ValueError, match="112 x 112"):
        emb.embed(np.zeros((2, 96, 112, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        emb.embed(np.zeros((2, 112, 112, 3), np.float32))


# ------------------------------------------------------------------------------ TorchScript
def test_torchscript_export_round_trip(tmp_path):
    net = TinyNet(seed=3)
    mp, sp = export_torchscript(net, tmp_path / "model.pt", dict(SIDECAR, name="tiny-ts", trained_on="nothing"))
    assert sp == tmp_path / "model.json" and json.loads(sp.read_text())["embedding_size"] == 8
    emb = load_embedder(_params("torchscript", mp), "cpu", batch_size=4)
    rgb = _faces(5, seed=4)
    a, b = emb.embed_views(rgb, flip=True)
    sc = Sidecar.model_validate(SIDECAR)
    np.testing.assert_allclose(a, _torch_embed(net, rgb, sc), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, _torch_embed(net, rgb[:, :, ::-1].copy(), sc), rtol=1e-5, atol=1e-6)
    ident = emb.identity()
    assert ident["name"] == "tiny-ts" and ident["trained_on"] == "nothing" and ident["kind"] == "torchscript"


def test_torchscript_export_refuses_wrong_output(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3), keepdim=True)

    with pytest.raises(ValueError, match=r"expected \(2, 8\)"):
        export_torchscript(Bad(), tmp_path / "bad.pt", SIDECAR)
    assert not (tmp_path / "bad.pt").exists() and not (tmp_path / "bad.json").exists()


def test_torchscript_runtime_output_not_2d(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3), keepdim=True)

    torch.jit.save(torch.jit.trace(Bad(), torch.zeros(1, 3, 112, 112)), str(tmp_path / "bad.pt"))
    (tmp_path / "bad.json").write_text(json.dumps(dict(SIDECAR, embedding_size=3)))
    emb = load_embedder(_params("torchscript", tmp_path / "bad.pt"), "cpu")
    with pytest.raises(PipelineError, match=r"bad\.pt: model output has shape \(2, 3, 1, 1\); expected 2-D"):
        emb.embed(_faces(2), flip=False)


# ---------------------------------------------------------------------------------- pixels
def test_pixels_baseline_is_deterministic_and_mirrors():
    emb = load_embedder(_params("pixels"), "cpu")
    rgb = _faces(3, seed=5)
    a, b = emb.embed_views(rgb, flip=True)
    assert a.shape == (3, 256) and emb.embedding_size == 256
    np.testing.assert_allclose(a.sum(1), 0, atol=1e-3)  # mean-centred
    # 112 = 16 blocks of 7: the flip's embedding is the mirrored grid (up to rounding in cv2)
    np.testing.assert_allclose(b.reshape(3, 16, 16), a.reshape(3, 16, 16)[:, :, ::-1], atol=1.0)
    np.testing.assert_array_equal(emb.embed(rgb), load_embedder(_params("pixels"), "cpu").embed(rgb))
    # a face and a near copy are closer than two different faces
    noisy = np.clip(rgb.astype(int) + np.random.default_rng(6).integers(-5, 6, rgb.shape), 0, 255).astype(np.uint8)
    e1, e2 = emb.embed(rgb), emb.embed(noisy)
    assert np.linalg.norm(e1[0] - e2[0]) < np.linalg.norm(e1[0] - e1[1])
    assert "not a face model" in emb.identity()["description"]
