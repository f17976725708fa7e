"""The attention registry: ``sca_{light,avg,max,naive}`` and ``ssa_{light,avg,max,naive}``.

A registered attention is a factory ``channels -> nn.Module`` mapping ``(B, C, H, W)`` to the same
shape. Variants are data (constructor arguments), not classes; see :mod:`megabench.models.sca` and
:mod:`megabench.models.ssa` for the mechanisms.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from torch import nn

from megabench.models.sca import SelfChannelAttention
from megabench.models.ssa import SelfSpatialAttention
from megabench.registry import Registry

ATTENTION_REGISTRY: Registry[Callable[[int], nn.Module]] = Registry("attention", listing="megabench models --attention")

for _pool in ("light", "avg", "max"):
    ATTENTION_REGISTRY.add(f"sca_{_pool}", functools.partial(SelfChannelAttention, pool=_pool, reduction=2))
ATTENTION_REGISTRY.add("sca_naive", functools.partial(SelfChannelAttention, pool="naive", reduction=1))
for _pool in ("light", "avg", "max", "naive"):
    ATTENTION_REGISTRY.add(f"ssa_{_pool}", functools.partial(SelfSpatialAttention, pool=_pool, reduction=16))


def create_attention(names: str | Sequence[str], channels: int) -> nn.Module:
    """One attention module, or several applied in order (e.g. ``("sca_light", "ssa_light")``).

    An empty sequence gives ``nn.Identity``. Unknown names raise ``KeyError`` with close matches.
    """
    if isinstance(names, str):
        names = (names,)
    layers = [ATTENTION_REGISTRY.get(n)(channels) for n in names]
    if not layers:
        return nn.Identity()
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def list_attention() -> list[str]:
    return ATTENTION_REGISTRY.names()
