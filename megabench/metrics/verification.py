"""Pair-verification metrics: insightface-exact 10-fold accuracy, VAL@FAR, ROC, AUC, EER.

Definitions (``docs/protocols.md`` §1; these are decisions):

- Embeddings are held in float64 (insightface collects network outputs in a float64 array) and
  L2-normalised row by row exactly as ``sklearn.preprocessing.normalize`` does (norm
  ``sqrt(einsum("ij,ij->i"))``), so any float32 features give insightface's bits.
- Distance ``d = ||e1 - e2||^2`` (``= 2 - 2 cos`` for unit rows), in ``[0, 4]``.
- A pair is predicted "same" when ``d < t`` (strict).
- Folds are contiguous blocks of the pair order, sized like ``sklearn.model_selection.KFold(k,
  shuffle=False)`` (the first ``n % k`` folds have one extra pair). Never shuffled.
- For each fold the threshold is chosen on the other folds (maximal training accuracy, first =
  smallest threshold on ties) and applied to the held-out fold.

Everything is vectorised through counts: for a sorted array ``v``, ``searchsorted(v, t, "left")``
is ``#{v < t}``, so the accuracy at every grid threshold of every fold costs one ``searchsorted``
per fold instead of one pass over the pairs per threshold.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from megabench.choices import FLIP_MODES
from megabench.metrics import DegenerateMetricWarning

__all__ = [
    "ACCURACY_GRID", "FLIP_MODES", "VAL_GRID", "DegenerateMetricWarning", "Eer", "FoldAccuracy", "FoldValFar",
    "Roc", "ThresholdGrid", "auc", "eer", "exact_threshold_accuracy", "fold_bounds", "fold_roc", "fuse_flip",
    "normalize_rows", "pair_distances", "roc_curve", "ten_fold_accuracy", "val_far",
]


def _plain(value: Any) -> Any:
    """numpy arrays and scalars -> lists and Python numbers (for JSON)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class ThresholdGrid:
    """``np.arange(start, stop, step)``: a distance threshold grid (stop excluded).

    >>> ThresholdGrid(0.0, 0.05, 0.01).values().round(2).tolist()
    [0.0, 0.01, 0.02, 0.03, 0.04]
    """

    start: float = 0.0
    stop: float = 4.0
    step: float = 0.01

    def __post_init__(self) -> None:
        if not (self.step > 0 and self.stop > self.start):
            raise ValueError(f"threshold grid needs step > 0 and stop > start, got {self}")

    def values(self) -> np.ndarray:
        return np.arange(self.start, self.stop, self.step)

    def to_dict(self) -> dict[str, float]:
        return {"start": self.start, "stop": self.stop, "step": self.step}


#: insightface's grids: accuracy thresholds (400 values) and VAL thresholds (4000 values).
ACCURACY_GRID = ThresholdGrid(0.0, 4.0, 0.01)
VAL_GRID = ThresholdGrid(0.0, 4.0, 0.001)


# --------------------------------------------------------------------------------------------
# embeddings -> distances
# --------------------------------------------------------------------------------------------
def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation, bit-identical to ``sklearn.preprocessing.normalize(x)``.

    ``x``: (N, D) float32 or float64 (other dtypes are converted to float64, as sklearn does).
    Returns a new array of the same dtype. Zero rows stay zero (check them before: see
    :func:`megabench.data.feature_store.check_embeddings`).
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D (N, D) array, got shape {x.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0.0] = 1.0
    return x / norms[:, None]


def fuse_flip(features: np.ndarray, features_flip: np.ndarray | None = None, mode: str = "none") -> np.ndarray:
    """Combine embeddings of the images and of their horizontal flips; returns unit rows in float64.

    - ``none``: ``normalize(features)`` (``features_flip`` ignored, may be None).
    - ``sum`` (insightface): ``normalize(features + features_flip)`` on the raw embeddings.
    - ``concat`` (SRANet paper): ``normalize([normalize(features), normalize(features_flip)])``.

    ``features``, ``features_flip``: (N, D) of the same shape, any float dtype. Everything is computed
    in float64, as insightface does (its ``test()`` collects the network's float32 outputs in a
    float64 array before adding flips and normalising), so float32 features give its bits exactly.
    Output: (N, D), or (N, 2D) for ``concat``.
    """
    if mode not in FLIP_MODES:
        raise ValueError(f"flip mode {mode!r} is not one of {FLIP_MODES}")
    features = np.asarray(features, dtype=np.float64)
    if mode == "none":
        return normalize_rows(features)
    if features_flip is None:
        raise ValueError(f"flip mode {mode!r} needs features_flip")
    features_flip = np.asarray(features_flip, dtype=np.float64)
    if features.shape != features_flip.shape:
        raise ValueError(f"features {features.shape} and features_flip {features_flip.shape} differ in shape")
    if mode == "sum":
        return normalize_rows(features + features_flip)
    return normalize_rows(np.concatenate([normalize_rows(features), normalize_rows(features_flip)], axis=1))


def pair_distances(emb1: np.ndarray, emb2: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of each row pair: ``sum((emb1 - emb2) ** 2, axis=1)``.

    ``emb1``, ``emb2``: (N, D), normally unit rows (then the result lies in [0, 4]).
    Returns (N,) in the inputs' dtype, computed exactly as insightface does.
    """
    emb1, emb2 = np.asarray(emb1), np.asarray(emb2)
    if emb1.shape != emb2.shape or emb1.ndim != 2:
        raise ValueError(f"embedding blocks must be (N, D) of equal shape, got {emb1.shape} and {emb2.shape}")
    return np.sum(np.square(np.subtract(emb1, emb2)), 1)


# --------------------------------------------------------------------------------------------
# folds and grids
# --------------------------------------------------------------------------------------------
def fold_bounds(n: int, n_folds: int = 10) -> np.ndarray:
    """Boundaries of ``n_folds`` contiguous folds over ``n`` items: fold f is ``[b[f], b[f+1])``.

    Sizes follow ``KFold(n_folds, shuffle=False)``: ``n // n_folds`` each, one more for the first
    ``n % n_folds`` folds. Requires ``2 <= n_folds <= n``.
    """
    if n_folds < 2 or n < n_folds:
        raise ValueError(f"need 2 <= n_folds <= n, got n_folds={n_folds}, n={n}")
    sizes = np.full(n_folds, n // n_folds, dtype=np.int64)
    sizes[: n % n_folds] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def _check_pairs(dist: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist = np.asarray(dist)
    issame = np.asarray(issame)
    if dist.ndim != 1 or issame.shape != dist.shape:
        raise ValueError(f"dist and issame must be 1-D of equal length, got {dist.shape} and {issame.shape}")
    if issame.dtype != bool:
        if not np.isin(issame, (0, 1)).all():
            raise ValueError("issame must be boolean (or 0/1)")
        issame = issame.astype(bool)
    if not np.isfinite(dist).all():
        raise ValueError("distances contain NaN or inf")
    # float32 -> float64 is exact, so comparisons against float64 thresholds do not change
    return dist.astype(np.float64), issame


@dataclass(frozen=True)
class _FoldCounts:
    """Per fold f and threshold t: ``pos[f, t] = #{same pairs in f with d < t}``, ``neg`` likewise."""

    pos: np.ndarray  # (F, T) int64
    neg: np.ndarray  # (F, T) int64
    n_pos: np.ndarray  # (F,)
    n_neg: np.ndarray  # (F,)


def _fold_counts(dist: np.ndarray, issame: np.ndarray, bounds: np.ndarray, thresholds: np.ndarray) -> _FoldCounts:
    n_folds = len(bounds) - 1
    pos = np.empty((n_folds, thresholds.size), dtype=np.int64)
    neg = np.empty_like(pos)
    n_pos = np.empty(n_folds, dtype=np.int64)
    n_neg = np.empty(n_folds, dtype=np.int64)
    for f in range(n_folds):
        d = dist[bounds[f]: bounds[f + 1]]
        s = issame[bounds[f]: bounds[f + 1]]
        dp, dn = np.sort(d[s]), np.sort(d[~s])
        pos[f] = np.searchsorted(dp, thresholds, side="left")
        neg[f] = np.searchsorted(dn, thresholds, side="left")
        n_pos[f], n_neg[f] = dp.size, dn.size
    return _FoldCounts(pos, neg, n_pos, n_neg)


def _rates(count: np.ndarray, total: np.ndarray) -> np.ndarray:
    """``count / total`` per fold row, 0 where ``total == 0`` (insightface's TPR/FPR convention)."""
    total = np.asarray(total)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, count / np.maximum(total, 1), 0.0)


# --------------------------------------------------------------------------------------------
# 10-fold accuracy
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FoldAccuracy:
    """Per-fold result of the k-fold accuracy protocol.

    ``accuracy``: (F,) held-out accuracy in [0, 1]; ``threshold``: (F,) distance threshold chosen
    on the training folds (same when ``d < threshold``); ``tpr``/``fpr``: (F, T) held-out rates at
    every grid threshold (empty (F, 0) for the ``exact`` search); ``thresholds``: the grid (T,).
    """

    accuracy: np.ndarray
    threshold: np.ndarray
    tpr: np.ndarray
    fpr: np.ndarray
    thresholds: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracy))

    @property
    def std(self) -> float:
        """Population standard deviation (ddof=0) over folds, as insightface reports it."""
        return float(np.std(self.accuracy))

    def to_dict(self) -> dict[str, Any]:
        """Plain data: per-fold ``accuracy`` and ``threshold``, ``mean``, ``std`` (rates stay fractions)."""
        return {"accuracy": _plain(self.accuracy), "threshold": _plain(self.threshold), "mean": self.mean,
                "std": self.std}


def ten_fold_accuracy(
    dist: np.ndarray,
    issame: np.ndarray,
    *,
    thresholds: np.ndarray | None = None,
    n_folds: int = 10,
) -> FoldAccuracy:
    """insightface's k-fold accuracy (``calculate_roc``), bit-exact and vectorised.

    ``dist``: (N,) squared distances; ``issame``: (N,) bool, pair order as in the source.
    ``thresholds``: ascending grid, default ``np.arange(0, 4, 0.01)``.
    For each fold: training accuracy at every threshold (``d < t``), first argmax, held-out
    accuracy ``(tp + tn) / n_fold`` at that threshold; also held-out TPR/FPR at every threshold
    (0 when a fold has no positives / negatives, as insightface).
    """
    dist, issame = _check_pairs(dist, issame)
    thr = ACCURACY_GRID.values() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    bounds = fold_bounds(dist.size, n_folds)
    c = _fold_counts(dist, issame, bounds, thr)
    sizes = np.diff(bounds)
    # training counts = all folds minus the held-out one
    tp_train = c.pos.sum(0) - c.pos
    fp_train = c.neg.sum(0) - c.neg
    n_neg_train = c.n_neg.sum() - c.n_neg
    correct_train = tp_train + (n_neg_train[:, None] - fp_train)  # (F, T) integer: ties are exact
    best = np.argmax(correct_train, axis=1)  # first maximum = smallest threshold
    rows = np.arange(len(sizes))
    correct_test = c.pos[rows, best] + (c.n_neg - c.neg[rows, best])
    accuracy = correct_test / sizes
    return FoldAccuracy(
        accuracy=accuracy.astype(np.float64),
        threshold=thr[best],
        tpr=_rates(c.pos, c.n_pos),
        fpr=_rates(c.neg, c.n_neg),
        thresholds=thr,
    )


def exact_threshold_accuracy(dist: np.ndarray, issame: np.ndarray, *, n_folds: int = 10) -> FoldAccuracy:
    """The ``exact`` variant: the k-fold procedure over all distinct thresholds, no grid.

    Candidates for a fold are, over the sorted distinct training distances ``u_1 < ... < u_m``:
    ``u_1`` (nothing predicted same), every midpoint ``(u_i + u_{i+1}) / 2``, and the next float
    above ``u_m`` (everything same). The first (smallest) candidate of maximal training accuracy is
    applied to the held-out fold with ``d < t``. ``tpr``/``fpr`` are empty (F, 0).
    """
    dist, issame = _check_pairs(dist, issame)
    bounds = fold_bounds(dist.size, n_folds)
    n_f = len(bounds) - 1
    accuracy = np.empty(n_f)
    threshold = np.empty(n_f)
    for f in range(n_f):
        lo, hi = bounds[f], bounds[f + 1]
        train = np.ones(dist.size, dtype=bool)
        train[lo:hi] = False
        u, inv = np.unique(dist[train], return_inverse=True)
        s = issame[train]
        pos_cnt = np.bincount(inv, weights=s, minlength=u.size).astype(np.int64)
        neg_cnt = np.bincount(inv, weights=~s, minlength=u.size).astype(np.int64)
        tp = np.concatenate([[0], np.cumsum(pos_cnt)])  # k groups below the threshold, k = 0..m
        fp = np.concatenate([[0], np.cumsum(neg_cnt)])
        correct = tp + (neg_cnt.sum() - fp)
        k = int(np.argmax(correct))
        if k == 0:
            t = u[0]
        elif k == u.size:
            t = np.nextafter(u[-1], np.inf)
        else:
            t = (u[k - 1] + u[k]) / 2.0
            if t <= u[k - 1]:  # adjacent floats: the midpoint rounded down; u[k] gives the same split
                t = u[k]
        d_test, s_test = dist[lo:hi], issame[lo:hi]
        pred = d_test < t
        accuracy[f] = np.count_nonzero(pred == s_test) / (hi - lo)
        threshold[f] = t
    empty = np.zeros((n_f, 0))
    return FoldAccuracy(accuracy=accuracy, threshold=threshold, tpr=empty, fpr=empty, thresholds=np.zeros(0))


# --------------------------------------------------------------------------------------------
# VAL @ FAR
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FoldValFar:
    """Per fold: ``val`` (TAR) and ``far`` on the held-out fold at ``threshold`` chosen on training FAR."""

    val: np.ndarray
    far: np.ndarray
    threshold: np.ndarray
    far_target: float

    @property
    def val_mean(self) -> float:
        return float(np.mean(self.val))

    @property
    def val_std(self) -> float:
        """Population std (ddof=0) over folds."""
        return float(np.std(self.val))

    @property
    def far_mean(self) -> float:
        return float(np.mean(self.far))

    def to_dict(self) -> dict[str, Any]:
        """Plain data: per-fold ``val``, ``far``, ``threshold``, and ``far_target``, ``val_mean``, ``val_std``."""
        return {"val": _plain(self.val), "far": _plain(self.far), "threshold": _plain(self.threshold),
                "far_target": self.far_target, "val_mean": self.val_mean, "val_std": self.val_std,
                "far_mean": self.far_mean}


def val_far(
    dist: np.ndarray,
    issame: np.ndarray,
    *,
    far_target: float = 1e-3,
    thresholds: np.ndarray | None = None,
    n_folds: int = 10,
) -> FoldValFar:
    """VAL (true accept rate) at a target FAR, k-fold, as insightface's ``calculate_val``.

    Per fold: training FAR at every grid threshold (default ``np.arange(0, 4, 0.001)``); if its
    maximum reaches ``far_target``, the threshold is the linear interpolation of threshold against
    FAR after removing duplicate FAR values (keeping the largest threshold of each), else 0.0.
    Held-out ``val = #{same, d < t} / #same`` and ``far = #{diff, d < t} / #diff``; a held-out fold
    without same (diff) pairs gives NaN val (far) with a :class:`DegenerateMetricWarning`.
    """
    dist, issame = _check_pairs(dist, issame)
    thr = VAL_GRID.values() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    bounds = fold_bounds(dist.size, n_folds)
    c = _fold_counts(dist, issame, bounds, thr)
    n_f = len(bounds) - 1
    fp_train = c.neg.sum(0) - c.neg
    n_neg_train = c.n_neg.sum() - c.n_neg
    val = np.empty(n_f)
    far = np.empty(n_f)
    chosen = np.empty(n_f)
    for f in range(n_f):
        if n_neg_train[f] == 0:
            t = 0.0
        else:
            far_train = fp_train[f] / n_neg_train[f]
            if far_train.max() >= far_target:
                # far_train is non-decreasing in t; keep the last (largest) threshold of each FAR value
                rev_unique, rev_idx = np.unique(far_train[::-1], return_index=True)
                last = thr.size - 1 - rev_idx
                t = float(np.interp(far_target, rev_unique, thr[last]))
            else:
                t = 0.0
        lo, hi = bounds[f], bounds[f + 1]
        d, s = dist[lo:hi], issame[lo:hi]
        ta = np.count_nonzero((d < t) & s)
        fa = np.count_nonzero((d < t) & ~s)
        n_same, n_diff = np.count_nonzero(s), np.count_nonzero(~s)
        val[f] = ta / n_same if n_same else np.nan
        far[f] = fa / n_diff if n_diff else np.nan
        chosen[f] = t
    if np.isnan(val).any() or np.isnan(far).any():
        warnings.warn("VAL/FAR undefined on a fold without same or different pairs: NaN", DegenerateMetricWarning,
                      stacklevel=2)
    return FoldValFar(val=val, far=far, threshold=chosen, far_target=float(far_target))


# --------------------------------------------------------------------------------------------
# ROC, AUC, EER
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Roc:
    """A ROC curve: ``fpr``, ``tpr`` and ``thresholds``, each (T,), in curve order (see the producer)."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"fpr": _plain(self.fpr), "tpr": _plain(self.tpr), "thresholds": _plain(self.thresholds)}


@dataclass(frozen=True)
class Eer:
    """Equal error rate ``rate`` (a fraction) and the distance ``threshold`` where it is reached."""

    rate: float
    threshold: float

    def to_dict(self) -> dict[str, float]:
        return {"rate": self.rate, "threshold": self.threshold}


def fold_roc(
    dist: np.ndarray, issame: np.ndarray, *, thresholds: np.ndarray | None = None, n_folds: int = 10
) -> Roc:
    """insightface's ROC: held-out (FPR, TPR) at each grid threshold, averaged over folds.

    Returns a :class:`Roc` whose arrays are (T,), thresholds ascending (same when ``d < t``).
    """
    acc = ten_fold_accuracy(dist, issame, thresholds=thresholds, n_folds=n_folds)
    return Roc(np.mean(acc.fpr, 0), np.mean(acc.tpr, 0), acc.thresholds)


def roc_curve(dist: np.ndarray, issame: np.ndarray) -> Roc:
    """Exact pooled ROC over all pairs (no folds, no grid); equal to sklearn's
    ``roc_curve(issame, -dist, drop_intermediate=False)``.

    Returns a :class:`Roc`: point i predicts "same" for ``d <= thresholds[i]``; the first point is
    (0, 0) with threshold -inf, then one point per distinct distance, ascending.
    Rates are NaN (with a :class:`DegenerateMetricWarning`) when there are no same or no different pairs.
    """
    dist, issame = _check_pairs(dist, issame)
    u, inv = np.unique(dist, return_inverse=True)
    tp = np.concatenate([[0], np.cumsum(np.bincount(inv, weights=issame, minlength=u.size))])
    fp = np.concatenate([[0], np.cumsum(np.bincount(inv, weights=~issame, minlength=u.size))])
    n_pos, n_neg = tp[-1], fp[-1]
    if n_pos == 0 or n_neg == 0:
        warnings.warn("ROC undefined without both same and different pairs: NaN", DegenerateMetricWarning,
                      stacklevel=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / n_pos if n_pos else np.full(tp.shape, np.nan)
        fpr = fp / n_neg if n_neg else np.full(fp.shape, np.nan)
    return Roc(fpr, tpr, np.concatenate([[-np.inf], u]))


def auc(dist: np.ndarray, issame: np.ndarray) -> float:
    """Area under the exact pooled ROC (trapezoids) = P(d_same < d_diff) + P(equal) / 2.

    Equals ``sklearn.metrics.roc_auc_score(issame, -dist)``. NaN without both classes.
    """
    roc = roc_curve(dist, issame)
    fpr, tpr = roc.fpr, roc.tpr
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan")
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def eer(dist: np.ndarray, issame: np.ndarray) -> Eer:
    """Equal error rate on the exact pooled ROC, and the distance threshold where it is reached.

    The ROC is taken as the piecewise-linear curve through its points; the EER is the FPR where it
    meets ``FNR = FPR`` (``tpr = 1 - fpr``), the threshold is interpolated linearly on the same
    segment (between distinct distances; "same" when ``d <= threshold``). NaN without both classes.
    """
    roc = roc_curve(dist, issame)
    fpr, tpr, thr = roc.fpr, roc.tpr, roc.thresholds
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return Eer(float("nan"), float("nan"))
    g = tpr + fpr - 1.0  # non-decreasing from -1 to 1 along the curve
    i = int(np.argmax(g >= 0))
    if g[i] == 0 or i == 0:
        return Eer(float(fpr[i]), float(thr[i] if i > 0 else thr[1]))
    a = -g[i - 1] / (g[i] - g[i - 1])
    rate = fpr[i - 1] + a * (fpr[i] - fpr[i - 1])
    t0 = thr[i - 1] if i > 1 else thr[1]
    return Eer(float(rate), float(t0 + a * (thr[i] - t0)))
