"""The fused CPU block kernel of the streaming MegaFace accumulator (numba): one pass over each score block.

For every score ``S[r, c]`` of a block (rows in any order, class -1 rows skipped) one compiled loop does
all the accumulator needs from it:

- the impostor histogram: one increment into a per-thread uint16 partial histogram of the row's class and
  the column's *variant set* (the variants holding the column, less those that mask a noisy row), binned
  with the same float32 arithmetic as ``torch.histc``; a counter that wraps to 0 adds one to the same
  bin of an int32 spill histogram (65536 each; its pages are touched only where a bin wraps). uint16 halves
  the cache footprint of the scattered increments (measured: 0.022 s vs 0.037 s per 8192 x 3555 block).
  Partials are merged into the int64 state by :meth:`FusedKernel.flush` (before any state read, and before
  an int32 spill count could overflow);
- candidates: scores above the row's top-K floor (the class's running K-th largest) or at/above the
  column's lowest high genuine score (rank and tie updates), written to per-thread buffers;
- the low trials (genuine score below the dense cut): the score's position among the column's sorted low
  genuine scores (``#{g <= s}`` and ``#{g < s}``), counted per class; suffix sums give ``#{s >= g}`` and
  ``#{s == g}`` exactly. Position 0 (a score below every low genuine score of the column, the common case)
  is never read by those sums, so it is not counted: one compare per score.

Rows are split into one chunk per thread (``prange``), each thread writing only its own partials, so no
update is shared. The candidates go through the accumulator's own numpy code, as with the torch kernel,
so the state is bit-identical to :class:`~megabench.metrics.kernels_torch.TorchKernel`'s.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import njit, prange

#: per-thread candidate buffer (rows); a chunk that finds more is rescanned for its candidates only
CAND_CAP = 1 << 16
#: the per-thread partial histograms use at most this many bytes (fewer threads beyond it)
HIST_BUDGET_BYTES = 1 << 30
#: counter type of the partial histograms (any unsigned integer type: a wrap spills 2**bits into ``spill``)
HIST_DTYPE = np.uint16
INT32_SAFE = (1 << 31) - 1
#: a young class's rows are pre-scanned (doubling chunks) until the pass should find fewer top candidates
PRE_LIMIT = 1 << 15

_MODE_CODE = {"keep": 0, "neginf": 1, "zero": 2, "drop": 3}


@njit(nogil=True, cache=True, inline="always")
def _count_le_lt(g, a, b, v):
    """(#{g[a:b] <= v}, #{g[a:b] < v}) for ascending float32 g: binary search down to a short run, then a
    linear count (the slots hold a few scores each)."""
    lo, hi = a, b
    while hi - lo > 8:
        mid = (lo + hi) >> 1
        if g[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    lt = lo - a  # every g[a:lo] < v
    le = lt
    for j in range(lo, b):
        x = g[j]
        if x > v:
            break
        le += 1
        lt += x < v
    return le, lt


@njit(nogil=True, cache=True, error_model="numpy")
def _row_bins(S, r, lo, hi, span, nb, floor, t_rank, bins):
    """Bins of row r into ``bins`` (torch.histc's float32 arithmetic), the number of NaN / out-of-range
    scores, and whether any score is a candidate. One branch-free loop (vectorisable)."""
    n_bad = 0
    hit = False
    for c in range(S.shape[1]):
        x = S[r, c]
        ok = (x >= lo) & (x <= hi)
        n_bad += not ok
        bins[c] = np.int64((x - lo) * nb / span) if ok else 0
        hit |= (x > floor) | (x >= t_rank[c])
    return n_bad, hit


@njit(nogil=True, cache=True)
def _row_low(S, r, cls, noisy, low_cols, low_gmin, low_ptr, low_mode, low_gptr, low_g, low_base, le_out, lt_out):
    """Position counts of row r among the low genuine scores of each column that has some (``low_gmin``: the
    lowest of them per column, in ``low_cols`` order)."""
    for i in range(low_cols.size):
        c = low_cols[i]
        x = S[r, c]
        if x < low_gmin[i] and not noisy:
            continue  # position 0 in every slot of the column: one compare, contiguous tables
        for sl in range(low_ptr[c], low_ptr[c + 1]):
            v = x
            if noisy:
                mode = low_mode[sl]
                if mode == 1 or mode == 3:
                    continue
                if mode == 2:
                    v = np.float32(0.0)
            a = low_gptr[sl]
            if v < low_g[a]:
                continue  # position 0 for both counts: never read (module docstring)
            le, lt = _count_le_lt(low_g, a, low_gptr[sl + 1], v)
            le_out[cls, low_base[sl] + le] += 1
            lt_out[cls, low_base[sl] + lt] += 1


@njit(parallel=True, nogil=True, cache=True)
def fused_block(S, row_cls, row_noisy, row_floor, t_rank, col_sig, noisy_sig, n_sig1, lo, span, nb,
                hist, spill, low_cols, low_gmin, low_ptr, low_mode, low_gptr, low_g, low_base, low_le, low_lt,
                cand_r, cand_c, cand_v, cand_n, bad, bins):
    """One pass over ``S`` (float32, C-contiguous (B, C)); see the module docstring. Adds into ``hist``
    (T, classes * n_sig1, bins) unsigned (a wrap adds one to ``spill``, int32, same shape), ``low_le`` /
    ``low_lt`` (T, classes, n) int64; writes candidates
    (row, col, value) into ``cand_*`` (T, cap) with their count per thread in ``cand_n`` (may exceed cap)
    and the number of NaN / out-of-range scores into ``bad`` (T,). ``bins``: (T, C) int64 scratch.
    """
    n_threads = hist.shape[0]
    n_rows, n_cols = S.shape
    last_bin = hist.shape[2] - 1
    cap = cand_r.shape[1]
    hi = lo + span
    chunk = (n_rows + n_threads - 1) // n_threads
    for t in prange(n_threads):
        r0 = t * chunk
        r1 = min(n_rows, r0 + chunk)
        n = 0
        n_bad = 0
        b = bins[t]
        for r in range(r0, r1):
            cls = row_cls[r]
            if cls < 0:
                continue
            floor = row_floor[r]
            row_bad, hit = _row_bins(S, r, lo, hi, span, nb, floor, t_rank, b)
            n_bad += row_bad
            sig = noisy_sig if row_noisy[r] else col_sig
            hbase = cls * n_sig1 - 1
            for c in range(n_cols):
                if sig[c] != 0:
                    slot = hbase + sig[c]
                    j = min(b[c], last_bin)
                    hist[t, slot, j] += 1
                    if hist[t, slot, j] == 0:  # wrapped
                        spill[t, slot, j] += 1
            if hit:
                for c in range(n_cols):
                    x = S[r, c]
                    if x > floor or x >= t_rank[c]:
                        if n < cap:
                            cand_r[t, n] = r
                            cand_c[t, n] = c
                            cand_v[t, n] = x
                        n += 1
            if low_cols.size:
                _row_low(S, r, cls, row_noisy[r], low_cols, low_gmin, low_ptr, low_mode, low_gptr, low_g, low_base,
                         low_le[t], low_lt[t])
        cand_n[t] = n
        bad[t] = n_bad


@njit(nogil=True, cache=True)
def candidates(S, r0, r1, row_cls, row_floor, t_rank, out_r, out_c, out_v):
    """The candidates of rows [r0, r1) alone (``fused_block``'s rule), for a chunk that overflowed its buffer."""
    n = 0
    for r in range(r0, r1):
        if row_cls[r] < 0:
            continue
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
def merge_hist(hist, spill, wraps, out, sig_of_variant, n_sig1):
    """``out[cls] += sum over threads and over the variant sets holding variant v`` of the partials
    (``hist + wraps * spill``; ``spill`` is read only when ``wraps``)."""
    n_threads, n_slots, n_bins = hist.shape
    n_classes = n_slots // n_sig1
    for j in prange(n_bins):
        for cls in range(n_classes):
            acc = np.int64(0)
            for s in range(n_sig1):
                if (s + 1) & sig_of_variant:
                    for t in range(n_threads):
                        acc += hist[t, cls * n_sig1 + s, j]
                        if wraps:
                            acc += np.int64(wraps) * spill[t, cls * n_sig1 + s, j]
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
        self.n_sig1 = (1 << len(plans)) - 1
        hs = acc.hist_spec
        self.lo, self.hi = np.float32(hs.lo), np.float32(hs.hi)
        self.span = np.float32(self.hi - self.lo)
        self.nb = np.float32(hs.n_bins)
        slot_bytes = acc.n_classes * self.n_sig1 * hs.n_bins * (np.dtype(HIST_DTYPE).itemsize + 4)
        self.n_threads = max(1, min(numba.get_num_threads(), HIST_BUDGET_BYTES // max(slot_bytes, 1)))
        shape = (self.n_threads, acc.n_classes * self.n_sig1, hs.n_bins)
        self.hist = np.zeros(shape, HIST_DTYPE)
        self.spill = np.zeros(shape, np.int32)  # calloc'd: untouched pages cost no memory
        self.timings: dict[str, float] = {}  # seconds per step over all blocks (and the candidate count)
        self.rows_seen = np.zeros(acc.n_classes, np.int64)
        self.pending = 0  # scores added to the partials since the last flush (bounds every spill count)
        self._build_low(acc)
        t = self.n_threads
        self.cand_r = np.empty((t, CAND_CAP), np.int64)
        self.cand_c = np.empty((t, CAND_CAP), np.int64)
        self.cand_v = np.empty((t, CAND_CAP), np.float32)
        self.bins = np.empty((t, n_stack), np.int64)

    def _build_low(self, acc) -> None:
        """CSR tables of the low trials: per column its slots (one per variant), per slot its ascending scores."""
        n_stack = acc.t_rank.size
        slots = []  # (column, plan index, mode, ascending g, trial indices into plan.low_pos order)
        for i, p in enumerate(acc.plans):
            for u, col in enumerate(p.low_ucols.tolist()):
                trials = np.flatnonzero(p.low_u == u)
                trials = trials[np.argsort(p.low_t[trials])]  # ascending genuine score
                slots.append((col, i, _MODE_CODE[p.noise_mode], p.low_g[trials], trials))
        slots.sort(key=lambda s: (s[0], s[1]))
        self.low_slots = slots
        cols = np.array([s[0] for s in slots], np.int64)
        self.low_ptr = np.searchsorted(cols, np.arange(n_stack + 1)).astype(np.int64)
        self.low_cols = np.unique(cols).astype(np.int64)
        self.low_mode = np.array([s[2] for s in slots], np.int64)
        sizes = np.array([s[3].size for s in slots], np.int64)
        self.low_gptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.low_g = (np.concatenate([s[3] for s in slots]) if slots else np.empty(0)).astype(np.float32)
        self.low_base = (self.low_gptr[:-1] + np.arange(len(slots))).astype(np.int64)  # m + 1 positions each
        slot_min = self.low_g[self.low_gptr[:-1]] if slots else np.empty(0, np.float32)  # ascending: first is min
        self.low_gmin = np.array([slot_min[self.low_ptr[c]:self.low_ptr[c + 1]].min() for c in self.low_cols.tolist()],
                                 np.float32).reshape(-1)
        n_pos = int(self.low_gptr[-1]) + len(slots)
        # trial q (flat) at position j of slot s: #{s >= g_j} = suffix of the counts from base + j + 1
        self.q_mid = np.concatenate([self.low_base[s] + 1 + np.arange(sizes[s]) for s in range(len(slots))]
                                    ).astype(np.int64) if slots else np.empty(0, np.int64)
        self.q_end = np.repeat(self.low_base + sizes + 1, sizes)
        self.q_plan = np.repeat(np.array([s[1] for s in slots], np.int64), sizes)
        self.q_trial = np.concatenate([s[4] for s in slots]).astype(np.int64) if slots else np.empty(0, np.int64)
        self.low_le = np.zeros((self.n_threads, acc.n_classes, max(n_pos, 1)), np.int64)
        self.low_lt = np.zeros_like(self.low_le)

    # --- update -------------------------------------------------------------------------------
    def update(self, acc, S, row_class: np.ndarray, row_noisy: np.ndarray) -> None:
        """Add the block: unused rows (class -1) are skipped; rows in any order."""
        t0 = time.perf_counter()
        x = np.ascontiguousarray(S.numpy(), dtype=np.float32)
        n_rows, n_cols = x.shape
        if self.pending + n_rows * n_cols > INT32_SAFE:
            self.flush(acc)
        row_floor, pre = self._fill_tops(acc, x, row_class, row_noisy)
        t1 = time.perf_counter()
        t = self.n_threads
        cand_n = np.zeros(t, np.int64)
        bad = np.zeros(t, np.int64)
        fused_block(x, row_class, row_noisy, row_floor, acc.t_rank, self.col_sig, self.noisy_sig, self.n_sig1,
                    self.lo, self.span, self.nb, self.hist, self.spill, self.low_cols, self.low_gmin, self.low_ptr,
                    self.low_mode,
                    self.low_gptr, self.low_g, self.low_base, self.low_le, self.low_lt, self.cand_r, self.cand_c,
                    self.cand_v, cand_n, bad, self.bins)
        self.pending += n_rows * n_cols
        t2 = time.perf_counter()
        if bad.sum():
            hs = acc.hist_spec
            raise ValueError(f"{int(bad.sum())} scores are NaN or outside [{hs.lo:.4f}, {hs.hi:.4f}]; features "
                             "must be finite and L2-normalised")
        self._add_zero_rows(acc, row_class, row_noisy)
        rows, cols, vals = self._gather_candidates(x, cand_n, row_class, row_floor, acc.t_rank)
        self._add_low(acc)
        is_top = vals > row_floor[rows]
        tr, tc, tv = rows[is_top], cols[is_top], vals[is_top]
        tcls = row_class[tr]
        noisy_cls = np.bincount(row_class[row_noisy & ~pre], minlength=acc.n_classes)
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

    def _fill_tops(self, acc, x: np.ndarray, row_class: np.ndarray, row_noisy: np.ndarray):
        """Per-row top-K floor for the pass. While a class is young (its floor is -inf, or so low that the
        rest of the block would flood the candidate buffers) its rows go first through a numpy compare in
        doubling chunks, each raising the floor; those rows get floor +inf in the pass (already merged)."""
        n_rows, n_cols = x.shape
        row_floor = np.full(n_rows, np.inf, np.float32)
        pre = np.zeros(n_rows, bool)
        for cls in np.unique(row_class[row_class >= 0]).tolist():
            rows_c = np.flatnonzero(row_class == cls)
            floor = acc.floor(cls)
            lo, seen = 0, int(self.rows_seen[cls])
            step = acc.fill_rows() + int(row_noisy[rows_c].sum())
            # expected candidates of the remaining rows ~ k * remaining / rows seen
            while lo < rows_c.size and (floor == -np.inf or acc.k * (rows_c.size - lo) > PRE_LIMIT * max(seen, 1)):
                sub = rows_c[lo:lo + step]
                v = x[sub]
                ri, ci = np.nonzero(v > np.float32(floor))
                acc.add_top(sub[ri], ci, v[ri, ci], row_noisy, int(row_noisy[sub].sum()), cls)
                pre[sub] = True
                floor = acc.floor(cls)
                lo, seen, step = lo + sub.size, seen + sub.size, max(64, step * 2)
            row_floor[rows_c[lo:]] = np.float32(floor)
            self.rows_seen[cls] += rows_c.size
        return row_floor, pre

    def _gather_candidates(self, x, cand_n, row_class, row_floor, t_rank):
        chunk = -(-x.shape[0] // self.n_threads)
        rs, cs, vs = [], [], []
        for t in range(self.n_threads):
            n = int(cand_n[t])
            if n <= CAND_CAP:
                rs.append(self.cand_r[t, :n].copy())
                cs.append(self.cand_c[t, :n].copy())
                vs.append(self.cand_v[t, :n].copy())
                continue
            r0, r1 = t * chunk, min(x.shape[0], (t + 1) * chunk)
            out_r, out_c = np.empty(n, np.int64), np.empty(n, np.int64)
            out_v = np.empty(n, np.float32)
            m = candidates(x, r0, r1, row_class, row_floor, t_rank, out_r, out_c, out_v)
            rs.append(out_r[:m])
            cs.append(out_c[:m])
            vs.append(out_v[:m])
        return np.concatenate(rs), np.concatenate(cs), np.concatenate(vs)

    def _add_low(self, acc) -> None:
        """Turn this block's position counts into #{s >= g} and #{s == g} per low trial and class."""
        if not self.low_slots:
            return
        le = self.low_le.sum(axis=0)
        lt = self.low_lt.sum(axis=0)
        self.low_le[:] = 0
        self.low_lt[:] = 0
        c = le.shape[0]
        zero = np.zeros((c, 1), np.int64)
        p_le = np.concatenate([zero, np.cumsum(le, axis=1)], axis=1)
        p_lt = np.concatenate([zero, np.cumsum(lt, axis=1)], axis=1)
        ge = p_le[:, self.q_end] - p_le[:, self.q_mid]
        gt = p_lt[:, self.q_end] - p_lt[:, self.q_mid]
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
        spilled = self.pending >= wraps  # a bin can have wrapped only after that many increments
        for i, p in enumerate(acc.plans):
            merge_hist(self.hist, self.spill, wraps if spilled else 0, acc._state[p.name]["hist"], 1 << i,
                       self.n_sig1)
        self.hist[:] = 0
        if spilled:
            self.spill = np.zeros_like(self.spill)  # a fresh calloc: zeroing in place would touch every page
        self.pending = 0
        self.timings["flush"] = self.timings.get("flush", 0.0) + time.perf_counter() - t0
