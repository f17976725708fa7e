"""From a model and the images a benchmark names to the feature stores its protocol reads.

- :func:`pair_images`: the images of a verification pack (``.bin``) or of a pair list over an image
  root, as an image source plus the row names ``megabench verify`` matches (pack index / image key);
- :func:`pair_features`: those embedded into a cached feature store (``verify --model``);
- :func:`megaface_features`: the FaceScrub probes and the MegaFace distractors named by the devkit
  lists, read from ``--facescrub-root`` / ``--megaface-root``, embedded into cached stores
  (``megaface --model``). Only the distractors of the requested sizes are extracted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from megabench.data.feature_store import StoreMeta
from megabench.engine.feature_cache import CacheEntry, cache_entry, check_writable, default_cache_dir
from megabench.engine.model_source import ModelSource
from megabench.errors import DataError
from megabench.fileio import sha256_bytes


@dataclass(frozen=True)
class ExtractOptions:
    """How to run the model: ``batch_size`` images per forward, ``workers`` decoding processes,
    ``device``, ``amp`` (none | bf16 | fp16, CUDA only), ``dtype`` of the stored features, ``progress``."""

    batch_size: int = 64
    workers: int = 0
    device: str = "cpu"
    amp: str = "none"
    dtype: str = "float32"
    progress: bool = True
    chunk_rows: int | None = None


def _preprocessing(source: ModelSource, opts: ExtractOptions, flip: bool) -> dict[str, Any]:
    """The store's ``preprocessing`` attribute: the model's contract, plus autocast and flips when used."""
    prep = dict(source.preprocessing)
    if opts.amp != "none":
        prep["amp"] = opts.amp
    prep["flip_features"] = bool(flip)
    return prep


def run_extraction(source: ModelSource, images, out: str | os.PathLike, *, paths: Sequence[str],
                   source_sha256: str, flip: bool, opts: ExtractOptions, ids: np.ndarray | None = None,
                   dist_info=None, echo: Callable[[str], None] = print, on_chunk=None) -> Path:
    """Embed ``images`` with ``source.model`` into ``out`` (resumable; see :mod:`megabench.engine.extract`)."""
    from megabench.engine.extract import extract_features

    meta = StoreMeta(model=source.name, checkpoint_sha256=source.checkpoint_sha256,
                     preprocessing=_preprocessing(source, opts, flip), source_sha256=source_sha256)
    return extract_features(source.model, images, out, paths=paths, ids=ids, batch_size=opts.batch_size,
                            workers=opts.workers, device=opts.device, flip=flip, amp=opts.amp, meta=meta,
                            dtype=opts.dtype, progress=opts.progress, chunk_rows=opts.chunk_rows,
                            dist_info=dist_info, echo=echo, on_chunk=on_chunk)


# ------------------------------------------------------------------------------------- verification
def pair_images(pairs, source: ModelSource) -> tuple[Any, list[str], str]:
    """``(image source, row names, source sha256)`` of a pack or pair list (:func:`load_pairs`).

    Pack: one row per pack image, named by its index. Pair list: one row per distinct image key (in
    first-seen order), named by the key ``megabench verify`` looks up."""
    from megabench.data.image_source import ImageFiles, PackImages
    from megabench.data.pairs import PairList

    size = source.model.preprocessing.input_size
    if isinstance(pairs, PairList):
        first = dict.fromkeys(zip(pairs.keys, pairs.paths, strict=True))
        keys = [k for k, _ in first]
        return ImageFiles([p for _, p in first], size, model=source.name), keys, pairs.sha256
    return PackImages(pairs, size, model=source.name), [str(i) for i in range(pairs.n_images)], pairs.sha256


def pair_features(pairs, source: ModelSource, *, flip: bool, cache: str | os.PathLike | None,
                  opts: ExtractOptions, echo: Callable[[str], None] = print) -> Path:
    """The cached feature store of the pairs' images (extracted when the cache lacks it)."""
    images, names, sha = pair_images(pairs, source)
    root = getattr(pairs, "root", None)
    entry = cache_entry(check_writable(cache or default_cache_dir()), Path(pairs.source).stem, model=source.name,
                        checkpoint_sha256=source.checkpoint_sha256,
                        preprocessing=_preprocessing(source, opts, flip), list_sha256=sha, root=root)
    return _cached(entry, lambda: run_extraction(source, images, entry.store, paths=names, source_sha256=sha,
                                                 flip=flip, opts=opts, echo=echo), echo)


def _cached(entry: CacheEntry, extract: Callable[[], Path], echo: Callable[[str], None], main: bool = True) -> Path:
    if entry.exists():
        if main:
            echo(f"features: reusing {entry.store} (cache key {entry.key}: same model, weights, preprocessing "
                 "and list; no extraction needed)")
        return entry.store
    if main:
        entry.folder.mkdir(parents=True, exist_ok=True)
        entry.record()
    path = extract()
    if main:
        echo(f"features: extracted into {entry.store} (cache key {entry.key})")
    return path


# ------------------------------------------------------------------------------------------ MegaFace
@dataclass(frozen=True)
class MegafaceImages:
    """Where the MegaFace test pack's aligned images are: ``facescrub_root`` holds the probe list's
    paths (``facescrub_images/``), ``megaface_root`` the distractor lists' paths (``megaface_images/``)."""

    facescrub_root: Path
    megaface_root: Path
    probe_list: Path
    distractor_lists: Path
    list_set: int | None = None
    sizes: tuple[int, ...] | None = None


def distractor_paths(lists: Path, list_set: int | None, sizes: Sequence[int] | None) -> tuple[list[str], str]:
    """The distractor paths the requested sizes need: the largest list first, then any path of a smaller
    list it lacks (devkit lists are nested, so normally just the largest). Returns (paths, sha256 of them)."""
    from megabench.data.megaface_io import distractor_list_files, read_distractor_list

    files = distractor_list_files(lists, list_set)
    if sizes:
        files = {s: f for s, f in files.items() if s in set(sizes)}
        if not files:
            raise DataError(f"{lists}: no distractor lists for the sizes {list(sizes)}; sizes present: "
                            f"{sorted(distractor_list_files(lists, list_set))}")
    order = sorted(files, reverse=True)
    paths = list(dict.fromkeys(p for s in order for p in read_distractor_list(files[s])))
    return paths, sha256_bytes("\n".join(paths).encode())


def _probe_inputs(where: MegafaceImages) -> tuple[list[str], np.ndarray, str]:
    from megabench.data.megaface_io import read_probe_list
    from megabench.fileio import sha256_file

    pl = read_probe_list(where.probe_list)
    return list(pl.paths), pl.labels(), sha256_file(where.probe_list)


def megaface_features(source: ModelSource, where: MegafaceImages, *, cache: str | os.PathLike | None,
                      opts: ExtractOptions, dist_info=None,
                      echo: Callable[[str], None] = print) -> tuple[Path, Path]:
    """``(probe store, distractor store)`` of ``source``'s model on the images the lists name, from the
    cache or extracted into it (probes with identity ids; no flips: MegaFace uses one embedding)."""
    from megabench.data.image_source import ImageFiles, check_files_exist, list_files
    from megabench.engine.distributed import DistInfo, barrier

    info = dist_info or DistInfo()
    cache_dir = check_writable(cache or default_cache_dir()) if info.is_main else Path(cache or default_cache_dir())
    barrier(info)
    size = source.model.preprocessing.input_size
    probe_paths, labels, probe_sha = _probe_inputs(where)
    dist_paths, dist_sha = distractor_paths(where.distractor_lists, where.list_set, where.sizes)
    jobs = []
    for name, root, paths, sha, ids, hint in (
            ("facescrub", where.facescrub_root, probe_paths, probe_sha, labels,
             "--facescrub-root must be the folder the probe list's paths are relative to (facescrub_images/)"),
            ("megaface", where.megaface_root, dist_paths, dist_sha, None,
             "--megaface-root must be the folder the distractor lists' paths are relative to (megaface_images/)")):
        entry = cache_entry(cache_dir, name, model=source.name, checkpoint_sha256=source.checkpoint_sha256,
                            preprocessing=_preprocessing(source, opts, False), list_sha256=sha, root=root)
        files = None
        if not entry.exists():  # every listed image is checked before anything is extracted
            files = list_files(root, paths, source=f"{name} list")
            check_files_exist(files, source=f"{root} ({name} images)", hint=hint)
        jobs.append((entry, files, paths, sha, ids))
    stores = []
    for entry, files, paths, sha, ids in jobs:
        images = None if files is None else ImageFiles(files, size, model=source.name)
        stores.append(_cached(entry, lambda e=entry, im=images, p=paths, s=sha, i=ids: run_extraction(
            source, im, e.store, paths=p, source_sha256=s, flip=False, opts=opts, ids=i, dist_info=info,
            echo=echo), echo, info.is_main))
    return stores[0], stores[1]
