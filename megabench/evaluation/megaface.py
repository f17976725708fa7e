"""MegaFace Challenge 1 (FaceScrub probes), raw and refined, in one streaming pass (docs/megaface.md).

:func:`run_megaface` takes a :class:`MegafaceSpec` (``protocols/megaface_c1.toml``), a probe feature store
and a distractor feature store (HDF5, :mod:`megabench.data.feature_store`), optional devkit lists and noise
lists, and returns a result dict (kind ``"megaface"``)::

    variants.<raw|refined>.sizes["<n>"] = {rank1, cmc{ranks, rates}, ties, n_trials, n_distractors,
        rank_histogram{rank, count}, verification{tar_at_far{"1e-06": {tar, threshold, far, n_impostors,
        n_genuine, ci95, k, exact}, ...}, devkit_reading{...}, roc{fpr, tpr, threshold, exact}}}
    noise{facescrub_matched, megaface_matched, lists_sha256, n_noisy_probes, n_noisy_distractors}

Definitions (docs/megaface.md §2-§4)
- Identification: every ordered same-identity probe pair (i, j), i != j: probe x_j, gallery {x_i} + D;
  rank = #{d in D: s(x_j, d) >= s(x_j, x_i)} (0-based; ``ties = "optimistic"`` uses ``>``).
- Verification genuine pairs: the *unordered* same-identity probe pairs i < j (as the devkit), score
  ``s(x_i, x_j)``; impostors: every probe x every distractor of the size (N = probes x |D|).
- Refinement (``refine``): ``insightface`` (noisy distractor scores -inf, kept in D and N; noisy probe
  replaced by the L2-normalised mean of its identity's clean features; ``jitter_seed`` adds uniform
  +-0.001 to their *sum* before normalising, as insightface's remove_noises.py), ``facex`` (noisy
  distractor = zero vector, score 0; probes as insightface), ``drop`` (noisy probes and distractors
  removed), ``none``. Raw and refined share the GEMM.
- Probe identities with one image have no genuine pair: an error, or skipped and counted with
  ``allow_singletons`` (skipped probes contribute neither trials nor impostors).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from megabench.errors import DataError, MegabenchError
from megabench.metrics.search import BACKENDS as SCORE_BACKENDS
from megabench.metrics.search import auto_backend
from megabench.metrics.streaming import KERNELS  # the accumulator's kernels: auto | fused | torch

Refine = Literal["insightface", "facex", "drop", "none"]
Ties = Literal["conservative", "optimistic"]
ATTRIBUTION = 'We used the noises list proposed by InsightFace (deepinsight/insightface, src/megaface).'
_NOISE_MODE = {"insightface": "neginf", "facex": "zero", "drop": "drop", "none": "keep"}


class NoiseMatchWarning(UserWarning):
    """A noise list matched none of the images in use."""


@dataclass(frozen=True)
class MegafaceSpec:
    """MegaFace Challenge 1 protocol spec (``kind = "megaface"``)."""

    name: str = "megaface_c1"
    version: str = "1"
    description: str = ""
    sizes: tuple[int, ...] = (10, 100, 1000, 10000, 100000, 1000000)
    far_targets: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    topk_min: int = 100_000
    topk_fraction: float = 1e-6
    hist_bins: int = 1 << 20
    refine: Refine = "insightface"
    ties: Ties = "conservative"
    facescrub_noises: str = "megaface_noises/facescrub_noises.txt"
    megaface_noises: str = "megaface_noises/megaface_noises.txt"
    attribution: str = ATTRIBUTION
    block_rows: int = 8192
    seed: int = 0
    source: str = ""
    sha256: str = ""

    def __post_init__(self) -> None:
        if self.hist_bins < (1 << 20):
            raise ValueError(f"hist_bins must be >= 2**20 (docs/megaface.md §3), got {self.hist_bins}")
        if self.topk_min < 1 or not 1 <= self.block_rows < (1 << 24):
            raise ValueError("topk_min must be positive and block_rows in [1, 2**24)")

    def noise_path(self, which: str) -> Path:
        """Noise list path, relative to the spec file's folder (or the shipped protocols folder,
        :func:`megabench.config.spec_folder`, for a spec built without a file)."""
        from megabench.config import spec_folder

        rel = self.facescrub_noises if which == "facescrub" else self.megaface_noises
        base = Path(self.source).parent if self.source else spec_folder("protocols")
        return (base / rel) if not Path(rel).is_absolute() else Path(rel)


#: choices of the CLI options (one source of truth: the CLI builds its click.Choice from these)
REFINES: tuple[str, ...] = ("insightface", "facex", "drop", "none")
TIES: tuple[str, ...] = ("conservative", "optimistic")
#: ``auto`` = :func:`megabench.metrics.search.auto_backend` (numpy on the CPU, torch elsewhere), then the registered
#: score backends (:data:`megabench.metrics.search.BACKENDS`)
BACKENDS: tuple[str, ...] = ("auto", *SCORE_BACKENDS.names())
PathArg = str | os.PathLike | None


def _check_choice(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise MegabenchError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_sizes(sizes) -> tuple[int, ...] | None:
    """Distractor sizes as positive ints; 0, negatives, fractions (10.7), NaN and non-numbers are errors."""
    if sizes is None:
        return None
    out = []
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)):
            raise MegabenchError(f"--sizes: {s!r} is not a number; give positive whole numbers, e.g. 10,100,1000")
        if not math.isfinite(s) or s != int(s) or s < 1:
            raise MegabenchError(f"--sizes: {s:g} is not a positive whole number of distractors; "
                                 "give e.g. 10,100,1000")
        out.append(int(s))
    if not out:
        raise MegabenchError("--sizes: no size given; give e.g. 10,100,1000 or leave it out for the spec's sizes")
    return tuple(out)


@dataclass(frozen=True)
class MegafaceOptions:
    """Everything one MegaFace run takes besides the spec; built by the CLI (``megabench megaface``).

    Paths: ``probes`` / ``distractors`` (HDF5 feature stores), ``probe_list`` (facescrub_features_list.json),
    ``distractor_lists`` (folder of ``megaface_features_list.json_<size>_<set>``), noise lists (default: the
    spec's), ``state`` (resume state file; per rank ``<state>.rank<r>`` under torchrun). ``None`` for
    ``sizes``, ``seed``, ``refine``, ``ties``, ``block_rows`` means the spec's value (:meth:`resolved`).
    ``kernel`` selects the accumulator's block kernel (``auto | fused | torch``; recorded in the result);
    ``backend`` the GEMM library (``auto``: numpy's BLAS on the CPU, torch on other devices; the resolved name
    is recorded).
    ``dense_cut``: genuine scores below it are counted densely (default: :func:`auto_cut`; any value gives the
    same numbers). ``max_blocks`` stops after that many blocks with the state saved and raises
    :class:`MegabenchError` (the interruption hook of the resume tests).
    """

    probes: PathArg = None
    distractors: PathArg = None
    probe_list: PathArg = None
    distractor_lists: PathArg = None
    list_set: int | None = None
    sizes: tuple[int, ...] | None = None
    seed: int | None = None
    refine: str | None = None
    ties: str | None = None
    facescrub_noises: PathArg = None
    megaface_noises: PathArg = None
    jitter_seed: int | None = None
    backend: str = "auto"
    device: str = "cpu"
    kernel: str = "auto"
    block_rows: int | None = None
    state: PathArg = None
    resume: bool = False
    max_blocks: int | None = None
    checkpoint_seconds: float = 30.0
    allow_singletons: bool = False
    dense_cut: float | None = None
    progress: bool = True
    prefetch: bool = True

    def __post_init__(self) -> None:
        _check_choice("refine", self.refine, REFINES)
        _check_choice("ties", self.ties, TIES)
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("kernel", self.kernel, KERNELS)
        object.__setattr__(self, "sizes", check_sizes(self.sizes))
        if self.block_rows is not None and not 1 <= int(self.block_rows) < (1 << 24):
            raise MegabenchError(f"block_rows must be in [1, 2**24), got {self.block_rows}")
        if self.list_set is not None and self.list_set < 0:
            raise MegabenchError(f"list_set must be >= 0, got {self.list_set}")
        if not self.checkpoint_seconds >= 0:
            raise MegabenchError(f"checkpoint_seconds must be >= 0, got {self.checkpoint_seconds}")
        if self.max_blocks is not None and self.max_blocks < 0:
            raise MegabenchError(f"max_blocks must be >= 0, got {self.max_blocks}")
        if self.resume and self.state is None:
            raise MegabenchError("--resume needs a state file (--state PATH or --out)")

    def resolved(self, spec: MegafaceSpec) -> MegafaceOptions:
        """A copy with the spec's defaults filled in (refine, ties, seed, block_rows) and ``backend="auto"``
        resolved for the device."""
        return replace(self, refine=self.refine or spec.refine, ties=self.ties or spec.ties,
                       backend=auto_backend(self.device) if self.backend == "auto" else self.backend,
                       seed=spec.seed if self.seed is None else self.seed,
                       block_rows=int(self.block_rows or spec.block_rows))

    def noise_paths(self, spec: MegafaceSpec) -> tuple[Path, Path]:
        """(FaceScrub, MegaFace) noise list paths: the options' or the spec's."""
        fs = Path(self.facescrub_noises) if self.facescrub_noises else spec.noise_path("facescrub")
        mf = Path(self.megaface_noises) if self.megaface_noises else spec.noise_path("megaface")
        return fs, mf

    def input_files(self, spec: MegafaceSpec) -> dict[str, Path]:
        """Every file this run reads, by role (the distractor list files included): never written."""
        files = {k: Path(v) for k, v in (("--probes", self.probes), ("--distractors", self.distractors),
                                         ("--probe-list", self.probe_list)) if v is not None}
        if (self.refine or spec.refine) != "none":
            fs, mf = self.noise_paths(spec)
            files.update({"--facescrub-noises": fs, "--megaface-noises": mf})
        if self.distractor_lists is not None:
            folder = Path(self.distractor_lists)
            files["--distractor-lists"] = folder
            if folder.is_dir():
                for p in folder.iterdir():
                    files[f"--distractor-lists ({p.name})"] = p
        return files


# --- inputs -----------------------------------------------------------------------------------------
@dataclass
class Probes:
    features: np.ndarray  # (n, D) float32, L2-normalised
    labels: np.ndarray  # (n,) int64
    paths: list[str]
    meta: Any = None  # StoreMeta of the probe store (model, checkpoint, preprocessing)


def _rows_for_list(store_path, paths: list[str], probe_list, listed: tuple[str, ...]) -> np.ndarray:
    """Store rows of the listed probe paths; missing or ambiguous (duplicated in the store) -> DataError."""
    from megabench.data.megaface_io import duplicates

    index = {p: i for i, p in enumerate(paths)}
    missing = [p for p in listed if p not in index]
    if missing:
        raise DataError(f"{store_path}: {len(missing)} of {len(listed)} paths of {probe_list} have no feature "
                        f"(first: {missing[:5]}); extract them or convert the matio tree again")
    ambiguous = sorted(set(duplicates(paths)) & set(listed))
    if ambiguous:
        raise DataError(f"{store_path}: {len(ambiguous)} listed probe path(s) occur more than once in the store "
                        f"(first: {ambiguous[:5]}); which row is meant is ambiguous: fix the store's `paths`")
    return np.array([index[p] for p in listed], dtype=np.int64)


def load_probes(store_path: str | os.PathLike, probe_list: str | os.PathLike | None = None) -> Probes:
    """Probe features in list order (or store order), L2-normalised; identities from the list or the store.

    Store ``ids`` may be integers or identity names (strings; mapped to labels); a store without a list
    must not repeat a path. Empty probe sets are :class:`DataError`.
    """
    from megabench.data.megaface_io import duplicates, open_store, read_probe_list, read_store_labels
    from megabench.metrics.search import normalize_block

    with open_store(store_path, "--probes") as fs:
        paths = fs.paths()
        x = fs.read()
        meta = fs.meta
    if probe_list is not None:
        pl = read_probe_list(probe_list)
        rows = _rows_for_list(store_path, paths, probe_list, pl.paths)
        x, paths, labels = x[rows], list(pl.paths), pl.labels()
    else:
        labels = read_store_labels(store_path)
        if labels is None:
            raise DataError(f"{store_path}: probe store has no `ids`; pass --probe-list facescrub_features_list.json")
        dup = duplicates(paths)
        if dup:
            raise DataError(f"{store_path}: {len(dup)} probe path(s) occur more than once (first: {dup[:5]}); "
                            "repeated probes would count their trials twice: fix the store or pass --probe-list")
    if x.shape[0] == 0:
        raise DataError(f"{store_path}: no probe features; the probe set must not be empty")
    xt = normalize_block(np.ascontiguousarray(x, dtype=np.float32), source=str(store_path))
    return Probes(xt, np.asarray(labels, np.int64), paths, meta)


def _warn_if_models_differ(probe_meta, distractor_meta, probes_path: str, distractors_path: str) -> None:
    """Scores between features of different models (or checkpoints) mean nothing: say so before the pass."""
    if (probe_meta.model, probe_meta.checkpoint_sha256) == (distractor_meta.model, distractor_meta.checkpoint_sha256):
        return
    warnings.warn(f"probe store {probes_path} was extracted with model {probe_meta.model!r} "
                  f"({probe_meta.checkpoint_sha256[:12] or 'no checkpoint hash'}) but the distractor store "
                  f"{distractors_path} with {distractor_meta.model!r} "
                  f"({distractor_meta.checkpoint_sha256[:12] or 'no checkpoint hash'}); "
                  "scores across models are meaningless: extract both with the same checkpoint", stacklevel=3)


@dataclass
class Membership:
    """Which distractor store rows belong to which size: ``row_class`` (-1: unused) and per-size classes."""

    sizes: list[int]
    row_class: np.ndarray  # (n_store,) int64
    class_masks: np.ndarray  # (n_classes,) int64 bitmask over sizes
    source: str  # "lists" or "seed"

    def classes_of(self, size_index: int) -> np.ndarray:
        return np.flatnonzero((self.class_masks >> size_index) & 1)

    @property
    def n_classes(self) -> int:
        return int(self.class_masks.size)


def _membership_from_rows(sizes: list[int], rows_per_size: list[np.ndarray], n_store: int, source: str) -> Membership:
    bits = np.zeros(n_store, np.int64)
    for i, rows in enumerate(rows_per_size):
        bits[rows] |= 1 << i
    if len(sizes) <= 20:  # few distinct masks: a bincount instead of sorting the store's rows
        present = np.flatnonzero(np.bincount(bits, minlength=1))
        lookup = np.zeros(present[-1] + 1, np.int64)
        lookup[present] = np.arange(present.size)
        masks, inv = present, lookup[bits]
    else:
        masks, inv = np.unique(bits, return_inverse=True)
    row_class = inv.astype(np.int64).reshape(-1)
    if masks[0] == 0:
        row_class -= 1
        masks = masks[1:]
    return Membership(sizes, row_class, masks.astype(np.int64), source)


def store_rows_of(store_paths: list[str], lists: dict[int, list[str]]) -> dict[int, np.ndarray]:
    """For each list, the store row of each of its paths (int64): -1 where the store lacks the path, -2 where
    it holds it more than once. Lists must not repeat a path.

    A list equal to the store's paths (a store converted from that list) maps to 0..n-1 with one C compare;
    the rest are looked up the cheaper way round: the few wanted paths in a dict and each store path looked
    up once, or the store's paths in a dict and each listed path looked up (1M paths: ~0.35 s per dict).
    """
    from itertools import chain, repeat

    from megabench.data.megaface_io import duplicates

    n = len(store_paths)
    out: dict[int, np.ndarray] = {}
    lookup = store_paths
    for size, paths in lists.items():
        if len(paths) == n and paths == store_paths:
            out[size] = np.arange(n, dtype=np.int64)
            lookup = paths  # equal strings whose hashes the list's repeat check already computed
    todo = [size for size in lists if size not in out]
    if not todo:
        return out
    if sum(len(lists[size]) for size in todo) < n // 2:
        want = {p: i for i, p in enumerate(dict.fromkeys(chain.from_iterable(lists[size] for size in todo)))}
        hit = np.fromiter(map(want.get, lookup, repeat(-1)), dtype=np.int64, count=n)
        found = np.flatnonzero(hit >= 0)
        row_of = np.full(len(want), -1, np.int64)
        row_of[hit[found]] = found
        row_of[np.bincount(hit[found], minlength=len(want)) > 1] = -2
        for size in todo:
            out[size] = row_of[np.fromiter(map(want.__getitem__, lists[size]), np.int64, count=len(lists[size]))]
        return out
    index = dict(zip(lookup, range(n), strict=True))
    for p in duplicates(store_paths) if len(index) < n else ():
        index[p] = -2
    for size in todo:
        out[size] = np.fromiter(map(index.get, lists[size], repeat(-1)), dtype=np.int64, count=len(lists[size]))
    return out


def membership_from_lists(store_paths: list[str], lists: dict[int, list[str]], source: str) -> Membership:
    """Membership from devkit lists: every listed path must name exactly one store row."""
    sizes = sorted(lists)
    found = store_rows_of(store_paths, lists)
    rows = []
    for s in sizes:
        r = found[s]
        missing = [lists[s][i] for i in np.flatnonzero(r == -1)]
        if missing:
            raise DataError(f"{source}: {len(missing)} of {len(lists[s])} paths of the size-{s} list have no feature "
                            f"in the distractor store (first: {missing[:5]}); convert or extract them")
        ambiguous = [lists[s][i] for i in np.flatnonzero(r == -2)]
        if ambiguous:
            raise DataError(f"{source}: {len(ambiguous)} paths of the size-{s} list occur more than once in the "
                            f"distractor store (first: {ambiguous[:5]}); fix the store's `paths`")
        if r.size and np.bincount(r, minlength=len(store_paths)).max() > 1:
            raise DataError(f"{source}: the size-{s} list names some images twice")
        rows.append(r)
    return _membership_from_rows(sizes, rows, len(store_paths), "lists")


def membership_from_seed(n_store: int, sizes: list[int], seed: int) -> Membership:
    """Nested random subsets: size n = the first n of one seeded permutation of the store rows."""
    perm = np.random.default_rng(seed).permutation(n_store)
    return _membership_from_rows(sizes, [perm[:s] for s in sizes], n_store, f"seed={seed}")


# --- variants ---------------------------------------------------------------------------------------
@dataclass
class Stack:
    vectors: np.ndarray  # (n_stack, D) float32
    plans: list  # VariantPlan
    info: dict[str, Any]


def _plan(name: str, slot_col: np.ndarray, labels: np.ndarray, gram: np.ndarray, noise_mode: str, n_stack: int,
          cut: float):
    """Build a VariantPlan from ``slot_col`` (stack column of each probe slot, -1 = dropped)."""
    from megabench.metrics.streaming import VariantPlan, trial_keys

    keys, scores, pairs, used, skipped = [], [], [], [], 0
    for lab in np.unique(labels):
        slots = np.flatnonzero((labels == lab) & (slot_col >= 0))
        cols = slot_col[slots]
        if cols.size < 2:
            skipped += cols.size
            continue
        used.append(cols)
        g = gram[np.ix_(cols, cols)]  # g[a, b] = s(x_a, x_b): probe a, gallery b
        off = ~np.eye(cols.size, dtype=bool)
        pj, _ = np.nonzero(off)
        keys.append(trial_keys(cols[pj], g[off]))
        scores.append(g[off])
        iu = np.triu_indices(cols.size, k=1)
        pairs.append(g[iu])
    cols_all = np.sort(np.concatenate(used)) if used else np.empty(0, np.int64)
    if np.unique(cols_all).size != cols_all.size:
        raise AssertionError("a stack column serves two probe slots")
    k = np.concatenate(keys) if keys else np.empty(0, np.int64)
    sc = np.concatenate(scores).astype(np.float32) if scores else np.empty(0, np.float32)
    order = np.argsort(k, kind="stable")
    gp = np.sort(np.concatenate(pairs)).astype(np.float32) if pairs else np.empty(0, np.float32)
    plan = VariantPlan(name, cols_all.astype(np.int64), k[order], sc[order], noise_mode, gp, n_stack, cut)
    return plan, skipped


#: genuine scores below the (1 - DENSE_QUANTILE) quantile of impostor scores are counted densely
DENSE_QUANTILE = 1e-4


def auto_cut(gram: np.ndarray, labels: np.ndarray, n: int, sample_scores: np.ndarray | None = None) -> float:
    """A score above which few impostors lie: the (1 - DENSE_QUANTILE) quantile of ``sample_scores``
    (probes x a few thousand distractors), or of cross-identity probe scores without a sample.

    Only a work split (see :class:`~megabench.metrics.streaming.VariantPlan`); any value is exact.
    """
    if sample_scores is not None and sample_scores.size:
        pool = np.asarray(sample_scores, np.float32).reshape(-1)
    else:
        g = gram[:n, :n]
        pool = g[labels[:, None] != labels[None, :]]
    if pool.size == 0:
        return -np.inf
    return float(np.quantile(pool, 1.0 - DENSE_QUANTILE))


def build_stack(
    probes: Probes,
    noisy: np.ndarray,
    refine: str,
    *,
    jitter_seed: int | None = None,
    allow_singletons: bool = False,
    source: str = "probes",
    cut: float | None = None,
    sample_scores: np.ndarray | None = None,
) -> Stack:
    """The stacked probe matrix and the raw (+ refined) variant plans sharing it."""
    x, labels = probes.features, probes.labels
    counts = np.bincount(np.unique(labels, return_inverse=True)[1].reshape(-1))
    singles = int((counts == 1).sum())
    if singles and not allow_singletons:
        lone = [probes.paths[i] for i in np.flatnonzero(counts[np.unique(labels, return_inverse=True)[1]] == 1)]
        raise DataError(f"{source}: {singles} probe identities have a single image (no genuine pair; first: "
                        f"{lone[:5]}); remove them or pass --allow-singletons to skip and count them")
    n = x.shape[0]
    # stack order: clean probes, then noisy ones, then replacement rows, so that the columns one variant
    # leaves out are contiguous (cheap slices instead of gathers in the streaming pass)
    order = np.concatenate([np.flatnonzero(~noisy), np.flatnonzero(noisy)])
    pos = np.empty(n, np.int64)
    pos[order] = np.arange(n)
    vectors = [x[order]]
    refined_slots = pos.copy()
    if refine in ("insightface", "facex"):
        rng = np.random.default_rng(jitter_seed) if jitter_seed is not None else None
        extra = []
        for i in np.flatnonzero(noisy):
            clean = np.flatnonzero((labels == labels[i]) & ~noisy)
            if clean.size == 0:
                raise DataError(f"{source}: every image of the identity of {probes.paths[i]} is in the noise list; "
                                "there is no clean feature to replace it with (use --refine drop)")
            if rng is None:
                m = x[clean].astype(np.float64).mean(axis=0)
            else:  # insightface's remove_noises.py: jitter added to the identity's feature *sum*
                m = x[clean].astype(np.float64).sum(axis=0) + rng.uniform(-0.001, 0.001, size=x.shape[1])
            extra.append((m / np.linalg.norm(m)).astype(np.float32))
            refined_slots[i] = n + len(extra) - 1
        if extra:
            vectors.append(np.stack(extra))
    elif refine == "drop":
        refined_slots[noisy] = -1
    stack = np.ascontiguousarray(np.concatenate(vectors, axis=0))
    gram = stack @ stack.T
    n_stack = stack.shape[0]
    cut = auto_cut(gram, labels[order], n, sample_scores) if cut is None else float(cut)
    raw_plan, raw_skip = _plan("raw", pos, labels, gram, "keep", n_stack, cut)
    plans = [raw_plan]
    info: dict[str, Any] = {"n_stack": n_stack, "skipped_singletons": {"raw": raw_skip}, "dense_cut": cut}
    if refine != "none":
        ref_plan, ref_skip = _plan("refined", refined_slots, labels, gram, _NOISE_MODE[refine], n_stack, cut)
        plans.append(ref_plan)
        info["skipped_singletons"]["refined"] = ref_skip
    return Stack(stack, plans, info)


# --- resume state -----------------------------------------------------------------------------------
#: the marker every resume state carries: a file without it is never overwritten or removed
STATE_MAGIC = "megabench-megaface-resume-state-v1"


def rank_state_path(path: str | os.PathLike, rank: int, world: int) -> Path:
    """The state file of one rank: ``path`` itself for one process, ``<path>.rank<r>`` under torchrun."""
    path = Path(path)
    return path if world <= 1 else path.with_name(f"{path.name}.rank{rank}")


def _read_state_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a state file (``|`` in keys back to ``/``); unreadable -> :class:`DataError`."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("a single array, not an .npz archive")
            return {k.replace("|", "/"): z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        reason = str(exc) or type(exc).__name__
        raise DataError(f"{path}: unreadable resume state ({reason}); left as it is: delete it to start "
                        "afresh, or point --state elsewhere") from None


def _text(a: np.ndarray | None) -> str:
    return bytes(np.asarray(a, np.uint8)).decode(errors="replace") if a is not None else ""


def state_marker(path: str | os.PathLike) -> tuple[str, str] | None:
    """(magic, fingerprint) of a megabench resume state, or None when ``path`` is something else."""
    try:
        arrays = _read_state_arrays(Path(path))
    except DataError:
        return None
    magic = _text(arrays.get("__magic__"))
    return (magic, _text(arrays.get("__fingerprint__"))) if magic == STATE_MAGIC else None


@dataclass(frozen=True)
class ResumeState:
    """One rank's resume state file: accumulator arrays + finished blocks + marker (magic, fingerprint);
    docs/megaface.md §6.

    Overwrites only a missing file or a megabench resume state (:meth:`check_target`); removes only a
    file carrying this run's fingerprint (:meth:`remove`).
    """

    path: Path
    fingerprint: str

    def check_target(self) -> None:
        """Refuse a state path that holds anything but a megabench resume state (before any work)."""
        check_state_target(self.path)

    def save(self, blocks_done: list[int], acc) -> None:
        from megabench.fileio import atomic_path

        arrays = acc.state_arrays()
        arrays["__magic__"] = np.frombuffer(STATE_MAGIC.encode(), dtype=np.uint8)
        arrays["__fingerprint__"] = np.frombuffer(self.fingerprint.encode(), dtype=np.uint8)
        arrays["__blocks__"] = np.asarray(sorted(blocks_done), dtype=np.int64)
        with atomic_path(self.path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{k.replace("/", "|"): v for k, v in arrays.items()})

    def load(self, acc) -> list[int]:
        """Load the accumulator state; returns the finished blocks. Other inputs / options -> DataError."""
        arrays = _read_state_arrays(self.path)
        if _text(arrays.pop("__magic__", None)) != STATE_MAGIC:
            raise DataError(f"{self.path}: not a megabench MegaFace resume state (no marker); point --state "
                            "elsewhere")
        found = _text(arrays.pop("__fingerprint__", None))
        if found != self.fingerprint:
            raise DataError(f"{self.path}: resume state belongs to different inputs or options (fingerprint "
                            f"{found[:12]} != {self.fingerprint[:12]}); delete it or point --state elsewhere")
        blocks = arrays.pop("__blocks__", np.empty(0, np.int64)).tolist()
        try:
            acc.load_state_arrays(arrays)
        except (KeyError, ValueError, IndexError) as exc:
            raise DataError(f"{self.path}: damaged resume state ({exc}); delete it to start afresh") from None
        return blocks

    def check_overwrite(self) -> None:
        """Before a fresh (not resumed) pass: an existing state at this path must be this run's (same
        fingerprint); another run's state is refused, not overwritten."""
        if not self.path.exists():
            return
        marker = state_marker(self.path)
        if marker != (STATE_MAGIC, self.fingerprint):
            raise MegabenchError(f"{self.path}: holds the resume state of another run (other inputs or options); "
                                 "refusing to overwrite it: resume that run, delete the file, or choose another "
                                 "--state")

    def remove(self) -> bool:
        """Delete the file if it is this run's state (marker and fingerprint match); True if deleted."""
        if state_marker(self.path) != (STATE_MAGIC, self.fingerprint):
            return False
        self.path.unlink(missing_ok=True)
        return True


def check_state_target(path: str | os.PathLike) -> None:
    """:class:`MegabenchError` unless ``path`` is absent or a megabench resume state (which may be replaced)."""
    path = Path(path)
    if path.is_dir():
        raise MegabenchError(f"{path}: --state is a folder; give a file path for the resume state")
    if not path.exists():
        return
    with open(path, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    if not is_zip or _text(_read_state_arrays(path).get("__magic__")) != STATE_MAGIC:
        raise MegabenchError(f"{path}: exists and is not a megabench resume state; refusing to overwrite it: "
                             "point --state at a new file")


def remove_state_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the hidden ``.<state name>.<random>.npz.tmp`` files a killed save of ``path`` left
    (:func:`megabench.fileio.atomic_path` names them so; nothing else matches); returns them."""
    import glob

    path = Path(path)
    found = [p for p in path.parent.glob(f".{glob.escape(path.name)}.*.npz.tmp") if p.is_file()]
    for p in found:
        p.unlink(missing_ok=True)
    return found


def remove_states(state: str | os.PathLike, fingerprint: str, world: int) -> list[Path]:
    """After a successful run: delete every rank's state file of this run (marker checked); returns them."""
    files = [rank_state_path(state, r, world) for r in range(max(world, 1))]
    return [p for p in files if ResumeState(p, fingerprint).remove()]


# --- inputs of one run ------------------------------------------------------------------------------
def _sha_or_none(path: str | os.PathLike | None) -> str | None:
    from megabench.fileio import sha256_file

    return sha256_file(path) if path else None


def check_device(device: str) -> None:
    """A device torch knows and that exists here (``cpu``, ``cuda``, ``cuda:1`` ...) else MegabenchError.
    ``cpu`` is accepted without importing torch (the CPU path of a run never needs it)."""
    if device == "cpu":
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise MegabenchError(f"--device {device!r}: not a device torch knows; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MegabenchError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MegabenchError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise MegabenchError(f"--device {device}: megaface runs on cpu or cuda devices")


def distractor_membership(spec: MegafaceSpec, opts: MegafaceOptions, store_paths: list[str],
                          source: str) -> tuple[Membership, dict[str, str]]:
    """Sizes and store rows per size: from the devkit lists when given, else nested seeded subsets.

    Returns (membership, ``{list file name: sha256}``; empty without lists).
    """
    from megabench.data.megaface_io import distractor_list_files, read_distractor_list

    if opts.distractor_lists is None:
        want = sorted(opts.sizes or spec.sizes)
        n = len(store_paths)
        fit = [s for s in want if s <= n]
        if len(fit) < len(want):
            warnings.warn(f"{source}: only {n} distractors; sizes {[s for s in want if s > n]} skipped",
                          stacklevel=3)
        if not fit:
            raise DataError(f"{source}: {n} distractors, fewer than the smallest size {want[0]}")
        return membership_from_seed(n, fit, opts.seed), {}
    files = distractor_list_files(opts.distractor_lists, opts.list_set)
    if opts.sizes:
        files = {s: f for s, f in files.items() if s in opts.sizes}
        if not files:
            raise DataError(f"{opts.distractor_lists}: no lists for the sizes {list(opts.sizes)}; sizes present: "
                            f"{sorted(distractor_list_files(opts.distractor_lists, opts.list_set))}")
    lists = {s: read_distractor_list(f) for s, f in files.items()}
    for s, f in files.items():
        if len(lists[s]) != s:
            raise DataError(f"{f}: the name says {s} distractors but the list holds {len(lists[s])} paths; "
                            "fix or rename the list (the size in the name is the size reported)")
    sha = {f.name: _sha_or_none(f) for f in files.values()}
    return membership_from_lists(store_paths, lists, str(opts.distractor_lists)), sha


@dataclass
class NoiseMatch:
    """Which probes (``noisy_probe`` (n_probes,) bool) and distractor store rows (``noisy_dist`` (n_store,)
    bool, only rows of some size) the noise lists name; ``report`` goes into the result's ``noise``."""

    noisy_probe: np.ndarray
    noisy_dist: np.ndarray
    report: dict[str, Any]


def match_noise(spec: MegafaceSpec, opts: MegafaceOptions, probe_paths: list[str], store_paths: list[str],
                membership: Membership) -> NoiseMatch:
    """Read the noise lists (unless ``refine == "none"``) and mark the probes / used distractors they name
    (docs/megaface.md §4)."""
    from megabench.data.megaface_io import match_facescrub_noise, match_megaface_noise, read_noise_list

    noisy_probe = np.zeros(len(probe_paths), bool)
    noisy_dist = np.zeros(len(store_paths), bool)
    if opts.refine == "none":
        return NoiseMatch(noisy_probe, noisy_dist, {})
    fs_path, mf_path = opts.noise_paths(spec)
    fs_list, mf_list = read_noise_list(fs_path), read_noise_list(mf_path, tab_field=True)
    noisy_probe, fs_matched = match_facescrub_noise(probe_paths, fs_list)
    used = np.flatnonzero(membership.row_class >= 0)
    m_used, mf_matched = match_megaface_noise(store_paths if used.size == len(store_paths)
                                              else [store_paths[i] for i in used], mf_list)
    noisy_dist[used[m_used]] = True
    for what, matched, lst, p in (("facescrub", fs_matched, fs_list, fs_path),
                                  ("megaface", mf_matched, mf_list, mf_path)):
        if matched == 0:
            warnings.warn(f"{p}: none of its {len(lst)} entries matched the {what} images in use; check that the "
                          "lists and noise list come from the same data", NoiseMatchWarning, stacklevel=3)
    report = {"facescrub_matched": fs_matched, "megaface_matched": mf_matched,
              "facescrub_entries": len(fs_list), "megaface_entries": len(mf_list),
              "n_noisy_probes": int(noisy_probe.sum()), "n_noisy_distractors": int(noisy_dist.sum()),
              "lists_sha256": {"facescrub": _sha_or_none(fs_path), "megaface": _sha_or_none(mf_path)},
              "files": {"facescrub": str(fs_path), "megaface": str(mf_path)},
              "attribution": spec.attribution}
    return NoiseMatch(noisy_probe, noisy_dist, report)


#: distractor rows scored against every probe to place the dense / candidate split (and check overlap)
SAMPLE_ROWS = 2048


def sample_rows(membership: Membership) -> np.ndarray:
    """The store rows of :func:`impostor_sample`: the first ``SAMPLE_ROWS`` used ones (sorted int64)."""
    return np.sort(np.flatnonzero(membership.row_class >= 0)[:SAMPLE_ROWS])


def impostor_sample(store, membership: Membership | None, probes: Probes, rows: np.ndarray | None = None) -> np.ndarray:
    """Scores (m, n_probes) of the first ``SAMPLE_ROWS`` used distractor rows (or of ``rows``) against the probes."""
    from megabench.metrics.search import normalize_block

    first = sample_rows(membership) if rows is None else rows
    if not first.size:
        return np.empty((0, probes.features.shape[0]), np.float32)
    xs = normalize_block(store.read(rows=first), source=str(store.path), rows=first, inplace=True)
    return xs @ probes.features.T


#: a sampled distractor row scoring at least this with some probe is that probe's copy
SAME_ROW_SCORE = 1.0 - 1e-6
#: more than this fraction of copies among the sampled distractors: the probe set given as distractors
MAX_COPY_FRACTION = 0.5


def check_overlap(probes: Probes, store_paths: list[str], membership: Membership, sample_scores: np.ndarray,
                  source: str) -> None:
    """Refuse distractors that are the probes: a used distractor path equal to a probe path, or most of the
    sampled distractor rows identical to some probe (score >= SAME_ROW_SCORE). A few copies are real MegaFace
    noise (the noise lists name them) and pass."""
    refuse_shared_paths(probes.paths, store_paths, membership, source)
    refuse_probe_copies(sample_scores, source)


def refuse_shared_paths(probe_paths: list[str], store_paths: list[str], membership: Membership, source: str) -> None:
    """:class:`DataError` when a used distractor path is a probe path (the paths half of :func:`check_overlap`)."""
    both = set(probe_paths).intersection(store_paths)  # a C loop over the store's paths
    used = {p for i, p in enumerate(store_paths) if p in both and membership.row_class[i] >= 0} if both else set()
    shared = [p for p in probe_paths if p in used]
    if shared:
        raise DataError(f"{source}: {len(shared)} distractor path(s) are probe paths (first: {shared[:3]}); the "
                        "probe store was probably given as --distractors: pass the MegaFace distractor store")


def refuse_probe_copies(sample_scores: np.ndarray, source: str) -> None:
    """:class:`DataError` when most sampled distractor rows are copies of probes (the scores half of
    :func:`check_overlap`)."""
    if sample_scores.shape[0] >= 10:
        copies = float((sample_scores.max(axis=1) >= SAME_ROW_SCORE).mean())
        if copies > MAX_COPY_FRACTION:
            raise DataError(f"{source}: {copies:.0%} of {sample_scores.shape[0]} sampled distractors are identical "
                            "to probes; the probe features were probably given as --distractors: pass the MegaFace "
                            "distractor store")


def distractor_tables(spec: MegafaceSpec, opts: MegafaceOptions, probe_paths: list[str] | Callable[[], list[str]],
                      store=None) -> tuple[Membership, dict[str, str], NoiseMatch]:
    """Everything the distractor store's ``paths`` decide, in this order: membership (+ the lists' sha256),
    no used distractor path a probe path (:func:`refuse_shared_paths`), the noise flags (:func:`match_noise`).

    ``probe_paths``: the list, or a function returning it (called once membership is known). ``store``: the
    open distractor store, or None to open ``opts.distractors`` here (the child process of
    :class:`~megabench.evaluation.megaface_tables.BackgroundTables` does so).
    """
    from megabench.data.megaface_io import open_store

    source = str(opts.distractors)
    if store is None:
        with open_store(opts.distractors, "--distractors") as own:
            store_paths = own.paths()
    else:
        store_paths = store.paths()
    membership, lists_sha = distractor_membership(spec, opts, store_paths, source)
    if callable(probe_paths):
        probe_paths = probe_paths()
    refuse_shared_paths(probe_paths, store_paths, membership, source)
    noise = match_noise(spec, opts, probe_paths, store_paths, membership)
    return membership, lists_sha, noise


@dataclass
class MegafaceInputs:
    """Everything read before the pass: probes, the open distractor store, membership, noise, a sample,
    and the distractor store's sha256 (hashed in a child process while the rest was read:
    :meth:`distractors_sha256`)."""

    probes: Probes
    store: Any  # an open FeatureStore (close with :meth:`close`)
    membership: Membership
    lists_sha: dict[str, str]
    noise: NoiseMatch
    sample_scores: np.ndarray
    store_hash: Any  # megabench.fileio.BackgroundSha256 of the store file
    stack: Stack | None = None  # built while the tables child worked (:func:`prepare_stack` returns it)

    def distractors_sha256(self) -> str:
        return self.store_hash.result()

    def close(self) -> None:
        self.store_hash.cancel()
        self.store.close()


def load_inputs(spec: MegafaceSpec, opts: MegafaceOptions) -> MegafaceInputs:
    """Read and cross-check the inputs of a run (``opts`` resolved); the caller closes the store.

    Beside this process, a child hashes the distractor store (unless its digest is remembered) and, for a
    store of at least ``TABLES_CHILD_MIN_ROWS`` rows, another computes :func:`distractor_tables` while this
    one loads the fused kernel's compiled code (:func:`warm_kernels`): the same results as in-process.
    """
    from megabench.data.megaface_io import open_store
    from megabench.evaluation.megaface_tables import BackgroundTables, wants_child
    from megabench.fileio import BackgroundSha256
    from megabench.metrics.streaming import resolve_kernel

    store_hash = BackgroundSha256(opts.distractors)  # the largest input: hashed while the rest is read
    tables = BackgroundTables(spec, opts) if wants_child(opts.distractors) else None
    store = None
    try:
        resolve_kernel(opts.kernel, opts.device)  # fused without numba: refused before any reading
        probes = load_probes(opts.probes, opts.probe_list)
        if tables is not None:
            tables.send_probe_paths(probes.paths)
        store = open_store(opts.distractors, "--distractors")
        if store.dim != probes.features.shape[1]:
            raise DataError(f"{opts.distractors}: distractor features have dimension {store.dim} but the probes "
                            f"({opts.probes}) have {probes.features.shape[1]}; extract both with the same model")
        _warn_if_models_differ(probes.meta, store.meta, str(opts.probes), str(opts.distractors))
        early = None
        if tables is not None:
            early = _early_stack(spec, opts, store, probes)
            warm_kernels(spec, opts)
            membership, lists_sha, noise = tables.result()
        else:
            membership, lists_sha, noise = distractor_tables(spec, opts, probes.paths, store)
        rows = sample_rows(membership)
        if early is not None and np.array_equal(early[0], rows) and np.array_equal(early[1], noise.noisy_probe):
            sample, stack = early[2], early[3]
        else:  # no early stack, or built on rows / noisy probes that the tables did not confirm
            sample, stack = impostor_sample(store, membership, probes, rows), None
        refuse_probe_copies(sample, str(opts.distractors))
    except BaseException:
        if tables is not None:
            tables.cancel()
        store_hash.cancel()
        if store is not None:
            store.close()
        raise
    return MegafaceInputs(probes, store, membership, lists_sha, noise, sample, store_hash, stack)


def _early_stack(spec: MegafaceSpec, opts: MegafaceOptions, store, probes: Probes):
    """While the tables child works: the stack built on a guess of its inputs -- the first ``SAMPLE_ROWS``
    store rows as the sample (they are the sample whenever they are all in use, as with the devkit lists of
    a store converted from them) and the FaceScrub noise flags matched here. Returns ``(rows, noisy_probe,
    sample, stack)``, kept only if the tables confirm both; None where building it fails (the errors come
    in their usual order from the path that rebuilds it)."""
    from megabench.data.megaface_io import match_facescrub_noise, read_noise_list

    try:
        noisy = np.zeros(len(probes.paths), bool)
        if opts.refine != "none":
            noisy = match_facescrub_noise(probes.paths, read_noise_list(opts.noise_paths(spec)[0]))[0]
        rows = np.arange(min(SAMPLE_ROWS, store.n), dtype=np.int64)
        sample = impostor_sample(store, None, probes, rows)
        stack = _run_stack(opts, probes, noisy, sample)
    except DataError:
        return None
    return rows, noisy, sample, stack


def warm_kernels(spec: MegafaceSpec, opts: MegafaceOptions) -> None:
    """Load the fused kernel's compiled functions from numba's cache (~0.45 s the first time in a process),
    through one update of a tiny accumulator built as a run builds its own, so that every argument has the
    type of the run's. Nothing for the torch kernel."""
    from megabench.metrics.streaming import resolve_kernel

    if resolve_kernel(opts.kernel, opts.device) != "fused":
        return
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    noisy_probe = np.arange(6) == 5
    stack = build_stack(Probes(x, np.repeat(np.arange(2), 3), [str(i) for i in range(6)]), noisy_probe,
                        opts.refine or "insightface", cut=0.0)
    acc = make_accumulator(stack.plans, 2, 4, spec, replace(opts, device="cpu"))
    d = rng.standard_normal((16, 8)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    acc.update(np.ascontiguousarray(d @ stack.vectors.T), np.arange(16) % 2, np.arange(16) % 5 == 0)
    acc.flush()


def run_fingerprint(spec: MegafaceSpec, opts: MegafaceOptions, inputs: MegafaceInputs, stack: Stack, k: int,
                    world: int) -> tuple[str, dict[str, Any]]:
    """sha256 over everything that changes the accumulator state; returns (hex, the hashed dict)."""
    src = {"probes": _sha_or_none(opts.probes), "distractors": inputs.distractors_sha256(),
           "probe_list": _sha_or_none(opts.probe_list), "distractor_lists": inputs.lists_sha,
           "noise": inputs.noise.report.get("lists_sha256"), "spec": spec.sha256 or repr(spec),
           "sizes": inputs.membership.sizes, "membership": inputs.membership.source, "seed": opts.seed,
           "refine": opts.refine, "ties": opts.ties, "jitter_seed": opts.jitter_seed,
           "block_rows": opts.block_rows, "k": k, "hist_bins": spec.hist_bins, "backend": opts.backend,
           "device": opts.device.split(":")[0], "allow_singletons": opts.allow_singletons,
           "world": world, "dense_cut": stack.info["dense_cut"]}
    if opts.jitter_seed is not None:
        src["jitter_on"] = "sum"  # states of the old mean-jitter refinement never resume into this one
    return hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest(), src


def topk_size(spec: MegafaceSpec, n_probes: int, n_distractors: int) -> int:
    """K of the exact top-K impostor buffer: ``max(topk_min, ceil(topk_fraction * probes * distractors))``."""
    return max(spec.topk_min, math.ceil(spec.topk_fraction * n_probes * n_distractors))


def make_accumulator(plans: list, n_classes: int, k: int, spec: MegafaceSpec, opts: MegafaceOptions):
    """A fresh :class:`~megabench.metrics.streaming.MegafaceAccumulator` with the run's kernel and device."""
    from megabench.metrics.streaming import HistSpec, MegafaceAccumulator

    return MegafaceAccumulator(plans, n_classes, k, HistSpec(spec.hist_bins), kernel=opts.kernel,
                               device=opts.device)


# --- the stream -------------------------------------------------------------------------------------
def schedule_blocks(n_rows: int, block_rows: int, rank: int = 0, world: int = 1) -> list[int]:
    """The blocks (``rows b*block_rows : (b+1)*block_rows``) one rank streams: ``b % world == rank``
    (docs/megaface.md §7)."""
    n_blocks = -(-n_rows // block_rows)
    return [b for b in range(n_blocks) if b % world == rank]


def read_block(b: int, inputs: MegafaceInputs, block_rows: int, backend):
    """Read and normalise the used rows (class >= 0) of distractor block ``b``.

    Returns ``(xt, cls, noisy, lo, hi)`` (``xt``: the backend's normalised ``(n_used, dim)`` block, ``cls``/
    ``noisy``: their classes and noise flags, store rows ``lo:hi``), or None when no row of the block is used.
    Reads only ``inputs`` and ``backend``: safe in the one prefetch thread while the caller scores another block.
    """
    from megabench.metrics.search import normalize_block

    store, source = inputs.store, str(inputs.store.path)
    lo, hi = b * block_rows, min(store.n, (b + 1) * block_rows)
    cls, noisy = inputs.membership.row_class[lo:hi], inputs.noise.noisy_dist[lo:hi]
    used = np.flatnonzero(cls >= 0)
    if used.size == 0:
        return None
    x = store.read(rows=slice(lo, hi))
    if used.size < cls.size:
        x, cls, noisy = x[used], cls[used], noisy[used]
    xt = normalize_block(backend.to_device(x), source=source, rows=lo + used, inplace=True)
    return xt, cls, noisy, lo, hi


def score_read(block, source: str, backend, acc) -> None:
    """Score one :func:`read_block` result (None: nothing) and add it to ``acc`` (in store order: the
    accumulator orders rows as its kernel needs)."""
    if block is None:
        return
    xt, cls, noisy, lo, hi = block
    S = backend.scores(xt)
    try:
        acc.update(S, cls, noisy)
    except ValueError as exc:
        raise DataError(f"{source} rows {lo}:{hi}: {exc}") from None


def score_block(b: int, inputs: MegafaceInputs, block_rows: int, backend, acc) -> None:
    """Read, normalise and score the used rows (class >= 0) of distractor block ``b`` and add them to ``acc``."""
    score_read(read_block(b, inputs, block_rows, backend), str(inputs.store.path), backend, acc)


class BlockPrefetcher:
    """``get(b)`` returns ``read(b)``; with ``prefetch`` it also starts ``read`` of the block after ``b`` in
    ``order`` in one worker thread, so the next block's read + normalisation overlaps the caller's GEMM and
    accumulator update (both release the GIL). At most one block is read ahead; reads run one at a time in
    ``order`` whatever the caller does. An exception of ``read`` is raised unchanged by the ``get`` of its
    block. Use as a context manager: leaving it cancels / waits for the read ahead."""

    def __init__(self, order: list[int], read, prefetch: bool = True) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._after = dict(zip(order, order[1:], strict=False))
        self._read = read
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="megaface-read") if prefetch else None
        self._ahead: dict[int, Any] = {}

    def get(self, b: int):
        if self._pool is None:
            return self._read(b)
        future = self._ahead.pop(b, None) or self._pool.submit(self._read, b)
        nxt = self._after.get(b)
        if nxt is not None and nxt not in self._ahead:
            self._ahead[nxt] = self._pool.submit(self._read, nxt)
        return future.result()

    def close(self) -> None:
        if self._pool is not None:
            for future in self._ahead.values():
                future.cancel()
            self._ahead.clear()
            self._pool.shutdown(wait=True)

    def __enter__(self) -> BlockPrefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stream_blocks(todo: list[int], process, *, done: list[int], save=None, max_blocks: int | None = None,
                  checkpoint_seconds: float = 30.0, on_block=None, where: str = "") -> list[int]:
    """Run ``process(b)`` for every block of ``todo``; returns ``done`` (extended in place).

    ``save(done)`` is called after a block when ``checkpoint_seconds`` have passed since the last save;
    after ``max_blocks`` blocks the state is saved and :class:`MegabenchError` raised (an interruption).
    """
    last_save = time.perf_counter()
    for count, b in enumerate(todo):
        if max_blocks is not None and count >= max_blocks:
            if save is not None:
                save(done)
            raise MegabenchError(f"stopped after {max_blocks} blocks (max_blocks); state in {where}; "
                                 "run again with --resume")
        process(b)
        done.append(b)
        if save is not None and time.perf_counter() - last_save >= checkpoint_seconds:
            save(done)
            last_save = time.perf_counter()
        if on_block is not None:
            on_block()
    return done


def stream_pass(inputs: MegafaceInputs, stack: Stack, acc, opts: MegafaceOptions, info, fingerprint: str,
                echo) -> None:
    """The pass over this rank's distractor blocks, resuming from / checkpointing to its state file."""
    from tqdm import tqdm

    from megabench.metrics.search import make_backend

    mine = schedule_blocks(inputs.store.n, opts.block_rows, info.rank, info.world)
    state = ResumeState(rank_state_path(opts.state, info.rank, info.world), fingerprint) if opts.state else None
    if state is not None:
        remove_state_temporaries(state.path)
    done: list[int] = []
    if opts.resume and state is not None and state.path.exists():
        done = state.load(acc)
        if info.is_main:
            echo(f"resuming from {state.path}: {len(done)} of {len(mine)} blocks done")
    elif state is not None:
        state.check_overwrite()
    finished = set(done)
    todo = [b for b in mine if b not in finished]
    be = make_backend(opts.backend, stack.vectors, opts.device)
    bar = tqdm(total=len(mine), initial=len(done), unit="block", desc="megaface",
               disable=not (opts.progress and info.is_main))
    source = str(inputs.store.path)
    try:
        with BlockPrefetcher(todo, lambda b: read_block(b, inputs, opts.block_rows, be), opts.prefetch) as reader:
            stream_blocks(todo, lambda b: score_read(reader.get(b), source, be, acc), done=done,
                          save=(lambda d: state.save(d, acc)) if state is not None else None,
                          max_blocks=opts.max_blocks, checkpoint_seconds=opts.checkpoint_seconds,
                          on_block=lambda: bar.update(1), where=str(state.path) if state else "nowhere")
    finally:
        bar.close()
    if opts.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# --- gather -----------------------------------------------------------------------------------------
def gather_accumulators(acc, new_accumulator, info):
    """Merge every rank's accumulator on rank 0 (in rank order); None on the other ranks (docs/megaface.md §7).

    ``new_accumulator()`` makes an empty accumulator of the same plans. One process: ``acc`` itself.
    """
    if info.world <= 1:
        return acc
    from megabench.engine.distributed import all_gather_arrays

    gathered = all_gather_arrays(acc.state_arrays(), info)
    if not info.is_main:
        return None
    total = new_accumulator()
    for arrays in gathered:
        part = new_accumulator()
        part.load_state_arrays(arrays)
        total.merge(part)
    return total


# --- result -----------------------------------------------------------------------------------------
def assemble_result(spec: MegafaceSpec, opts: MegafaceOptions, inputs: MegafaceInputs, stack: Stack,
                    variants: dict, fp: tuple[str, dict], k: int, world: int, timings: dict,
                    kernel_used: str = "") -> dict[str, Any]:
    """The result dict (kind ``"megaface"``; see the module docstring) with provenance."""
    from megabench.results import new_result

    fingerprint, src = fp
    probes, mem = inputs.probes, inputs.membership
    return new_result(
        "megaface",
        device=opts.device,
        model={"name": probes.meta.model or None, "checkpoint_sha256": probes.meta.checkpoint_sha256 or None,
               "preprocessing": probes.meta.preprocessing},
        protocol={"name": spec.name, "version": spec.version, "sha256": spec.sha256, "source": spec.source,
                  "variant": {"refine": opts.refine, "ties": opts.ties, "jitter_seed": opts.jitter_seed},
                  "genuine_pairs": "unordered i<j (verification); ordered i!=j (identification)",
                  "roc": "exact where `exact` is true (top-K impostors), histogram-resolved elsewhere"},
        input={"probes": {"path": str(opts.probes), "sha256": src["probes"], "n": len(probes.paths)},
               "distractors": {"path": str(opts.distractors), "sha256": src["distractors"],
                               "n_store": inputs.store.n},
               "probe_list": {"path": str(opts.probe_list) if opts.probe_list else None,
                              "sha256": src["probe_list"]},
               "distractor_lists": {"path": str(opts.distractor_lists) if opts.distractor_lists else None,
                                    "sha256": inputs.lists_sha, "membership": mem.source},
               "sizes": mem.sizes, "seed": opts.seed if mem.source != "lists" else None,
               "backend": opts.backend, "kernel": {"requested": opts.kernel, "used": kernel_used},
               "block_rows": opts.block_rows, "topk": k,
               "hist_bins": spec.hist_bins, "world_size": world, "fingerprint": fingerprint,
               "skipped_singletons": stack.info["skipped_singletons"]},
        variants=variants,
        noise=inputs.noise.report,
        timings=timings,
    )


# --- outputs never over inputs ---------------------------------------------------------------------
def check_outputs(spec: MegafaceSpec, opts: MegafaceOptions, *, out: PathArg = None, devkit_json: PathArg = None,
                  force: bool = False) -> None:
    """Before any work: no output (``out``, ``opts.state``, ``devkit_json``) is an input of the run or another
    output; each can be written; ``state`` is absent or a megabench resume state (``force`` never changes
    that); an existing ``out`` is replaced only when it is a megabench result, or with ``force``."""
    from megabench.fileio import check_output, check_output_dir, same_file
    from megabench.results import is_result_file

    inputs = opts.input_files(spec)
    outputs = {k: v for k, v in (("--out", out), ("--state", opts.state), ("--devkit-json", devkit_json))
               if v is not None}
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if same_file(outputs[a], outputs[b]):
                raise MegabenchError(f"{outputs[a]}: {a} and {b} name the same path; give them different paths")
    if out is not None:
        check_output(out, inputs=inputs.values(), force=force, replaceable=is_result_file, option="--out")
    if devkit_json is not None:
        hit = [k for k, v in inputs.items() if same_file(devkit_json, v)]
        if hit:
            raise MegabenchError(f"{devkit_json}: --devkit-json is the run's input {hit[0]}; choose another folder")
        check_output_dir(devkit_json, [], inputs=inputs.values(), option="--devkit-json")
    if opts.state is not None:
        if any(same_file(opts.state, v) for v in inputs.values()):
            raise MegabenchError(f"{opts.state}: --state is an input of this run; choose another --state")
        check_state_target(opts.state)
        check_output(opts.state, inputs=inputs.values(), replaceable=lambda p: state_marker(p) is not None,
                     option="--state")


# --- the run ----------------------------------------------------------------------------------------
def prepare_stack(spec: MegafaceSpec, opts: MegafaceOptions, inputs: MegafaceInputs) -> Stack:
    """The probe stack and variant plans of a run (see :func:`build_stack`; the one :func:`load_inputs` built
    while the tables child worked, when it did)."""
    if inputs.stack is not None:
        return inputs.stack
    return _run_stack(opts, inputs.probes, inputs.noise.noisy_probe, inputs.sample_scores)


def _run_stack(opts: MegafaceOptions, probes: Probes, noisy_probe: np.ndarray, sample_scores: np.ndarray) -> Stack:
    """:func:`build_stack` with the run's options (the sample places the dense cut unless ``--dense-cut``)."""
    return build_stack(probes, noisy_probe, opts.refine, jitter_seed=opts.jitter_seed,
                       allow_singletons=opts.allow_singletons, source=str(opts.probes), cut=opts.dense_cut,
                       sample_scores=sample_scores if opts.dense_cut is None else None)


def run_megaface(spec: MegafaceSpec, options: MegafaceOptions, *, dist_info=None, echo=None) -> dict[str, Any] | None:
    """Run the protocol; returns the result dict on rank 0 (None on the other ranks).

    ``dist_info``: :class:`~megabench.engine.distributed.DistInfo` (default: one process): rank ``r`` streams
    the blocks ``b % world == r`` and rank 0 merges. ``echo``: where the one-line notices go (default print).
    """
    from megabench.engine.distributed import DistInfo

    info = dist_info or DistInfo()
    echo = echo or print
    opts = options.resolved(spec)
    if opts.probes is None or opts.distractors is None:
        raise MegabenchError("megaface needs --probes and --distractors feature stores (or --synthetic N)")
    check_device(opts.device)
    if opts.state is not None:
        check_state_target(rank_state_path(opts.state, info.rank, info.world))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    inputs = load_inputs(spec, opts)
    try:
        if inputs.noise.report and info.is_main:
            echo(spec.attribution)
        stack = prepare_stack(spec, opts, inputs)
        mem = inputs.membership
        k = topk_size(spec, max(p.cols.size for p in stack.plans), int((mem.row_class >= 0).sum()))

        def new_accumulator():
            return make_accumulator(stack.plans, mem.n_classes, k, spec, opts)

        acc = new_accumulator()
        fp = run_fingerprint(spec, opts, inputs, stack, k, info.world)
        timings["load"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        stream_pass(inputs, stack, acc, opts, info, fp[0], echo)
        timings["stream"] = time.perf_counter() - t1
    finally:
        inputs.close()
    acc = gather_accumulators(acc, new_accumulator, info)
    if acc is None:
        return None
    t2 = time.perf_counter()
    variants = {p.name: compute_variant(acc, p, mem, spec, opts.ties, inputs.noise.noisy_dist) for p in stack.plans}
    timings["compute"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    return assemble_result(spec, opts, inputs, stack, variants, fp, k, info.world, timings, acc.kernel_name)


def compute_variant(acc, plan, mem: Membership, spec: MegafaceSpec, ties: str, noisy_dist: np.ndarray) -> dict:
    """Per-size identification and verification numbers of one variant (see module docstring)."""
    from megabench.metrics.identification import (
        ImpostorSummary,
        cmc_from_ranks,
        cmc_ranks,
        devkit_reading,
        roc_curve_points,
        tar_at_far,
    )

    hs = acc.hist_spec
    out: dict[str, Any] = {"n_trials": plan.n_trials, "n_genuine_pairs": int(plan.genuine_pairs.size),
                           "n_probes": int(plan.cols.size), "noise_mode": plan.noise_mode, "sizes": {}}
    for si, size in enumerate(mem.sizes):
        classes = mem.classes_of(si)
        view = acc.size_view(plan.name, classes)
        ranks = view["count_ge"] - (view["count_eq"] if ties == "optimistic" else 0)
        in_size = np.isin(mem.row_class, classes)
        n_noisy = int((noisy_dist & in_size).sum())
        n_d = int(size) - (n_noisy if plan.noise_mode == "drop" else 0)
        ks = cmc_ranks(n_d)
        rates = cmc_from_ranks(ranks, ks) if ranks.size else np.full(ks.shape, np.nan)
        uniq, cnt = np.unique(ranks, return_counts=True)
        imp = ImpostorSummary(view["top"], view["n_imp"], view["hist"], hs.lo, hs.width)
        far_key = {f: f"{f:.0e}" for f in spec.far_targets}
        tar = {far_key[f]: tar_at_far(imp, plan.genuine_pairs, f).to_dict() for f in spec.far_targets}
        dk = {far_key[f]: devkit_reading(imp, plan.genuine_pairs, f).to_dict() for f in spec.far_targets}
        out["sizes"][str(size)] = {
            "rank1": float(rates[0]) if ranks.size else math.nan,
            "cmc": {"ranks": ks.tolist(), "rates": rates.tolist(),
                    "note": "CMC(k) = fraction of trials with 0-based rank < k"},
            "ties": int((view["count_eq"] > 0).sum()),
            "n_trials": int(ranks.size),
            "n_distractors": n_d,
            "n_noisy_distractors": n_noisy,
            "rank_histogram": {"rank": uniq.tolist(), "count": cnt.tolist()},
            "verification": {"tar_at_far": tar,
                             "devkit_reading": dk,
                             "devkit_reading_note": "first ROC point with FPR > target (score >= threshold)",
                             "roc": roc_curve_points(imp, plan.genuine_pairs).to_dict(),
                             "n_impostors": int(imp.n), "n_genuine": int(plan.genuine_pairs.size),
                             "topk_kept": int(imp.top.size)},
        }
    return out


# --- outputs ----------------------------------------------------------------------------------------
def write_devkit_json(result: dict, folder: str | os.PathLike, alg: str = "megabench") -> list[Path]:
    """Write ``<folder>/<variant>/cmc_facescrub_megaface_<alg>_<size>_1.json`` files.

    ``cmc`` = ``[[0-based ranks], [rates]]`` (rate at rank r = CMC(r + 1)); ``roc`` = ``[[fpr], [tpr]]``.
    """
    from megabench.fileio import atomic_write_json

    written = []
    for vname, v in result["variants"].items():
        for size, s in v["sizes"].items():
            cmc = [[k - 1 for k in s["cmc"]["ranks"]], s["cmc"]["rates"]]
            roc = s["verification"]["roc"]
            p = Path(folder) / vname / f"cmc_facescrub_megaface_{alg}_{size}_1.json"
            written.append(atomic_write_json(p, {"cmc": cmc, "roc": [roc["fpr"], roc["tpr"]]}))
    return written


def format_table(result: dict) -> str:
    """Side-by-side table: sizes x {rank-1, TAR@1e-6} x {raw, refined} (percent)."""
    variants = result["variants"]
    names = [n for n in ("raw", "refined") if n in variants]
    head = f"{'distractors':>12} " + " ".join(f"{'rank-1 ' + n:>15}" for n in names) + " " + \
        " ".join(f"{'TAR@1e-6 ' + n:>17}" for n in names)
    lines = [head, "-" * len(head)]
    for size in variants["raw"]["sizes"]:
        r1 = [variants[n]["sizes"][size]["rank1"] for n in names]
        tr = [variants[n]["sizes"][size]["verification"]["tar_at_far"].get("1e-06", {}).get("tar", math.nan)
              for n in names]
        lines.append(f"{int(size):>12,} " + " ".join(f"{100 * v:>14.3f}%" for v in r1) + " " +
                     " ".join(f"{100 * v:>16.3f}%" for v in tr))
    if result.get("noise"):
        nz = result["noise"]
        lines.append(f"noise lists matched: facescrub {nz['facescrub_matched']}, megaface {nz['megaface_matched']}; "
                     f"refine = {result['protocol']['variant']['refine']}")
    return "\n".join(lines)
