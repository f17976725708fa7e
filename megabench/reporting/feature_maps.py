"""The paper's Fig. 6: channel-mean feature maps of a face after each residual stage (and attention).

For a zoo model (``IResNet``) the taps are forward hooks on: the stem; in each stage's last block,
every attention module (``sca_*`` then ``ssa_*``, in the order applied); and that block itself (the
stage output). Each tapped ``(1, C, H, W)`` map is averaged over C (the paper: "we calculate the
average along the C channels"), giving an ``(H, W)`` float array. :func:`plot_feature_maps` draws one
row per model and one column per tap name (blank where a model has no such tap, e.g. a baseline's
attention columns), each map min-max scaled on its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from megabench.errors import DataError, MegabenchError
from megabench.fileio import atomic_path
from megabench.models.iresnet import IRBlock, IResNet
from megabench.models.layers import PairPool
from megabench.models.registry import FaceModel


def _attention_modules(block: IRBlock) -> list[nn.Module]:
    if isinstance(block.attn, nn.Identity):
        return []
    return list(block.attn) if isinstance(block.attn, nn.Sequential) else [block.attn]


def _attention_name(module: nn.Module) -> str:
    kind = {"SelfChannelAttention": "SCA", "SelfSpatialAttention": "SSA"}.get(type(module).__name__,
                                                                               type(module).__name__)
    pool = getattr(module, "pool", None)  # attention modules are open to registration: not every one pools
    return f"{kind} ({pool.mode})" if isinstance(pool, PairPool) else kind


def feature_taps(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(column name, module)`` to hook, in forward order: stem, then per stage its last block's
    attention modules and the block (the stage output). ``model`` must be a zoo :class:`IResNet`."""
    if not isinstance(model, IResNet):
        name = model.name if isinstance(model, FaceModel) else type(model).__name__
        raise MegabenchError(f"model {name}: feature maps need a zoo IR-ResNet (stem, blocks, config['depths']); "
                             "ONNX models cannot be hooked")
    depths, blocks = model.config["depths"], model.blocks
    taps: list[tuple[str, nn.Module]] = [("stem", model.stem)]
    end = 0
    for stage, depth in enumerate(depths, start=1):
        end += depth
        last = blocks[end - 1]
        taps += [(f"stage {stage} {_attention_name(m)}", m) for m in _attention_modules(last)]
        taps.append((f"stage {stage}", last))
    return taps


def load_face(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """An aligned face image as uint8 ``(H, W, 3)`` RGB; its size must be ``size`` (H, W)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{p}: no such image") from None
    except UnidentifiedImageError:
        raise DataError(f"{p}: not an image file PIL can read") from None
    if arr.shape[:2] != tuple(size):
        raise DataError(f"{p}: the image is {arr.shape[1]}x{arr.shape[0]}, but the model takes aligned "
                        f"{size[1]}x{size[0]} face crops; align and crop it first")
    return arr


@torch.inference_mode()
def feature_maps(model: nn.Module, image: np.ndarray) -> dict[str, np.ndarray]:
    """Channel-mean map after each tap (:func:`feature_taps`) for one uint8 ``(H, W, 3)`` RGB image.

    Returns ``{tap name: float32 (h, w)}`` in forward order. The model runs in eval mode on CPU.
    """
    model = model.eval()
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in feature_taps(model):
        def hook(_module, _inputs, output, name=name):
            captured[name] = output.detach().float().mean(dim=1)[0]
        handles.append(module.register_forward_hook(hook))
    try:
        prep = model.preprocessing
        x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))[None]
        if prep.channel_order == "BGR":
            x = x.flip(-1)
        device = next(model.parameters()).device
        model(prep.normalize(x).to(device))
    finally:
        for h in handles:
            h.remove()
    return {name: captured[name].cpu().numpy() for name, _ in feature_taps(model)}


def column_order(tap_lists: Sequence[Sequence[str]]) -> list[str]:
    """Union of tap names in forward order: stem, then per stage its attention taps and the stage."""
    seen = list(dict.fromkeys(name for taps in tap_lists for name in taps))

    def key(name: str) -> tuple[int, int, int]:
        parts = name.split(" ")
        if parts[0] != "stage":
            return (0, 0, seen.index(name))
        return (int(parts[1]), 1 if len(parts) == 2 else 0, seen.index(name))

    return sorted(seen, key=key)


def plot_feature_maps(rows: Sequence[tuple[str, dict[str, np.ndarray]]], image: np.ndarray,
                      out: str | os.PathLike, *, cmap: str = "jet") -> Path:
    """One row per ``(label, maps)``: the input face, then each tap's map (columns = union of tap
    names in first-seen order). Written to ``out`` (format from its suffix, e.g. .png, .pdf)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = column_order([list(maps) for _, maps in rows])
    n_rows, n_cols = len(rows), len(columns) + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.05 * n_cols, 1.25 * n_rows + 0.3), squeeze=False,
                             layout="constrained")
    for r, (label, maps) in enumerate(rows):
        axes[r][0].imshow(image)
        axes[r][0].set_ylabel(label, fontsize=7)
        for c, name in enumerate(columns, start=1):
            ax: Any = axes[r][c]
            if name in maps:
                m = maps[name]
                span = float(m.max() - m.min()) or 1.0
                ax.imshow((m - m.min()) / span, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
                ax.set_xlabel(f"{m.shape[1]}x{m.shape[0]}", fontsize=6, labelpad=1)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
    for c, name in enumerate(["input", *columns]):
        axes[0][c].set_title(name, fontsize=7)
    fig.suptitle("channel-mean feature maps (each scaled to its own min-max)", fontsize=8)
    suffix = Path(out).suffix or ".png"
    with atomic_path(out, suffix=suffix) as tmp:
        fig.savefig(tmp, dpi=200, format=suffix.lstrip("."))
    plt.close(fig)
    return Path(out)
