"""The 10-fold pair-verification protocol (LFW, AgeDB-30, CFP-FP): a spec + pairs + features -> a result.

A :class:`VerificationSpec` is read from ``protocols/<name>.toml`` (``kind = "verification"``); the
definitions are in ``docs/protocols.md`` §1. The registered entry point (:mod:`megabench.evaluation.registry`)
is :func:`run_verification` ``(spec, VerificationOptions) -> result dict``; :func:`evaluate` does the work
on already-opened pairs: checks the inputs against the spec, fuses flips, computes the metrics of
:mod:`megabench.metrics.verification` and returns a result dict (``megabench.results`` schema, kind
``"verification"``, keys in ``docs/results.md``) for :func:`megabench.results.write_result`.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from megabench.choices import FLIP_MODES, THRESHOLD_SEARCHES, FlipMode, ThresholdSearch
from megabench.errors import DataError, MegabenchError
from megabench.metrics.verification import ACCURACY_GRID, VAL_GRID, ThresholdGrid


class ChanceLevelWarning(UserWarning):
    """Accuracy near chance on a full-size set: almost always wrong alignment, colour order or normalisation."""


class ProvenanceWarning(UserWarning):
    """The feature store says it was extracted from a different source than the pairs given."""


@dataclass(frozen=True)
class VerificationSpec:
    """A verification protocol: expected pair count, folds, grids and defaults (docs/protocols.md §1)."""

    name: str
    version: str
    n_pairs: int
    description: str = ""
    n_folds: int = 10
    thresholds: ThresholdGrid = ACCURACY_GRID
    val_far: float = 1e-3
    val_thresholds: ThresholdGrid = VAL_GRID
    flip: FlipMode = "concat"
    threshold_search: ThresholdSearch = "insightface"
    chance_warning_below: float = 0.6
    source: str = ""
    sha256: str = ""

    def __post_init__(self) -> None:
        if self.n_pairs < 1 or self.n_folds < 2:
            raise ValueError(f"need n_pairs >= 1 and n_folds >= 2, got {self.n_pairs}, {self.n_folds}")
        if not 0 < self.val_far < 1:
            raise ValueError(f"val_far must lie in (0, 1), got {self.val_far}")


@dataclass(frozen=True)
class VerificationOptions:
    """Everything one verification run takes besides the spec (what ``megabench verify`` parses).

    ``pairs``: a ``.bin`` pack, an LFW ``pairs.txt`` (needs ``images``) or a ``path1 path2 0|1`` list;
    ``features``: a feature store (``docs/results.md`` "Feature store"). ``flip`` and ``threshold_search``:
    None means the spec's. ``allow_partial``: accept a pair count other than the spec's.
    """

    pairs: str | os.PathLike
    features: str | os.PathLike
    images: str | os.PathLike | None = None
    flip: FlipMode | None = None
    threshold_search: ThresholdSearch | None = None
    allow_partial: bool = False

    def __post_init__(self) -> None:
        if self.flip is not None and self.flip not in FLIP_MODES:
            raise MegabenchError(f"flip must be one of {', '.join(FLIP_MODES)}; got {self.flip!r}")
        if self.threshold_search is not None and self.threshold_search not in THRESHOLD_SEARCHES:
            raise MegabenchError(f"threshold_search must be one of {', '.join(THRESHOLD_SEARCHES)}; "
                                 f"got {self.threshold_search!r}")


def run_verification(spec: VerificationSpec, options: VerificationOptions, *, pairs: Any = None) -> dict[str, Any]:
    """The registered entry point: open the pairs, then :func:`evaluate`. Returns the result dict (not written).

    ``pairs``: ``options.pairs`` already opened with :func:`load_pairs` (a caller that extracted features
    from them first), so that the file is not read twice; None reads it here.
    """
    if pairs is None:
        pairs = load_pairs(options.pairs, options.images)
    return evaluate(spec, pairs, options.features, flip=options.flip, threshold_search=options.threshold_search,
                    allow_partial=options.allow_partial)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def load_pairs(path: str | os.PathLike, images: str | os.PathLike | None = None) -> Any:
    """Open pairs from a ``.bin`` pack, an LFW ``pairs.txt`` (needs ``images``) or a pair list.

    A file whose first byte is a pickle opcode is read as a pack (safely); a text file whose first
    line is ``<sets> <per_set>`` as LFW ``pairs.txt``; anything else as ``path1 path2 0|1`` lines.
    Returns a :class:`~megabench.data.bin_format.VerificationPack` or
    :class:`~megabench.data.pairs.PairList`.
    """
    from megabench.data.bin_format import read_bin
    from megabench.data.pairs import looks_like_lfw_pairs, read_lfw_pairs, read_pair_list

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such pairs file (expected a .bin pack, an LFW pairs.txt or a pair list)")
    with open(p, "rb") as fh:
        head = fh.read(1)
    if p.suffix == ".bin" or head == b"\x80":
        return read_bin(p)
    if looks_like_lfw_pairs(p):
        if images is None:
            raise DataError(f"{p}: an LFW pairs.txt names images by person and number; give the image folder "
                            "with --images ROOT (<ROOT>/<Name>/<Name>_<NNNN>.jpg)")
        return read_lfw_pairs(p, images)
    return read_pair_list(p, images)


def _pair_rows(pairs: Any, store: Any) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows of the two sides of every pair, checking the store against the pairs."""
    from megabench.data.pairs import PairList, rows_for_keys

    if isinstance(pairs, PairList):
        rows = rows_for_keys(pairs, store.paths(), source=str(store.path))
        return rows[0::2], rows[1::2]
    if store.n != pairs.n_images:
        raise DataError(f"{store.path}: {store.n} feature rows but the pack {pairs.source} has {pairs.n_images} "
                        "images; the store must hold one row per pack image, in pack order")
    meta_src = store.meta.source_sha256
    if meta_src and pairs.sha256 and meta_src != pairs.sha256:
        warnings.warn(f"{store.path}: extracted from a source with sha256 {meta_src[:12]}..., not from "
                      f"{pairs.source} ({pairs.sha256[:12]}...); check that the features belong to this pack",
                      ProvenanceWarning, stacklevel=3)
    return pairs.pair_rows()


def check_pair_count(spec: VerificationSpec, n_pairs: int, source: str, *, allow_partial: bool = False) -> None:
    """Pair count must equal the spec's and divide into its folds, unless ``allow_partial``."""
    if n_pairs < spec.n_folds:
        raise DataError(f"{source}: {n_pairs} pairs cannot be split into {spec.n_folds} folds")
    if allow_partial:
        return
    if n_pairs != spec.n_pairs:
        raise DataError(f"{source}: {n_pairs} pairs, but protocol {spec.name} expects {spec.n_pairs}; "
                        "use the complete set, another --protocol, or --allow-partial to accept it")
    if n_pairs % spec.n_folds:
        raise DataError(f"{source}: {n_pairs} pairs do not divide into {spec.n_folds} equal folds; "
                        "use --allow-partial to accept unequal folds")


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
@dataclass
class _PairFeatures:
    """The feature rows one run needs, read once: ``feat`` (and ``feat_flip``), the rows of each pair's sides."""

    feat: np.ndarray
    feat_flip: np.ndarray | None
    rows1: np.ndarray
    rows2: np.ndarray
    meta: Any
    sha256: str
    path: str


def _read_pair_features(pairs: Any, features: str | os.PathLike, flip: str) -> _PairFeatures:
    """Read only the rows the pairs use (and their flips when ``flip`` needs them), checked."""
    from megabench.data.feature_store import check_embeddings, open_features

    with open_features(features) as store:
        rows1, rows2 = _pair_rows(pairs, store)
        used = np.unique(np.concatenate([rows1, rows2]))
        subset = None if used.size == store.n else used
        feat = store.read("features", subset)
        check_embeddings(feat, source=str(store.path), what="features")
        feat_flip = None
        if flip != "none":
            if not store.has_flip:
                raise DataError(f"{store.path}: --flip {flip} needs a `features_flip` dataset, which this store "
                                "lacks; use --flip none or extract the flipped images too")
            feat_flip = store.read("features_flip", subset)
            check_embeddings(feat_flip, source=str(store.path), what="features_flip")
        meta, sha, path = store.meta, store.sha256(), str(store.path)
    if subset is not None:  # map store rows to positions in the compacted arrays
        rows1, rows2 = np.searchsorted(used, rows1), np.searchsorted(used, rows2)
    return _PairFeatures(feat, feat_flip, rows1, rows2, meta, sha, path)


@dataclass(frozen=True)
class _Metrics:
    accuracy: Any  # mv.FoldAccuracy
    val_far: Any  # mv.FoldValFar
    roc: Any  # mv.Roc (held-out, mean over folds)
    auc: float
    eer: Any  # mv.Eer


def _compute_metrics(spec: VerificationSpec, dist: np.ndarray, issame: np.ndarray, search: str) -> _Metrics:
    from megabench.metrics import verification as mv

    grid = spec.thresholds.values()
    if search == "insightface":
        acc = mv.ten_fold_accuracy(dist, issame, thresholds=grid, n_folds=spec.n_folds)
        roc = mv.Roc(np.mean(acc.fpr, 0), np.mean(acc.tpr, 0), acc.thresholds)
    else:
        acc = mv.exact_threshold_accuracy(dist, issame, n_folds=spec.n_folds)
        roc = mv.fold_roc(dist, issame, thresholds=grid, n_folds=spec.n_folds)
    vf = mv.val_far(dist, issame, far_target=spec.val_far, thresholds=spec.val_thresholds.values(),
                    n_folds=spec.n_folds)
    return _Metrics(acc, vf, roc, mv.auc(dist, issame), mv.eer(dist, issame))


def _definitions(spec: VerificationSpec) -> dict[str, str]:
    return {
        "accuracy": f"mean held-out accuracy over {spec.n_folds} contiguous folds; same when d < threshold, "
                    "d = squared L2 distance of unit embeddings",
        "accuracy_std": "std over folds (population, ddof=0)",
        "val": f"mean held-out TAR at the threshold interpolated to train FAR = {spec.val_far}",
        "val_std": "std over folds (population, ddof=0)",
        "far": "mean held-out FAR at the VAL thresholds",
        "auc": "area under the exact ROC of all pairs (no folds, no grid)",
        "eer": "equal error rate on the exact ROC of all pairs, linear between ROC points",
        "roc": "held-out (FPR, TPR) at each accuracy-grid threshold, mean over folds (insightface)",
    }


def evaluate(
    spec: VerificationSpec,
    pairs: Any,
    features: str | os.PathLike,
    *,
    flip: FlipMode | None = None,
    threshold_search: ThresholdSearch | None = None,
    allow_partial: bool = False,
) -> dict[str, Any]:
    """Run the protocol. ``pairs``: from :func:`load_pairs`; ``features``: a feature store path.

    ``flip`` and ``threshold_search`` default to the spec's. Returns the result dict (not written).
    Raises :class:`DataError` for inconsistent inputs; warns :class:`ChanceLevelWarning` when the
    mean accuracy of a full-size set is below ``spec.chance_warning_below``.
    """
    from megabench.metrics import verification as mv
    from megabench.results import new_result

    flip = flip or spec.flip
    search = threshold_search or spec.threshold_search
    t0 = time.perf_counter()
    check_pair_count(spec, pairs.n_pairs, pairs.source, allow_partial=allow_partial)
    pf = _read_pair_features(pairs, features, flip)
    t_load = time.perf_counter()

    emb = mv.fuse_flip(pf.feat, pf.feat_flip, flip)
    dist = mv.pair_distances(emb[pf.rows1], emb[pf.rows2])
    issame = pairs.issame
    m = _compute_metrics(spec, dist, issame, search)
    acc, vf = m.accuracy, m.val_far
    t_metrics = time.perf_counter()

    if pairs.n_pairs == spec.n_pairs and acc.mean < spec.chance_warning_below:
        warnings.warn(
            f"accuracy {acc.mean:.4f} on the full {spec.name} set is near chance: this nearly always means wrong "
            "face alignment, colour order (RGB vs BGR) or input normalisation in feature extraction",
            ChanceLevelWarning, stacklevel=2)

    folds = [
        {"accuracy": float(a), "threshold": float(t), "val": float(v), "far": float(f), "val_threshold": float(vt)}
        for a, t, v, f, vt in zip(acc.accuracy, acc.threshold, vf.val, vf.far, vf.threshold, strict=True)
    ]
    return new_result(
        "verification",
        model={"name": pf.meta.model or None, "checkpoint_sha256": pf.meta.checkpoint_sha256 or None,
               "preprocessing": pf.meta.preprocessing},
        protocol={"name": spec.name, "version": spec.version, "sha256": spec.sha256, "variant": search,
                  "source": spec.source, "n_folds": spec.n_folds,
                  "thresholds": spec.thresholds.to_dict(), "val_far": spec.val_far,
                  "val_thresholds": spec.val_thresholds.to_dict()},
        input={"pairs": str(pairs.source), "pairs_sha256": pairs.sha256, "features": pf.path,
               "features_sha256": pf.sha256, "flip": flip, "n_pairs": pairs.n_pairs,
               "n_same": int(np.count_nonzero(issame)), "partial": pairs.n_pairs != spec.n_pairs,
               "embedding_dim": int(emb.shape[1])},
        metrics={"accuracy": acc.mean, "accuracy_std": acc.std, "val": vf.val_mean, "val_std": vf.val_std,
                 "far": vf.far_mean, "far_target": spec.val_far, "auc": m.auc, "eer": m.eer.rate,
                 "eer_threshold": m.eer.threshold},
        definitions=_definitions(spec),
        folds=folds,
        roc={"fpr": m.roc.fpr, "tpr": m.roc.tpr, "thresholds": spec.thresholds.values()},
        timings={"load_s": t_load - t0, "metrics_s": t_metrics - t_load, "total_s": t_metrics - t0},
    )
