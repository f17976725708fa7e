"""Parameter count and model size, as the paper's tables give them (the one definition of "size MB")."""

from __future__ import annotations

from torch import nn

#: bytes per parameter (fp32) and bytes per MB (10^6, as the paper's Tables 1-2).
BYTES_PER_PARAM = 4
BYTES_PER_MB = 1e6


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def params_to_mb(n_params: int) -> float:
    """Model size in MB of ``n_params`` fp32 parameters (1 MB = 10^6 bytes).

    >>> params_to_mb(43_590_848)  # iresnet50
    174.363392
    """
    return n_params * BYTES_PER_PARAM / BYTES_PER_MB


def size_mb(model: nn.Module) -> float:
    """Model size in MB as the paper's tables: parameters x 4 bytes (fp32), 1 MB = 10^6 bytes."""
    return params_to_mb(count_params(model))
