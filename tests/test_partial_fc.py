"""Partial FC: two real gloo processes against one process with the full softmax; sampling;
world size 1 without a process group; checkpoints across world sizes.

The two ranks run this file as a script (`python tests/test_partial_fc.py RANK WORLD PORT DIR`);
they read the batch from DIR/inputs.pt and write what they saw to DIR/rank<R>.pt.
"""
import itertools
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from arcpipe.train.losses import build_head, class_cosines
from arcpipe.train.partial_fc import PartialFC, class_range, winning_subcenters

IN_DIM, EMB, SEED = 6, 4, 3
# the global batch: rank 0 takes the first 4 rows, rank 1 the other 6 (batch sizes may differ)
SPLIT = (4, 6)
LABELS = [0, 5, 3, 1, 6, 2, 4, 0, 5, 3]
NUM_CLASSES = 7                        # rank 0 holds [0, 3), rank 1 [3, 7)
SAMPLED_CLASSES = 20                   # 10 per rank, 5 kept per step at sample_rate 0.5
SAMPLED_LABELS = [0, 1, 12, 0, 13, 1, 2, 12, 0, 1]

# name: (kind, (m1, m2, m3), k, ddp_backbone)
CASES = {
    "arcface_ddp": ("arcface", (1.0, 0.5, 0.0), 1, True),
    "arcface_plain": ("arcface", (1.0, 0.5, 0.0), 1, False),
    "combined_2": ("combined", (0.9, 0.4, 0.15), 1, False),
    "subcenter_ddp": ("subcenter", (1.0, 0.5, 0.0), 3, True),
    "softmax_ddp": ("softmax", (1.0, 0.0, 0.0), 1, True),
}


def head_for(case: str, num_classes: int = NUM_CLASSES, sample_rate: float = 1.0, **kw) -> PartialFC:
    kind, (m1, m2, m3), k, ddp = CASES[case]
    return build_head(kind, EMB, num_classes, s=64.0, m1=m1, m2=m2, m3=m3, k=k, sample_rate=sample_rate,
                      seed=SEED, ddp_backbone=ddp, **kw)


def make_inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    backbone = torch.nn.Linear(IN_DIM, EMB)
    with torch.no_grad():
        backbone.weight.copy_(torch.randn(EMB, IN_DIM, generator=g))
        backbone.bias.copy_(torch.randn(EMB, generator=g) * 0.1)
    full = head_for("arcface_plain")
    with torch.no_grad():
        full.weight.copy_(torch.randn(NUM_CLASSES, EMB, generator=g))
    return {"x": torch.randn(sum(SPLIT), IN_DIM, generator=g), "labels": torch.tensor(LABELS),
            "sampled_labels": torch.tensor(SAMPLED_LABELS), "backbone": backbone.state_dict(),
            "full_state": full.full_state_dict()}


def rows_of(rank: int) -> slice:
    return slice(sum(SPLIT[:rank]), sum(SPLIT[:rank + 1]))


def reference_logits(head: PartialFC, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The full softmax of one process: every class, margin on each row's class."""
    if head.kind == "softmax":
        return F.linear(emb, head.weight, head.bias)
    return head.margin(class_cosines(emb, head.weight), labels)


def one_step(case: str, inputs: dict, rows: slice, wrap_ddp: bool):
    """Backbone -> head -> backward on `rows` of the batch; what came out."""
    backbone = torch.nn.Linear(IN_DIM, EMB)
    backbone.load_state_dict(inputs["backbone"])
    model = torch.nn.parallel.DistributedDataParallel(backbone) if wrap_ddp else backbone
    head = head_for(case)
    init = head.weight.detach().clone()
    emb = model(inputs["x"][rows])
    emb.retain_grad()
    loss = head(emb, inputs["labels"][rows])
    loss.backward()
    return {"loss": loss.detach(), "emb_grad": emb.grad, "backbone_weight_grad": backbone.weight.grad,
            "backbone_bias_grad": backbone.bias.grad, "init": init, "weight_grad": head.weight.grad,
            "bias_grad": None if head.bias is None else head.bias.grad}


# --- the two-rank run ------------------------------------------------------------------------

def worker(rank: int, world: int, port: int, folder: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    inputs = torch.load(folder / "inputs.pt", weights_only=False)
    out = {}
    for case, (_, _, _, ddp) in CASES.items():
        out[case] = one_step(case, inputs, rows_of(rank), wrap_ddp=ddp)

    # sampling: two steps; a second head with the same seed draws the same
    labels = inputs["sampled_labels"][rows_of(rank)]
    emb = torch.nn.functional.normalize(inputs["x"][rows_of(rank), :EMB], dim=1).requires_grad_(True)
    heads = [head_for("arcface_plain", SAMPLED_CLASSES, 0.5) for _ in range(2)]
    steps = []
    for _ in range(2):
        step = {}
        for i, head in enumerate(heads):
            head.weight.grad = None
            loss = head(emb, labels)
            loss.backward()
            step[f"selection{i}"] = head.last_selection.clone()
        step.update(loss=loss.detach(), weight_grad=heads[1].weight.grad.clone())
        steps.append(step)
    out["sampled"] = {"steps": steps, "emb": emb.detach(), "init": heads[0].weight.detach().clone()}

    # checkpoints: gather to full; re-shard a full state; refuse another rank's shard
    head = head_for("arcface_plain")
    out["full_state"] = head.full_state_dict()
    out["shard_state"] = {k: v.clone() if torch.is_tensor(v) else v for k, v in head.state_dict().items()}
    head.load_state_dict(inputs["full_state"])
    out["resharded"] = head.weight.detach().clone()
    other = dict(head.state_dict())
    lo, hi = class_range(NUM_CLASSES, world, 1 - rank)
    other["_extra_state"] = {**other["_extra_state"], "class_start": lo, "class_stop": hi}
    try:
        head.load_state_dict(other)
        out["refusal"] = None
    except ValueError as e:
        out["refusal"] = str(e)

    sub = head_for("subcenter_ddp")
    emb = torch.nn.Linear(IN_DIM, EMB)
    emb.load_state_dict(inputs["backbone"])
    out["winners"] = winning_subcenters(sub, emb(inputs["x"][rows_of(rank)]).detach(), inputs["labels"][rows_of(rank)])
    torch.save(out, folder / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("partial_fc")
    inputs = make_inputs()
    torch.save(inputs, folder / "inputs.pt")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):  # gloo binds to the host name's address otherwise
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    procs = [subprocess.Popen([sys.executable, __file__, str(r), "2", str(port), str(folder)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=180)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two gloo ranks did not finish in 180 s")
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} failed:\n{log[-3000:]}"
    return inputs, [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


def close(a, b):
    scale = max(float(b.abs().max()), 1e-3)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process_full_softmax(two_ranks, case):
    inputs, ranks = two_ranks
    _, _, _, ddp = CASES[case]
    backbone = torch.nn.Linear(IN_DIM, EMB)
    backbone.load_state_dict(inputs["backbone"])
    head = head_for(case)
    emb = backbone(inputs["x"])
    emb.retain_grad()
    loss = F.cross_entropy(reference_logits(head, emb, inputs["labels"]), inputs["labels"])
    loss.backward()
    grads = {"weight_grad": head.weight.grad, "bias_grad": head.bias.grad if head.bias is not None else None}
    for rank, got in enumerate(r[case] for r in ranks):
        lo, hi = class_range(NUM_CLASSES, 2, rank)
        # the shard is the slice of what one process draws (the init ignores the world size)
        torch.testing.assert_close(got["init"], head.weight.detach()[..., lo:hi, :], rtol=0, atol=0)
        close(got["loss"], loss.detach())
        close(got["weight_grad"], grads["weight_grad"][..., lo:hi, :])
        if grads["bias_grad"] is not None:
            close(got["bias_grad"], grads["bias_grad"][lo:hi])
        # DDP averages the backbone over ranks: the head hands back 2x the true gradient for that
        want = emb.grad[rows_of(rank)] * (2 if ddp else 1)
        close(got["emb_grad"], want)
        if ddp:
            close(got["backbone_weight_grad"], backbone.weight.grad)
            close(got["backbone_bias_grad"], backbone.bias.grad)
    if not ddp:  # each rank's backbone gradient is its rows' share: they add up to the whole
        close(ranks[0][case]["backbone_weight_grad"] + ranks[1][case]["backbone_weight_grad"], backbone.weight.grad)


def test_two_ranks_sampling_keeps_positives_and_equals_softmax_over_the_kept(two_ranks):
    inputs, ranks = two_ranks
    labels = inputs["sampled_labels"]
    emb = torch.cat([r["sampled"]["emb"] for r in ranks])
    centres = torch.cat([r["sampled"]["init"] for r in ranks])
    torch.testing.assert_close(centres, head_for("arcface_plain", SAMPLED_CLASSES).weight.detach(), rtol=0, atol=0)
    for step in range(2):
        kept = []
        for rank, r in enumerate(ranks):
            got = r["sampled"]["steps"][step]
            lo, hi = class_range(SAMPLED_CLASSES, 2, rank)
            mine = {int(c) for c in labels if lo <= c < hi}
            selection = got["selection0"].tolist()
            assert got["selection1"].tolist() == selection, "the same seed drew differently"
            assert mine <= set(selection) and len(selection) == 5 and selection == sorted(selection)
            assert all(lo <= c < hi for c in selection)
            kept += selection
        # the loss is the softmax over the kept classes only, the gradient lands on them only
        kept_t = torch.tensor(kept)
        w = centres[kept_t].clone().requires_grad_(True)
        head = head_for("arcface_plain", SAMPLED_CLASSES)
        position = torch.searchsorted(kept_t, labels)
        loss = F.cross_entropy(head.margin(class_cosines(emb, w), position), position)
        loss.backward()
        for rank, r in enumerate(ranks):
            got = r["sampled"]["steps"][step]
            close(got["loss"], loss.detach())
            lo, _ = class_range(SAMPLED_CLASSES, 2, rank)
            local = got["selection0"] - lo
            close(got["weight_grad"][local], w.grad[torch.searchsorted(kept_t, got["selection0"])])
            untouched = torch.ones(SAMPLED_CLASSES // 2, dtype=torch.bool)
            untouched[local] = False
            assert bool((got["weight_grad"][untouched] == 0).all())
    drawn = [[r["sampled"]["steps"][step]["selection0"].tolist() for step in range(2)] for r in ranks]
    assert any(first != second for first, second in drawn), "both steps drew the same negatives"


def test_two_ranks_checkpoints_gather_and_reshard(two_ranks):
    inputs, ranks = two_ranks
    single = head_for("arcface_plain")
    for rank, r in enumerate(ranks):
        lo, hi = class_range(NUM_CLASSES, 2, rank)
        # the gathered state is what one process holds, and loads into one
        torch.testing.assert_close(r["full_state"]["weight"], single.weight.detach(), rtol=0, atol=0)
        assert r["full_state"]["_extra_state"]["world_size"] == 1
        assert r["shard_state"]["weight"].shape == (hi - lo, EMB)
        assert r["shard_state"]["_extra_state"]["class_start"] == lo
        # a full state made by one process re-shards onto two
        torch.testing.assert_close(r["resharded"], inputs["full_state"]["weight"][lo:hi], rtol=0, atol=0)
        assert r["refusal"] is not None and "full_state_dict" in r["refusal"] and "\n" not in r["refusal"]
    single.load_state_dict(ranks[1]["full_state"])
    # and two shards, stacked, are the one-process state
    torch.testing.assert_close(torch.cat([r["shard_state"]["weight"] for r in ranks]), single.weight.detach())


def test_two_ranks_winning_subcenters_equal_one_process(two_ranks):
    inputs, ranks = two_ranks
    backbone = torch.nn.Linear(IN_DIM, EMB)
    backbone.load_state_dict(inputs["backbone"])
    index, cosine = winning_subcenters(head_for("subcenter_ddp"), backbone(inputs["x"]).detach(), inputs["labels"])
    assert torch.cat([r["winners"][0] for r in ranks]).tolist() == index.tolist()
    close(torch.cat([r["winners"][1] for r in ranks]), cosine)


# --- one process ---------------------------------------------------------------------------

def test_world_size_one_without_a_process_group():
    assert not torch.distributed.is_initialized()
    inputs = make_inputs()
    for case in CASES:
        got = one_step(case, inputs, slice(None), wrap_ddp=False)
        backbone = torch.nn.Linear(IN_DIM, EMB)
        backbone.load_state_dict(inputs["backbone"])
        head = head_for(case)
        emb = backbone(inputs["x"])
        loss = F.cross_entropy(reference_logits(head, emb, inputs["labels"]), inputs["labels"])
        loss.backward()
        close(got["loss"], loss.detach())
        close(got["weight_grad"], head.weight.grad)
        close(got["backbone_weight_grad"], backbone.weight.grad)


def test_sampling_is_deterministic_for_a_seed_and_keeps_positives():
    labels = torch.tensor([3, 3, 17, 40])
    emb = torch.randn(4, EMB)

    def selections(seed, steps=4, rate=0.25):
        head = build_head("arcface", EMB, 50, s=64.0, m1=1.0, m2=0.5, m3=0.0, sample_rate=rate, seed=seed)
        out = []
        for _ in range(steps):
            head(emb, labels)
            out.append(head.last_selection.tolist())
        return out, head

    first, head = selections(7)
    assert first == selections(7)[0]
    assert first != selections(8)[0]
    assert len({tuple(s) for s in first}) > 1, "every step drew the same negatives"
    for s in first:
        assert {3, 17, 40} <= set(s) and len(s) == 12
    # more positives than the rate allows: the positives alone
    only, _ = selections(7, steps=1, rate=0.02)
    assert only == [[3, 17, 40]]
    # eval mode: every class, nothing drawn
    head.eval()
    head(emb, labels)
    assert head.last_selection is None
    # a resumed head draws what the original would have drawn next
    head.train()
    resumed = build_head("arcface", EMB, 50, s=64.0, m1=1.0, m2=0.5, m3=0.0, sample_rate=0.25, seed=99)
    resumed.load_state_dict(head.state_dict())
    head(emb, labels)
    resumed(emb, labels)
    assert resumed.last_selection.tolist() == head.last_selection.tolist()
    torch.testing.assert_close(resumed.weight, head.weight)


def test_checkpoint_of_another_head_is_refused():
    head = build_head("arcface", EMB, 10, s=64.0, m1=1.0, m2=0.5, m3=0.0)
    other = build_head("subcenter", EMB, 10, s=64.0, m1=1.0, m2=0.5, m3=0.0, k=3)
    with pytest.raises(ValueError, match="kind"):
        head.load_state_dict(other.state_dict())


def test_class_range_covers_every_class_once():
    for classes in (7, 20, 85742):
        for world in (1, 2, 3, 8):
            ranges = [class_range(classes, world, r) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == classes
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
            assert all(hi - lo in (classes // world, classes // world + 1) for lo, hi in ranges)


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
