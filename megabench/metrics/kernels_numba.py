"""The fused CPU block kernel of the streaming MegaFace accumulator (numba): one pass over each score block.

For every score ``S[r, c]`` of a block (rows in any order, class -1 rows skipped) one compiled loop does
all the accumulator needs from it:

- the impostor histogram: one increment into a per-thread uint16 partial histogram of the row's class and
  the column's *variant set* (the variants holding the column, less those that mask a noisy row), binned
  with the same float32 arithmetic as ``torch.histc``; a counter that wraps to 0 adds one to the same
  bin of an int32 spill histogram (65536 each; its pages are touched only where a bin wraps). uint16 halves
  the cache footprint of the scattered increments (measured: 0.022 s vs 0.037 s per 8192 x 3555 block).
  Partials are merged into the int64 state by :meth:`FusedKernel.flush` (before any state read, and before
  an int32 spill count could overflow: 2**31 wraps of one bin); the spill is read only for the (thread,
  slot) pairs marked as having wrapped;
- candidates: scores above the row's top-K floor (the class's running K-th largest) or at/above the
  column's lowest high genuine score (rank and tie updates), written to per-thread buffers;
- the low trials (genuine score below the dense cut): counted densely, ``#{s >= g}`` and ``#{s > g}`` per
  trial and class. A clean row's scores in the columns that hold low trials are copied into a per-thread
  tile (columns x ``TILE_ROWS`` rows of one class, transposed) while the row is in cache; a full tile is
  counted trial by trial over its contiguous rows (vectorised compares, no branch on the score). Noisy
  rows take a scalar path that applies each trial's noise mode. Measured per 8192 x 3555 block at 1M:
  0.007 s, vs 0.034 s for the earlier per-score binary search among each column's low scores.

The block's rows are visited in (class, noisy) order (``order``; the rows themselves stay where they are),
split into one chunk per thread (``prange``), each thread writing only its own partials, so no update is
shared. The candidates go through the accumulator's own numpy code, as with the torch kernel,
so the state is bit-identical to :class:`~megabench.metrics.kernels_torch.TorchKernel`'s.
"""

from __future__ import annotations

import os
import time

import numba
import numpy as np
from numba import njit, prange

#: per-thread candidate buffer (rows); a chunk that finds more is rescanned for its candidates only
CAND_CAP = 1 << 17
#: the per-thread partial histograms use at most this many bytes (fewer threads beyond it)
HIST_BUDGET_BYTES = 1 << 30
#: counter type of the partial histograms (any unsigned integer type: a wrap spills 2**bits into ``spill``)
HIST_DTYPE = np.uint16
INT32_SAFE = (1 << 31) - 1
#: a class is *young* while the pass would find more than about this many top candidates among its rows
#: (k x its rows in the block / its rows seen before); its floor is then first raised from a histogram.
#: Below it, collecting the candidates (buffers of CAND_CAP per thread) is cheaper than that extra pass.
PRE_LIMIT = 1 << 18
#: bins over [-1, 1] of that histogram (the floor it gives is at most two bins below the true bound)
YOUNG_BINS = 1 << 16
#: rows per low-trial tile (a tile holds len(low_cols) x TILE_ROWS float32 per thread)
TILE_ROWS = 32

_MODE_CODE = {"keep": 0, "neginf": 1, "zero": 2, "drop": 3}
#: set by the user, these choose how idle OpenMP workers wait; megabench then leaves the choice alone
WAIT_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def start_threads() -> int:
    """Start numba's worker threads (once per process) with idle workers asleep at once; their number.

    numba's default threading layer runs on the OpenMP runtime (libgomp), whose idle workers spin ~300,000
    rounds after each parallel region before they sleep. In the MegaFace stream the spinning worker takes a
    core from the GEMM of the next block (measured at 1M on 2 cores: GEMM 147-148 ms per block after the
    fused pass vs 141-143 ms with sleeping workers, bare GEMM 140-142 ms; whole run ~0.4 s faster). The
    runtime reads ``OMP_WAIT_POLICY`` once, when it loads: it is set to ``passive`` only for that moment
    (unless the user set either of ``WAIT_POLICY_VARS``), so child processes do not inherit it. The process
    has one libgomp: where torch was imported first, numba shares torch's and its default stays (slower
    here, never other numbers); torch imported later shares this one, so its CPU parallel regions also
    wake sleeping workers (a small CNN training step on 2 threads: 79-84 -> 87 ms). megabench's commands
    that train or extract import it first; a program that runs the fused kernel and then trains on the CPU in
    one process can keep libgomp's default with ``GOMP_SPINCOUNT=300000``.
    """
    if any(v in os.environ for v in WAIT_POLICY_VARS):
        return numba.get_num_threads()
    os.environ["OMP_WAIT_POLICY"] = "passive"
    try:
        return numba.get_num_threads()  # starts the threading layer, which loads the runtime
    finally:
        os.environ.pop("OMP_WAIT_POLICY", None)


@njit(nogil=True, cache=True, error_model="numpy")
def _row_bins(S, r, lo, hi, span, nb, last_bin, off, floor, t_rank, idx):
    """Row r's histogram positions into ``idx``: ``off[c]`` (the column's variant-set slot times the bin count)
    plus the bin (torch.histc's float32 arithmetic, the top edge in the last bin); also the number of NaN /
    out-of-range scores and whether any score is a candidate. One branch-free loop (vectorised)."""
    n_bad = 0
    hit = False
    for c in range(S.shape[1]):
        x = S[r, c]
        ok = (x >= lo) & (x <= hi)
        n_bad += not ok
        j = np.int64((x - lo) * nb / span) if ok else 0
        idx[c] = off[c] + min(j, last_bin)
        hit |= (x > floor) | (x >= t_rank[c])
    return n_bad, hit


@njit(nogil=True, cache=True, inline="always")
def _row_hist(idx, sig, check, base, hist, spill, wrapped, n_bins):
    """One increment per column at ``base + idx[c]`` of the flat partial histogram (columns with ``sig`` 0
    skipped when ``check``: a noisy row in the columns of masking variants only); a counter that wraps to
    0 adds one to the same position of ``spill`` and marks its slot in ``wrapped``. Without ``check`` there
    is no branch but the wrap (measured: 0.023 s vs 0.041 s per 8192 x 3555 block with the slot lookup)."""
    if check:
        for c in range(idx.size):
            if sig[c] != 0:
                _bump(base + idx[c], hist, spill, wrapped, n_bins)
    else:
        for c in range(idx.size):
            _bump(base + idx[c], hist, spill, wrapped, n_bins)


@njit(nogil=True, cache=True, inline="always")
def _bump(k, hist, spill, wrapped, n_bins):
    hist[k] += 1
    if hist[k] == 0:  # wrapped
        spill[k] += 1
        wrapped[k // n_bins] = 1


@njit(nogil=True, cache=True, inline="always")
def _row_candidates(S, r, floor, t_rank, n, cand_r, cand_c, cand_v):
    """Append row r's candidates (score > floor or >= the column's t_rank) from position n; returns the new
    count (positions beyond the buffer are counted, not written)."""
    cap = cand_r.size
    for c in range(S.shape[1]):
        x = S[r, c]
        if x > floor or x >= t_rank[c]:
            if n < cap:
                cand_r[n] = r
                cand_c[n] = c
                cand_v[n] = x
            n += 1
    return n


@njit(nogil=True, cache=True)
def _tile_counts(tile, n, cls, q_u, q_g, ge, gt):
    """Add ``#{tile[u, :n] >= g}`` / ``#{... > g}`` of each low trial (column slot u, genuine score g) of class
    ``cls`` into ``ge`` / ``gt`` (classes, trials)."""
    for q in range(q_u.size):
        v = tile[q_u[q]]
        g = q_g[q]
        a = 0
        b = 0
        for k in range(n):
            a += v[k] >= g
            b += v[k] > g
        ge[cls, q] += a
        gt[cls, q] += b


@njit(nogil=True, cache=True)
def _noisy_low(S, r, cls, low_cols, q_u, q_g, q_mode, ge, gt):
    """The low-trial counts of one noisy row: each trial's variant keeps the score (keep), replaces it by 0.0
    (zero) or leaves the row out (neginf: never >= a finite g; drop)."""
    for q in range(q_u.size):
        mode = q_mode[q]
        if mode == 1 or mode == 3:
            continue
        v = np.float32(0.0) if mode == 2 else S[r, low_cols[q_u[q]]]
        ge[cls, q] += v >= q_g[q]
        gt[cls, q] += v > q_g[q]


@njit(parallel=True, nogil=True, cache=True)
def fused_block(S, order, row_cls, row_noisy, row_floor, t_rank, col_sig, noisy_sig, col_off, noisy_off, n_sig1,
                lo, span, nb,
                hist, spill, wrapped, low_cols, q_u, q_g, q_mode, low_ge, low_gt, tiles,
                cand_r, cand_c, cand_v, cand_n, bad, bins):
    """One pass over ``S`` (float32, C-contiguous (B, C)), visiting the rows ``order`` (every row of class >= 0,
    sorted by (class, noisy)); see the module docstring. Adds into ``hist`` (T, classes * n_sig1, bins)
    unsigned (a wrap adds one to ``spill``, int32, same shape, and sets its slot in ``wrapped`` (T, slots)
    uint8) and ``low_ge`` / ``low_gt`` (T, classes, trials) int64; writes candidates (row, col, value) into
    ``cand_*`` (T, cap) with their count per thread in ``cand_n`` (may exceed cap) and the number of NaN /
    out-of-range scores into ``bad`` (T,). Scratch: ``bins`` (T, C) int64, ``tiles`` (T, len(low_cols),
    TILE_ROWS) float32.
    """
    n_threads = hist.shape[0]
    n_order = order.size
    n_bins = hist.shape[2]
    last_bin = n_bins - 1
    check_clean = (col_sig == 0).any()  # some column in no variant: clean rows check too
    n_low = low_cols.size
    tile_rows = tiles.shape[2]
    hi = lo + span
    chunk = (n_order + n_threads - 1) // n_threads
    for t in prange(n_threads):
        i0 = t * chunk
        i1 = min(n_order, i0 + chunk)
        n = 0
        n_bad = 0
        b = bins[t]
        tile = tiles[t]
        h = hist[t].reshape(-1)  # flat views: position = (class * n_sig1 + sig - 1) * n_bins + bin
        sp = spill[t].reshape(-1)
        k = 0  # rows in the tile, all of class tile_cls
        tile_cls = 0
        for i in range(i0, i1):
            r = order[i]
            cls = row_cls[r]
            floor = row_floor[r]
            noisy = row_noisy[r]
            row_bad, hit = _row_bins(S, r, lo, hi, span, nb, last_bin, noisy_off if noisy else col_off, floor,
                                     t_rank, b)
            n_bad += row_bad
            _row_hist(b, noisy_sig if noisy else col_sig, noisy or check_clean, cls * n_sig1 * n_bins, h, sp,
                      wrapped[t], n_bins)
            if hit:
                n = _row_candidates(S, r, floor, t_rank, n, cand_r[t], cand_c[t], cand_v[t])
            if n_low:
                if row_noisy[r]:
                    _noisy_low(S, r, cls, low_cols, q_u, q_g, q_mode, low_ge[t], low_gt[t])
                    continue
                if k == tile_rows or (k > 0 and cls != tile_cls):
                    _tile_counts(tile, k, tile_cls, q_u, q_g, low_ge[t], low_gt[t])
                    k = 0
                tile_cls = cls
                for u in range(n_low):
                    tile[u, k] = S[r, low_cols[u]]
                k += 1
        if k > 0:
            _tile_counts(tile, k, tile_cls, q_u, q_g, low_ge[t], low_gt[t])
        cand_n[t] = n
        bad[t] = n_bad


@njit(nogil=True, cache=True)
def candidates(S, order, i0, i1, row_floor, t_rank, out_r, out_c, out_v):
    """The candidates of rows ``order[i0:i1]`` alone (``fused_block``'s rule), for a chunk that overflowed its
    buffer."""
    n = 0
    for i in range(i0, i1):
        r = order[i]
        floor = row_floor[r]
        for c in range(S.shape[1]):
            x = S[r, c]
            if x > floor or x >= t_rank[c]:
                out_r[n] = r
                out_c[n] = c
                out_v[n] = x
                n += 1
    return n


@njit(parallel=True, nogil=True, cache=True)
def young_threshold(S, rows, cols, k, n_bins, n_threads):
    """A value ``tau`` such that at least ``k`` of the scores ``S[rows][:, cols]`` are >= tau (so the k-th
    largest of any superset is >= tau), from a histogram of ``n_bins`` bins over [-1, 1]; -inf when there
    are fewer than ``k`` scores in range. ``tau`` is the lower edge of the bin below the one where the count
    from the top reaches ``k`` (a score is never binned more than one bin above its value). ``n_threads``
    partial histograms are filled in parallel."""
    parts = np.zeros((n_threads, n_bins), np.int64)
    chunk = (rows.size + n_threads - 1) // n_threads
    scale = np.float32(n_bins / 2.0)
    for t in prange(n_threads):
        h = parts[t]
        for i in range(t * chunk, min(rows.size, (t + 1) * chunk)):
            r = rows[i]
            for j in range(cols.size):
                x = S[r, cols[j]]
                if x >= -1.0 and x <= 1.0:
                    h[min(np.int64((x + np.float32(1.0)) * scale), n_bins - 1)] += 1
    total = 0
    for b in range(n_bins - 1, -1, -1):
        for t in range(n_threads):
            total += parts[t, b]
        if total >= k:
            return np.float32(-1.0 + (b - 1) * (2.0 / n_bins))
    return np.float32(-np.inf)


@njit(parallel=True, nogil=True, cache=True)
def merge_hist(hist, spill, wrapped, wraps, out, sig_of_variant, n_sig1):
    """``out[cls] += sum over threads and over the variant sets holding variant v`` of the partials
    (``hist + wraps * spill``; ``spill`` is read only for the slots marked in ``wrapped``)."""
    n_threads, n_slots, n_bins = hist.shape
    n_classes = n_slots // n_sig1
    for j in prange(n_bins):
        for cls in range(n_classes):
            acc = np.int64(0)
            for s in range(n_sig1):
                if (s + 1) & sig_of_variant:
                    slot = cls * n_sig1 + s
                    for t in range(n_threads):
                        acc += hist[t, slot, j]
                        if wrapped[t, slot]:
                            acc += np.int64(wraps) * spill[t, slot, j]
            out[cls, j] += acc


class FusedKernel:
    """The fused numba kernel bound to one accumulator (its plans fix the column and low-trial tables)."""

    name = "fused"
    needs_sorted_rows = False

    def __init__(self, acc) -> None:
        plans = acc.plans
        n_stack = acc.t_rank.size
        if len(plans) > 16:
            raise ValueError("the fused kernel handles at most 16 variants")
        self.col_sig = np.zeros(n_stack, np.int64)
        self.keep_mask = 0
        for i, p in enumerate(plans):
            self.col_sig[p.cols] |= 1 << i
            if p.noise_mode == "keep":
                self.keep_mask |= 1 << i
        self.noisy_sig = self.col_sig & self.keep_mask  # a noisy row counts only in the keep variants
        n_bins = acc.hist_spec.n_bins
        self.col_off = np.maximum(self.col_sig - 1, 0) * n_bins  # the slot's start in a class's flat partials
        self.noisy_off = np.maximum(self.noisy_sig - 1, 0) * n_bins
        self.n_sig1 = (1 << len(plans)) - 1
        hs = acc.hist_spec
        self.lo, self.hi = np.float32(hs.lo), np.float32(hs.hi)
        self.span = np.float32(self.hi - self.lo)
        self.nb = np.float32(hs.n_bins)
        slot_bytes = acc.n_classes * self.n_sig1 * hs.n_bins * (np.dtype(HIST_DTYPE).itemsize + 4)
        self.n_threads = max(1, min(start_threads(), HIST_BUDGET_BYTES // max(slot_bytes, 1)))
        shape = (self.n_threads, acc.n_classes * self.n_sig1, hs.n_bins)
        self.hist = np.zeros(shape, HIST_DTYPE)
        self.spill = np.zeros(shape, np.int32)  # calloc'd: untouched pages cost no memory
        self.wrapped = np.zeros(shape[:2], np.uint8)
        self.timings: dict[str, float] = {}  # seconds per step over all blocks (and the candidate count)
        self.rows_seen = np.zeros(acc.n_classes, np.int64)
        self.all_cols = np.flatnonzero(self.col_sig == self.n_sig1).astype(np.int64)  # columns of every variant
        self.pending = 0  # scores added to the partials since the last flush (bounds every spill count)
        # a spill bin counts one per 2**bits increments of its bin: int32 holds them until this many scores
        self.flush_limit = INT32_SAFE << (8 * np.dtype(HIST_DTYPE).itemsize)
        self._build_low(acc)
        t = self.n_threads
        self.cand_r = np.empty((t, CAND_CAP), np.int64)
        self.cand_c = np.empty((t, CAND_CAP), np.int64)
        self.cand_v = np.empty((t, CAND_CAP), np.float32)
        self.bins = np.empty((t, n_stack), np.int64)

    def _build_low(self, acc) -> None:
        """The low trials of every variant, flattened: column slot ``q_u`` (into ``low_cols``), genuine score
        ``q_g``, noise mode ``q_mode`` and where each count goes (``q_plan``, ``q_trial``: plan.low_pos order)."""
        plans = acc.plans
        low_cols = np.unique(np.concatenate([p.low_cols for p in plans] + [np.empty(0, np.int64)])).astype(np.int64)
        self.low_cols = low_cols
        self.q_u = np.concatenate([np.searchsorted(low_cols, p.low_cols) for p in plans]).astype(np.int64)
        self.q_g = np.concatenate([p.low_g for p in plans]).astype(np.float32)
        self.q_mode = np.concatenate([np.full(p.low_pos.size, _MODE_CODE[p.noise_mode], np.int64) for p in plans])
        self.q_plan = np.concatenate([np.full(p.low_pos.size, i, np.int64) for i, p in enumerate(plans)])
        self.q_trial = np.concatenate([np.arange(p.low_pos.size, dtype=np.int64) for p in plans])
        shape = (self.n_threads, acc.n_classes, max(self.q_u.size, 1))
        self.low_ge = np.zeros(shape, np.int64)
        self.low_gt = np.zeros(shape, np.int64)
        self.tiles = np.empty((self.n_threads, max(low_cols.size, 1), TILE_ROWS), np.float32)

    # --- update -------------------------------------------------------------------------------
    def update(self, acc, S, row_class: np.ndarray, row_noisy: np.ndarray) -> None:
        """Add the block: unused rows (class -1) are skipped; rows in any order."""
        t0 = time.perf_counter()
        x = np.ascontiguousarray(S if isinstance(S, np.ndarray) else S.numpy(), dtype=np.float32)
        n_rows, n_cols = x.shape
        if self.pending + n_rows * n_cols > self.flush_limit:
            self.flush(acc)
        row_floor = self._fill_tops(acc, x, row_class, row_noisy)
        order = np.flatnonzero(row_class >= 0)
        order = order[np.argsort(row_class[order] * 2 + row_noisy[order], kind="stable")]
        t1 = time.perf_counter()
        t = self.n_threads
        cand_n = np.zeros(t, np.int64)
        bad = np.zeros(t, np.int64)
        fused_block(x, order, row_class, row_noisy, row_floor, acc.t_rank, self.col_sig, self.noisy_sig,
                    self.col_off, self.noisy_off, self.n_sig1,
                    self.lo, self.span, self.nb, self.hist, self.spill, self.wrapped, self.low_cols, self.q_u, self.q_g,
                    self.q_mode, self.low_ge, self.low_gt, self.tiles, self.cand_r, self.cand_c, self.cand_v, cand_n,
                    bad, self.bins)
        self.pending += n_rows * n_cols
        t2 = time.perf_counter()
        if bad.sum():
            hs = acc.hist_spec
            raise ValueError(f"{int(bad.sum())} scores are NaN or outside [{hs.lo:.4f}, {hs.hi:.4f}]; features "
                             "must be finite and L2-normalised")
        self._add_zero_rows(acc, row_class, row_noisy)
        rows, cols, vals = self._gather_candidates(x, order, cand_n, row_floor, acc.t_rank)
        self._add_low(acc)
        is_top = vals > row_floor[rows]
        tr, tc, tv = rows[is_top], cols[is_top], vals[is_top]
        tcls = row_class[tr]
        noisy_cls = np.bincount(row_class[row_noisy], minlength=acc.n_classes)
        for cls in np.union1d(np.unique(tcls), np.flatnonzero(noisy_cls)).tolist():
            sel = tcls == cls
            acc.add_top(tr[sel], tc[sel], tv[sel], row_noisy, int(noisy_cls[cls]), cls)
        t3 = time.perf_counter()
        is_rank = vals >= acc.t_rank[cols]
        acc.add_rank_candidates(rows[is_rank], cols[is_rank], vals[is_rank], row_class, row_noisy)
        t4 = time.perf_counter()
        for key, dt in (("young classes", t1 - t0), ("fused pass", t2 - t1), ("top-K + low", t3 - t2),
                        ("ranks", t4 - t3)):
            self.timings[key] = self.timings.get(key, 0.0) + dt
        self.timings["candidates"] = self.timings.get("candidates", 0.0) + float(vals.size)

    @staticmethod
    def _add_zero_rows(acc, row_class: np.ndarray, row_noisy: np.ndarray) -> None:
        """A ``zero`` variant's noisy rows score 0.0 in each of its columns: one bin, counted per class."""
        zero_plans = [p for p in acc.plans if p.noise_mode == "zero"]
        if not zero_plans or not row_noisy.any():
            return
        per_cls = np.bincount(row_class[row_noisy], minlength=acc.n_classes)
        b = int(np.flatnonzero(acc.zero_hist)[0])
        for p in zero_plans:
            acc._state[p.name]["hist"][:, b] += per_cls * p.cols.size

    def _fill_tops(self, acc, x: np.ndarray, row_class: np.ndarray, row_noisy: np.ndarray) -> np.ndarray:
        """Per-row top-K floor for the pass: the class's running floor (candidates are scores above it).

        A young class (floor -inf, or so low that the block would flood the candidate buffers) gets a higher
        floor first: just below ``tau``, the value at least ``k`` of its clean rows' scores in the columns of
        every variant reach (:func:`young_threshold`). Each variant then finds >= k candidates among these
        rows, so its k-th largest is >= tau and no score below tau can be in its top-K: exact."""
        row_floor = np.empty(x.shape[0], np.float32)
        for cls in np.unique(row_class[row_class >= 0]).tolist():
            rows_c = np.flatnonzero(row_class == cls)
            floor = np.float32(acc.floor(cls))
            seen = int(self.rows_seen[cls])
            if floor == -np.inf or acc.k * rows_c.size > PRE_LIMIT * max(seen, 1):
                clean = rows_c[~row_noisy[rows_c]]
                tau = young_threshold(x, clean, self.all_cols, acc.k, YOUNG_BINS, self.n_threads)
                floor = max(floor, np.nextafter(tau, np.float32(-np.inf)))  # candidates: x > floor, i.e. x >= tau
            row_floor[rows_c] = floor
            self.rows_seen[cls] += rows_c.size
        return row_floor

    def _gather_candidates(self, x, order, cand_n, row_floor, t_rank):
        chunk = -(-order.size // self.n_threads)
        rs, cs, vs = [], [], []
        for t in range(self.n_threads):
            n = int(cand_n[t])
            if n <= CAND_CAP:
                rs.append(self.cand_r[t, :n].copy())
                cs.append(self.cand_c[t, :n].copy())
                vs.append(self.cand_v[t, :n].copy())
                continue
            out_r, out_c = np.empty(n, np.int64), np.empty(n, np.int64)
            out_v = np.empty(n, np.float32)
            m = candidates(x, order, t * chunk, min(order.size, (t + 1) * chunk), row_floor, t_rank, out_r, out_c,
                           out_v)
            rs.append(out_r[:m])
            cs.append(out_c[:m])
            vs.append(out_v[:m])
        return np.concatenate(rs), np.concatenate(cs), np.concatenate(vs)

    def _add_low(self, acc) -> None:
        """Add this block's low-trial counts: ``low_ge`` = #{s >= g}, ``low_eq`` = #{s >= g} - #{s > g}."""
        if not self.q_u.size:
            return
        ge = self.low_ge.sum(axis=0)[:, :self.q_u.size]
        gt = self.low_gt.sum(axis=0)[:, :self.q_u.size]
        self.low_ge[:] = 0
        self.low_gt[:] = 0
        for i, p in enumerate(acc.plans):
            sel = self.q_plan == i
            if sel.any():
                st = acc._state[p.name]
                st["low_ge"][:, self.q_trial[sel]] += ge[:, sel]
                st["low_eq"][:, self.q_trial[sel]] += ge[:, sel] - gt[:, sel]

    def flush(self, acc) -> None:
        """Add the per-thread partial histograms into each variant's int64 histogram; zero them."""
        if self.pending == 0:
            return
        t0 = time.perf_counter()
        wraps = 1 << (8 * self.hist.itemsize)
        for i, p in enumerate(acc.plans):
            merge_hist(self.hist, self.spill, self.wrapped, wraps, acc._state[p.name]["hist"], 1 << i, self.n_sig1)
        # fresh callocs (np.zeros; np.zeros_like writes every page: 0.07 s each): zeroing in place would touch
        # every page now, while the pass touches only the bins it uses
        self.hist = np.zeros(self.hist.shape, self.hist.dtype)
        if self.wrapped.any():
            self.spill = np.zeros(self.spill.shape, self.spill.dtype)
            self.wrapped[:] = 0
        self.pending = 0
        self.timings["flush"] = self.timings.get("flush", 0.0) + time.perf_counter() - t0
