"""Embeddings of images -> the HDF5 feature store, with the flipped images beside them.

The model's own :class:`~megabench.models.preprocessing.Preprocessing` decides the input contract:
aligned ``input_size`` crops, channel order, ``(p - mean) / std``. Images that are not already that
size are an error (megabench does not align faces).

:func:`extract_features` is built for MegaFace scale:

- batched; a DataLoader with ``workers`` processes decodes the images (Pillow) while the model runs;
- ``amp="bf16" | "fp16"`` runs the model under CUDA autocast (features are stored as float32/float16);
- resumable: rows are grouped in chunks of ``chunk_rows`` (a multiple of the batch); every finished
  chunk is saved atomically as ``<out>.parts/chunk_<k>.npz`` beside ``job.json`` (the fingerprint of
  the job). A killed run started again with the same arguments skips the saved chunks; at the end
  the chunks become one store (:class:`~megabench.data.feature_store.FeatureStoreWriter`, atomic) and
  the parts folder is removed;
- sharded under ``torchrun``: rank r embeds a contiguous run of chunks, rank 0 assembles. Batches are
  the same as in one process (chunk boundaries are global), so the store is identical;
- a tqdm bar with images/s and ETA (rank 0).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from megabench.data.feature_store import FeatureStoreWriter, StoreMeta
from megabench.errors import DataError, MegabenchError
from megabench.fileio import atomic_path, atomic_write_json, sha256_bytes

AMP_MODES = ("none", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str, device: str) -> None:
    """``amp`` must be one of :data:`AMP_MODES`; autocast is for CUDA devices only."""
    if amp not in AMP_MODES:
        raise MegabenchError(f"--amp {amp!r}: choose one of {', '.join(AMP_MODES)}")
    if amp != "none" and not str(device).startswith("cuda"):
        raise MegabenchError(f"--amp {amp} runs the model under CUDA autocast; use --device cuda or --amp none")


@torch.inference_mode()
def embed_batch(model: nn.Module, images: np.ndarray | torch.Tensor, *, device: str | torch.device = "cpu",
                flip: bool = True, amp: str = "none") -> tuple[np.ndarray, np.ndarray | None]:
    """``images``: uint8 (B, H, W, 3) RGB. Returns float32 (B, D) embeddings and, if ``flip``, those of
    the horizontally flipped images. ``model`` must be in eval mode and carry ``.preprocessing``.

    The uint8 batch moves to ``device`` first and is normalised there (4x less host-to-device data)."""
    prep = model.preprocessing
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    x = x.to(device, non_blocking=True)
    if prep.channel_order == "BGR":
        x = x.flip(-1)
    x = prep.normalize(x)
    dev_type = torch.device(device).type
    with torch.autocast(dev_type, dtype=_AMP_DTYPES.get(amp, torch.float32), enabled=amp != "none"):
        feats = model(x).float().cpu().numpy()
        feats_flip = model(torch.flip(x, dims=[3])).float().cpu().numpy() if flip else None
    return feats, feats_flip


def _collate(items: list[tuple[np.ndarray, str]]) -> tuple[torch.Tensor, list[str]]:
    return torch.from_numpy(np.stack([im for im, _ in items])), [err for _, err in items]


@dataclass(frozen=True)
class ChunkPlan:
    """Rows ``0..n-1`` in chunks of ``chunk_rows`` (a multiple of ``batch_size``); rank r owns chunks
    ``[first, stop)`` of the contiguous split of all chunks over ``world`` ranks."""

    n: int
    batch_size: int
    chunk_rows: int
    rank: int = 0
    world: int = 1

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n / self.chunk_rows)

    def my_chunks(self) -> range:
        k = self.n_chunks
        return range(self.rank * k // self.world, (self.rank + 1) * k // self.world)

    def rows(self, chunk: int) -> tuple[int, int]:
        return chunk * self.chunk_rows, min(self.n, (chunk + 1) * self.chunk_rows)

    def batches(self, chunks: Sequence[int]) -> list[list[int]]:
        """Index lists of the batches of ``chunks`` (each chunk starts a new batch)."""
        out = []
        for c in chunks:
            lo, hi = self.rows(c)
            out += [list(range(b, min(hi, b + self.batch_size))) for b in range(lo, hi, self.batch_size)]
        return out


def parts_dir(out: str | os.PathLike) -> Path:
    """The folder of saved chunks of an unfinished extraction into ``out``."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def _chunk_file(parts: Path, chunk: int) -> Path:
    return parts / f"chunk_{chunk:06d}.npz"


def _fingerprint(meta: StoreMeta, paths: Sequence[str], plan: ChunkPlan, flip: bool, amp: str, dtype: str) -> dict:
    return {"model": meta.model, "checkpoint_sha256": meta.checkpoint_sha256, "preprocessing": meta.preprocessing,
            "source_sha256": meta.source_sha256, "n": plan.n, "paths_sha256": sha256_bytes("\n".join(paths).encode()),
            "batch_size": plan.batch_size, "chunk_rows": plan.chunk_rows, "flip": flip, "amp": amp, "dtype": dtype}


def _prepare_parts(parts: Path, job: dict, echo: Callable[[str], None]) -> None:
    """Keep saved chunks of the same job, drop those of another one (rank 0 only)."""
    marker = parts / "job.json"
    if marker.is_file():
        try:
            old = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old == job:
            return
        echo(f"{parts}: saved chunks belong to another extraction (model, checkpoint, list or options differ); "
             "starting over")
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, job)


def _save_chunk(parts: Path, chunk: int, feats: list[np.ndarray], flips: list[np.ndarray]) -> None:
    arrays = {"features": np.concatenate(feats)}
    if flips:
        arrays["features_flip"] = np.concatenate(flips)
    with atomic_path(_chunk_file(parts, chunk), suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _embed_chunks(model, images, plan: ChunkPlan, todo: list[int], parts: Path, *, workers: int, device: str,
                  flip: bool, amp: str, bar, on_chunk: Callable[[int], None] | None) -> None:
    """Embed the rows of ``todo`` chunks batch by batch; save each chunk when its last batch is done."""
    from torch.utils.data import DataLoader

    batches = plan.batches(todo)
    loader = DataLoader(images, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                        pin_memory=str(device).startswith("cuda"), persistent_workers=False)
    chunk_of = {b[0]: (b[0] // plan.chunk_rows) for b in batches}
    feats: list[np.ndarray] = []
    flips: list[np.ndarray] = []
    for idx, (x, errors) in zip(batches, loader, strict=True):
        bad = next((e for e in errors if e), None)
        if bad:
            raise DataError(bad + (f" ({sum(1 for e in errors if e)} bad image(s) in this batch; chunks finished "
                                   f"so far are kept in {parts}, fix the images and run again to continue)"))
        f, ff = embed_batch(model, x, device=device, flip=flip, amp=amp)
        feats.append(f)
        if ff is not None:
            flips.append(ff)
        chunk = chunk_of[idx[0]]
        if idx[-1] + 1 == plan.rows(chunk)[1]:
            _save_chunk(parts, chunk, feats, flips)
            feats, flips = [], []
            if on_chunk is not None:
                on_chunk(chunk)
        bar.update(len(idx))


def _assemble(out: Path, parts: Path, plan: ChunkPlan, paths: Sequence[str], ids: np.ndarray | None,
              meta: StoreMeta, dtype: str, flip: bool) -> Path:
    """Join the saved chunks into one feature store (atomic), then remove the parts folder."""
    missing = [c for c in range(plan.n_chunks) if not _chunk_file(parts, c).is_file()]
    if missing:
        raise DataError(f"{parts}: {len(missing)} chunk(s) missing (first {missing[:5]}); run the extraction again")
    with np.load(_chunk_file(parts, 0), allow_pickle=False) as z:
        dim = int(z["features"].shape[1])
    with FeatureStoreWriter(out, plan.n, dim, dtype=dtype, with_flip=flip, with_ids=ids is not None,
                            meta=meta) as writer:
        for c in range(plan.n_chunks):
            lo, hi = plan.rows(c)
            with np.load(_chunk_file(parts, c), allow_pickle=False) as z:
                writer.write(lo, z["features"], paths=paths[lo:hi],
                             ids=None if ids is None else ids[lo:hi],
                             features_flip=z["features_flip"] if flip else None)
    shutil.rmtree(parts, ignore_errors=True)
    return out


def default_chunk_rows(batch_size: int, target: int = 4096) -> int:
    """About ``target`` rows per saved chunk, a multiple of the batch."""
    return max(1, target // batch_size) * batch_size


def extract_features(
    model: nn.Module,
    images,
    out: str | os.PathLike,
    *,
    paths: Sequence[str] | None = None,
    ids: np.ndarray | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "cpu",
    flip: bool = True,
    amp: str = "none",
    meta: StoreMeta | None = None,
    dtype: str = "float32",
    progress: bool = True,
    chunk_rows: int | None = None,
    dist_info=None,
    echo: Callable[[str], None] = print,
    on_chunk: Callable[[int], None] | None = None,
) -> Path:
    """Embed every image of ``images`` (an :mod:`megabench.data.image_source` source: ``len`` and
    ``source[i] -> (uint8 RGB (H, W, 3), error)``) into the feature store ``out``.

    ``paths`` name the rows (default: the indices as strings); ``ids`` (N,) int64 are stored when
    given. Resumes from ``<out>.parts`` when a previous run of the same job was interrupted;
    ``on_chunk(k)`` is called after chunk k is saved (a test hook). Under torchrun pass
    ``dist_info`` (:func:`megabench.engine.distributed.init_from_env`): every rank must call this.
    Returns ``out`` (on every rank, after rank 0 wrote it).
    """
    from tqdm import tqdm

    from megabench.engine.distributed import DistInfo, barrier

    info = dist_info or DistInfo()
    check_amp(amp, device)
    n = len(images)
    if n == 0:
        raise DataError(f"{out}: nothing to extract (the image list is empty)")
    paths = list(paths) if paths is not None else [str(i) for i in range(n)]
    if len(paths) != n:
        raise ValueError(f"{len(paths)} paths for {n} images")
    meta = meta or StoreMeta(model=model.name, preprocessing=model.preprocessing.to_dict())
    plan = ChunkPlan(n, batch_size, chunk_rows or default_chunk_rows(batch_size), info.rank, info.world)
    if plan.chunk_rows % batch_size:
        raise ValueError(f"chunk_rows {plan.chunk_rows} must be a multiple of the batch size {batch_size}")
    out, parts = Path(out), parts_dir(out)
    if info.is_main:
        _prepare_parts(parts, _fingerprint(meta, paths, plan, flip, amp, dtype), echo)
    barrier(info)
    mine = plan.my_chunks()
    todo = [c for c in mine if not _chunk_file(parts, c).is_file()]
    done_rows = sum(plan.rows(c)[1] - plan.rows(c)[0] for c in mine if c not in todo)
    if done_rows and info.is_main:
        echo(f"resuming {out.name}: {len(mine) - len(todo)} of {len(mine)} chunks already saved in {parts}")
    total = sum(plan.rows(c)[1] - plan.rows(c)[0] for c in mine)
    model = model.eval().to(device)
    with tqdm(total=total, initial=done_rows, unit="img", desc=f"extract {out.name}",
              disable=not (progress and info.is_main), smoothing=0.1) as bar:
        _embed_chunks(model, images, plan, todo, parts, workers=workers, device=device, flip=flip, amp=amp,
                      bar=bar, on_chunk=on_chunk)
    barrier(info)
    if info.is_main:
        _assemble(out, parts, plan, paths, ids, meta, dtype, flip)
    barrier(info)
    return out
