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
KERNELS = ["torch", "fused"]
HS = HistSpec(1 << 12)  # coarse bins keep the brute force cheap; full resolution: the bin-edge test


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


def test_kernels_agree_bit_for_bit_with_merge_and_reload():
    rng = np.random.default_rng(9)
    stack, plans = make_plans(rng, "neginf", 0.2)
    blocks = make_blocks(rng, stack, 400, 4, 50)
    t = feed("torch", plans, blocks, 4, 40)
    f1 = feed("fused", plans, blocks[:4], 4, 40)
    f2 = feed("fused", plans, blocks[4:], 4, 40)
    f1.merge(f2)
    assert_same_state(t, f1)
    r = MegafaceAccumulator(plans, 4, 40, HS, kernel="torch")
    r.load_state_arrays(f1.state_arrays())
    assert_same_state(t, r)


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


def test_kernel_choice_and_fallback_without_numba(monkeypatch):
    from megabench.errors import MegabenchError

    assert streaming.resolve_kernel("torch") == "torch"
    assert streaming.resolve_kernel("auto", "cuda") == "torch"
    assert streaming.resolve_kernel("auto", "cpu") == "fused"  # numba is a dependency
    with pytest.raises(MegabenchError, match="CPU only"):
        streaming.resolve_kernel("fused", "cuda:0")
    with pytest.raises(MegabenchError, match="kernel must be one of"):
        streaming.resolve_kernel("fast")
    monkeypatch.setattr(streaming, "numba_available", lambda: False)
    assert streaming.resolve_kernel("auto", "cpu") == "torch"
    with pytest.raises(MegabenchError, match="needs numba"):
        streaming.resolve_kernel("fused")


def _single_plan(n_cols: int) -> VariantPlan:
    return VariantPlan("raw", np.arange(n_cols), np.empty(0, np.int64), np.empty(0, np.float32), "keep",
                       np.empty(0, np.float32), n_cols)


def test_fused_binning_equals_torch_histc_at_bin_edges():
    """2^20 + 2048 bins: scores on, one and two ulps either side of bin edges land in torch.histc's bins."""
    hs = HistSpec()
    rng = np.random.default_rng(11)
    edges = (np.float64(hs.lo) + rng.integers(0, hs.n_bins + 1, 4000) * hs.width).astype(np.float32)
    vals = [edges, rng.uniform(-1, 1, 4000).astype(np.float32), np.float32([-1, 1, 0, -0.0, hs.lo, hs.hi])]
    for direction in (np.inf, -np.inf):
        e = edges
        for _ in range(2):
            e = np.nextafter(e, np.float32(direction))
            vals.append(e)
    x = np.concatenate(vals)
    x = x[(x >= np.float32(hs.lo)) & (x <= np.float32(hs.hi))]
    x = np.resize(x, (x.size // 50, 50))
    ref = torch.histc(torch.from_numpy(x), bins=hs.n_bins, min=hs.lo, max=hs.hi).to(torch.int64).numpy()
    for kernel in KERNELS:
        acc = MegafaceAccumulator([_single_plan(50)], 1, 10, hs, kernel=kernel)
        acc.update(torch.from_numpy(x), np.zeros(x.shape[0], np.int64), np.zeros(x.shape[0], bool))
        np.testing.assert_array_equal(acc.size_view("raw", np.array([0]))["hist"], ref, err_msg=kernel)


def test_fused_histogram_partials_flush_before_int32_overflow(monkeypatch):
    from megabench.metrics import kernels_numba

    monkeypatch.setattr(kernels_numba, "HIST_DTYPE", np.uint8)
    monkeypatch.setattr(kernels_numba, "INT32_SAFE", 1)  # spill holds 1: flush after 256 scores (~2 blocks of 10 x 12)
    rng = np.random.default_rng(12)
    stack, plans = make_plans(rng, "keep", 0.0)
    blocks = make_blocks(rng, stack, 100, 2, 10)
    f = feed("fused", plans, blocks, 2, 20)
    assert f._kernel.flush_limit == 256
    assert f._kernel.timings.get("flush", 0) > 0 and f._kernel.pending <= 256
    assert_same_state(f, feed("torch", plans, blocks, 2, 20))


def test_fused_histogram_counter_wraps_spill_exactly(monkeypatch):
    """uint8 partial counters (256) wrap many times on these blocks (scores are multiples of 1/16, so a few
    bins take most of them); the spill must restore every count."""
    from megabench.metrics import kernels_numba

    monkeypatch.setattr(kernels_numba, "HIST_DTYPE", np.uint8)
    rng = np.random.default_rng(15)
    stack, plans = make_plans(rng, "keep", 0.0)
    blocks = make_blocks(rng, stack, 3000, 2, 1500)
    f = feed("fused", plans, blocks, 2, 20)
    assert f._kernel.hist.dtype == np.uint8
    hist = f.size_view("raw", np.array([0, 1]))["hist"]
    assert hist.max() > 4 * 256  # the test really wraps
    assert_same_state(f, feed("torch", plans, blocks, 2, 20))


def test_fused_low_trials_skip_scores_below_every_low_genuine(monkeypatch):
    """A high dense cut puts most genuine trials in the low tables; the skipped position-0 counts must not
    change any rank or tie count (against the torch kernel)."""
    rng = np.random.default_rng(16)
    stack, plans = make_plans(rng, "keep", 0.9)
    blocks = make_blocks(rng, stack, 300, 2, 50)
    f = feed("fused", plans, blocks, 2, 20)
    assert f._kernel.q_u.size
    assert_same_state(f, feed("torch", plans, blocks, 2, 20))


def test_fused_candidate_buffer_overflow_rescans(monkeypatch):
    from megabench.metrics import kernels_numba

    rng = np.random.default_rng(13)
    stack, plans = make_plans(rng, "zero", -0.5)  # a low cut: many rank candidates
    blocks = make_blocks(rng, stack, 200, 2, 100)
    ref = feed("torch", plans, blocks, 2, 500)
    monkeypatch.setattr(kernels_numba, "CAND_CAP", 3)
    assert_same_state(feed("fused", plans, blocks, 2, 500), ref)


def test_torch_path_works_with_numba_hidden(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    monkeypatch.delitem(sys.modules, "megabench.metrics.kernels_numba", raising=False)
    assert not streaming.numba_available()
    rng = np.random.default_rng(14)
    stack, plans = make_plans(rng, "neginf", 0.2)
    blocks = make_blocks(rng, stack, 120, 2, 40)
    acc = feed("auto", plans, blocks, 2, 30)
    assert acc.kernel_name == "torch"
    for classes in ([0], [0, 1]):
        got, ref = acc.size_view("refined", np.array(classes)), brute_view(plans[1], blocks, classes, 30)
        for key in ("count_ge", "count_eq", "top", "hist"):
            np.testing.assert_array_equal(got[key], ref[key])


# --- the protocol's exactness suites (tests/test_megaface_protocol.py) with each kernel forced ----------
@pytest.fixture(params=KERNELS)
def forced_kernel(request, monkeypatch):
    real = streaming.resolve_kernel
    monkeypatch.setattr(streaming, "resolve_kernel", lambda kernel="auto", device="cpu": real(request.param, device))
    return request.param


@pytest.mark.parametrize("refine", ["insightface", "facex", "drop", "none"])
def test_protocol_bruteforce_with_each_kernel(forced_kernel, tmp_path, refine):
    import test_megaface_protocol as proto

    proto.test_streaming_equals_bruteforce_every_variant(tmp_path, refine, "conservative")


def test_protocol_cuts_lists_and_resume_with_each_kernel(forced_kernel, tmp_path):
    import test_megaface_protocol as proto

    for d in "abc":
        (tmp_path / d).mkdir()
    proto.test_dense_cut_only_moves_work(tmp_path / "a", 0.0)
    proto.test_non_nested_lists_and_histogram_resolved_tail(tmp_path / "b")
    proto.test_resume_equals_uninterrupted_and_refuses_other_inputs(tmp_path / "c")


# --- CUDA: deselected by default (pyproject addopts), run with `pytest -m cuda` on a GPU machine ---------
@pytest.mark.cuda
def test_torch_kernel_on_cuda_equals_cpu():
    rng = np.random.default_rng(15)
    stack, plans = make_plans(rng, "zero", 0.25)
    blocks = make_blocks(rng, stack, 300, 3, 64)
    cpu = feed("torch", plans, blocks, 3, 40)
    gpu = MegafaceAccumulator(plans, 3, 40, HS, kernel="auto", device="cuda")
    assert gpu.kernel_name == "torch"
    for S, c, nz in blocks:
        gpu.update(torch.from_numpy(np.ascontiguousarray(S)).cuda(), c, nz)
    assert_same_state(cpu, gpu)


def test_numpy_backend_scores_equal_torch_on_exact_data():
    from megabench.errors import DataError
    from megabench.metrics.search import make_backend

    rng = np.random.default_rng(16)
    probes, x = _pm(rng, 9), _pm(rng, 70)  # every dot product a multiple of 1/16: exact in any blocking
    a = make_backend("torch", probes).scores(torch.from_numpy(x))
    nb = make_backend("numpy", probes)
    b = nb.scores(x).copy()
    assert b.dtype == np.float32 and b.shape == (70, 9)
    np.testing.assert_array_equal(a.numpy(), b)
    np.testing.assert_array_equal(b, (x.astype(np.float64) @ probes.T.astype(np.float64)).astype(np.float32))
    np.testing.assert_array_equal(nb.scores(x[:30]), b[:30])  # the reused buffer: a shorter block, then a longer
    np.testing.assert_array_equal(nb.scores(torch.from_numpy(x)), b)
    with pytest.raises(DataError, match="CPU only"):
        make_backend("numpy", probes, "cuda")


def test_young_threshold_is_a_lower_bound_of_the_kth_largest_within_two_bins():
    """tau: at least k of the chosen scores are >= tau (so the k-th largest of any superset is >= tau) and it
    lies at most two histogram bins below the exact k-th largest; fewer than k scores in range: -inf."""
    from megabench.metrics.kernels_numba import young_threshold

    rng = np.random.default_rng(21)
    S = np.clip(rng.normal(0, 0.3, (300, 40)), -1.2, 1.2).astype(np.float32)
    S[::7, 3] = np.float32(0.5)  # ties
    rows, cols = np.sort(rng.choice(300, 120, replace=False)), np.sort(rng.choice(40, 25, replace=False))
    vals = np.sort(S[np.ix_(rows, cols)].ravel())[::-1]
    in_range = vals[(vals >= -1) & (vals <= 1)]
    for n_bins in (64, 1 << 16):
        width = 2.0 / n_bins
        for k in (1, 7, 100, 1500, in_range.size):
            tau = young_threshold(S, rows, cols, k, n_bins, 2)
            assert (vals >= tau).sum() >= k
            assert in_range[k - 1] - 2 * width <= tau <= in_range[k - 1]
        assert young_threshold(S, rows, cols, in_range.size + 1, n_bins, 3) == -np.inf


IDLE_PROBE = r"""
import json, os, time
import numba
import numpy as np
import megabench.metrics.kernels_numba as kn
n = kn.start_threads()
x = np.random.default_rng(0).random((2000, 500), dtype=np.float32)
rows, cols = np.arange(2000), np.arange(500)
burnt = []
for _ in range(12):  # CPU time the process uses while it sleeps 50 ms right after a parallel region
    kn.young_threshold(x, rows, cols, 5, 1024, n)
    c = time.process_time()
    time.sleep(0.05)
    burnt.append(time.process_time() - c)
print(json.dumps({"burnt_ms": float(np.median(burnt[2:]) * 1e3), "layer": numba.threading_layer(),
                  "env": {v: os.environ.get(v) for v in kn.WAIT_POLICY_VARS}}))
"""


def test_numba_workers_sleep_when_idle_and_the_setting_stays_in_the_runtime():
    """start_threads: idle OpenMP workers do not spin (they took a core from the next block's GEMM), the
    variable does not outlive the runtime's start (child processes would inherit it), and a user's choice is
    kept."""
    import json
    import os
    import subprocess
    import sys

    from megabench.metrics.kernels_numba import WAIT_POLICY_VARS

    def probe(**extra):
        env = {k: v for k, v in os.environ.items() if k not in WAIT_POLICY_VARS} | extra
        out = subprocess.run([sys.executable, "-c", IDLE_PROBE], capture_output=True, text=True, env=env, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    ours = probe()
    users = probe(GOMP_SPINCOUNT="300000")  # libgomp's own default, chosen by the user: kept
    assert ours["env"] == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}
    assert users["env"] == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "300000"}
    if ours["layer"] == "omp":  # numba's default layer where no TBB is installed (as in megabench's set-up)
        assert ours["burnt_ms"] < 1.0, ours
        assert users["burnt_ms"] > 5 * ours["burnt_ms"] + 0.5, (users, ours)
