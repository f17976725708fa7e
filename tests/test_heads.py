"""Margin heads against per-sample loops of their formulas, closed-form cases and edge stability."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megabench.models import HEAD_REGISTRY, create_head
from megabench.models.heads import sphereface_lambda, sphereface_psi

EPS = 1e-7


def _cos(x: np.ndarray, w: np.ndarray) -> float:
    c = float(np.dot(x, w) / (np.linalg.norm(x) * np.linalg.norm(w)))
    return min(max(c, -1 + EPS), 1 - EPS)


def loop_target(name: str, c: float, norm: float, head) -> float:
    """The target logit written from docs/models.md, one sample at a time."""
    theta = math.acos(c)
    if name == "cosface" or name == "am_softmax":
        return head.s * (c - head.m)
    if name == "arcface":
        if head.easy_margin:
            return head.s * (math.cos(theta + head.m) if c > 0 else c)
        return head.s * (math.cos(theta + head.m) if theta + head.m <= math.pi else c - head.m * math.sin(head.m))
    if name == "combined":
        a = head.m1 * theta + head.m2
        return head.s * (math.cos(a) - head.m3 if a <= math.pi else c - head.m2 * math.sin(head.m2) - head.m3)
    if name == "sphereface":
        k = min(int(theta * head.m / math.pi), head.m - 1)
        psi = (-1) ** k * math.cos(head.m * theta) - 2 * k
        lam = head.lam
        return norm * (lam * c + psi) / (1 + lam)
    raise AssertionError(name)


def loop_logits(name: str, head, x: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    xs, ws = x.double().numpy(), head.weight.detach().double().numpy()
    out = np.zeros((len(xs), len(ws)))
    for i, xi in enumerate(xs):
        norm = float(np.linalg.norm(xi))
        for j, wj in enumerate(ws):
            if name == "softmax":
                out[i, j] = float(np.dot(xi, wj)) + float(head.bias[j].detach())
                continue
            c = _cos(xi, wj)
            if j == int(labels[i]):
                out[i, j] = loop_target(name, c, norm, head)
            else:
                out[i, j] = (norm if name == "sphereface" else head.s) * c
    return out


def loop_ce(logits: np.ndarray, labels: torch.Tensor) -> float:
    total = 0.0
    for i, row in enumerate(logits):
        mx = row.max()
        total += -(row[int(labels[i])] - mx - math.log(sum(math.exp(v - mx) for v in row)))
    return total / len(logits)


HEAD_CASES = [
    ("softmax", {}),
    ("cosface", {}),
    ("am_softmax", {}),
    ("arcface", {}),
    ("arcface", {"easy_margin": True}),
    ("combined", {"m1": 1.0, "m2": 0.3, "m3": 0.2}),
    ("sphereface", {}),
]


def test_every_registered_head_is_covered() -> None:
    assert {n for n, _ in HEAD_CASES} == set(HEAD_REGISTRY.names())


@pytest.mark.parametrize(("name", "kwargs"), HEAD_CASES)
def test_head_matches_per_sample_loop(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    head = create_head(name, 6, 5, **kwargs)
    x = torch.randn(12, 6) * 3
    # make a few targets nearly opposite their class weight (theta + m > pi) and a few aligned
    labels = torch.randint(0, 5, (12,))
    with torch.no_grad():
        x[0] = -head.weight[labels[0]] * 2
        x[1] = head.weight[labels[1]] * 5
    got = head.logits(x, labels).detach().double().numpy()
    want = loop_logits(name, head, x, labels)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert head(x, labels).item() == pytest.approx(loop_ce(want, labels), rel=1e-4, abs=1e-4)


def test_closed_form_values() -> None:
    head = create_head("cosface", 2, 2)
    assert head.s == 64 and head.m == 0.35
    am = create_head("am_softmax", 2, 2)
    assert am.s == 30 and am.m == 0.35
    arc = create_head("arcface", 2, 2)
    assert arc.s == 64 and arc.m == 0.5
    with torch.no_grad():
        arc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # x at 60 degrees from class 0: target 64 cos(pi/3 + 0.5); other 64 cos(30 deg)
    x = torch.tensor([[0.5, math.sqrt(3) / 2]])
    logits = arc.logits(x, torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(64 * math.cos(math.pi / 3 + 0.5), abs=1e-4)
    assert logits[0, 1].item() == pytest.approx(64 * math.sqrt(3) / 2, abs=1e-4)


@pytest.mark.parametrize("cos", [-1.0, -0.999, -0.9, -0.5, 0.0, 0.3, 0.99, 1.0])
def test_combined_reproduces_arcface_and_cosface(cos: float) -> None:
    c = torch.tensor([cos]).clamp(-1 + EPS, 1 - EPS)
    arc = create_head("arcface", 2, 2, margin_rad=0.5)
    comb = create_head("combined", 2, 2, m1=1.0, m2=0.5, m3=0.0)
    torch.testing.assert_close(arc.target(c), comb.target(c), rtol=1e-5, atol=1e-5)
    cosf = create_head("cosface", 2, 2, margin=0.35)
    comb = create_head("combined", 2, 2, m1=1.0, m2=0.0, m3=0.35)
    torch.testing.assert_close(cosf.target(c), comb.target(c), rtol=1e-5, atol=1e-5)


def test_arcface_target_is_monotonic_in_theta() -> None:
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    arc = create_head("arcface", 2, 2)
    t = arc.target(torch.cos(theta).clamp(-1 + EPS, 1 - EPS))
    assert (t[1:] <= t[:-1] + 1e-12).all()


def test_sphereface_psi_monotonic_and_closed_form() -> None:
    theta = torch.linspace(0, math.pi, 4001, dtype=torch.float64)
    psi = sphereface_psi(torch.cos(theta), m=4)
    assert (psi[1:] <= psi[:-1] + 1e-9).all()
    assert psi[0].item() == pytest.approx(1.0, abs=1e-5)
    assert psi[-1].item() == pytest.approx(-7.0, abs=1e-5)  # (-1)^3 cos(4 pi) - 6
    for k in range(1, 4):  # continuous at k pi / m: value (-1)^k cos(k pi) - 2k = 1 - 2k
        c = torch.tensor([math.cos(k * math.pi / 4)], dtype=torch.float64)
        assert sphereface_psi(c).item() == pytest.approx(1 - 2 * k, abs=1e-5)


def test_sphereface_lambda_schedule() -> None:
    assert sphereface_lambda(0) == 1000.0
    assert sphereface_lambda(1) == pytest.approx(1000 / 1.12)
    assert sphereface_lambda(100) == pytest.approx(1000 / 13)
    assert sphereface_lambda(1658) == pytest.approx(1000 / (1 + 0.12 * 1658))
    assert sphereface_lambda(1659) == 5.0 and sphereface_lambda(10**6) == 5.0
    head = create_head("sphereface", 4, 3)
    x, y = torch.randn(2, 4), torch.tensor([0, 1])
    head.train()
    head(x, y)
    head(x, y)
    assert int(head.step) == 2 and head.lam == pytest.approx(sphereface_lambda(2))
    head.eval()
    head(x, y)
    assert int(head.step) == 2


def test_arcface_easy_margin_only_where_cos_positive() -> None:
    head = create_head("arcface", 2, 2, easy_margin=True)
    c = torch.tensor([-0.5, 0.0, 0.5])
    t = head.target(c)
    assert t[0].item() == pytest.approx(-0.5) and t[1].item() == pytest.approx(0.0)
    assert t[2].item() == pytest.approx(math.cos(math.acos(0.5) + 0.5), abs=1e-6)


@pytest.mark.parametrize(("name", "kwargs"), HEAD_CASES)
@pytest.mark.parametrize("autocast", [False, True])
def test_no_nan_at_cos_plus_minus_one(name: str, kwargs: dict, autocast: bool) -> None:
    torch.manual_seed(0)
    head = create_head(name, 8, 3, **kwargs)
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        x = torch.stack([head.weight[0] * 3, -head.weight[1] * 2, head.weight[2], -head.weight[0]]).clone()
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = head(x.bfloat16() if autocast else x, labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


def test_softmax_head_is_plain_linear_cross_entropy() -> None:
    torch.manual_seed(0)
    head = create_head("softmax", 5, 7)
    x, y = torch.randn(4, 5), torch.tensor([0, 3, 6, 2])
    want = F.cross_entropy(x @ head.weight.t() + head.bias, y)
    torch.testing.assert_close(head(x, y), want)


def test_bad_head_options() -> None:
    with pytest.raises(ValueError, match="integer"):
        create_head("sphereface", 4, 3, margin=2.5)
    with pytest.raises(ValueError, match="margin_rad"):
        create_head("arcface", 4, 3, margin_rad=28.6)  # degrees by mistake
    with pytest.raises(KeyError, match="did you mean"):
        create_head("arcfce", 4, 3)
