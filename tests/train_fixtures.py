"""Helpers for the training tests: a small in-memory training set and recipes built in code."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from megabench.engine.recipe import AugmentSpec, DataSpec, OptimizerSpec, Recipe, ScheduleSpec


class PatternFaces(torch.utils.data.Dataset):
    """``num_classes`` identities, each a fixed random uint8 pattern plus per-image noise and a shift.

    Items: ``(uint8 (3, size, size), label)``; label of image i is ``i % num_classes``.
    """

    def __init__(self, num_classes: int = 8, per_class: int = 16, size: int = 32, seed: int = 0,
                 noise: float = 40.0) -> None:
        rng = np.random.default_rng(seed)
        base = rng.uniform(0, 255, (num_classes, 3, size // 4, size // 4))
        base = np.repeat(np.repeat(base, 4, axis=2), 4, axis=3)
        n = num_classes * per_class
        self.labels_ = np.arange(n) % num_classes
        imgs = base[self.labels_] + rng.normal(0, noise, (n, 3, size, size))
        self.images = torch.from_numpy(np.clip(imgs, 0, 255).astype(np.uint8))
        self.num_classes = num_classes
        self.image_size = (size, size)
        self.source = f"pattern-faces(seed={seed})"
        self._seed = seed

    def __len__(self) -> int:
        return len(self.labels_)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels_[i])

    def labels(self) -> np.ndarray:
        return self.labels_.astype(np.int64)

    def fingerprint(self) -> str:
        return f"pattern:{self.num_classes}:{len(self)}:{self._seed}"


def tiny_recipe(*, model: str = "iresnet_tiny", head: str = "arcface", head_args: dict | None = None,
                num_classes: int = 8, size: int = 32, batch: int = 16, steps: int = 20,
                lr_steps: tuple[int, ...] = (), lr: float = 0.1, model_args: dict | None = None,
                seed: int = 0, hflip_p: float = 0.5, warmup: int = 0) -> Recipe:
    return Recipe(
        model=model, head=head, head_args=head_args or {}, model_args=model_args or {},
        data=DataSpec(name="pattern", num_classes=num_classes),
        schedule=ScheduleSpec(lr_steps=lr_steps, max_steps=steps, warmup_steps=warmup),
        optimizer=OptimizerSpec(lr=lr), augment=AugmentSpec(hflip_p=hflip_p),
        batch_size=batch, embedding_size=32, input_size=(size, size), seed=seed)


def with_(recipe: Recipe, **changes) -> Recipe:
    return dataclasses.replace(recipe, **changes)


def one_thread():
    """Pytest fixture body: torch on 1 thread (2 OpenMP threads on a loaded 2-core machine are ~10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
