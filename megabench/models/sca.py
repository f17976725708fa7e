"""Self residual Channel Attention (SCA), SRANet paper section III-B, eqs. (5)-(9).

For ``F`` of shape ``(C, H, W)``, ``N = H W``::

    P1 = pool(theta(F))          C      x N'     theta: conv1x1 C -> C
    P2 = pool(phi(F))            C/r    x N'     phi:   conv1x1 C -> C/r
    A_C = row-softmax(P1 P2^T)   C      x C/r    (the text's "on each row"; eq. 8's index is a typo)
    F_C = F + A_C rho(F)         C      x N      rho:   conv1x1 C -> C/r

Light / avg / max SCA use ``r = 2`` and the pair / avg / max pooling; naive SCA uses ``r = 1`` and no
pooling (its Table 2 model-size delta, 3 C^2 per block, fixes that). No output BN: the paper has none.
"""

from __future__ import annotations

import torch
from torch import nn

from megabench.models.layers import PairPool, attend, conv1x1, pointwise


class SelfChannelAttention(nn.Module):
    """``F -> F + A_C rho(F)``; input and output ``(B, C, H, W)``, same dtype.

    Args:
        channels: C.
        pool: ``light`` | ``avg`` | ``max`` | ``naive`` (see :class:`PairPool`).
        reduction: r, so phi and rho map C -> C/r (at least 1 channel).
    """

    def __init__(self, channels: int, pool: str = "light", reduction: int = 2) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.theta = conv1x1(channels, channels)
        self.phi = conv1x1(channels, inner)
        self.rho = conv1x1(channels, inner)
        self.pool = PairPool(pool)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The attention operands: ``P1 (B, C, N')``, ``P2 (B, C/r, N')``, ``rho(F) (B, C/r, N)``."""
        b, _, h, w = x.shape
        keys = pointwise(x, self.theta, self.phi)  # one GEMM and one pooling for both
        p1, p2 = self.pool(keys.view(b, -1, h, w)).split([self.theta.out_channels, self.phi.out_channels], dim=1)
        rho = pointwise(x, self.rho)
        return p1, p2, rho

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)
        return x + attend(q, k, v).view_as(x)
