"""The training variants in params/ merge over params.yaml, name a head the train stage can build,
and the paper's run carries the paper's hyper-parameters exactly."""
from pathlib import Path

import pytest

from arcpipe.params import load_params
from arcpipe.train.backbones import BACKBONES
from arcpipe.train.losses import check_head

REPO = Path(__file__).resolve().parents[1]
VARIANTS = sorted(p for p in (REPO / "params").rglob("*.yaml") if "train:" in p.read_text())


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda p: str(p.relative_to(REPO / "params")))
def test_variant_builds(variant):
    t = load_params([REPO / "params.yaml", variant]).train
    h = t.head
    check_head(h.kind, s=h.s, m1=h.m1, m2=h.m2, m3=h.m3, k=h.k, sample_rate=h.sample_rate, falloff=h.falloff)
    assert t.backbone.name in BACKBONES
    if t.schedule.kind == "step" and t.max_steps:
        assert all(m < t.max_steps for m in t.schedule.milestones)


def test_the_paper_run_is_the_paper_setting():
    t = load_params([REPO / "params.yaml", REPO / "params" / "ms1mv2_r100_paper.yaml"]).train
    assert (t.backbone.name, t.backbone.embedding_size, t.num_classes) == ("r100", 512, 85742)
    assert (t.head.kind, t.head.s, t.head.m2) == ("arcface", 64.0, 0.5)
    assert (t.batch_size, t.lr, t.momentum, t.weight_decay, t.max_steps) == (512, 0.1, 0.9, 5e-4, 180000)
    assert (t.schedule.kind, t.schedule.milestones, t.schedule.gamma) == ("step", [100000, 160000], 0.1)


def test_the_loss_ablation_covers_table_2():
    kinds = {load_params([REPO / "params.yaml", p]).train.head.kind
             for p in (REPO / "params" / "casia_ablation").glob("*.yaml")}
    assert kinds == {"softmax", "norm_softmax", "sphereface", "cosface", "arcface", "combined"}


def test_the_ms1mv3_recipe_trains_on_its_own_class_count():
    t = load_params([REPO / "params.yaml", REPO / "params" / "ms1mv3_r100_arcface_torch.yaml"]).train
    assert (t.backbone.name, t.num_classes, t.head.kind, t.head.s, t.head.m2) == ("r100", 93431, "arcface", 64.0, 0.5)
    assert (t.batch_size, t.processes, t.epochs, t.schedule.kind, t.amp) == (1024, 8, 20, "poly", "fp16")
    assert "ms1m-retinaface-t1" in t.pack_dir
