"""Embeddings of images -> the HDF5 feature store, with the flipped images beside them.

The model's own :class:`~megabench.models.preprocessing.Preprocessing` decides the input contract:
aligned ``input_size`` crops, channel order, ``(p - mean) / std``. Images that are not already that
size are an error (megabench does not align faces). Each batch runs the original and the
horizontally flipped images; rows are written in the source's order, the store appears only when
every row is written (atomic).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from megabench.data.feature_store import FeatureStoreWriter, StoreMeta
from megabench.errors import DataError


@torch.inference_mode()
def embed_batch(model: nn.Module, images: np.ndarray, *, device: str | torch.device = "cpu",
                flip: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``images``: uint8 (B, H, W, 3) RGB. Returns float32 (B, D) embeddings and, if ``flip``, those of
    the horizontally flipped images. ``model`` must be in eval mode and carry ``.preprocessing``."""
    prep = model.preprocessing
    x = torch.from_numpy(np.ascontiguousarray(images))
    if prep.channel_order == "BGR":
        x = x.flip(-1)
    x = prep.normalize(x).to(device)
    feats = model(x).float().cpu().numpy()
    feats_flip = model(torch.flip(x, dims=[3])).float().cpu().numpy() if flip else None
    return feats, feats_flip


def extract_features(
    model: nn.Module,
    load_image: Callable[[int], np.ndarray],
    n_images: int,
    out: str | os.PathLike,
    *,
    paths: list[str] | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    flip: bool = True,
    meta: StoreMeta | None = None,
    dtype: str = "float32",
    source: str = "images",
    progress: bool = True,
) -> Path:
    """Embed images ``0 .. n_images-1`` (``load_image(i)`` -> uint8 RGB (H, W, 3)) into a feature store.

    ``paths`` name the rows (default: the image indices as strings). Raises :class:`DataError` naming
    the first image whose size differs from the model's ``input_size``.
    """
    from tqdm import tqdm

    h, w = model.preprocessing.input_size
    model = model.eval().to(device)
    paths = paths if paths is not None else [str(i) for i in range(n_images)]
    if len(paths) != n_images:
        raise ValueError(f"{len(paths)} paths for {n_images} images")
    dim = int(embed_batch(model, np.zeros((1, h, w, 3), np.uint8), device=device, flip=False)[0].shape[1])
    with FeatureStoreWriter(out, n_images, dim, dtype=dtype, with_flip=flip, meta=meta) as writer, \
            tqdm(total=n_images, unit="img", desc="extract", disable=not progress) as bar:
        for lo in range(0, n_images, batch_size):
            hi = min(n_images, lo + batch_size)
            batch = []
            for i in range(lo, hi):
                im = load_image(i)
                if im.shape != (h, w, 3):
                    raise DataError(f"{source}: image {i} ({paths[i]}) is {im.shape[1]}x{im.shape[0]}, but "
                                    f"model {getattr(model, 'name', '?')} takes aligned {w}x{h} RGB crops; "
                                    "align and crop the faces first")
                batch.append(im)
            feats, feats_flip = embed_batch(model, np.stack(batch), device=device, flip=flip)
            writer.write(lo, feats, paths=paths[lo:hi], features_flip=feats_flip)
            bar.update(hi - lo)
    return Path(out)
