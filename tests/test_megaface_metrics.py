"""Identification / open-set verification metrics: brute force, sklearn oracle and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megabench.metrics.identification import (
    ImpostorSummary,
    cmc_from_ranks,
    cmc_ranks,
    devkit_reading,
    kth_count,
    order_key,
    roc_curve_points,
    tar_at_far,
    wilson_interval,
)
from megabench.metrics.streaming import HistSpec

HS = HistSpec()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False), min_size=2, max_size=40))
def test_order_key_is_monotone_and_tie_preserving(xs):
    x = np.array(xs, np.float32)
    k = order_key(x)
    assert ((k >= 0) & (k < 2**32)).all()
    for i in range(len(x)):
        for j in range(len(x)):
            assert (x[i] <= x[j]) == (k[i] <= k[j])
            assert (x[i] == x[j]) == (k[i] == k[j])


def test_order_key_negative_zero_equals_zero():
    assert order_key(np.float32(-0.0)) == order_key(np.float32(0.0))


def test_kth_count_exact_decimal():
    assert kth_count(1e-6, 1_000_000) == 1
    assert kth_count(1e-6, 3_530_000) == 4  # ceil(3.53)
    assert kth_count(0.1, 30) == 3  # float 0.1 * 30 = 3.0000000000000004 would give 4
    assert kth_count(1e-6, 10) == 1


def test_wilson_closed_forms():
    z = 1.959963984540054
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(z * z / (10 + z * z), rel=1e-12)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(10 / (10 + z * z), rel=1e-12)
    # the bounds are the roots of (phat - p)^2 = z^2 p (1 - p) / n
    for k, n in ((3, 17), (50, 100), (999, 1000)):
        phat = k / n
        a, b, c = 1 + z * z / n, -(2 * phat + z * z / n), phat * phat
        roots = sorted(np.roots([a, b, c]).real)
        assert wilson_interval(k, n) == pytest.approx(tuple(roots), rel=1e-9)
    with pytest.warns(UserWarning):
        assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_cmc_brute_force():
    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 50, size=300)
    ks = cmc_ranks(1000)
    assert ks[0] == 1 and ks[-1] == 1001 and list(ks[:10]) == list(range(1, 11))
    assert np.all(np.diff(ks) > 0)
    np.testing.assert_array_equal(cmc_from_ranks(ranks, ks), [np.mean(ranks < k) for k in ks])
    assert list(cmc_ranks(3)) == [1, 2, 3, 4]


def _summary(imp, keep=None):
    imp = np.asarray(imp, np.float32)
    top = -np.sort(-imp)
    if keep is not None:
        top = top[:keep]
    hist = np.zeros(HS.n_bins, np.int64)
    import torch

    hist += torch.histc(torch.from_numpy(imp), bins=HS.n_bins, min=HS.lo, max=HS.hi).to(torch.int64).numpy()
    return ImpostorSummary(top, imp.size, hist, HS.lo, HS.width)


def _quantised(rng, n, scale=0.3):
    return (np.round(rng.normal(0, scale, n) * 64) / 64).clip(-1, 1).astype(np.float32)


@pytest.mark.parametrize("far", [1e-4, 1e-3, 0.01, 0.05, 0.5, 1.0])
def test_tar_at_far_brute_force_with_ties(far):
    rng = np.random.default_rng(1)
    imp = _quantised(rng, 20_000)
    gen = np.sort(_quantised(rng, 500) + np.float32(0.5)).clip(-1, 1).astype(np.float32)
    r = tar_at_far(_summary(imp), gen, far)
    k = max(1, math.ceil(far * imp.size - 1e-9))
    tau = np.sort(imp)[::-1][k - 1]
    assert r.exact and r.k == k
    assert r.threshold == tau
    assert r.tar == np.mean(gen > tau)
    assert r.far == np.sum(imp > tau) / imp.size
    assert r.far <= far
    assert (r.n_impostors, r.n_genuine) == (imp.size, gen.size)


def test_tar_at_far_histogram_resolved_brackets_the_exact_threshold():
    rng = np.random.default_rng(2)
    imp = rng.normal(0, 0.2, 50_000).astype(np.float32)
    gen = np.sort(rng.normal(0.6, 0.1, 400)).astype(np.float32)
    s = _summary(imp, keep=100)
    for far in (1e-2, 0.1, 0.5):
        r = tar_at_far(s, gen, far)
        tau = np.sort(imp)[::-1][kth_count(far, imp.size) - 1]
        assert not r.exact
        assert r.threshold <= tau < r.threshold + HS.width
        assert r.far >= far and r.far == np.sum(imp >= np.float32(r.threshold)) / imp.size
        assert r.tar == np.mean(gen >= np.float32(r.threshold))
    assert tar_at_far(s, gen, 1e-3).exact  # k = 50 <= 100 kept


def test_histogram_lookups_equal_their_definitions():
    """``hist_bin_of_kth`` / ``hist_count_from`` (one cached cumulative sum) against the direct formulas."""
    rng = np.random.default_rng(5)
    s = _summary(_quantised(rng, 5_000), keep=10)
    for k in (1, 2, 17, 999, 4_999, 5_000):
        b = s.hist_bin_of_kth(k)
        assert s.hist[b:].sum() >= k > s.hist[b + 1:].sum()  # the last bin whose tail holds k scores
    for b in (0, 1, 100, s.hist.size // 2, s.hist.size - 1, s.hist.size):
        assert s.hist_count_from(b) == s.hist[b:].sum()


@pytest.mark.parametrize("k", [1, 5, 40])
def test_merge_top_equals_sorting_everything(k):
    """The k largest of kept + new, sorted descending, over many random splits with ties and +-0.0."""
    from megabench.metrics.streaming import merge_top

    rng = np.random.default_rng(k)
    for _ in range(200):
        kept = -np.sort(-rng.integers(-4, 5, rng.integers(0, k + 1)).astype(np.float32) / 4)
        new = rng.integers(-4, 5, rng.integers(0, 3 * k + 1)).astype(np.float32) / 4
        new[rng.random(new.size) < 0.1] = -0.0
        got = merge_top(kept, new, k)
        ref = -np.sort(-np.concatenate([kept, new]))[:k]
        np.testing.assert_array_equal(got, ref)
        assert got.dtype == np.float32


def test_masked_impostors_count_in_n_but_never_accept():
    imp = np.array([0.5, 0.1, -0.2], np.float32)
    s = ImpostorSummary(-np.sort(-imp), 10, _summary(imp).hist, HS.lo, HS.width)  # 7 masked (-inf) impostors
    gen = np.array([0.0, 0.3, 0.6], np.float32)
    r = tar_at_far(s, gen, 0.5)  # k = 5 > 3 finite: tau = -inf
    assert r.threshold == -np.inf and r.tar == 1.0 and r.far == 0.3 and r.exact
    r = tar_at_far(s, gen, 0.1)  # k = 1: tau = 0.5
    assert r.threshold == np.float32(0.5) and r.tar == pytest.approx(1 / 3) and r.far == 0.0


def test_sklearn_roc_curve_oracle():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(3)
    imp = _quantised(rng, 3000, 0.25)
    gen = np.sort(_quantised(rng, 300, 0.25) + np.float32(0.4)).astype(np.float32)
    s = _summary(imp)
    y = np.r_[np.zeros(imp.size), np.ones(gen.size)]
    fpr, tpr, thr = roc_curve(y, np.r_[imp, gen], drop_intermediate=False)
    for t, f, tp in zip(thr[1:], fpr[1:], tpr[1:], strict=True):
        assert s.count_at_least(t) / imp.size == f
        assert np.mean(gen >= t) == tp
    # devkit reading = sklearn's first point with FPR > target
    for far in (1e-3, 0.01, 0.1, 0.3):
        i = int(np.flatnonzero(fpr > far)[0])
        r = devkit_reading(s, gen, far)
        assert (r.far, r.tar, r.threshold) == (fpr[i], tpr[i], np.float32(thr[i]))
    # every exact ROC point lies on sklearn's curve read with '>' (one step right of the >= point)
    roc = roc_curve_points(s, gen)
    assert roc.fpr == sorted(roc.fpr) and all(roc.exact)
    for f, tp, t in zip(roc.fpr, roc.tpr, roc.threshold, strict=True):
        assert f == np.sum(imp > np.float32(t)) / imp.size and tp == np.mean(gen > np.float32(t))
