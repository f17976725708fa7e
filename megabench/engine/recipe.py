"""Training recipes: one frozen dataclass per ``baselines/*.toml`` file (``kind = "recipe"``).

A recipe file is only its difference from a base (``base = "_casia_r50.toml"``); the bases are
complete recipes themselves, so every file validates alone (``megabench validate baselines/*.toml``).
Values follow MODELS.md and the paper: SGD momentum 0.9, weight decay 5e-4, lr 0.1 divided by 10 at
``lr_steps``, total batch 128, horizontal flip p = 0.5, (x - 127.5) / 128, 112 x 112, 512-d.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Literal


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Training set. ``format``: insightface RecordIO, an image folder, or a ``path\\tlabel`` list."""

    name: str
    format: Literal["recordio", "folder", "list"] = "recordio"
    num_images: int = 0
    num_classes: int = 0
    path: str = ""


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """SGD; ``lr`` is for the total batch."""

    name: Literal["sgd"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """Piecewise-constant lr: multiplied by ``lr_factor`` at each of ``lr_steps`` iterations; stop at ``max_steps``."""

    lr_steps: tuple[int, ...]
    max_steps: int
    lr_factor: float = 0.1
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if list(self.lr_steps) != sorted(self.lr_steps) or any(s <= 0 for s in self.lr_steps):
            raise ValueError(f"lr_steps must be positive and increasing, got {list(self.lr_steps)}")
        if self.lr_steps and self.lr_steps[-1] >= self.max_steps:
            raise ValueError(f"last lr step {self.lr_steps[-1]} is not before max_steps {self.max_steps}")

    def lr_at(self, base_lr: float, step: int) -> float:
        """Learning rate at iteration ``step`` (0-based), warm-up linear from 0."""
        if step < self.warmup_steps:
            return base_lr * (step + 1) / self.warmup_steps
        return base_lr * self.lr_factor ** sum(step >= s for s in self.lr_steps)


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    hflip_p: float = 0.5


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One trained model of the paper: backbone x head x data x optimisation.

    ``model`` is a registered model name (``megabench models``), ``head`` a registered head with
    ``head_args`` (e.g. ``{margin_rad = 0.5}``); ``batch_size`` is the total over all processes;
    ``paper`` names the table cells this model fills.
    """

    model: str
    head: str
    data: DataSpec
    schedule: ScheduleSpec
    head_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    optimizer: OptimizerSpec = OptimizerSpec()
    augment: AugmentSpec = AugmentSpec()
    batch_size: int = 128
    embedding_size: int = 512
    input_size: tuple[int, int] = (112, 112)
    seed: int = 0
    paper: tuple[str, ...] = ()
    description: str = ""
    version: str = "1"
    source: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        from megabench.models import HEAD_REGISTRY, MODEL_REGISTRY

        for registry, name in ((MODEL_REGISTRY, self.model), (HEAD_REGISTRY, self.head)):
            try:
                registry.get(name)
            except KeyError as exc:  # "unknown model 'x'; did you mean ..."
                raise ValueError(exc.args[0]) from None
        try:
            inspect.signature(HEAD_REGISTRY.get(self.head)).bind(self.embedding_size, 2, **self.head_args)
        except TypeError as exc:
            raise ValueError(f"head_args {self.head_args} do not fit head {self.head!r}: {exc}") from None
