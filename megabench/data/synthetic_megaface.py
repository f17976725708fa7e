"""Synthetic MegaFace Challenge 1 data in the devkit's structure (no images, features only).

- 80 probe identities, 3530 probe images, identity sizes chosen so that sum M(M-1) = 153,634 exactly
  (:func:`probe_sizes`), as the real FaceScrub probe set;
- probe feature = normalise(a * centre + noise), a ~ U(1, 2) (genuine cosines about 0.5-0.8);
- distractors: random unit vectors, plus *hard* ones near a probe identity (``b * centre + noise``,
  b ~ U(0.3, 0.85)), plus planted *near-duplicates* of probe images (cosine about 0.7: the MegaFace noise);
- planted probe noise: mislabelled probes whose feature comes from another identity;
- noise lists naming exactly the planted noise (plus a few entries that match nothing, as real lists do);
- nested devkit lists ``megaface_features_list.json_<n>_1``: size n = the first n store rows.

Written by :func:`generate` into a folder: ``facescrub.h5``, ``megaface.h5`` (HDF5 feature stores),
``facescrub_features_list.json``, ``lists/``, ``facescrub_noises.txt``, ``megaface_noises.txt``, ``meta.json``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

N_IDENTITIES = 80
N_PROBES = 3530
N_TRIALS = 153_634
STANDARD_SIZES = (10, 100, 1000, 10000, 100000, 1000000)


def probe_sizes(n_ids: int = N_IDENTITIES, n_images: int = N_PROBES, trials: int = N_TRIALS) -> np.ndarray:
    """Deterministic identity sizes M_c >= 2 with sum M = n_images and sum M(M-1) = trials.

    Starts from the most even split and moves one image at a time from a smaller identity to a larger
    one (each move raises sum M^2 by 2(a - b + 1)), choosing the move that lands closest to the target.
    """
    m = np.full(n_ids, n_images // n_ids, dtype=np.int64)
    m[: n_images - m.sum()] += 1
    target_sq = trials + n_images
    for _ in range(100_000):
        gap = target_sq - int((m * m).sum())
        if gap == 0:
            return np.sort(m)[::-1].copy()
        if gap < 0 or gap % 2:
            raise ValueError(f"cannot reach sum M(M-1) = {trials} with {n_ids} identities / {n_images} images")
        # all moves b -> a (b loses an image, keeps >= 2): gain 2(m_a - m_b + 1); take the largest <= gap
        gain = 2 * (m[None, :] - m[:, None] + 1)  # gain[b, a]
        np.fill_diagonal(gain, -1)
        gain[m <= 2, :] = -1
        gain[gain > gap] = -1
        b, a = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if gain[b, a] <= 0:
            raise ValueError("no move reaches the target")
        m[a] += 1
        m[b] -= 1
    raise ValueError("did not converge")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


#: the files :func:`generate` writes into its folder (``lists/`` holds the devkit lists)
SET_FILES = ("facescrub.h5", "megaface.h5", "facescrub_features_list.json", "facescrub_noises.txt",
             "megaface_noises.txt", "meta.json")


def leftover_temporaries(out: Path) -> list[Path]:
    """Hidden ``.<set file>.<random>[.h5|.npz].tmp`` files (:func:`megabench.fileio.atomic_path`) of a killed
    generation in ``out`` and ``out/lists``; nothing else matches."""
    found = [p for name in SET_FILES for p in out.glob(f".{name}.*.tmp")]
    lists = out / "lists"
    if lists.is_dir():
        found += [p for p in lists.glob(".megaface_features_list.json_*.tmp")]
    return sorted(p for p in found if p.is_file())


def prepare_output_folder(out: Path, *, force: bool = False) -> None:
    """Create ``out``; refuse to replace an existing set unless ``force``; remove a killed run's temporaries."""
    from megabench.errors import DataError

    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: --out is a file; give a folder for the synthetic set")
    existing = [name for name in SET_FILES if (out / name).exists()]
    if (out / "lists").is_dir() and any((out / "lists").glob("megaface_features_list.json_*")):
        existing.append("lists/")
    if existing and not force:
        raise DataError(f"{out}: already holds {', '.join(existing)}; pass --force to replace them or choose "
                        "another --out")
    out.mkdir(parents=True, exist_ok=True)
    for p in leftover_temporaries(out):
        p.unlink(missing_ok=True)


def distractor_path(i: int) -> str:
    """Devkit-like relative path of distractor ``i`` (``<3 digits>/<owner>@N00/<photo>_<face>.jpg``)."""
    owner = 10_000_000 + (i * 7919) % 89_999_999
    return f"{owner % 1000:03d}/{owner}@N00/{4_000_000_000 + i}_{i % 3}.jpg"


def generate(
    out: str | os.PathLike,
    n_distractors: int = 1_000_000,
    dim: int = 512,
    seed: int = 0,
    *,
    dtype: str = "float32",
    hard_fraction: float = 0.002,
    dup_fraction: float = 0.0007,
    n_mislabelled: int = 25,
    block: int = 65536,
    progress: bool = True,
    force: bool = False,
) -> dict:
    """Write a synthetic MegaFace set into ``out``; returns the meta dict (also ``out/meta.json``).

    Existing files of the set in ``out`` are an error unless ``force`` (then replaced). Hidden temporary
    files a killed generation left there (``.<name of a set file>.*.tmp``) are removed first.
    """
    from tqdm import tqdm

    from megabench.data.feature_store import FeatureStoreWriter, StoreMeta, write_features
    from megabench.data.megaface_io import write_distractor_list, write_probe_list
    from megabench.fileio import atomic_write_bytes, atomic_write_json

    out = Path(out)
    prepare_output_folder(out, force=force)
    rng = np.random.default_rng([seed, 0])
    sizes = probe_sizes()
    centres = _unit(rng.standard_normal((N_IDENTITIES, dim)))
    labels = np.repeat(np.arange(N_IDENTITIES), sizes)
    a = rng.uniform(1.0, 2.0, size=N_PROBES)[:, None]
    probes = _unit(a * centres[labels] + rng.standard_normal((N_PROBES, dim)) / np.sqrt(dim))
    names = [f"Synth_Person_{c:02d}" for c in range(N_IDENTITIES)]
    per_id_index = np.concatenate([np.arange(s) for s in sizes])
    probe_paths = [f"{names[c]}/{names[c]}_{k}.png" for c, k in zip(labels, per_id_index, strict=True)]
    # mislabelled probes: feature from another identity
    bad_probe = rng.choice(N_PROBES, size=min(n_mislabelled, N_PROBES), replace=False)
    for i in bad_probe:
        other = (labels[i] + 1 + rng.integers(N_IDENTITIES - 1)) % N_IDENTITIES
        probes[i] = _unit(1.2 * centres[other] + rng.standard_normal(dim) / np.sqrt(dim))
    meta_store = StoreMeta(model="synthetic", preprocessing={"generator": "synthetic_megaface", "seed": seed})
    write_features(out / "facescrub.h5", probes, probe_paths, ids=labels, meta=meta_store, dtype=dtype)
    write_probe_list(out / "facescrub_features_list.json", probe_paths, [names[c] for c in labels])

    # distractors
    n = int(n_distractors)
    n_hard = int(round(hard_fraction * n))
    n_dup = max(1, int(round(dup_fraction * n))) if n >= 100 else 0
    special = rng.choice(n, size=n_hard + n_dup, replace=False)
    hard_rows, dup_rows = np.sort(special[:n_hard]), np.sort(special[n_hard:])
    hard_vec = _unit(rng.uniform(0.3, 0.85, (n_hard, 1)) * centres[rng.integers(N_IDENTITIES, size=n_hard)]
                     + rng.standard_normal((n_hard, dim)) / np.sqrt(dim))
    clean_probes = np.setdiff1d(np.arange(N_PROBES), bad_probe)
    dup_src = rng.choice(clean_probes, size=n_dup)
    dup_vec = _unit(probes[dup_src] + 1.0 * rng.standard_normal((n_dup, dim)) / np.sqrt(dim))
    paths = [distractor_path(i) for i in range(n)]
    bar = tqdm(total=n, unit="feat", desc="synth megaface", disable=not progress)
    with FeatureStoreWriter(out / "megaface.h5", n, dim, dtype=dtype, meta=meta_store) as w:
        for lo in range(0, n, block):
            hi = min(n, lo + block)
            g = np.random.default_rng([seed, 1, lo])
            x = g.standard_normal((hi - lo, dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            for rows, vec in ((hard_rows, hard_vec), (dup_rows, dup_vec)):
                sel = np.flatnonzero((rows >= lo) & (rows < hi))
                x[rows[sel] - lo] = vec[sel]
            w.write(lo, x, paths=paths[lo:hi])
            bar.update(hi - lo)
    bar.close()

    lists = out / "lists"
    sizes_used = [s for s in STANDARD_SIZES if s <= n] + ([n] if n not in STANDARD_SIZES else [])
    for s in sizes_used:
        write_distractor_list(lists / f"megaface_features_list.json_{s}_1", paths[:s])
    fs_noise = [os.path.basename(probe_paths[i]) for i in sorted(bad_probe)] + ["Nobody_Here_1.png"]
    mf_noise = [paths[i] for i in dup_rows] + ["000/10000000@N00/0000000000_0.jpg"]
    head = "#synthetic noise list written by megabench synth megaface\n"
    atomic_write_bytes(out / "facescrub_noises.txt", (head + "\n".join(fs_noise) + "\n").encode())
    atomic_write_bytes(out / "megaface_noises.txt", (head + "\n".join(mf_noise) + "\n").encode())
    meta = {"generator": "megabench.data.synthetic_megaface", "seed": seed, "dim": dim, "dtype": dtype,
            "n_distractors": n, "n_probes": N_PROBES, "n_identities": N_IDENTITIES, "trials": N_TRIALS,
            "sizes": sizes_used, "n_hard": n_hard, "n_near_duplicates": n_dup,
            "n_mislabelled_probes": int(bad_probe.size)}
    atomic_write_json(out / "meta.json", meta)
    return meta
