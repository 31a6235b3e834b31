"""The margin heads: values against the formula, float64 gradcheck (theta near 0 and pi
included), the monotonic fall-off past pi, invalid margins, the sub-centre winners."""
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from arcpipe.train.losses import (ACOS_EPS, HEAD_KINDS, PAPER_MARGINS, CombinedMargin, build_head, check_margin,
                                  margin_target)
from arcpipe.train.partial_fc import dominant_subcenters, winner_counts, winning_subcenters

# (kind, (m1, m2, m3), k) for every kind and every paper setting
CASES = [
    ("softmax", (1.0, 0.0, 0.0), 1),
    ("norm_softmax", (1.0, 0.0, 0.0), 1),
    ("arcface", PAPER_MARGINS["arcface"], 1),
    ("cosface", PAPER_MARGINS["cosface"], 1),
    ("sphereface", PAPER_MARGINS["sphereface"], 1),
    ("combined", PAPER_MARGINS["combined_1"], 1),
    ("combined", PAPER_MARGINS["combined_2"], 1),
    ("subcenter", PAPER_MARGINS["arcface"], 3),
    ("subcenter", PAPER_MARGINS["combined_2"], 3),
]
IDS = [f"{kind}-{m[0]}-{m[1]}-{m[2]}-k{k}" for kind, m, k in CASES]
# one sample per angle to its own class centre (to the winning sub-centre for "subcenter")
ANGLES = [0.01, 0.4, 1.3, 2.0, 2.5, math.pi - 0.2, math.pi - 0.01]
DIM = 8
NUM_CLASSES = len(ANGLES) + 1  # one class per angle, and one that no sample has


def formula_target(theta: float, m1: float, m2: float, m3: float, falloff: str = "insightface") -> float:
    """The target cosine the module docstring promises, written out in plain math."""
    if m1 * theta + m2 <= math.pi:
        return math.cos(m1 * theta + m2) - m3
    if falloff == "insightface" and m1 == 1:
        return math.cos(theta) - m2 * math.sin(m2) - m3
    return math.cos(theta) - (1 + math.cos((math.pi - m2) / m1)) - m3


def _frame(rng: np.random.Generator, n: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    return q[:, :n].T  # n orthonormal rows


def angled_batch(k: int, seed: int = 0):
    """Embeddings x_i and centres (K, C, D) with class i at angle ANGLES[i] from x_i (its other
    sub-centres farther, so the winner is known), plus one class nobody has."""
    rng = np.random.default_rng(seed)
    n, c = len(ANGLES), len(ANGLES) + 1
    x = np.zeros((n, DIM))
    w = rng.standard_normal((k, c, DIM))
    for i, theta in enumerate(ANGLES):
        basis = _frame(rng, k + 1)
        x[i] = basis[0] * rng.uniform(0.5, 2.0)
        offsets = (math.pi - theta) * np.array([0.5, 0.75]) if theta > 2 else np.array([0.3, 0.6])
        others = list(theta + offsets)[:k - 1]
        for j, angle in enumerate([theta] + others):
            w[j, i] = (math.cos(angle) * basis[0] + math.sin(angle) * basis[j + 1]) * rng.uniform(0.5, 2.0)
    labels = np.arange(n)
    return torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(labels)


def make_head(kind, margins, k, s=64.0, num_classes=NUM_CLASSES, **kw):
    m1, m2, m3 = margins
    return build_head(kind, DIM, num_classes, s=s, m1=m1, m2=m2, m3=m3, k=k, **kw).double()


def set_centres(head, w, bias=None):
    with torch.no_grad():
        head.weight.copy_(w if head.weight.dim() == 3 else w[0])
        if bias is not None:
            head.bias.copy_(bias)


def reference_loss(kind, margins, s, x, w, b, labels) -> float:
    """The loss written out in numpy float64 from the definitions."""
    x, w, y = x.numpy(), w.numpy(), labels.numpy()
    if kind == "softmax":
        logits = x @ w[0].T + b.numpy()
    else:
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        wn = w / np.linalg.norm(w, axis=2, keepdims=True)
        cos = np.einsum("nd,kcd->nkc", xn, wn).max(axis=1)
        logits = s * cos
        for i, j in enumerate(y):
            theta = math.acos(min(1.0, max(-1.0, cos[i, j])))
            logits[i, j] = s * formula_target(theta, *margins)
    top = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(lse - logits[np.arange(len(y)), y]))


def test_registry_names_every_kind():
    assert HEAD_KINDS == ("softmax", "norm_softmax", "arcface", "cosface", "sphereface", "combined", "subcenter")
    for kind, m, k in CASES:
        assert isinstance(make_head(kind, m, k), torch.nn.Module)


@pytest.mark.parametrize("m1,m2,m3", list(PAPER_MARGINS.values()), ids=list(PAPER_MARGINS))
def test_target_matches_formula_at_ordinary_angles(m1, m2, m3):
    theta = torch.linspace(0.05, 2.2, 50, dtype=torch.float64)
    got = margin_target(torch.cos(theta), m1, m2, m3)
    want = torch.cos(m1 * theta + m2) - m3
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind,margins,k", CASES, ids=IDS)
def test_loss_matches_reference(kind, margins, k):
    x, w, y = angled_batch(k, seed=1)
    b = torch.linspace(-0.3, 0.4, w.shape[1], dtype=torch.float64)
    head = make_head(kind, margins, k, s=16.0)
    set_centres(head, w, b if kind == "softmax" else None)
    loss = head(x, y)
    assert loss.dtype == torch.float64
    assert float(loss.detach()) == pytest.approx(reference_loss(kind, margins, 16.0, x, w, b, y), rel=1e-10, abs=1e-12)


GRADCHECK = [(kind, m, k, True) for kind, m, k in CASES] + [("combined", PAPER_MARGINS["combined_2"], 1, False)]


@pytest.mark.parametrize("kind,margins,k,fast", GRADCHECK, ids=[f"{i}-{'fast' if f else 'full'}" for i, f in
                                                                 zip(IDS + IDS[6:7], [c[3] for c in GRADCHECK])])
def test_gradcheck_float64_near_zero_and_pi(kind, margins, k, fast):
    """fast: gradcheck's random projections of the Jacobian (quick); one case checks it whole."""
    x, w, y = angled_batch(k, seed=2)
    head = make_head(kind, margins, k, s=2.0)
    centres = (w if head.weight.dim() == 3 else w[0]).clone().requires_grad_(True)
    inputs = [x.clone().requires_grad_(True), centres]
    if kind == "softmax":
        inputs.append(torch.linspace(-0.3, 0.4, w.shape[1], dtype=torch.float64).requires_grad_(True))

    def loss(emb, weight, bias=None):
        params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
        return functional_call(head, params, (emb, y))

    assert torch.autograd.gradcheck(loss, tuple(inputs), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind,margins,k", CASES, ids=IDS)
def test_finite_at_exactly_zero_and_pi(kind, margins, k, dtype):
    torch.manual_seed(0)
    head = make_head(kind, margins, k).to(dtype)
    centre = head.weight.detach()[..., 0, :].reshape(-1, DIM)[0]
    x = torch.stack([centre * 3, -centre * 0.5, centre]).clone().requires_grad_(True)  # theta = 0, pi, 0
    y = torch.tensor([0, 0, 1])
    loss = head(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


def test_target_gradient_finite_at_the_clamp():
    cos = torch.tensor([1.0, 1 - 1e-9, 1 - ACOS_EPS / 2, -1 + 1e-9, -1.0, 1.0 + 1e-7], dtype=torch.float64,
                       requires_grad=True)
    for m in PAPER_MARGINS.values():
        cos.grad = None
        margin_target(cos, *m).sum().backward()
        assert torch.isfinite(cos.grad).all(), m


MONOTONIC = list(PAPER_MARGINS.values()) + [(1.0, 1.2, 0.1), (2.0, 0.0, 0.0), (4.0, 0.0, 0.0), (4.0, 2.5, 0.0),
                                            (1.0, 3.0, 0.0), (0.5, 1.6, 0.0), (1.0, 0.5, 0.3)]


@pytest.mark.parametrize("m1,m2,m3", MONOTONIC, ids=[str(m) for m in MONOTONIC])
def test_falloff_past_pi_is_monotonic_and_continuous(m1, m2, m3):
    check_margin(64.0, m1, m2, m3, "exact")
    theta = torch.linspace(0, math.pi, 200001, dtype=torch.float64)
    target = margin_target(torch.cos(theta), m1, m2, m3, "exact")
    step = torch.diff(target)
    assert float(step.max()) <= 1e-12, "the target logit rises somewhere"
    theta_t = (math.pi - m2) / m1
    if theta_t < math.pi:
        # strictly decreasing past the threshold, with the documented shift
        past = (theta > theta_t + 1e-3) & (theta < math.pi - 1e-3)
        assert bool((step[past[1:]] < 0).all())
        t = torch.tensor([theta_t - 1e-7, theta_t + 1e-7], dtype=torch.float64)
        left, right = margin_target(torch.cos(t), m1, m2, m3, "exact").tolist()
        assert abs(left - right) < 1e-5, "a jump at theta_t"
        at_pi = float(margin_target(torch.tensor([-1.0], dtype=torch.float64), m1, m2, m3, "exact"))
        assert at_pi == pytest.approx(-1 - (1 + math.cos(theta_t)) - m3, abs=1e-12)
    # a margin never helps the target class
    assert float((target - torch.cos(theta)).max()) <= 1e-12


def test_arcface_falloff_value():
    theta = torch.tensor([2.8, 3.0], dtype=torch.float64)  # past pi - 0.5
    got = margin_target(torch.cos(theta), 1.0, 0.5, 0.0, "exact")
    torch.testing.assert_close(got, torch.cos(theta) - (1 - math.cos(0.5)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("m2,m3", [(0.5, 0.0), (0.3, 0.2), (0.45, 0.0), (1.2, 0.1)])
def test_insightface_falloff_is_the_references_rule(m2, m3):
    """The default: arcface_torch's ArcFace head, written out from its published formula:
    th = cos(pi - m), mm = sin(pi - m) * m; where(cos > th, cos(theta + m), cos - mm), minus m3."""
    cos = torch.cos(torch.linspace(0.01, math.pi - 0.01, 20001, dtype=torch.float64))  # off acos's clamp
    th, mm = math.cos(math.pi - m2), math.sin(math.pi - m2) * m2
    sin = torch.sqrt((1 - cos * cos).clamp(min=0))
    phi = cos * math.cos(m2) - sin * math.sin(m2)
    want = torch.where(cos > th, phi, cos - mm) - m3
    got = margin_target(cos, 1.0, m2, m3)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert float(torch.diff(got).max()) <= 1e-12  # it steps down at pi - m2, never up
    # past pi - m2 the two rules differ by the step the reference's first-order shift leaves
    past = torch.tensor([math.cos(math.pi - m2 / 2)], dtype=torch.float64)
    gap = float(margin_target(past, 1.0, m2, m3, "exact") - margin_target(past, 1.0, m2, m3))
    assert gap == pytest.approx(m2 * math.sin(m2) - (1 - math.cos(m2)), abs=1e-12)


def test_insightface_falloff_that_would_rise_is_refused():
    with pytest.raises(ValueError, match="falloff: exact"):
        check_margin(64.0, 1.0, 3.0, 0.0)
    check_margin(64.0, 1.0, 3.0, 0.0, "exact")
    with pytest.raises(ValueError, match="falloff='linear'"):
        check_margin(64.0, 1.0, 0.5, 0.0, "linear")


INVALID = [
    (dict(s=0.0), "s"), (dict(s=-64.0), "s"), (dict(s=float("nan")), "s"),
    (dict(m1=0.0), "m1"), (dict(m1=-1.0), "m1"), (dict(m1=float("inf")), "m1"),
    (dict(m2=-0.1), "m2"), (dict(m2=math.pi), "m2"), (dict(m2=4.0), "m2"),
    (dict(m3=-0.1), "m3"), (dict(m2=0.0, m3=2.0), "m3"), (dict(m2=0.5, m3=1.9), "m3"),
    (dict(m1=0.5, m2=0.0, m3=0.0), "m1"), (dict(m1=0.9, m2=0.1, m3=0.0), "m1"),
]


@pytest.mark.parametrize("bad,name", INVALID, ids=[f"{n}-{b}" for b, n in INVALID])
def test_invalid_margin_raises_naming_the_parameter(bad, name):
    args = dict(s=64.0, m1=1.0, m2=0.3, m3=0.2) | bad
    with pytest.raises(ValueError) as err:
        build_head("combined", DIM, 10, **args)
    message = str(err.value)
    assert message.startswith(f"{name}=") and "\n" not in message


KIND_MISMATCH = [
    ("arcface", dict(m1=1.0, m2=0.5, m3=0.2), "m3"), ("arcface", dict(m1=1.35, m2=0.5, m3=0.0), "m1"),
    ("cosface", dict(m1=1.0, m2=0.5, m3=0.35), "m2"), ("sphereface", dict(m1=1.35, m2=0.5, m3=0.0), "m2"),
    ("softmax", dict(m1=1.0, m2=0.5, m3=0.0), "m2"), ("norm_softmax", dict(m1=1.0, m2=0.0, m3=0.35), "m3"),
]


@pytest.mark.parametrize("kind,margins,name", KIND_MISMATCH, ids=[f"{k}-{n}" for k, _, n in KIND_MISMATCH])
def test_kind_refuses_margin_terms_it_does_not_have(kind, margins, name):
    with pytest.raises(ValueError, match=f"^{name}="):
        build_head(kind, DIM, 10, s=64.0, **margins)


OTHER_BAD = [({"kind": "arcfce"}, "kind"), ({"k": 3}, "k"), ({"k": 0, "kind": "subcenter"}, "k"),
             ({"sample_rate": 0.0}, "sample_rate"), ({"sample_rate": 1.5}, "sample_rate")]


@pytest.mark.parametrize("kw,name", OTHER_BAD, ids=[n for _, n in OTHER_BAD])
def test_other_bad_settings_raise(kw, name):
    args = dict(kind="arcface", s=64.0, m1=1.0, m2=0.5, m3=0.0) | kw
    kind = args.pop("kind")
    with pytest.raises(ValueError, match=f"^{name}="):
        build_head(kind, DIM, 10, **args)


def test_margin_only_on_rows_whose_class_is_local():
    cos = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9], [-0.1, -0.2, -0.3]], dtype=torch.float64)
    local = torch.tensor([-1, 2, -1, 0])
    out = CombinedMargin(10.0, 1.0, 0.5, 0.0)(cos, local)
    want = cos * 10
    want[1, 2] = 10 * math.cos(math.acos(0.6) + 0.5)
    want[3, 0] = 10 * math.cos(math.acos(-0.1) + 0.5)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)


def test_winning_subcenters_and_dominant():
    x, w, y = angled_batch(3, seed=3)
    head = make_head("subcenter", PAPER_MARGINS["arcface"], 3)
    set_centres(head, w)
    index, cosine = winning_subcenters(head, x, y)
    assert index.tolist() == [0] * len(ANGLES)  # angled_batch puts the nearest sub-centre first
    torch.testing.assert_close(cosine, torch.cos(torch.tensor(ANGLES, dtype=torch.float64)), rtol=0, atol=1e-12)
    counts = winner_counts(torch.tensor([2, 2, 1, 0, 1]), torch.tensor([0, 0, 0, 2, 2]), num_classes=4, k=3)
    assert counts.tolist() == [[0, 1, 2], [0, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert dominant_subcenters(counts).tolist() == [2, -1, 0, -1]


def test_winning_subcenters_refuses_plain_softmax():
    head = make_head("softmax", (1.0, 0.0, 0.0), 1)
    with pytest.raises(ValueError, match="softmax"):
        winning_subcenters(head, torch.randn(2, DIM, dtype=torch.float64), torch.tensor([0, 1]))


def test_bad_labels_raise():
    head = make_head("arcface", PAPER_MARGINS["arcface"], 1, num_classes=5)
    with pytest.raises(ValueError, match="label 5"):
        head(torch.randn(2, DIM, dtype=torch.float64), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="label -1"):
        head(torch.randn(2, DIM, dtype=torch.float64), torch.tensor([-1, 0]))
