"""The streaming accumulator's block kernels against a brute force written here, and against each other.

Scores are multiples of 1/16 (features +-1/4 in 16-D), so every comparison is exact and ties abound.
Every test runs with each kernel (``torch``: the reference; ``fused``: numba, one pass) and the two
must agree bit for bit on every state field.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megabench.metrics import streaming
from megabench.metrics.streaming import HistSpec, MegafaceAccumulator, VariantPlan, trial_keys

DIM = 16
KERNELS = ["torch"]
HS = HistSpec()


def _pm(rng, n):
    return (rng.choice([-1.0, 1.0], size=(n, DIM)) / 4.0).astype(np.float32)


def make_plans(rng, mode: str, cut: float):
    """A raw variant (keep) over all 8 probe columns and one refined variant with ``mode`` over 6 of them
    plus 2 replacement columns (so each variant has columns the other lacks)."""
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    centre = _pm(rng, 3)
    P = centre[labels].copy()
    for i in range(P.shape[0]):
        P[i, rng.choice(DIM, size=int(rng.integers(0, 6)), replace=False)] *= -1
    extra = centre[[0, 2]]  # replacement rows for probes 1 and 6
    stack = np.concatenate([P, extra])
    gram = stack @ stack.T
    n_stack = stack.shape[0]

    def plan(name, slot_col, noise_mode):
        keys, scores, pairs = [], [], []
        for lab in np.unique(labels):
            cols = slot_col[labels == lab]
            g = gram[np.ix_(cols, cols)]
            off = ~np.eye(cols.size, dtype=bool)
            pj, _ = np.nonzero(off)
            keys.append(trial_keys(cols[pj], g[off]))
            scores.append(g[off])
            pairs.append(g[np.triu_indices(cols.size, 1)])
        k, sc = np.concatenate(keys), np.concatenate(scores).astype(np.float32)
        o = np.argsort(k, kind="stable")
        return VariantPlan(name, np.sort(slot_col), k[o], sc[o], noise_mode, np.sort(np.concatenate(pairs)),
                           n_stack, cut)

    raw = plan("raw", np.arange(8), "keep")
    ref_slots = np.arange(8)
    ref_slots[[1, 6]] = [8, 9]
    return stack, [raw, plan("refined", ref_slots, mode)]


def make_blocks(rng, stack, n_rows: int, n_classes: int, block: int):
    """Distractor blocks in store order (classes shuffled, some rows unused: class -1), with near-duplicates
    of probes so that ranks and ties are non-trivial."""
    X = _pm(rng, n_rows)
    dup = rng.choice(n_rows, size=n_rows // 5, replace=False)
    X[dup] = stack[rng.integers(0, stack.shape[0], dup.size)]
    for r in dup[::2]:
        X[r, rng.choice(DIM, size=2, replace=False)] *= -1
    cls = rng.integers(-1, n_classes, n_rows)
    noisy = rng.random(n_rows) < 0.15
    S = X @ stack.T
    return [(S[a:a + block], cls[a:a + block], noisy[a:a + block]) for a in range(0, n_rows, block)]


def brute_view(plan, blocks, classes, k):
    """count_ge / count_eq per sorted trial, top-k, hist and N over the rows of ``classes``, by definition."""
    S = np.concatenate([b[0] for b in blocks])
    cls = np.concatenate([b[1] for b in blocks])
    noisy = np.concatenate([b[2] for b in blocks])
    keep = np.isin(cls, classes)
    S, noisy = S[keep].astype(np.float64), noisy[keep]
    if plan.noise_mode == "drop":
        S, noisy = S[~noisy], noisy[~noisy]
    elif plan.noise_mode == "neginf":
        S[noisy] = -np.inf
    elif plan.noise_mode == "zero":
        S[noisy] = 0.0
    tcol = plan.gen_keys >> 32
    ge = np.array([(S[:, c] >= g).sum() for c, g in zip(tcol, plan.gen_scores, strict=True)], np.int64)
    eq = np.array([(S[:, c] == g).sum() for c, g in zip(tcol, plan.gen_scores, strict=True)], np.int64)
    imp = S[:, plan.cols].ravel()
    fin = imp[np.isfinite(imp)]
    hist = np.bincount(np.floor((fin - HS.lo) / HS.width).astype(np.int64), minlength=HS.n_bins)
    top = np.sort(fin)[::-1][:k].astype(np.float32)
    return {"count_ge": ge, "count_eq": eq, "top": top, "hist": hist, "n_imp": imp.size}


def feed(kernel, plans, blocks, n_classes, k):
    acc = MegafaceAccumulator(plans, n_classes, k, HS, kernel=kernel)
    for S, c, nz in blocks:
        acc.update(torch.from_numpy(np.ascontiguousarray(S)), c, nz)
    return acc


def assert_same_state(a, b):
    sa, sb = a.state_arrays(), b.state_arrays()
    assert sa.keys() == sb.keys()
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mode", ["neginf", "zero", "drop", "keep"])
@pytest.mark.parametrize("cut", [-np.inf, 0.3, np.inf])
def test_accumulator_equals_bruteforce(kernel, mode, cut):
    rng = np.random.default_rng(hash((mode, cut)) % 2**32)
    stack, plans = make_plans(rng, mode, cut)
    blocks = make_blocks(rng, stack, 300, 3, 41)
    k = 50  # the top-K buffers fill within the first block of the big classes: the floor path runs
    acc = feed(kernel, plans, blocks, 3, k)
    assert acc.kernel_name == kernel
    for p in plans:
        for classes in ([0], [1], [2], [0, 2], [0, 1, 2]):
            got, ref = acc.size_view(p.name, np.array(classes)), brute_view(p, blocks, classes, k)
            for key in ("count_ge", "count_eq", "top", "hist"):
                np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{p.name} {classes} {key}")
            assert got["n_imp"] == ref["n_imp"]
    assert (brute_view(plans[0], blocks, [0, 1, 2], k)["count_eq"] > 0).any()  # ties are exercised


@pytest.mark.parametrize("kernel", KERNELS)
def test_row_order_and_unused_rows_do_not_matter(kernel):
    """Rows in store order, sorted by (class, noisy), or reversed; class -1 rows add nothing."""
    rng = np.random.default_rng(7)
    stack, plans = make_plans(rng, "zero", 0.25)
    blocks = make_blocks(rng, stack, 200, 2, 64)
    a = feed(kernel, plans, blocks, 2, 30)
    rev = [(S[::-1], c[::-1], nz[::-1]) for S, c, nz in blocks]
    b = feed(kernel, plans, rev, 2, 30)
    used = [(S[c >= 0], c[c >= 0], nz[c >= 0]) for S, c, nz in blocks]
    c_ = feed(kernel, plans, used, 2, 30)
    assert_same_state(a, b)
    assert_same_state(a, c_)


@pytest.mark.parametrize("kernel", KERNELS)
def test_out_of_range_scores_are_an_error(kernel):
    rng = np.random.default_rng(8)
    stack, plans = make_plans(rng, "neginf", 0.0)
    S, c, nz = make_blocks(rng, stack, 40, 1, 40)[0]
    S = S.copy()
    S[3, 2] = np.nan
    acc = MegafaceAccumulator(plans, 1, 10, HS, kernel=kernel)
    with pytest.raises(ValueError, match="NaN or outside"):
        acc.update(torch.from_numpy(S), np.zeros(40, np.int64), np.zeros(40, bool))


def test_state_fields_are_declared_with_their_reduction():
    rng = np.random.default_rng(10)
    _, plans = make_plans(rng, "drop", 0.0)
    acc = MegafaceAccumulator(plans, 2, 5, HS, kernel="torch")
    fields = acc.state["raw"].fields
    assert {n: f.reduce for n, f in fields.items()} == {
        "rank_diff": "sum", "tie_diff": "sum", "hist": "sum", "n_imp": "sum", "low_ge": "sum", "low_eq": "sum",
        "top": "topk"}
    st = streaming.VariantState(3)
    st.add_state("x", np.zeros(2, np.int64))
    st.add_state("t", [np.array([5, 1], np.float32)], "topk")
    other = streaming.VariantState(3)
    other.add_state("x", np.array([1, 2], np.int64))
    other.add_state("t", [np.array([4, 3, 2], np.float32)], "topk")
    st.merge(other)
    np.testing.assert_array_equal(st["x"], [1, 2])
    np.testing.assert_array_equal(st["t"][0], [5, 4, 3])  # the 3 largest of both
    with pytest.raises(ValueError, match="declared twice"):
        st.add_state("x", np.zeros(2, np.int64))
    with pytest.raises(KeyError, match="undeclared"):
        st["y"] = 1


def test_kernel_choice(monkeypatch):
    from megabench.errors import MegabenchError

    assert streaming.resolve_kernel("torch") == "torch"
    assert streaming.resolve_kernel("auto", "cuda") == "torch"
    with pytest.raises(MegabenchError, match="CPU only"):
        streaming.resolve_kernel("fused", "cuda:0")
    with pytest.raises(MegabenchError, match="kernel must be one of"):
        streaming.resolve_kernel("fast")
    monkeypatch.setattr(streaming, "numba_available", lambda: False)
    assert streaming.resolve_kernel("auto", "cpu") == "torch"
    with pytest.raises(MegabenchError, match="needs numba"):
        streaming.resolve_kernel("fused")
