"""Identification and open-set verification metrics (pure functions; MegaFace Challenge 1).

Conventions (docs/megaface.md sections 2-3):

- Ranks are 0-based: the rank of a genuine trial is the number of distractors scoring ``>= g``
  (conservative ties) or ``> g`` (optimistic). ``CMC(k) = #{trials with rank < k} / n_trials``.
- TAR@FAR=f: ``tau`` = the ``ceil(f * N)``-th largest impostor score, ``TAR = #{genuine > tau} / G``,
  achieved FAR = ``#{impostor > tau} / N``. Exact when the ``ceil(f*N)``-th largest impostor is among
  the kept top-K impostors; otherwise read off the impostor histogram (``exact: False``): ``tau`` is then
  the lower edge of the bin holding that impostor and TAR/FAR count scores ``>= tau``.
- Scores are float32; rates are fractions in [0, 1]; -inf scores (masked distractors) count in N but
  never exceed a threshold.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import cached_property

import numpy as np

from megabench.metrics import DegenerateMetricWarning

Z95 = 1.959963984540054


def order_key(x: np.ndarray) -> np.ndarray:
    """Monotone int64 key of float32 values: ``a <= b`` iff ``key(a) <= key(b)`` (``-0.0 == 0.0``).

    Keys lie in ``[0, 2**32)`` so that ``(row << 32) | key`` orders by row, then score.
    """
    x = np.asarray(x, dtype=np.float32) + np.float32(0.0)  # -0.0 -> +0.0
    i = x.view(np.int32).astype(np.int64)
    return np.where(i >= 0, i + (1 << 31), (1 << 31) - 1 - (i & 0x7FFFFFFF))


def kth_count(f: float, n: int) -> int:
    """``ceil(f * n)`` computed exactly from the decimal value of ``f`` (f=1e-6, n=1e6 -> 1)."""
    return max(1, math.ceil(Fraction(repr(float(f))) * n))


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n`` (default 95%). ``n == 0`` -> NaNs."""
    if n <= 0:
        warnings.warn("Wilson interval of an empty sample is undefined; returning NaN", DegenerateMetricWarning,
                      stacklevel=2)
        return (math.nan, math.nan)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def cmc_from_ranks(ranks: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """``CMC(k) = mean(ranks < k)`` for each k in ``ks`` (1-based k; ranks 0-based). Empty -> NaN."""
    ranks = np.sort(np.asarray(ranks, dtype=np.int64))
    ks = np.asarray(ks, dtype=np.int64)
    if ranks.size == 0:
        warnings.warn("CMC of zero trials is undefined; returning NaN", DegenerateMetricWarning, stacklevel=2)
        return np.full(ks.shape, np.nan)
    return np.searchsorted(ranks, ks, side="left") / ranks.size


def cmc_ranks(n_distractors: int, per_decade: int = 20) -> np.ndarray:
    """The 1-based ranks k reported: 1..10, then ``per_decade`` log-spaced values up to ``n + 1``."""
    top = n_distractors + 1
    head = np.arange(1, min(10, top) + 1)
    if top <= 10:
        return head
    tail = np.unique(np.round(np.logspace(1, math.log10(top), max(2, int(per_decade * math.log10(top / 10)))))
                     .astype(np.int64))
    return np.unique(np.concatenate([head, tail, [top]]))


@dataclass(frozen=True)
class ImpostorSummary:
    """Everything needed to read FPR at any threshold.

    ``top``: the largest kept impostor scores, float32, sorted descending (finite only).
    ``n``: all impostors (N, including masked -inf ones). ``hist``: int64 counts of finite scores per bin
    over ``[lo, lo + len(hist) * width)``; ``complete``: ``top`` holds every finite impostor.
    """

    top: np.ndarray
    n: int
    hist: np.ndarray
    lo: float
    width: float

    @property
    def n_finite(self) -> int:
        return int(self.hist.sum())

    @property
    def complete(self) -> bool:
        return self.top.size >= self.n_finite

    def count_greater(self, t: float) -> int:
        """``#{impostor > t}`` exactly; requires ``t >= top[-1]`` or a complete ``top``."""
        asc = self.top[::-1]
        return int(asc.size - np.searchsorted(asc, np.float32(t), side="right"))

    def count_at_least(self, t: float) -> int:
        asc = self.top[::-1]
        return int(asc.size - np.searchsorted(asc, np.float32(t), side="left"))

    @cached_property
    def hist_ge(self) -> np.ndarray:
        """``hist_ge[b]`` = #{finite scores in bins >= b}: non-increasing int64, computed once per summary."""
        return np.cumsum(self.hist[::-1])[::-1]

    def hist_bin_of_kth(self, k: int) -> int:
        """Index of the bin holding the k-th largest finite impostor (1-based k <= n_finite)."""
        ge = self.hist_ge
        return int(ge.size - np.searchsorted(ge[::-1], k, side="left") - 1)  # the last bin with ge >= k

    def hist_count_from(self, b: int) -> int:
        return int(self.hist_ge[b]) if b < self.hist_ge.size else 0


@dataclass(frozen=True)
class TarAtFar:
    """One TAR@FAR reading. Rates are fractions in [0, 1] (NaN when undefined); ``threshold`` is a cosine
    score; ``ci95`` the 95% Wilson interval of ``tar``; ``k`` = ceil(far * n_impostors); ``exact`` False
    when ``threshold`` was read off the impostor histogram."""

    tar: float
    threshold: float
    far: float
    n_impostors: int
    n_genuine: int
    ci95: list[float]
    k: int
    exact: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DevkitReading:
    """The devkit-style reading (first ROC point with FPR above the target); ``note`` says why it is NaN."""

    tar: float
    threshold: float
    far: float
    exact: bool
    note: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.note:
            d.pop("note")
        return d


@dataclass(frozen=True)
class RocPoints:
    """ROC points, FPR ascending (achieved FAR), with their thresholds; ``exact`` False = histogram-resolved."""

    fpr: list[float] = field(default_factory=list)
    tpr: list[float] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    exact: list[bool] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def tar_at_far(imp: ImpostorSummary, genuine_sorted: np.ndarray, far: float) -> TarAtFar:
    """TAR at FAR ``far`` (docs/megaface.md section 3). ``genuine_sorted``: float32 ascending.

    """
    g = np.asarray(genuine_sorted, dtype=np.float32)
    n_gen = int(g.size)
    k = kth_count(far, imp.n)
    if k <= imp.top.size:
        tau = imp.top[k - 1]
        n_fa = imp.count_greater(tau)
        n_acc = int(n_gen - np.searchsorted(g, tau, side="right"))
        exact = True
    elif k > imp.n_finite:
        # every finite impostor is among the k largest: tau = -inf (the masked ones)
        tau = np.float32(-np.inf)
        n_fa, n_acc, exact = imp.n_finite, n_gen, imp.complete
    else:
        b = imp.hist_bin_of_kth(k)
        tau = np.float32(imp.lo + b * imp.width)
        n_fa = imp.hist_count_from(b)
        n_acc = int(n_gen - np.searchsorted(g, tau, side="left"))
        exact = False
    tar = n_acc / n_gen if n_gen else math.nan
    return TarAtFar(tar=tar, threshold=float(tau), far=n_fa / imp.n if imp.n else math.nan,
                    n_impostors=int(imp.n), n_genuine=n_gen, ci95=list(wilson_interval(n_acc, n_gen)),
                    k=int(k), exact=bool(exact))


def devkit_reading(imp: ImpostorSummary, genuine_sorted: np.ndarray, far: float) -> DevkitReading:
    """The devkit-style reading: the first ROC point (thresholds descending, ``score >= t``) with FPR > far.

    That point's threshold is the ``(floor(far*N) + 1)``-th largest impostor ``v``;
    TAR = ``#{genuine >= v} / G``, FPR = ``#{impostor >= v} / N``. Labelled, never the default.
    """
    g = np.asarray(genuine_sorted, dtype=np.float32)
    m = math.floor(Fraction(repr(float(far))) * imp.n) + 1
    if m <= imp.top.size:
        v = imp.top[m - 1]
        n_fa = imp.count_at_least(v)
        n_acc = int(g.size - np.searchsorted(g, v, side="left"))
        exact = True
    elif m > imp.n_finite:
        return DevkitReading(tar=math.nan, threshold=math.nan, far=math.nan, exact=imp.complete,
                             note="no ROC point with FPR above the target")
    else:
        b = imp.hist_bin_of_kth(m)
        v = np.float32(imp.lo + b * imp.width)
        n_fa = imp.hist_count_from(b)
        n_acc = int(g.size - np.searchsorted(g, v, side="left"))
        exact = False
    return DevkitReading(tar=n_acc / g.size if g.size else math.nan, threshold=float(v), far=n_fa / imp.n,
                         exact=bool(exact))


def roc_curve_points(imp: ImpostorSummary, genuine_sorted: np.ndarray, per_decade: int = 10) -> RocPoints:
    """ROC at log-spaced FPR targets from ``1/N`` to 1 (each point a :func:`tar_at_far` reading).

    ``fpr`` is the achieved FAR. Points with ``exact`` False are
    histogram-resolved; the others are exact (top-K tail).
    """
    if imp.n == 0:
        return RocPoints()
    lo = math.log10(1.0 / imp.n)
    targets = np.unique(np.concatenate([np.logspace(lo, 0, max(2, int(round(-lo * per_decade))) + 1), [1.0]]))
    pts = [tar_at_far(imp, genuine_sorted, float(f)) for f in targets]
    return RocPoints(fpr=[p.far for p in pts], tpr=[p.tar for p in pts], threshold=[p.threshold for p in pts],
                     exact=[p.exact for p in pts])
