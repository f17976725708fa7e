"""Synthetic verification data in the real formats: an insightface ``.bin`` pack + a matching feature store.

Pairs are laid out like LFW: in each of 10 contiguous folds the first half are "same" pairs and
the second half "different". Embeddings are built so that the angle between the two sides of a pair
is ``theta ~ N(mu, 0.12 rad)`` with ``mu = 1.45`` for different pairs and ``1.45 - delta`` for same
pairs; ``delta`` is set so that the best possible accuracy on the angles is ``1 - difficulty / 2``
(``difficulty`` 0: separable, 1: chance). Each stored row is that unit direction plus independent
noise of norm 0.35 (``features``) or another draw of it (``features_flip``, so flip fusion helps),
times a random raw scale in [10, 30] (embeddings are not normalised, as a model's are not).

Images are 112x112 JPEGs: a coarse colour pattern per identity plus pixel noise (the two images
of a same pair share a pattern). They only exercise the pack format; the features do not depend
on them.
"""

from __future__ import annotations

import os
from pathlib import Path
from statistics import NormalDist

import numpy as np

SIGMA = 0.12
MU_DIFF = 1.45
FLIP_NOISE = 0.35


def pair_layout(n_pairs: int, n_folds: int = 10) -> np.ndarray:
    """(N,) bool: per contiguous fold, first half same, second half different (LFW's order)."""
    from megabench.metrics.verification import fold_bounds

    issame = np.zeros(n_pairs, dtype=bool)
    bounds = fold_bounds(n_pairs, n_folds) if n_pairs >= n_folds else np.array([0, n_pairs])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        issame[lo: lo + (hi - lo + 1) // 2] = True
    return issame


def synthetic_embeddings(
    issame: np.ndarray, dim: int, difficulty: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Raw (2N, dim) float32 ``features`` and ``features_flip`` for the pairs ``issame`` (see module doc)."""
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must lie in [0, 1], got {difficulty}")
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")
    n = issame.size
    z = NormalDist().inv_cdf(1.0 - difficulty / 2.0) if difficulty > 0 else np.inf
    delta = min(2.0 * SIGMA * z, MU_DIFF - 0.05)
    theta = rng.normal(np.where(issame, MU_DIFF - delta, MU_DIFF), SIGMA)
    theta = np.clip(theta, 0.0, np.pi)
    e1 = rng.standard_normal((n, dim))
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    u = rng.standard_normal((n, dim))
    u -= np.sum(u * e1, axis=1, keepdims=True) * e1
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    e2 = np.cos(theta)[:, None] * e1 + np.sin(theta)[:, None] * u
    base = np.empty((2 * n, dim))
    base[0::2], base[1::2] = e1, e2
    scale = rng.uniform(10.0, 30.0, size=(2 * n, 1))
    noise = FLIP_NOISE / np.sqrt(dim)
    feats = scale * (base + noise * rng.standard_normal(base.shape))
    flips = scale * (base + noise * rng.standard_normal(base.shape))
    return feats.astype(np.float32), flips.astype(np.float32)


def synthetic_images(issame: np.ndarray, rng: np.random.Generator, size: int = 112) -> list[bytes]:
    """2N JPEG images (RGB, ``size`` x ``size``); the two images of a same pair share a pattern."""
    from megabench.data.bin_format import encode_image

    cells = 7
    rep = -(-size // cells)
    out: list[bytes] = []
    for same in issame:
        p1 = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
        p2 = p1 if same else rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
        for p in (p1, p2):
            img = np.repeat(np.repeat(p, rep, axis=0), rep, axis=1)[:size, :size].astype(np.int16)
            img += rng.integers(-12, 13, size=img.shape, dtype=np.int16)
            out.append(encode_image(np.clip(img, 0, 255).astype(np.uint8), quality=85))
    return out


def make_synthetic_verification(
    out_dir: str | os.PathLike,
    *,
    n_pairs: int = 6000,
    dim: int = 512,
    difficulty: float = 0.1,
    seed: int = 0,
    name: str = "synthetic",
    image_size: int = 112,
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.bin`` and ``<out_dir>/<name>.h5``; returns their paths.

    The store has ``features`` and ``features_flip`` (2N x dim float32), ``paths`` = pack indices,
    and ``source_sha256`` = the pack's sha256. Same ``seed`` -> same files' content.
    """
    from megabench.data.bin_format import write_bin
    from megabench.data.feature_store import StoreMeta, write_features
    from megabench.fileio import sha256_file

    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    issame = pair_layout(n_pairs)
    feats, flips = synthetic_embeddings(issame, dim, difficulty, rng)
    images = synthetic_images(issame, rng, image_size)
    pack = write_bin(out / f"{name}.bin", images, issame)
    meta = StoreMeta(
        model="synthetic",
        checkpoint_sha256="",
        preprocessing={"generator": "megabench synth verification", "difficulty": difficulty, "seed": seed,
                       "dim": dim, "n_pairs": n_pairs},
        source_sha256=sha256_file(pack),
    )
    store = write_features(out / f"{name}.h5", feats, [str(i) for i in range(2 * n_pairs)],
                           features_flip=flips, meta=meta)
    return pack, store
