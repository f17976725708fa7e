"""Verification metrics against brute-force loops written here, closed-form cases and sklearn oracles."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import interpolate
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize as sk_normalize

from megabench.metrics import verification as mv

GRID = np.arange(0, 4, 0.01)


# ---------------------------------------------------------------- brute-force references
def _acc_at(t, d, s):
    """insightface's calculate_accuracy, one threshold at a time."""
    p = np.less(d, t)
    tp = np.sum(p & s)
    fp = np.sum(p & ~s)
    tn = np.sum(~p & ~s)
    fn = np.sum(~p & s)
    tpr = 0 if tp + fn == 0 else float(tp) / float(tp + fn)
    fpr = 0 if fp + tn == 0 else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / d.size


def brute_ten_fold(d, s, thresholds, n_folds=10):
    acc, best_t = np.zeros(n_folds), np.zeros(n_folds)
    tprs, fprs = np.zeros((n_folds, len(thresholds))), np.zeros((n_folds, len(thresholds)))
    for f, (tr, te) in enumerate(KFold(n_folds, shuffle=False).split(np.arange(len(d)))):
        acc_train = np.array([_acc_at(t, d[tr], s[tr])[2] for t in thresholds])
        b = int(np.argmax(acc_train))
        for i, t in enumerate(thresholds):
            tprs[f, i], fprs[f, i], _ = _acc_at(t, d[te], s[te])
        acc[f] = _acc_at(thresholds[b], d[te], s[te])[2]
        best_t[f] = thresholds[b]
    return acc, best_t, tprs, fprs


def brute_exact(d, s, n_folds=10):
    acc, best_t = np.zeros(n_folds), np.zeros(n_folds)
    for f, (tr, te) in enumerate(KFold(n_folds, shuffle=False).split(np.arange(len(d)))):
        u = sorted(set(d[tr].tolist()))
        cands = [u[0]] + [(a + b) / 2 for a, b in zip(u[:-1], u[1:], strict=True)] + [np.nextafter(u[-1], np.inf)]
        best, best_acc = None, -1.0
        for t in cands:  # ascending, strictly better only: first maximum
            a = sum(1 for x, y in zip(d[tr], s[tr], strict=True) if (x < t) == y) / len(tr)
            if a > best_acc:
                best, best_acc = t, a
        acc[f] = sum(1 for x, y in zip(d[te], s[te], strict=True) if (x < best) == y) / len(te)
        best_t[f] = best
    return acc, best_t


def brute_val(d, s, thresholds, far_target, n_folds=10):
    val, far = np.zeros(n_folds), np.zeros(n_folds)
    for f, (tr, te) in enumerate(KFold(n_folds, shuffle=False).split(np.arange(len(d)))):
        far_train = np.array([np.sum((d[tr] < t) & ~s[tr]) / np.sum(~s[tr]) for t in thresholds])
        if far_train.max() >= far_target:
            xs, ys = [], []
            for fa, t in zip(far_train, thresholds, strict=True):  # keep the largest threshold per FAR value
                if xs and xs[-1] == fa:
                    ys[-1] = t
                else:
                    xs.append(fa)
                    ys.append(t)
            t = float(interpolate.interp1d(xs, ys, kind="slinear")(far_target)) if len(xs) > 1 else ys[0]
        else:
            t = 0.0
        val[f] = np.sum((d[te] < t) & s[te]) / np.sum(s[te])
        far[f] = np.sum((d[te] < t) & ~s[te]) / np.sum(~s[te])
    return val, far


def make_pairs(rng, n, dim=32, noise=3.0):
    s = rng.random(n) < 0.5
    e = rng.standard_normal((2 * n, dim)).astype(np.float32)
    e[1::2][s] = e[0::2][s] + noise * rng.standard_normal((int(s.sum()), dim)).astype(np.float32)
    emb = mv.normalize_rows(e)
    return mv.pair_distances(emb[0::2], emb[1::2]), s


# ---------------------------------------------------------------- embeddings and distances
def test_normalize_matches_sklearn_bitwise():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = (rng.standard_normal((50, 37)) * rng.uniform(0.1, 50, (50, 1))).astype(dtype)
        out = mv.normalize_rows(x)
        assert out.dtype == dtype
        assert np.array_equal(out, sk_normalize(x))


def test_pair_distance_closed_form():
    e1 = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    e2 = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]], np.float32)
    assert mv.pair_distances(e1, e2).tolist() == [0.0, 4.0, 2.0]


def test_fuse_flip_closed_form():
    f = np.array([[3.0, 0.0], [0.0, 2.0]], np.float32)
    ff = np.array([[0.0, 1.0], [0.0, 5.0]], np.float32)
    assert np.allclose(mv.fuse_flip(f, None, "none"), [[1, 0], [0, 1]])
    assert np.allclose(mv.fuse_flip(f, ff, "sum"), [[3 / np.sqrt(10), 1 / np.sqrt(10)], [0, 1]])
    h = 1 / np.sqrt(2)
    assert np.allclose(mv.fuse_flip(f, ff, "concat"), [[h, 0, 0, h], [0, h, 0, h]])
    with pytest.raises(ValueError, match="shape"):
        mv.fuse_flip(f, ff[:1], "sum")
    with pytest.raises(ValueError, match="needs features_flip"):
        mv.fuse_flip(f, None, "concat")
    with pytest.raises(ValueError, match="not one of"):
        mv.fuse_flip(f, ff, "mean")


# ---------------------------------------------------------------- 10-fold accuracy
@pytest.mark.parametrize("mode", ["none", "sum"])
def test_insightface_pipeline_end_to_end(mode):
    """Raw float32 embeddings -> insightface's own steps: outputs copied into a float64 array
    (``np.zeros`` in its ``test()``), flip sum, sklearn normalize, brute 10-fold."""
    rng = np.random.default_rng(11)
    n = 300
    s = np.tile([True] * 15 + [False] * 15, 10)
    f = rng.standard_normal((2 * n, 24)).astype(np.float32) * 7
    f[1::2][s] = f[0::2][s] + 9 * rng.standard_normal((int(s.sum()), 24)).astype(np.float32)
    ff = (f + rng.standard_normal(f.shape).astype(np.float32)).astype(np.float32)
    f64, ff64 = np.zeros(f.shape), np.zeros(f.shape)
    f64[:], ff64[:] = f, ff
    ref_emb = sk_normalize(f64 + ff64 if mode == "sum" else f64.copy())
    ref_d = np.sum(np.square(np.subtract(ref_emb[0::2], ref_emb[1::2])), 1)
    d = _pipeline(f, ff, mode)
    assert np.array_equal(d, ref_d)
    acc, thr, _, _ = brute_ten_fold(ref_d, s, GRID)
    got = mv.ten_fold_accuracy(d, s)
    assert np.array_equal(got.accuracy, acc) and np.array_equal(got.threshold, thr)
    assert 0.6 < got.mean < 1.0


@pytest.mark.parametrize("n, noise, seed", [(600, 3.0, 0), (1000, 5.0, 1), (487, 4.0, 2)])
def test_ten_fold_matches_brute_force(n, noise, seed):
    d, s = make_pairs(np.random.default_rng(seed), n, noise=noise)
    got = mv.ten_fold_accuracy(d, s)
    acc, thr, tprs, fprs = brute_ten_fold(d, s, GRID)
    assert np.array_equal(got.accuracy, acc)
    assert np.array_equal(got.threshold, thr)
    assert np.array_equal(np.mean(got.tpr, 0), np.mean(tprs, 0))
    assert np.array_equal(np.mean(got.fpr, 0), np.mean(fprs, 0))
    assert got.mean == np.mean(acc) and got.std == np.std(acc)


def test_ten_fold_ties_on_grid_points_use_strict_less():
    # distances exactly equal to grid values: d < t must exclude d == t
    rng = np.random.default_rng(3)
    n = 400
    s = rng.random(n) < 0.5
    idx = np.where(s, rng.integers(80, 130, n), rng.integers(110, 170, n))
    d = GRID[idx]
    got = mv.ten_fold_accuracy(d, s)
    acc, thr, _, _ = brute_ten_fold(d, s, GRID)
    assert np.array_equal(got.accuracy, acc) and np.array_equal(got.threshold, thr)


def test_ten_fold_closed_form_separable():
    s = np.tile([True] * 5 + [False] * 5, 10)
    d = np.where(s, 0.5, 2.5)
    got = mv.ten_fold_accuracy(d, s)
    assert np.all(got.accuracy == 1.0) and got.std == 0.0
    # first threshold with 0.5 < t, i.e. the grid value after 0.5 (ties to 2.5 resolved to the smallest)
    assert np.all(got.threshold == GRID[GRID > 0.5][0])
    # strict <: a threshold equal to the distance does not accept
    one = mv.ten_fold_accuracy(np.full(20, GRID[100]), np.ones(20, bool), n_folds=2)
    assert np.all(one.threshold == GRID[101])


def test_ten_fold_closed_form_one_error_per_fold():
    # each fold: 4 same at d=0.2, 4 diff at d=3, and one diff at d=0.1 that no threshold can fix
    block_s = [True] * 4 + [False] * 5
    block_d = [0.2] * 4 + [3.0] * 4 + [0.1]
    s = np.array(block_s * 10)
    d = np.array(block_d * 10)
    got = mv.ten_fold_accuracy(d, s)
    assert np.allclose(got.accuracy, 8 / 9)


def test_fold_bounds_and_errors():
    assert mv.fold_bounds(6000).tolist() == list(range(0, 6001, 600))
    with pytest.raises(ValueError):
        mv.fold_bounds(5, 10)
    with pytest.raises(ValueError, match="NaN"):
        mv.ten_fold_accuracy(np.array([0.1, np.nan] * 10), np.ones(20, bool))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 500), k=st.integers(2, 12))
def test_fold_bounds_match_kfold(n, k):
    if k > n:
        with pytest.raises(ValueError):
            mv.fold_bounds(n, k)
        return
    b = mv.fold_bounds(n, k)
    assert b[0] == 0 and b[-1] == n and np.all(np.diff(b) >= 1)
    for f, (_, te) in enumerate(KFold(k, shuffle=False).split(np.arange(n))):
        assert te.tolist() == list(range(b[f], b[f + 1]))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(20, 160))
def test_ten_fold_property_against_brute_force(seed, n):
    rng = np.random.default_rng(seed)
    d = np.round(rng.uniform(0, 4, n), 2)  # many ties, values near grid points
    s = rng.random(n) < 0.5
    grid = np.arange(0, 4, 0.05)
    got = mv.ten_fold_accuracy(d, s, thresholds=grid)
    acc, thr, tprs, fprs = brute_ten_fold(d, s, grid)
    assert np.array_equal(got.accuracy, acc) and np.array_equal(got.threshold, thr)
    assert np.array_equal(got.tpr, tprs) and np.array_equal(got.fpr, fprs)


# ---------------------------------------------------------------- exact variant
@pytest.mark.parametrize("seed", [0, 1])
def test_exact_matches_brute_force(seed):
    d, s = make_pairs(np.random.default_rng(seed), 200, noise=4.0)
    d = np.round(d, 3)  # ties between distances
    got = mv.exact_threshold_accuracy(d, s)
    acc, thr = brute_exact(d, s)
    assert np.array_equal(got.accuracy, acc) and np.array_equal(got.threshold, thr)


def test_exact_closed_form_midpoint():
    s = np.tile([True] * 5 + [False] * 5, 10)
    d = np.where(s, 0.5, 2.5)
    got = mv.exact_threshold_accuracy(d, s)
    assert np.all(got.accuracy == 1.0) and np.all(got.threshold == 1.5)


def test_exact_and_grid_agree_closely():
    d, s = make_pairs(np.random.default_rng(5), 1000, noise=5.0)
    ex, grid = mv.exact_threshold_accuracy(d, s), mv.ten_fold_accuracy(d, s)
    assert abs(ex.mean - grid.mean) < 0.02


# ---------------------------------------------------------------- VAL @ FAR
@pytest.mark.parametrize("seed, target", [(0, 1e-3), (1, 1e-2), (2, 0.1)])
def test_val_far_matches_brute_force(seed, target):
    d, s = make_pairs(np.random.default_rng(seed), 1000, noise=4.0)
    grid = np.arange(0, 4, 0.001)
    got = mv.val_far(d, s, far_target=target)
    val, far = brute_val(d, s, grid, target)
    assert np.allclose(got.val, val, rtol=0, atol=1e-12)
    assert np.allclose(got.far, far, rtol=0, atol=1e-12)
    assert got.val_std == pytest.approx(np.std(val))


def test_val_far_closed_form():
    s = np.tile([True] * 5 + [False] * 5, 10)
    d = np.where(s, 0.5, 2.5)
    grid = np.arange(0, 4, 0.001)
    got = mv.val_far(d, s, far_target=1e-3)
    # training FAR is 0 for t <= 2.5 and 1 above; de-duplicated, keeping the largest threshold of each
    # FAR: (0, g0) and (1, 3.999) with g0 the last grid value <= 2.5; 1e-3 lies 1e-3 of the way along
    g0 = grid[grid <= 2.5][-1]
    assert np.allclose(got.threshold, g0 + 1e-3 * (grid[-1] - g0), rtol=0, atol=1e-12)
    assert np.all(got.val == 1.0) and np.all(got.far == 1.0)  # 2.5 < 2.5015: the coarse case accepts all
    # a FAR of exactly the target on the training folds is hit exactly: 1 of 1000 diff pairs per fold
    s2 = np.tile([True] * 100 + [False] * 100, 10)
    d2 = np.where(s2, 0.5, 3.5)
    d2[np.flatnonzero(~s2)[::100]] = 1.0  # one low diff pair per fold -> train FAR 9/900 = 1e-2 at t in (1, 3.5]
    got2 = mv.val_far(d2, s2, far_target=1e-2)
    g1 = grid[grid <= 3.5][-1]
    assert np.allclose(got2.threshold, g1) and np.all(got2.val == 1.0) and np.allclose(got2.far, 1e-2)
    # the target is never reached: threshold 0, val 0
    none = mv.val_far(np.where(s, 0.5, 3.9995), s, far_target=1e-3)
    assert np.all(none.threshold == 0.0) and np.all(none.val == 0.0)


# ---------------------------------------------------------------- ROC, AUC, EER
def test_roc_curve_equals_sklearn():
    d, s = make_pairs(np.random.default_rng(7), 500, noise=4.0)
    d = np.round(d, 2)
    roc = mv.roc_curve(d, s)
    fpr, tpr, thr = roc.fpr, roc.tpr, roc.thresholds
    sf, st_, sthr = sk_roc_curve(s, -d, drop_intermediate=False)
    assert np.allclose(fpr, sf) and np.allclose(tpr, st_)
    assert np.allclose(thr[1:], -sthr[1:])


def test_fold_roc_points_lie_on_sklearn_fold_roc():
    d, s = make_pairs(np.random.default_rng(8), 300, noise=4.0)
    acc = mv.ten_fold_accuracy(d, s)
    b = mv.fold_bounds(300)
    for f in range(10):
        sf, st_, _ = sk_roc_curve(s[b[f]: b[f + 1]], -d[b[f]: b[f + 1]], drop_intermediate=False)
        points = set(zip(np.round(sf, 12), np.round(st_, 12), strict=True))
        for x, y in zip(acc.fpr[f], acc.tpr[f], strict=True):
            assert (round(x, 12), round(y, 12)) in points


def test_auc_equals_sklearn_and_mann_whitney():
    d, s = make_pairs(np.random.default_rng(9), 300, noise=4.0)
    d = np.round(d, 2)
    pos, neg = d[s], d[~s]
    mw = np.mean([(p < q) + 0.5 * (p == q) for p in pos for q in neg])
    assert mv.auc(d, s) == pytest.approx(roc_auc_score(s, -d), abs=1e-12)
    assert mv.auc(d, s) == pytest.approx(mw, abs=1e-12)


def brute_eer(d, s):
    ts = np.unique(d)
    pts = [(0.0, 1.0)] + [(np.mean(d[~s] <= t), np.mean(d[s] > t)) for t in ts]  # (FPR, FNR)
    for (f0, n0), (f1, n1) in zip(pts[:-1], pts[1:], strict=True):
        if n0 - f0 >= 0 >= n1 - f1:
            if (n0 - f0) == (n1 - f1):
                return f0
            a = (n0 - f0) / ((n0 - f0) - (n1 - f1))
            return f0 + a * (f1 - f0)
    raise AssertionError("no crossing")


def test_eer_brute_force_and_closed_form():
    d, s = make_pairs(np.random.default_rng(10), 400, noise=5.0)
    e = mv.eer(d, s)
    rate, thr = e.rate, e.threshold
    assert rate == pytest.approx(brute_eer(d, s), abs=1e-12)
    assert d.min() <= thr <= d.max()
    sep = np.array([0.1, 0.2, 1.0, 1.5])
    assert mv.eer(sep, np.array([True, True, False, False])).rate == 0.0
    # one same pair beyond one diff pair: the ROC passes (0,0),(0,.5),(.5,.5),(.5,1),(1,1) -> EER 0.5
    assert mv.eer(np.array([0.1, 0.3, 0.2, 0.4]), np.array([True, True, False, False])).rate == pytest.approx(0.5)
    assert mv.auc(sep, np.array([True, True, False, False])) == 1.0


def test_degenerate_roc_is_nan_with_warning():
    with pytest.warns(mv.DegenerateMetricWarning):
        assert np.isnan(mv.auc(np.array([0.1, 0.2]), np.array([True, True])))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert np.isnan(mv.eer(np.array([0.1, 0.2]), np.array([False, False])).rate)
    assert any(issubclass(w.category, mv.DegenerateMetricWarning) for w in caught)


# ---------------------------------------------------------------- properties of the whole pipeline
def _pipeline(f, ff, mode):
    e = mv.fuse_flip(f, ff, mode)
    d = mv.pair_distances(e[0::2], e[1::2])
    return d


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(mv.FLIP_MODES))
def test_invariance_to_row_scaling(seed, mode):
    rng = np.random.default_rng(seed)
    n = 60
    f = rng.standard_normal((2 * n, 8)).astype(np.float32)
    ff = f + 0.3 * rng.standard_normal(f.shape).astype(np.float32)
    s = rng.random(n) < 0.5
    scale = (2.0 ** rng.integers(-6, 7, size=(2 * n, 1))).astype(np.float32)  # exact in float
    base = _pipeline(f, ff, mode)
    scaled = _pipeline(f * scale, ff * scale, mode)
    assert np.array_equal(base, scaled)
    assert np.array_equal(mv.ten_fold_accuracy(base, s).accuracy, mv.ten_fold_accuracy(scaled, s).accuracy)
    if mode != "sum":  # none/concat normalise each half on its own: flips may be scaled independently
        scale2 = (2.0 ** rng.integers(-6, 7, size=(2 * n, 1))).astype(np.float32)
        assert np.array_equal(base, _pipeline(f * scale, ff * scale2, mode))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_flip_modes_properties(seed):
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((20, 6)).astype(np.float32)
    ff = rng.standard_normal((20, 6)).astype(np.float32)
    for mode, width in (("none", 6), ("sum", 6), ("concat", 12)):
        out = mv.fuse_flip(f, ff, mode)
        assert out.shape == (20, width) and out.dtype == np.float64
        assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    # with identical flips, every mode gives the distances of the plain normalised embeddings
    d_none = _pipeline(f, None, "none")
    assert np.allclose(_pipeline(f, f, "sum"), d_none, atol=1e-6)
    assert np.allclose(_pipeline(f, f, "concat"), d_none, atol=1e-6)
    # none ignores the flips; sum and concat are symmetric in (features, features_flip)
    assert np.array_equal(mv.fuse_flip(f, ff, "none"), mv.fuse_flip(f, None, "none"))
    assert np.allclose(_pipeline(f, ff, "sum"), _pipeline(ff, f, "sum"), atol=1e-6)
    assert np.allclose(_pipeline(f, ff, "concat"), _pipeline(ff, f, "concat"), atol=1e-6)
