"""Shared pieces of the SRANet attention modules: the pair pooling and the attention product.

``attend(q, k, v)`` is ``softmax(q k^T) v`` with no ``1/sqrt(d)`` scaling (the paper has none),
computed through :func:`torch.nn.functional.scaled_dot_product_attention` on 4-D ``(B, 1, L, d)``
tensors so that fused kernels never store the ``L x L'`` matrix (on the CPU, q and k are zero-padded
to v's width, since the CPU flash kernel needs equal head dims); logits and softmax run in fp32 even
under autocast. :func:`attend_reference` is the plain ``softmax(bmm)`` form, kept for tests.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

POOL_MODES = ("light", "avg", "max", "naive")


def _no_autocast(device_type: str):
    if device_type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Row-softmax attention without scaling.

    Args:
        q: ``(B, L, d)``; k: ``(B, L', d)``; v: ``(B, L', e)``, any float dtype.
    Returns:
        ``(B, L, e)`` in ``v``'s dtype; row ``i`` is ``sum_j softmax_j(q_i . k_j) v_j``, computed in fp32
        (fp64 for fp64 input).
    """
    dtype = v.dtype
    with _no_autocast(q.device.type):
        ct = torch.promote_types(dtype, torch.float32)  # fp32, or fp64 when given fp64
        q, k, v = (t.to(ct).unsqueeze(1) for t in (q, k, v))
        if q.device.type == "cpu" and q.shape[-1] < v.shape[-1]:
            # The CPU flash kernel needs equal head dims (else the math path stores L x L'); zero
            # columns leave every q . k unchanged (benchmarks/attention_cost.py --kernels times both paths).
            pad = v.shape[-1] - q.shape[-1]
            q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
        # the fused kernels need unit stride on the last dim (else: the math path)
        out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), scale=1.0)
    return out.squeeze(1).to(dtype)


def attend_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T, dim=-1) v`` with an explicit ``bmm`` (stores the ``L x L'`` matrix); fp32."""
    logits = torch.bmm(q.float(), k.float().transpose(1, 2))
    return torch.bmm(torch.softmax(logits, dim=-1), v.float()).to(v.dtype)


class PairPool(nn.Module):
    """The paper's pooling before the attention product, flattened to positions.

    ``light``: AvgPool2d(2, 2, ceil) + MaxPool2d(2, 2, ceil) (element-wise sum, eq. 1/5/6);
    ``avg`` / ``max``: one of them; ``naive``: no pooling. Input ``(B, C, H, W)``; output ``(B, C, N')``
    with ``N' = ceil(H/2) * ceil(W/2)`` (``H * W`` for ``naive``). Partial windows at odd edges average
    over the positions they cover.
    """

    def __init__(self, mode: str = "light") -> None:
        super().__init__()
        if mode not in POOL_MODES:
            raise ValueError(f"pool mode {mode!r} is not one of {POOL_MODES}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "naive":
            return x.flatten(2)
        out = None
        if self.mode in ("light", "avg"):
            out = F.avg_pool2d(x, 2, 2, ceil_mode=True)
        if self.mode in ("light", "max"):
            m = F.max_pool2d(x, 2, 2, ceil_mode=True)
            out = m if out is None else out + m
        return out.flatten(2)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A bias-free 1x1 convolution (the paper's theta / phi / rho / W); apply it with :func:`pointwise`."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)


def pointwise(x: torch.Tensor, *convs: nn.Conv2d) -> torch.Tensor:
    """Apply bias-free 1x1 convolutions to ``x`` ``(B, C, H, W)`` (or ``(B, C, N)``) as one matmul.

    Returns one ``(B, sum C_i, N)`` tensor, ``N = H W``, stacking ``conv_i(x).flatten(2)`` along
    channels in the given order, computed as one batched GEMM over the concatenated weights (on the CPU,
    oneDNN's NCHW 1x1 convolution is slower; ``benchmarks/attention_cost.py --kernels`` times both).
    """
    weight = torch.cat([c.weight.flatten(1) for c in convs]) if len(convs) > 1 else convs[0].weight.flatten(1)
    x = x.flatten(2)
    # bmm over the batch-expanded weight: torch.matmul(2-D, 3-D) folds through a transposed copy of x
    return torch.bmm(weight.to(x.dtype).expand(x.shape[0], -1, -1), x)
