"""The model zoo: IR-ResNet backbones, SRANet attention variants, margin heads.

``create_model(name, **overrides)`` builds a registered model (``list_models()`` names them); every
model carries ``.name``, ``.config`` (the builder arguments) and ``.preprocessing``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from megabench.models.attention import ATTENTION_REGISTRY, create_attention, list_attention
from megabench.models.heads import HEAD_REGISTRY, create_head, list_heads
from megabench.models.iresnet import MODEL_REGISTRY, IResNet
from megabench.models.preprocessing import Preprocessing

__all__ = [
    "ATTENTION_REGISTRY",
    "HEAD_REGISTRY",
    "MODEL_REGISTRY",
    "IResNet",
    "Preprocessing",
    "count_params",
    "create_attention",
    "create_head",
    "create_model",
    "list_attention",
    "list_heads",
    "list_models",
    "size_mb",
]


def create_model(name: str, **overrides: Any) -> IResNet:
    """Build the registered model ``name``; ``overrides`` replace its config (e.g. ``attn_layers=``).

    Unknown names raise ``KeyError`` with close matches. To count parameters without allocating,
    build under ``with torch.device("meta"):``.
    """
    return MODEL_REGISTRY.get(name)(**overrides)


def list_models() -> list[str]:
    return MODEL_REGISTRY.names()


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def size_mb(model: nn.Module) -> float:
    """Model size in MB as the paper's tables: parameters x 4 bytes (fp32), 1 MB = 10^6 bytes."""
    return count_params(model) * 4 / 1e6
