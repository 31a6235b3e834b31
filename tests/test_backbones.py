"""Backbones: shapes for every registry name, parameter counts equal to arcface_torch's modules,
seeded initialisation, the width/depth knobs, bf16 autocast on CPU, and a training step of the
small setting the embedded sample uses."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from arcpipe.train.backbones import BACKBONES, SMALL_SAMPLE, build_backbone, count_parameters

# torch.nn parameter counts of arcface_torch's get_model(name, num_features=512) (iresnet.py,
# mobilefacenet.py), counted on the reference modules; iResNet's last BN1d scale is frozen there,
# hence the 512 untrained parameters.
ARCFACE_TORCH_PARAMS = {
    "r18": 24_025_600,
    "r34": 34_139_328,
    "r50": 43_590_848,
    "r100": 65_156_160,
    "r200": 118_833_920,
    "mbf": 2_059_520,
}


def _x(n=2, seed=0):
    return torch.randn(n, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


def test_registry_names():
    assert BACKBONES == ("r18", "r34", "r50", "r100", "r200", "mbf")


@pytest.mark.parametrize("name", BACKBONES)
def test_output_is_n_by_embedding_size(name):
    net = build_backbone(name, embedding_size=32, width=0.125).eval()
    with torch.no_grad():
        out = net(_x(3))
    assert out.shape == (3, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["r50", "r100", "mbf", "r18", "r34", "r200"])
def test_parameter_count_matches_arcface_torch(name):
    net = build_backbone(name, embedding_size=512)
    assert count_parameters(net) == ARCFACE_TORCH_PARAMS[name]
    frozen = 512 if name != "mbf" else 0
    assert count_parameters(net, trainable_only=True) == ARCFACE_TORCH_PARAMS[name] - frozen


def test_iresnet_blocks_and_head_follow_the_paper():
    net = build_backbone("r50", embedding_size=256, dropout=0.4)
    blocks = [m for m in net.body if m.__class__.__name__ == "IBasicBlock"]
    assert len(blocks) == 3 + 4 + 14 + 3
    # BN-conv-BN-PReLU-conv-BN, the stride on the second conv
    kinds = [type(m) for m in blocks[0].residual]
    assert kinds == [nn.BatchNorm2d, nn.Conv2d, nn.BatchNorm2d, nn.PReLU, nn.Conv2d, nn.BatchNorm2d]
    assert blocks[0].residual[1].stride == (1, 1) and blocks[0].residual[4].stride == (2, 2)
    # head: BN2d -> Dropout -> FC(512*7*7 -> D) -> BN1d
    assert isinstance(net.body[-3], nn.BatchNorm2d) and net.body[-3].num_features == 512
    assert isinstance(net.body[-1], nn.Dropout) and net.body[-1].p == 0.4
    fc, bn = net.head
    assert (fc.in_features, fc.out_features) == (512 * 7 * 7, 256) and isinstance(bn, nn.BatchNorm1d)


def test_width_and_layers_knobs():
    net = build_backbone("r18", width=0.25, layers=[1, 2, 1, 1], embedding_size=64)
    blocks = [m for m in net.body if m.__class__.__name__ == "IBasicBlock"]
    assert [b.residual[1].out_channels for b in blocks] == [16, 32, 32, 64, 128]
    assert net.head[0].in_features == 128 * 49
    assert net.architecture == "r18 (width 0.25, layers [1, 2, 1, 1])"
    assert build_backbone("r50").architecture == "r50"
    small_mbf = build_backbone("mbf", width=0.5, layers=[2, 1, 1, 1])
    assert count_parameters(small_mbf) < count_parameters(build_backbone("mbf")) / 2


def test_same_seed_same_weights_other_seed_other_weights():
    def weights(seed):
        torch.manual_seed(seed)
        return build_backbone(**SMALL_SAMPLE).state_dict()

    a, b, c = weights(7), weights(7), weights(8)
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_small_sample_setting_trains():
    torch.manual_seed(0)
    net = build_backbone(**SMALL_SAMPLE, embedding_size=128).train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    x, target = _x(4), torch.randn(4, 128, generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(2):
        opt.zero_grad()
        loss = (net(x) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    grads = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert net.head[1].weight.grad is None  # the frozen BN1d scale
    assert losses[-1] < losses[0]


def test_fp16_is_bf16_autocast_on_cpu_with_a_float32_head():
    torch.manual_seed(0)
    net = build_backbone("r18", width=0.125, layers=[1, 1, 1, 1], embedding_size=32, fp16=True)
    assert net.amp_dtype == torch.bfloat16
    seen = {}
    net.body.register_forward_hook(lambda m, i, o: seen.update(body=o.dtype) and None)
    net.head[0].register_forward_hook(lambda m, i, o: seen.update(fc=o.dtype) and None)
    out = net(_x(4))
    out.sum().backward()
    assert seen == {"body": torch.bfloat16, "fc": torch.float32} and out.dtype == torch.float32
    # the caller's own autocast around a float32 module: the head still runs in float32
    net.amp_dtype, seen = None, {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(_x(4))
    assert seen == {"body": torch.bfloat16, "fc": torch.float32} and out.dtype == torch.float32
    assert build_backbone("mbf", width=0.25, fp16=torch.float16).amp_dtype == torch.float16
    assert build_backbone("mbf", width=0.25).amp_dtype is None


@pytest.mark.parametrize("kwargs,pattern", [
    ({"name": "r42"}, "backbone 'r42' is not one of r18, r34, r50, r100, r200, mbf"),
    ({"name": "r18", "layers": [1, 1, 1]}, "layers must be four block counts"),
    ({"name": "r18", "layers": [0, 1, 1, 1]}, "layers must be four block counts"),
    ({"name": "mbf", "dropout": 0.2}, "MobileFaceNet's head has no dropout"),
    ({"name": "r18", "width": 0}, "width must be positive"),
    ({"name": "r18", "fp16": "yes"}, "fp16: expected True, False"),
])
def test_bad_arguments_say_what_is_wrong(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_backbone(**kwargs)


def test_narrow_nets_train_in_the_plain_layout_on_cpu():
    """channels-last on the CPU only where oneDNN's 1x1 weight gradient does not crash (it took
    the process down for 8-channel layers); a narrow net's backward step runs, in either case."""
    from arcpipe.train.backbones import build_backbone
    from arcpipe.train.loop import memory_layout

    cpu = torch.device("cpu")
    narrow = build_backbone("r18", embedding_size=32, width=0.125, layers=[1, 1, 1, 1])
    wide = build_backbone("r18", embedding_size=32, width=0.25, layers=[1, 1, 1, 1])
    assert memory_layout(narrow, cpu) == torch.contiguous_format
    assert memory_layout(wide, cpu) == torch.channels_last
    assert memory_layout(narrow, torch.device("cuda")) == torch.channels_last
    x = torch.randn(4, 3, 112, 112)
    for net in (narrow, wide):
        layout = memory_layout(net, cpu)
        net = net.to(memory_format=layout)
        net(x.contiguous(memory_format=layout)).sum().backward()
        assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
