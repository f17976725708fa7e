"""What a model expects of its input images; carried by every model as ``model.preprocessing``."""

from __future__ import annotations

import dataclasses
from typing import Literal

from megabench.choices import FLIP_MODES, FlipMode


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Input contract of a face model.

    Attributes:
        input_size: (height, width) in pixels of the aligned face crop.
        channel_order: channel order of the input tensor ("RGB").
        mean, std: pixel ``p`` in [0, 255] becomes ``(p - mean) / std`` (the paper: 127.5, 128).
        flip: how test-time features of the image and its horizontal flip combine: ``concat`` (the
            paper, for LFW / AgeDB / CFP: the 2 x D vector), ``sum`` (D), ``none`` (original only).
    """

    input_size: tuple[int, int] = (112, 112)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    mean: float = 127.5
    std: float = 128.0
    flip: FlipMode = "concat"

    def __post_init__(self) -> None:
        if self.flip not in FLIP_MODES:
            raise ValueError(f"flip mode {self.flip!r} is not one of {FLIP_MODES}")
        if self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    def normalize(self, images):
        """uint8 ``(B, H, W, 3)`` (in ``channel_order``) tensor -> float32 ``(B, 3, H, W)`` normalised."""
        return (images.permute(0, 3, 1, 2).float() - self.mean) / self.std

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "input_size": list(self.input_size)}
