"""Self residual Spatial Attention (SSA), SRANet paper section III-A, eqs. (1)-(4).

For ``F`` of shape ``(C, H, W)``, ``N = H W``, ``d = C / r`` (r = 16, as SENet)::

    Q = phi(F)^T                 N  x d          phi:   conv1x1 C -> d
    K = pool(theta(F))^T         N' x d          theta: conv1x1 C -> d
    V = pool(rho(F))^T           N' x C          rho:   conv1x1 C -> C
    A_S = row-softmax(Q K^T)     N  x N'
    F_S = F + BN(W (V^T A_S^T))  C  x N          W: conv1x1 C -> C, BN weight initialised to 0

The zero-initialised BN makes the module the identity at initialisation (non-local networks, the
paper's [24]). All four variants have the same parameters (Table 1: +15.16 MB); they differ in pooling.
"""

from __future__ import annotations

import torch
from torch import nn

from megabench.models.layers import PairPool, attend, conv1x1, pointwise


class SelfSpatialAttention(nn.Module):
    """``F -> F + BN(W(V^T A_S^T))``; input and output ``(B, C, H, W)``, same dtype.

    Args:
        channels: C.
        pool: ``light`` | ``avg`` | ``max`` | ``naive`` (see :class:`PairPool`).
        reduction: r, so theta and phi map C -> C/r (at least 1 channel).
    """

    def __init__(self, channels: int, pool: str = "light", reduction: int = 16) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.theta = conv1x1(channels, inner)
        self.phi = conv1x1(channels, inner)
        self.rho = conv1x1(channels, channels)
        self.pool = PairPool(pool)
        self.out = conv1x1(channels, channels)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The attention operands: ``Q (B, N, d)``, ``K (B, N', d)``, ``V (B, N', C)``."""
        b, _, h, w = x.shape
        phi = pointwise(x, self.phi)
        pooled = pointwise(x, self.theta, self.rho)  # one GEMM and one pooling for both
        k, v = self.pool(pooled.view(b, -1, h, w)).split([self.theta.out_channels, self.rho.out_channels], dim=1)
        return phi.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)
        y = pointwise(attend(q, k, v).transpose(1, 2), self.out)  # W (V^T A_S^T): (B, C, N)
        return x + self.bn(y.view_as(x))
