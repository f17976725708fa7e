"""What the training loop reads: a deterministic sharded batch stream, flip augmentation, collation.

Determinism (so that a resumed run is bit-identical to an uninterrupted one, with any number of
DataLoader workers): nothing here draws from a global RNG.

- :class:`StreamBatchSampler`: the training stream is the concatenation of per-epoch permutations,
  ``perm_e = default_rng([seed, e]).permutation(n)``. Step ``s`` (0-based) uses stream positions
  ``[s * B, (s + 1) * B)`` (``B`` = the total batch over all processes; a batch may straddle two
  epochs); rank ``r`` of ``W`` takes the ``r``-th of ``W`` equal consecutive slices. The sampler's
  position is therefore just the step: resuming at step ``k`` starts at position ``k * B``.
- :class:`FlipAugment`: item ``(epoch, index)`` is flipped horizontally when
  ``hash(seed, epoch, index) < p`` (splitmix64), independent of worker, rank and order.

Batches are collated by :func:`megabench.data.training.collate_skipping_bad` (``None`` items, the
bad images skipped with ``--skip-bad-images``, are dropped and counted).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def unit_hash(seed: int, epoch: int, index: int) -> float:
    """A uniform number in [0, 1) that depends only on ``(seed, epoch, index)``."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK) ^ epoch) ^ index) / 2.0**64


class StreamBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps ``start .. stop - 1``, this rank's list of ``(epoch, index)`` items.

    Args:
        n: dataset length. batch_size: total batch over all ranks (divisible by ``world``).
        seed: permutation seed. start, stop: step range. rank, world: this process's shard.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, start: int, stop: int, rank: int = 0,
                 world: int = 1) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty training set")
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by world size {world}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return self._perm[1]

    def items(self, step: int) -> list[tuple[int, int]]:
        """This rank's ``(epoch, index)`` items of step ``step``."""
        per = self.batch_size // self.world
        lo = step * self.batch_size + self.rank * per
        out = []
        for pos in range(lo, lo + per):
            epoch, k = divmod(pos, self.n)
            out.append((epoch, int(self.permutation(epoch)[k])))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield self.items(step)


class FlipAugment(torch.utils.data.Dataset):
    """Wraps a training set whose items are ``(uint8 (3, H, W), int label)`` (or ``None`` for a skipped
    bad image); indexed by ``(epoch, index)``; flips the width axis with probability ``p``."""

    def __init__(self, data: Any, p: float, seed: int) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"hflip_p must lie in [0, 1], got {p}")
        self.data, self.p, self.seed = data, float(p), int(seed)

    def __len__(self) -> int:
        return len(self.data)

    def flipped(self, epoch: int, index: int) -> bool:
        return self.p > 0 and unit_hash(self.seed, epoch, index) < self.p

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int] | None:
        epoch, index = key
        item = self.data[index]
        if item is None:
            return None
        image, label = item
        if self.flipped(epoch, index):
            image = torch.flip(image, dims=[-1])
        return image, label


def to_model_input(images: torch.Tensor, preprocessing: Any, device: torch.device) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` RGB -> the model's float32 ``(B, 3, H, W)`` input on ``device``, through
    ``preprocessing.normalize`` (which takes channels-last images in its ``channel_order``)."""
    x = images.to(device, non_blocking=True).permute(0, 2, 3, 1)
    if preprocessing.channel_order == "BGR":
        x = x.flip(-1)
    return preprocessing.normalize(x)
