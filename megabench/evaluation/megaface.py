"""MegaFace Challenge 1 (FaceScrub probes), raw and refined, in one streaming pass (PROTOCOLS.md §2).

:func:`run_megaface` takes a :class:`MegafaceSpec` (``protocols/megaface_c1.toml``), a probe feature store
and a distractor feature store (HDF5, :mod:`megabench.data.feature_store`), optional devkit lists and noise
lists, and returns a result dict (kind ``"megaface"``)::

    variants.<raw|refined>.sizes["<n>"] = {rank1, cmc{ranks, rates}, ties, n_trials, n_distractors,
        rank_histogram{rank, count}, verification{tar_at_far{"1e-06": {tar, threshold, far, n_impostors,
        n_genuine, ci95, k, exact}, ...}, devkit_reading{...}, roc{fpr, tpr, threshold, exact}}}
    noise{facescrub_matched, megaface_matched, lists_sha256, n_noisy_probes, n_noisy_distractors}

Definitions
- Identification: every ordered same-identity probe pair (i, j), i != j: probe x_j, gallery {x_i} + D;
  rank = #{d in D: s(x_j, d) >= s(x_j, x_i)} (0-based; ``ties = "optimistic"`` uses ``>``).
- Verification genuine pairs: the *unordered* same-identity probe pairs i < j (as the devkit), score
  ``s(x_i, x_j)``; impostors: every probe x every distractor of the size (N = probes x |D|).
- Refinement (``refine``): ``insightface`` (noisy distractor scores -inf, kept in D and N; noisy probe
  replaced by the L2-normalised mean of its identity's clean features, optional ``jitter_seed`` adds
  uniform +-0.001 before normalising), ``facex`` (noisy distractor = zero vector, score 0; probes as
  insightface), ``drop`` (noisy probes and distractors removed), ``none``. Raw and refined share the GEMM.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from megabench.errors import DataError, MegabenchError

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
            raise ValueError(f"hist_bins must be >= 2**20 (PROTOCOLS.md), got {self.hist_bins}")
        if self.topk_min < 1 or not 1 <= self.block_rows < (1 << 24):
            raise ValueError("topk_min must be positive and block_rows in [1, 2**24)")

    def noise_path(self, which: str) -> Path:
        """Noise list path, relative to the spec file's folder (or the repo's protocols/)."""
        from megabench.config import REPO_ROOT

        rel = self.facescrub_noises if which == "facescrub" else self.megaface_noises
        base = Path(self.source).parent if self.source else REPO_ROOT / "protocols"
        return (base / rel) if not Path(rel).is_absolute() else Path(rel)


def load_default_spec() -> MegafaceSpec:
    from megabench.config import load_spec

    return load_spec("megaface_c1", kind="megaface")


# --- inputs -----------------------------------------------------------------------------------------
@dataclass
class Probes:
    features: np.ndarray  # (n, D) float32, L2-normalised
    labels: np.ndarray  # (n,) int64
    paths: list[str]
    meta: Any = None  # StoreMeta of the probe store (model, checkpoint, preprocessing)


def load_probes(store_path: str | os.PathLike, probe_list: str | os.PathLike | None = None) -> Probes:
    """Probe features in list order (or store order), L2-normalised; identities from the list or the store."""
    import torch

    from megabench.data.feature_store import open_features
    from megabench.data.megaface_io import read_probe_list
    from megabench.metrics.search import normalize_block

    with open_features(store_path) as fs:
        paths = fs.paths()
        x = fs.read()
        ids = fs.ids()
        meta = fs.meta
    if probe_list is not None:
        pl = read_probe_list(probe_list)
        index = {p: i for i, p in enumerate(paths)}
        missing = [p for p in pl.paths if p not in index]
        if missing:
            raise DataError(f"{store_path}: {len(missing)} of {len(pl.paths)} paths of {probe_list} have no feature "
                            f"(first: {missing[:5]}); extract them or convert the matio tree again")
        rows = np.array([index[p] for p in pl.paths], dtype=np.int64)
        x, paths, labels = x[rows], list(pl.paths), pl.labels()
    else:
        if ids is None:
            raise DataError(f"{store_path}: probe store has no `ids`; pass --probe-list facescrub_features_list.json")
        labels = ids
    xt = normalize_block(torch.from_numpy(np.ascontiguousarray(x)), source=str(store_path))
    return Probes(xt.numpy(), np.asarray(labels, np.int64), paths, meta)


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
    masks, inv = np.unique(bits, return_inverse=True)
    row_class = inv.astype(np.int64).reshape(-1)
    if masks[0] == 0:
        row_class -= 1
        masks = masks[1:]
    return Membership(sizes, row_class, masks.astype(np.int64), source)


def membership_from_lists(store_paths: list[str], lists: dict[int, list[str]], source: str) -> Membership:
    index = {p: i for i, p in enumerate(store_paths)}
    sizes = sorted(lists)
    rows = []
    for s in sizes:
        missing = [p for p in lists[s] if p not in index]
        if missing:
            raise DataError(f"{source}: {len(missing)} of {len(lists[s])} paths of the size-{s} list have no feature "
                            f"in the distractor store (first: {missing[:5]}); convert or extract them")
        r = np.array([index[p] for p in lists[s]], dtype=np.int64)
        if np.unique(r).size != r.size:
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
    import torch

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
            m = x[clean].astype(np.float64).mean(axis=0)
            if rng is not None:
                m = m + rng.uniform(-0.001, 0.001, size=m.shape)
            extra.append((m / np.linalg.norm(m)).astype(np.float32))
            refined_slots[i] = n + len(extra) - 1
        if extra:
            vectors.append(np.stack(extra))
    elif refine == "drop":
        refined_slots[noisy] = -1
    stack = np.ascontiguousarray(np.concatenate(vectors, axis=0))
    st = torch.from_numpy(stack)
    gram = (st @ st.T).numpy()
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
def _save_state(path: Path, fingerprint: str, blocks_done: list[int], acc) -> None:
    from megabench.fileio import atomic_path

    arrays = acc.state_arrays()
    arrays["__fingerprint__"] = np.frombuffer(fingerprint.encode(), dtype=np.uint8)
    arrays["__blocks__"] = np.asarray(sorted(blocks_done), dtype=np.int64)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k.replace("/", "|"): v for k, v in arrays.items()})


def _load_state(path: Path, fingerprint: str, acc) -> list[int]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k.replace("|", "/"): z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable resume state ({exc}); delete it to start afresh") from None
    found = bytes(arrays.pop("__fingerprint__", np.empty(0, np.uint8))).decode(errors="replace")
    if found != fingerprint:
        raise DataError(f"{path}: resume state belongs to different inputs or options (fingerprint {found[:12]} != "
                        f"{fingerprint[:12]}); delete it or point --state elsewhere")
    blocks = arrays.pop("__blocks__").tolist()
    acc.load_state_arrays(arrays)
    return blocks


# --- the run ----------------------------------------------------------------------------------------
def _sha_or_none(path: str | os.PathLike | None) -> str | None:
    from megabench.fileio import sha256_file

    return sha256_file(path) if path else None


def run_megaface(
    spec: MegafaceSpec,
    probes_path: str | os.PathLike,
    distractors_path: str | os.PathLike,
    *,
    probe_list: str | os.PathLike | None = None,
    distractor_lists: str | os.PathLike | None = None,
    list_set: int | None = None,
    sizes: list[int] | None = None,
    seed: int | None = None,
    refine: str | None = None,
    ties: str | None = None,
    facescrub_noises: str | os.PathLike | None = None,
    megaface_noises: str | os.PathLike | None = None,
    use_noise_lists: bool = True,
    jitter_seed: int | None = None,
    backend: str = "torch",
    device: str = "cpu",
    block_rows: int | None = None,
    state_path: str | os.PathLike | None = None,
    resume: bool = False,
    max_blocks: int | None = None,
    checkpoint_seconds: float = 30.0,
    allow_singletons: bool = False,
    dense_cut: float | None = None,
    progress: bool = True,
    dist_info=None,
    echo=print,
) -> dict[str, Any] | None:
    """Run the protocol; returns the result dict (on rank 0; None on other ranks).

    ``dense_cut``: genuine scores below it are counted densely (default: :func:`auto_cut`; any value gives
    the same numbers). ``max_blocks`` stops after that many blocks (with the state saved) and raises
    :class:`MegabenchError`: the interruption hook for resume tests.
    """
    import torch
    from tqdm import tqdm

    from megabench.data.feature_store import open_features
    from megabench.data.megaface_io import (
        distractor_list_files,
        match_facescrub_noise,
        match_megaface_noise,
        read_distractor_list,
        read_noise_list,
    )
    from megabench.engine.distributed import DistInfo, all_gather_arrays
    from megabench.metrics.search import make_backend, normalize_block
    from megabench.metrics.streaming import HistSpec, MegafaceAccumulator

    info = dist_info or DistInfo()
    refine = refine or spec.refine
    ties = ties or spec.ties
    seed = spec.seed if seed is None else seed
    block_rows = int(block_rows or spec.block_rows)
    if not 1 <= block_rows < (1 << 24):
        raise MegabenchError(f"block_rows must be in [1, 2**24), got {block_rows}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    probes = load_probes(probes_path, probe_list)
    ds = open_features(distractors_path)
    try:
        if ds.dim != probes.features.shape[1]:
            raise DataError(f"{distractors_path}: distractor features have dimension {ds.dim} but the probes "
                            f"({probes_path}) have {probes.features.shape[1]}; extract both with the same model")
        _warn_if_models_differ(probes.meta, ds.meta, str(probes_path), str(distractors_path))
        store_paths = ds.paths()
        lists_sha: dict[str, str] = {}
        if distractor_lists is not None:
            files = distractor_list_files(distractor_lists, list_set)
            if sizes:
                files = {s: f for s, f in files.items() if s in sizes}
                if not files:
                    raise DataError(f"{distractor_lists}: no lists for the sizes {sizes}; sizes present: "
                                    f"{sorted(distractor_list_files(distractor_lists, list_set))}")
            lists = {s: read_distractor_list(f) for s, f in files.items()}
            lists_sha = {f.name: _sha_or_none(f) for f in files.values()}
            mem = membership_from_lists(store_paths, lists, str(distractor_lists))
        else:
            want = sorted(sizes or spec.sizes)
            fit = [s for s in want if s <= ds.n]
            if len(fit) < len(want):
                warnings.warn(f"{distractors_path}: only {ds.n} distractors; sizes {[s for s in want if s > ds.n]} "
                              "skipped", stacklevel=2)
            if not fit:
                raise DataError(f"{distractors_path}: {ds.n} distractors, fewer than the smallest size {want[0]}")
            mem = membership_from_seed(ds.n, fit, seed)

        # noise lists
        noise: dict[str, Any] = {}
        noisy_probe = np.zeros(len(probes.paths), bool)
        noisy_dist = np.zeros(ds.n, bool)
        if refine != "none" and use_noise_lists:
            fs_path = Path(facescrub_noises) if facescrub_noises else spec.noise_path("facescrub")
            mf_path = Path(megaface_noises) if megaface_noises else spec.noise_path("megaface")
            fs_list, mf_list = read_noise_list(fs_path), read_noise_list(mf_path)
            noisy_probe, fs_matched = match_facescrub_noise(probes.paths, fs_list)
            used = np.flatnonzero(mem.row_class >= 0)
            m_used, mf_matched = match_megaface_noise([store_paths[i] for i in used], mf_list)
            noisy_dist[used[m_used]] = True
            for what, matched, lst, p in (("facescrub", fs_matched, fs_list, fs_path),
                                          ("megaface", mf_matched, mf_list, mf_path)):
                if matched == 0:
                    warnings.warn(f"{p}: none of its {len(lst)} entries matched the {what} images in use; "
                                  "check that the lists and noise list come from the same data", NoiseMatchWarning,
                                  stacklevel=2)
            noise = {"facescrub_matched": fs_matched, "megaface_matched": mf_matched,
                     "facescrub_entries": len(fs_list), "megaface_entries": len(mf_list),
                     "n_noisy_probes": int(noisy_probe.sum()), "n_noisy_distractors": int(noisy_dist.sum()),
                     "lists_sha256": {"facescrub": _sha_or_none(fs_path), "megaface": _sha_or_none(mf_path)},
                     "files": {"facescrub": str(fs_path), "megaface": str(mf_path)},
                     "attribution": spec.attribution}
            if info.is_main:
                echo(spec.attribution)
        elif refine != "none":
            refine = "none"

        sample_scores = None
        if dense_cut is None:  # a sample of impostor scores places the dense / candidate split
            first = np.flatnonzero(mem.row_class >= 0)[:2048]
            if first.size:
                xs = normalize_block(torch.from_numpy(ds.read(rows=np.sort(first))), source=str(distractors_path))
                sample_scores = (xs @ torch.from_numpy(probes.features).T).numpy()
        stack = build_stack(probes, noisy_probe, refine, jitter_seed=jitter_seed,
                            allow_singletons=allow_singletons, source=str(probes_path), cut=dense_cut,
                            sample_scores=sample_scores)
        n_max = int((mem.row_class >= 0).sum())
        n_probe_max = max(p.cols.size for p in stack.plans)
        k = max(spec.topk_min, math.ceil(spec.topk_fraction * n_probe_max * n_max))
        acc = MegafaceAccumulator(stack.plans, mem.n_classes, k, HistSpec(spec.hist_bins))
        be = make_backend(backend, stack.vectors, device)

        fp_src = {"probes": _sha_or_none(probes_path), "distractors": ds.sha256(),
                  "probe_list": _sha_or_none(probe_list), "distractor_lists": lists_sha,
                  "noise": noise.get("lists_sha256"), "spec": spec.sha256 or repr(spec), "sizes": mem.sizes,
                  "membership": mem.source, "seed": seed, "refine": refine, "ties": ties,
                  "jitter_seed": jitter_seed, "block_rows": block_rows, "k": k, "hist_bins": spec.hist_bins,
                  "backend": backend, "device": str(torch.device(device).type),
                  "allow_singletons": allow_singletons, "world": info.world,
                  "dense_cut": stack.info["dense_cut"]}
        fingerprint = hashlib.sha256(json.dumps(fp_src, sort_keys=True).encode()).hexdigest()
        timings["load"] = time.perf_counter() - t0

        n_blocks = -(-ds.n // block_rows)
        mine = [b for b in range(n_blocks) if b % info.world == info.rank]
        done: list[int] = []
        state = Path(state_path) if state_path else None
        if state is not None and info.world > 1:
            state = state.with_name(f"{state.name}.rank{info.rank}")
        if resume:
            if state is None:
                raise MegabenchError("--resume needs a state file (--state PATH or --out)")
            if state.exists():
                done = _load_state(state, fingerprint, acc)
                if info.is_main:
                    echo(f"resuming from {state}: {len(done)} of {len(mine)} blocks done")
        todo = [b for b in mine if b not in set(done)]

        t1 = last_save = time.perf_counter()
        bar = tqdm(total=len(mine), initial=len(done), unit="block", desc="megaface", disable=not progress)
        for count, b in enumerate(todo):
            if max_blocks is not None and count >= max_blocks:
                bar.close()
                raise MegabenchError(f"stopped after {max_blocks} blocks (max_blocks); state in {state}; "
                                     "run again with --resume")
            lo, hi = b * block_rows, min(ds.n, (b + 1) * block_rows)
            cls = mem.row_class[lo:hi]
            sort_key = cls * 2 + noisy_dist[lo:hi]
            if cls.min() < 0 or np.any(np.diff(sort_key) < 0):
                order = np.flatnonzero(cls >= 0)
                order = order[np.argsort(sort_key[order], kind="stable")]
            else:
                order = None
            if order is not None and order.size == 0:
                done.append(b)
                bar.update(1)
                continue
            x = ds.read(rows=slice(lo, hi))
            if order is not None:
                x = x[order]
                rows_cls, rows_noisy = cls[order], noisy_dist[lo:hi][order]
            else:
                rows_cls, rows_noisy = cls, noisy_dist[lo:hi]
            xt = be.to_device(x)
            xt = normalize_block(xt, source=str(distractors_path), first_row=lo) if order is None else \
                _normalize_rows_named(xt, str(distractors_path), lo + order)
            S = be.scores(xt)
            try:
                acc.update(S, rows_cls, rows_noisy)
            except ValueError as exc:
                raise DataError(f"{distractors_path} rows {lo}:{hi}: {exc}") from None
            del S, xt
            done.append(b)
            if state is not None and time.perf_counter() - last_save >= checkpoint_seconds:
                _save_state(state, fingerprint, done, acc)
                last_save = time.perf_counter()
            bar.update(1)
        bar.close()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        timings["stream"] = time.perf_counter() - t1
    finally:
        ds.close()

    if info.world > 1:
        gathered = all_gather_arrays(acc.state_arrays(), info)
        if not info.is_main:
            return None
        from megabench.metrics.streaming import MegafaceAccumulator as _Acc

        total = _Acc(stack.plans, mem.n_classes, k, HistSpec(spec.hist_bins))
        for arrays in gathered:
            part = _Acc(stack.plans, mem.n_classes, k, HistSpec(spec.hist_bins))
            part.load_state_arrays(arrays)
            total.merge(part)
        acc = total

    t2 = time.perf_counter()
    variants = {p.name: compute_variant(acc, p, mem, spec, ties, noisy_dist) for p in stack.plans}
    timings["compute"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0

    from megabench.results import new_result

    result = new_result(
        "megaface",
        device=device,
        model={"name": probes.meta.model or None, "checkpoint_sha256": probes.meta.checkpoint_sha256 or None,
               "preprocessing": probes.meta.preprocessing},
        protocol={"name": spec.name, "version": spec.version, "sha256": spec.sha256, "source": spec.source,
                  "variant": {"refine": refine, "ties": ties, "jitter_seed": jitter_seed},
                  "genuine_pairs": "unordered i<j (verification); ordered i!=j (identification)",
                  "roc": "exact where `exact` is true (top-K impostors), histogram-resolved elsewhere"},
        input={"probes": {"path": str(probes_path), "sha256": fp_src["probes"], "n": len(probes.paths)},
               "distractors": {"path": str(distractors_path), "sha256": fp_src["distractors"], "n_store": ds.n},
               "probe_list": {"path": str(probe_list) if probe_list else None, "sha256": fp_src["probe_list"]},
               "distractor_lists": {"path": str(distractor_lists) if distractor_lists else None,
                                    "sha256": lists_sha, "membership": mem.source},
               "sizes": mem.sizes, "seed": seed if mem.source != "lists" else None,
               "backend": backend, "block_rows": block_rows, "topk": k, "hist_bins": spec.hist_bins,
               "world_size": info.world, "fingerprint": fingerprint,
               "skipped_singletons": stack.info["skipped_singletons"]},
        variants=variants,
        noise=noise,
        timings=timings,
    )
    return result


def _normalize_rows_named(xt, source: str, store_rows: np.ndarray):
    from megabench.metrics.search import normalize_block

    try:
        return normalize_block(xt, source=source)
    except DataError:
        import torch

        norms = torch.linalg.vector_norm(xt, dim=1)
        bad = (~torch.isfinite(norms) | (norms == 0)).cpu().numpy()
        rows = store_rows[bad].tolist()
        raise DataError(f"{source}: {len(rows)} feature row(s) are NaN/inf or have zero norm (first rows "
                        f"{rows[:5]}); re-extract them or drop those images") from None


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
        tar = {far_key[f]: tar_at_far(imp, plan.genuine_pairs, f) for f in spec.far_targets}
        dk = {far_key[f]: devkit_reading(imp, plan.genuine_pairs, f) for f in spec.far_targets}
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
                             "roc": roc_curve_points(imp, plan.genuine_pairs),
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
