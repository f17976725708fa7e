"""SCA / SSA against the paper's equations written as plain loops, the SDPA path against softmax(bmm),
and the parameter deltas against the paper's Tables 1-2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from megabench.errors import UnknownNameError
from megabench.models import ATTENTION_REGISTRY, count_params, create_attention, create_model, params_to_mb
from megabench.models.layers import attend, attend_reference
from megabench.models.sca import SelfChannelAttention
from megabench.models.ssa import SelfSpatialAttention
from megabench.reporting.paper_tables import paper_rows


# ------------------------------------------------------------------------------------- naive references
def loop_pool(f: np.ndarray, mode: str) -> np.ndarray:
    """(C, H, W) -> (C, N') with 2x2 stride-2 ceil windows; avg over covered cells; light = avg + max."""
    c, h, w = f.shape
    if mode == "naive":
        return f.reshape(c, h * w)
    oh, ow = math.ceil(h / 2), math.ceil(w / 2)
    out = np.zeros((c, oh * ow))
    for ch in range(c):
        for i in range(oh):
            for j in range(ow):
                cells = [f[ch, y, x] for y in range(2 * i, min(2 * i + 2, h)) for x in range(2 * j, min(2 * j + 2, w))]
                avg, mx = sum(cells) / len(cells), max(cells)
                out[ch, i * ow + j] = {"avg": avg, "max": mx, "light": avg + mx}[mode]
    return out


def loop_conv1x1(weight: torch.Tensor, f: np.ndarray) -> np.ndarray:
    w = weight.detach().double().numpy()[:, :, 0, 0]
    c_out, c_in = w.shape
    _, h, wd = f.shape
    out = np.zeros((c_out, h, wd))
    for o in range(c_out):
        for i in range(c_in):
            out[o] += w[o, i] * f[i]
    return out


def loop_row_softmax(logits: np.ndarray) -> np.ndarray:
    out = np.zeros_like(logits)
    for i in range(logits.shape[0]):
        row = logits[i] - logits[i].max()
        e = [math.exp(v) for v in row]
        out[i] = np.array(e) / sum(e)
    return out


def loop_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = sum(a[i, k] * b[k, j] for k in range(a.shape[1]))
    return out


def loop_sca(m: SelfChannelAttention, f: np.ndarray) -> np.ndarray:
    """Eqs. (5)-(9): P1 = pool(theta F), P2 = pool(phi F), A_C = row-softmax(P1 P2^T), F_C = F + A_C rho(F)."""
    c, h, w = f.shape
    p1 = loop_pool(loop_conv1x1(m.theta.weight, f), m.pool.mode)
    p2 = loop_pool(loop_conv1x1(m.phi.weight, f), m.pool.mode)
    a_c = loop_row_softmax(loop_matmul(p1, p2.T))
    rho = loop_conv1x1(m.rho.weight, f).reshape(-1, h * w)
    return f + loop_matmul(a_c, rho).reshape(c, h, w)


def loop_ssa(m: SelfSpatialAttention, f: np.ndarray) -> np.ndarray:
    """Eqs. (1)-(4) with the output W + BN (eval statistics): F + BN(W(V^T A_S^T))."""
    c, h, w = f.shape
    q = loop_conv1x1(m.phi.weight, f).reshape(-1, h * w).T  # N x d
    k = loop_pool(loop_conv1x1(m.theta.weight, f), m.pool.mode)  # d x N'
    v = loop_pool(loop_conv1x1(m.rho.weight, f), m.pool.mode)  # C x N'
    a_s = loop_row_softmax(loop_matmul(q, k))  # N x N'
    y = loop_matmul(v, a_s.T).reshape(c, h, w)
    z = loop_conv1x1(m.out.weight, y)
    bn = m.bn
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
    shift = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
    return f + z * scale[:, None, None] + shift[:, None, None]


POOLS = ("light", "avg", "max", "naive")


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("hw", [(3, 3), (4, 2)])
def test_sca_matches_paper_loop(pool: str, hw: tuple[int, int]) -> None:
    torch.manual_seed(1)
    m = SelfChannelAttention(4, pool=pool, reduction=1 if pool == "naive" else 2).double().eval()
    x = torch.randn(2, 4, *hw, dtype=torch.float64) * 0.5
    with torch.no_grad():
        got = m(x).numpy()
    for b in range(2):
        np.testing.assert_allclose(got[b], loop_sca(m, x[b].numpy()), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("hw", [(3, 3), (2, 4)])
def test_ssa_matches_paper_loop(pool: str, hw: tuple[int, int]) -> None:
    torch.manual_seed(2)
    m = SelfSpatialAttention(32, pool=pool).double().eval()
    with torch.no_grad():  # a non-trivial output BN, so the W + BN path is checked too
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.5, 0.5)
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 32, *hw, dtype=torch.float64) * 0.5
    with torch.no_grad():
        got = m(x).numpy()
    for b in range(2):
        np.testing.assert_allclose(got[b], loop_ssa(m, x[b].numpy()), rtol=1e-6, atol=1e-6)


def test_ssa_is_identity_at_init() -> None:
    torch.manual_seed(0)
    for pool in POOLS:
        m = SelfSpatialAttention(32, pool=pool)
        x = torch.randn(3, 32, 7, 7)
        for mode in (m.train, m.eval):
            mode()
            assert torch.equal(m(x), x)
    assert not torch.equal(SelfChannelAttention(32)(x), x)  # SCA has no zero-init output: not identity


@pytest.mark.parametrize(("lq", "lk", "d", "e"), [(49, 16, 4, 64), (64, 32, 16, 49), (10, 10, 8, 8), (20, 5, 12, 3)])
def test_sdpa_path_equals_softmax_bmm(lq: int, lk: int, d: int, e: int) -> None:
    g = torch.Generator().manual_seed(lq * lk + d)
    q, k, v = (torch.randn(3, n, c, generator=g) for n, c in ((lq, d), (lk, d), (lk, e)))
    want = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1) @ v  # no 1/sqrt(d)
    torch.testing.assert_close(attend_reference(q, k, v), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(attend(q, k, v), want, rtol=1e-5, atol=1e-5)
    # non-contiguous operands (as the modules pass them) give the same result
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(attend(qt, k, v), want, rtol=1e-5, atol=1e-5)


def test_attend_runs_fp32_under_bf16_autocast() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 8, generator=g).bfloat16() for n in (30, 12, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attend(q, k, v)
    assert got.dtype == torch.bfloat16
    want = attend_reference(q.float(), k.float(), v.float())  # fp32 maths on the same bf16 inputs
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", ATTENTION_REGISTRY.names())
@pytest.mark.parametrize("hw", [(7, 7), (8, 6)])
def test_registered_attention_shape_and_gradients(name: str, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    m = create_attention(name, 32)
    if hasattr(m, "bn"):
        torch.nn.init.ones_(m.bn.weight)  # else the zero-init BN blocks the gradient to theta/phi/rho/W
    x = torch.randn(2, 32, *hw, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))


def _attention_types(block: torch.nn.Module) -> list[type]:
    """The attention mechanisms of an IR block in the order its forward applies them."""
    attn = block.attn
    layers = list(attn) if isinstance(attn, torch.nn.Sequential) else [attn]
    return [type(m) for m in layers]


@pytest.mark.parametrize("name", ["sranet_r50", "sranet_r100", "sranet_tiny"])
def test_sranet_blocks_apply_sca_then_ssa(name: str) -> None:
    """The paper's order (section III): channel attention first, then spatial, after every block's branch."""
    with torch.device("meta"):
        model = create_model(name)
    for i, block in enumerate(model.blocks):
        assert _attention_types(block) == [SelfChannelAttention, SelfSpatialAttention], (name, i)


def test_sranet_forward_computes_ssa_of_sca() -> None:
    """attn(x) = SSA(SCA(x)), and that differs from SCA(SSA(x)): the order is observable, not just declared."""
    torch.manual_seed(0)
    block = create_model("sranet_tiny", input_size=(32, 32)).blocks[0].eval()
    sca = next(m for m in block.attn.modules() if isinstance(m, SelfChannelAttention))
    ssa = next(m for m in block.attn.modules() if isinstance(m, SelfSpatialAttention))
    torch.nn.init.normal_(ssa.bn.weight)  # zero at init makes SSA the identity (then any order agrees)
    x = torch.randn(2, block.branch[1].out_channels, 6, 6)
    with torch.no_grad():
        got, paper, reversed_ = block.attn(x), ssa(sca(x)), sca(ssa(x))
    assert torch.allclose(got, paper, atol=1e-6)
    assert not torch.allclose(got, reversed_, atol=1e-3)


def test_create_attention_sequence_follows_the_given_names() -> None:
    seq = create_attention(("ssa_light", "sca_light"), 16)
    assert [type(m) for m in seq] == [SelfSpatialAttention, SelfChannelAttention]


def test_create_attention_of_no_names_is_identity() -> None:
    assert isinstance(create_attention((), 16), torch.nn.Identity)


def test_create_attention_unknown_name_suggests_close_match() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'ssa_light'"):
        create_attention("ssa_lite", 16)


@pytest.mark.parametrize("table", [1, 2])
def test_parameter_deltas_match_paper_tables(table: int) -> None:
    rows = paper_rows(table)
    with torch.device("meta"):
        base = count_params(create_model(rows[0]["model"]))
        for row in rows[1:]:
            delta_mb = params_to_mb(count_params(create_model(row["model"])) - base)
            paper_delta = row["size_mb"] - rows[0]["size_mb"]
            assert abs(delta_mb - paper_delta) < 0.1, (row["model"], delta_mb, paper_delta)


def test_parameter_deltas_closed_form() -> None:
    """S = sum over IR-50 blocks of C^2 = 1,781,760; SCA adds 2 S, naive SCA 3 S, SSA 2.125 S + BN (2 C)."""
    blocks = [64] * 3 + [128] * 4 + [256] * 14 + [512] * 3
    s = sum(c * c for c in blocks)
    assert s == 1_781_760
    with torch.device("meta"):
        base = count_params(create_model("iresnet50"))
        assert count_params(create_model("iresnet50_sca_light")) - base == 2 * s
        assert count_params(create_model("iresnet50_sca_naive")) - base == 3 * s
        assert count_params(create_model("iresnet50_ssa_naive")) - base == sum(
            2 * c * (c // 16) + 2 * c * c + 2 * c for c in blocks
        )
