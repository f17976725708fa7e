"""IR-ResNet ("LResNet-E-IR", ArcFace) with SRANet's self residual attention.

Paper: Ling, Wu, Li, Ding, Zhang. "Self Residual Attention Network for Deep Face Recognition",
IEEE Access 7, 2019 (SRANet). Backbone: Deng et al., "ArcFace", CVPR 2019 (IR block, "E" output).
The structure the paper leaves implicit is fixed in ``docs/models.md`` ("IR-ResNet"), whose evidence is
the model-size column of the paper's Tables 1-2.

Reading order: blocks -> model -> builder -> configs -> registered variants.

- Stem: conv3x3(3 -> w0, stride 1) - BN - PReLU.
- Stages of widths ``(64, 128, 256, 512)``; IR-50 depths ``(3, 4, 14, 3)``, IR-100 ``(3, 13, 30, 3)``;
  the first block of each stage has stride 2 (112 -> 56 -> 28 -> 14 -> 7).
- IR block: branch = BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN; shortcut = identity, or
  conv1x1(stride) + BN when the shape changes; ``out = shortcut(x) + attn(branch(x))``.
- Output "E": BN2d - Dropout - flatten - Linear(C * h * w, 512) - BN1d; the embedding is 512-d.
- Convolutions have no bias.

Input: float ``(B, 3, H, W)`` normalised as ``model.preprocessing`` says. Output: ``(B, embedding)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from megabench.models.attention import create_attention
from megabench.models.preprocessing import Preprocessing
from megabench.models.registry import FaceModel, register_model


# ---------------------------------------------------------------------------------------------- blocks
class IRBlock(nn.Module):
    """Improved residual block; ``attn`` (an ``nn.Module`` on the branch output) is an argument.

    ``(B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, attn: nn.Module | None = None) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        else:
            self.shortcut = nn.Identity()
        self.attn = attn if attn is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.attn(self.branch(x))


# ----------------------------------------------------------------------------------------------- model
class IResNet(FaceModel):
    """The IR-ResNet trunk with the "E" embedding output.

    Args:
        depths: blocks per stage. widths: channels per stage. stem_width: stem channels.
        attn_layers: attention names applied in order after every block's branch (``()``: none).
        embedding_size: output dimension. dropout: the "E" output's dropout probability.
        input_size: (H, W) the Linear layer is sized for.
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_width: int = 64,
        attn_layers: Sequence[str] = (),
        embedding_size: int = 512,
        dropout: float = 0.4,
        input_size: tuple[int, int] = (112, 112),
    ) -> None:
        super().__init__()
        if len(depths) != len(widths):
            raise ValueError(f"depths {tuple(depths)} and widths {tuple(widths)} differ in length")
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width), nn.PReLU(stem_width)
        )
        blocks: list[nn.Module] = []
        in_c = stem_width
        for depth, width in zip(depths, widths, strict=True):
            for i in range(depth):
                attn = create_attention(tuple(attn_layers), width) if attn_layers else None
                blocks.append(IRBlock(in_c, width, 2 if i == 0 else 1, attn))
                in_c = width
        self.blocks = nn.Sequential(*blocks)
        h, w = (math.ceil(s / 2 ** len(depths)) for s in input_size)
        self.embedding = nn.Sequential(
            nn.BatchNorm2d(in_c),
            nn.Dropout(dropout),
            nn.Flatten(1),
            nn.Linear(in_c * h * w, embedding_size),
            nn.BatchNorm1d(embedding_size),
        )
        self.embedding_size = embedding_size
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # SSA's output BN starts at zero weight (set in its constructor): leave it.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.blocks(self.stem(x)))


# --------------------------------------------------------------------------------------------- builder
def build_model(name: str, cfg: dict[str, Any], overrides: dict[str, Any]) -> IResNet:
    """Build ``IResNet(**cfg | overrides)`` and attach ``name``, ``config`` and ``preprocessing``."""
    config = {**_DEFAULTS, **cfg, **overrides}
    unknown = sorted(set(config) - set(_DEFAULTS) - {"depths"})
    if unknown:
        raise TypeError(f"model {name!r}: unknown option(s) {unknown}; allowed: {sorted({*_DEFAULTS, 'depths'})}")
    config["input_size"] = tuple(config["input_size"])
    config["attn_layers"] = tuple(config["attn_layers"])
    model = IResNet(**config)
    model.name = name
    model.config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    model.preprocessing = Preprocessing(input_size=config["input_size"])
    return model


# --------------------------------------------------------------------------------------------- configs
_DEFAULTS: dict[str, Any] = dict(
    widths=(64, 128, 256, 512), stem_width=64, attn_layers=(), embedding_size=512, dropout=0.4, input_size=(112, 112)
)
IR50 = dict(depths=(3, 4, 14, 3))
IR100 = dict(depths=(3, 13, 30, 3))
TINY = dict(depths=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=16, embedding_size=64)
SRA = ("sca_light", "ssa_light")


# -------------------------------------------------------------------------------- registered variants
@register_model
def iresnet50(**kwargs: Any) -> IResNet:
    """IR-50, the paper's baseline (Tables 1-3, 5)."""
    return build_model("iresnet50", IR50, kwargs)


@register_model
def iresnet100(**kwargs: Any) -> IResNet:
    """IR-100, the large baseline (Table 5)."""
    return build_model("iresnet100", IR100, kwargs)


@register_model
def scanet_r50(**kwargs: Any) -> IResNet:
    """SCANet: IR-50 with light SCA (Table 3)."""
    return build_model("scanet_r50", {**IR50, "attn_layers": ("sca_light",)}, kwargs)


@register_model
def ssanet_r50(**kwargs: Any) -> IResNet:
    """SSANet: IR-50 with light SSA (Table 3)."""
    return build_model("ssanet_r50", {**IR50, "attn_layers": ("ssa_light",)}, kwargs)


@register_model
def sranet_r50(**kwargs: Any) -> IResNet:
    """SRANet-R50: light SCA then light SSA on every block (Tables 3, 5)."""
    return build_model("sranet_r50", {**IR50, "attn_layers": SRA}, kwargs)


@register_model
def sranet_r100(**kwargs: Any) -> IResNet:
    """SRANet-R100: the paper's large model (Tables 4, 5)."""
    return build_model("sranet_r100", {**IR100, "attn_layers": SRA}, kwargs)


@register_model
def iresnet_tiny(**kwargs: Any) -> IResNet:
    """A tiny IR network (1 block per stage, widths 16-128, 64-d) for tests and the demo."""
    return build_model("iresnet_tiny", TINY, kwargs)


@register_model
def sranet_tiny(**kwargs: Any) -> IResNet:
    """The tiny IR network with light SCA then light SSA, for tests and the demo."""
    return build_model("sranet_tiny", {**TINY, "attn_layers": SRA}, kwargs)


def _register_ablation(attn: str) -> None:
    """Tables 1-2 ablation rows on IR-50: one registered name per attention variant (data, not code)."""
    name = f"iresnet50_{attn}"

    def variant(**kwargs: Any) -> IResNet:
        return build_model(name, {**IR50, "attn_layers": (attn,)}, kwargs)

    variant.__name__ = variant.__qualname__ = name
    variant.__doc__ = f"IR-50 with {attn} after every block (Table {1 if attn.startswith('ssa') else 2})."
    register_model(variant)


for _attn in ("ssa_naive", "ssa_avg", "ssa_max", "ssa_light", "sca_naive", "sca_avg", "sca_max", "sca_light"):
    _register_ablation(_attn)
