"""Classification heads with margins: softmax, SphereFace, CosFace, AM-Softmax, ArcFace, combined.

One base class, :class:`MarginHead`, owns the pipeline (pytorch-metric-learning style)::

    cos_j   = <x / |x|, w_j / |w_j|>, clamped into [-1 + 1e-7, 1 - 1e-7]   (fp32, autocast off)
    logit_j = scale(x) * cos_j                      for j != y
    logit_y = scale(x) * target(cos_y)              the hook each head overrides
    loss    = mean cross-entropy(logits, y)

``scale(x)`` is the fixed ``s`` except for SphereFace (``|x|``: features are not normalised there).
Margins are in the units their names say (``margin_rad``: radians). All maths runs in fp32 even under
bf16 / fp16 autocast; cos is clamped before ``acos`` and square roots, so loss and gradient stay finite
at cos = +-1.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from megabench.models.layers import _no_autocast
from megabench.registry import Registry

HEAD_REGISTRY: Registry = Registry("head", listing="megabench models --attention")
COS_EPS = 1e-7


def clamp_cos(cos: torch.Tensor) -> torch.Tensor:
    """Clamp into ``[-1 + 1e-7, 1 - 1e-7]`` so ``acos`` and ``sqrt(1 - cos^2)`` have finite gradients."""
    return cos.clamp(-1 + COS_EPS, 1 - COS_EPS)


class MarginHead(nn.Module):
    """Base: a normalised linear classifier whose target logit is changed by :meth:`target`.

    Args:
        embedding_size: D. num_classes: K. scale: s (ignored by heads whose :meth:`scale` differs).
    ``forward(x (B, D), labels (B,) int64) -> scalar loss``; :meth:`logits` gives the ``(B, K)`` fp32 logits.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.s = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    # ---- hooks
    def target(self, cos: torch.Tensor) -> torch.Tensor:
        """Margin applied to the target cosines ``(B,)``; returns values in cosine units. Identity here."""
        return cos

    def scale(self, norm: torch.Tensor) -> torch.Tensor | float:
        """Multiplier of every logit; ``norm`` is ``|x|`` ``(B, 1)``."""
        return self.s

    # ---- pipeline
    def cosine(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos (B, K) clamped, |x| (B, 1))`` in fp32."""
        x = x.float()
        norm = x.norm(dim=1, keepdim=True)
        cos = F.normalize(x, dim=1) @ F.normalize(self.weight.float(), dim=1).t()
        return clamp_cos(cos), norm

    def logits(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with _no_autocast(x.device.type):
            cos, norm = self.cosine(x)
            idx = labels.long().view(-1, 1)
            target = self.target(cos.gather(1, idx).squeeze(1))
            return cos.scatter(1, idx, target.unsqueeze(1)) * self.scale(norm)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(x, labels), labels.long())

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}"


@HEAD_REGISTRY.register("softmax")
class SoftmaxHead(MarginHead):
    """Plain ``Linear(D, K)`` (with bias) + cross-entropy; nothing normalised, no margin."""

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__(embedding_size, num_classes, scale=1.0)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def logits(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        with _no_autocast(x.device.type):
            return F.linear(x.float(), self.weight.float(), self.bias.float())


@HEAD_REGISTRY.register("cosface")
class CosFaceHead(MarginHead):
    """CosFace / LMCL: target ``s (cos theta - m)``; defaults s = 64, m = 0.35."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.35) -> None:
        super().__init__(embedding_size, num_classes, scale)
        self.m = float(margin)

    def target(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.m


@HEAD_REGISTRY.register("am_softmax")
class AMSoftmaxHead(CosFaceHead):
    """AM-Softmax: the CosFace formula with s = 30, m = 0.35."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 30.0, margin: float = 0.35) -> None:
        super().__init__(embedding_size, num_classes, scale, margin)


@HEAD_REGISTRY.register("arcface")
class ArcFaceHead(MarginHead):
    """ArcFace: target ``s cos(theta + m)`` (m in radians, default 0.5, s = 64).

    Where ``theta + m > pi`` the target is ``s (cos theta - m sin m)`` so that it keeps decreasing in
    theta; with ``easy_margin`` the margin applies only where ``cos theta > 0``.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        margin_rad: float = 0.5,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(embedding_size, num_classes, scale)
        if not 0 <= margin_rad < math.pi / 2:
            raise ValueError(f"arcface margin_rad must be in [0, pi/2), got {margin_rad}")
        self.m = float(margin_rad)
        self.easy_margin = easy_margin

    def target(self, cos: torch.Tensor) -> torch.Tensor:
        sin = torch.sqrt(1.0 - cos * cos)
        shifted = cos * math.cos(self.m) - sin * math.sin(self.m)
        if self.easy_margin:
            return torch.where(cos > 0, shifted, cos)
        # theta + m <= pi  <=>  cos theta >= cos(pi - m)
        return torch.where(cos >= math.cos(math.pi - self.m), shifted, cos - self.m * math.sin(self.m))


@HEAD_REGISTRY.register("combined")
class CombinedMarginHead(MarginHead):
    """Combined margin: target ``s (cos(m1 theta + m2) - m3)`` (m2 in radians).

    m1 = 1, m2 = m, m3 = 0 is ArcFace; m1 = 1, m2 = 0, m3 = m is CosFace. Where ``m1 theta + m2 > pi``
    the target is ``cos theta - m2 sin m2 - m3`` (ArcFace's monotonic continuation).
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
    ) -> None:
        super().__init__(embedding_size, num_classes, scale)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)

    def target(self, cos: torch.Tensor) -> torch.Tensor:
        angle = self.m1 * torch.acos(cos) + self.m2
        fallback = cos - self.m2 * math.sin(self.m2) - self.m3
        return torch.where(angle <= math.pi, torch.cos(angle) - self.m3, fallback)


def sphereface_psi(cos: torch.Tensor, m: int = 4) -> torch.Tensor:
    """``psi(theta) = (-1)^k cos(m theta) - 2k`` for ``theta in [k pi/m, (k+1) pi/m]``, from ``cos theta``.

    Monotonically decreasing on ``[0, pi]`` from 1 to ``-2m + 1``; input clamped as :func:`clamp_cos`.
    """
    theta = torch.acos(clamp_cos(cos))
    k = torch.floor(theta * m / math.pi).clamp(0, m - 1)
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * torch.cos(m * theta) - 2.0 * k


def sphereface_lambda(step: int, base: float = 1000.0, gamma: float = 0.12, power: float = 1.0,
                      minimum: float = 5.0) -> float:
    """A-Softmax annealing ``lambda = max(minimum, base (1 + gamma t)^-power)`` at iteration ``t >= 0``."""
    return max(minimum, base * (1.0 + gamma * step) ** (-power))


@HEAD_REGISTRY.register("sphereface")
class SphereFaceHead(MarginHead):
    """A-Softmax (m = 4, integer): weights normalised, features not.

    Non-target logits ``|x| cos theta_j``; target ``|x| (lambda cos theta + psi(theta)) / (1 + lambda)``,
    ``lambda = sphereface_lambda(step)``. ``step`` (a buffer) counts training forwards; set it to resume.
    """

    def __init__(self, embedding_size: int, num_classes: int, margin: int = 4, **lambda_args: Any) -> None:
        super().__init__(embedding_size, num_classes, scale=1.0)
        if int(margin) != margin or margin < 1:
            raise ValueError(f"sphereface margin must be a positive integer, got {margin}")
        self.m = int(margin)
        self.lambda_args = lambda_args
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def lam(self) -> float:
        return sphereface_lambda(int(self.step), **self.lambda_args)

    def target(self, cos: torch.Tensor) -> torch.Tensor:
        lam = self.lam
        return (lam * cos + sphereface_psi(cos, self.m)) / (1.0 + lam)

    def scale(self, norm: torch.Tensor) -> torch.Tensor:
        return norm

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = super().forward(x, labels)
        if self.training:
            self.step += 1
        return loss


def create_head(name: str, embedding_size: int, num_classes: int, **kwargs: Any) -> MarginHead:
    """Build a registered head (``softmax``, ``sphereface``, ``cosface``, ``am_softmax``, ``arcface``,
    ``combined``) with its keyword options (e.g. ``margin_rad=0.5``)."""
    return HEAD_REGISTRY.get(name)(embedding_size, num_classes, **kwargs)


def list_heads() -> list[str]:
    return HEAD_REGISTRY.names()
