"""Streaming MegaFace accumulator: one pass over distractor score blocks, update / merge / compute.

Vocabulary
- The *stack*: all probe vectors scored in the one GEMM (raw probes plus the replacement rows that a
  refinement needs), ``n_stack`` columns of every score block.
- A *variant* (:class:`VariantPlan`): which stack columns are its probes, its ordered genuine trials
  (as sorted int64 keys ``col << 32 | order_key(g)``), its per-column minimum genuine score, and what
  it does with noisy distractors (``keep``, ``neginf``: score -inf but counted in N, ``zero``: score 0,
  ``drop``: removed from D and N).
- A *class*: the set of distractor sizes a distractor belongs to (nested sizes: one class per size
  increment). Every count is kept per class; a size sums the classes it contains.

A score block is a float32 tensor ``S`` of shape ``(B, n_stack)`` (rows = distractors, any device)
whose rows are sorted by class. :meth:`MegafaceAccumulator.update` adds, per variant and class:
- ``rank_diff``: difference array over the variant's sorted trials: a distractor scoring ``s >= g``
  for trial keys up to ``key(s)`` adds one to every trial of that probe with ``g <= s``;
- ``tie_diff``: the same for ``s == g`` (ties);
- ``top``: the largest ``k`` impostor scores (values, sorted descending);
- ``hist``: impostor histogram (int64) over ``[lo, hi)`` with ``n_bins`` bins;
- ``n_imp``: number of impostor scores (N), masked ones included.

Memory: O(B x n_stack) for the block plus O(classes x (trials + K + bins)). Counts are integers and
top-K values are exact, so :meth:`merge` of shards equals one pass over everything, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megabench.metrics.identification import order_key

NOISE_MODES = ("keep", "neginf", "zero", "drop")
#: histogram range: [-1, 1] widened by 1024 bins of width 2**-19 each side (edges are exact binary fractions)
HIST_PAD_BINS = 1024


@dataclass(frozen=True)
class HistSpec:
    """``n_core`` bins over [-1, 1] plus ``HIST_PAD_BINS`` of the same width on each side."""

    n_core: int = 1 << 20

    @property
    def width(self) -> float:
        return 2.0 / self.n_core

    @property
    def n_bins(self) -> int:
        return self.n_core + 2 * HIST_PAD_BINS

    @property
    def lo(self) -> float:
        return -1.0 - HIST_PAD_BINS * self.width

    @property
    def hi(self) -> float:
        return 1.0 + HIST_PAD_BINS * self.width


@dataclass
class VariantPlan:
    """One protocol variant over the stack. See the module docstring.

    ``cols``: int64 sorted stack columns used. ``gen_keys``: int64 sorted trial keys and ``gen_scores``
    their float32 genuine scores (same order). ``genuine_pairs``: float32 ascending scores of the
    verification genuine pairs. ``cut``: trials with a genuine score below it are counted densely
    (every distractor compared), the others from the few distractors above the column's lowest
    high genuine score; both are exact, the cut only moves work.
    """

    name: str
    cols: np.ndarray
    gen_keys: np.ndarray
    gen_scores: np.ndarray
    noise_mode: str
    genuine_pairs: np.ndarray
    n_stack: int
    cut: float = -np.inf

    def __post_init__(self) -> None:
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, not {self.noise_mode!r}")
        n_stack = self.n_stack
        self.in_v = np.zeros(n_stack, dtype=bool)
        self.in_v[self.cols] = True
        self.excluded = np.flatnonzero(~self.in_v)
        tcol = self.gen_keys >> 32
        low = self.gen_scores < np.float32(self.cut)
        self.low_pos = np.flatnonzero(low)
        self.low_cols = tcol[low]
        self.low_g = self.gen_scores[low].astype(np.float32)
        # low trials grouped by column: a +inf-padded ascending matrix of each column's low genuine scores
        self.low_ucols, inv = np.unique(self.low_cols, return_inverse=True)
        inv = inv.reshape(-1)
        m_max = int(np.bincount(inv).max()) if inv.size else 0
        self.low_matrix = np.full((self.low_ucols.size, max(m_max, 1)), np.inf, np.float32)
        order = np.lexsort((self.low_g, inv))  # by column, then score
        rank_in_col = np.empty(inv.size, np.int64)
        starts = np.searchsorted(inv[order], np.arange(self.low_ucols.size))
        rank_in_col[order] = np.arange(inv.size) - starts[inv[order]]
        self.low_matrix[inv, rank_in_col] = self.low_g
        self.low_u, self.low_t = inv, rank_in_col  # trial i -> (column slot, position in its row)
        self.thr = np.full(n_stack, np.inf, np.float32)
        np.minimum.at(self.thr, tcol[~low], self.gen_scores[~low].astype(np.float32))
        col_keys = np.arange(n_stack, dtype=np.int64) << 32
        finite = np.where(np.isfinite(self.thr), self.thr, np.float32(0))
        self.col_start = np.searchsorted(self.gen_keys, col_keys | order_key(finite), side="left")
        zkey = col_keys | order_key(np.zeros(n_stack, np.float32))
        self.zero_right = np.searchsorted(self.gen_keys, zkey, side="right")
        self.zero_left = np.maximum(np.searchsorted(self.gen_keys, zkey, side="left"), self.col_start)

    @property
    def n_trials(self) -> int:
        return int(self.gen_keys.size)


def trial_keys(cols: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``col << 32 | order_key(score)`` as int64."""
    return (np.asarray(cols, dtype=np.int64) << 32) | order_key(scores)


TILE_ROWS = 32


def _above(sub, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, values) as numpy arrays of ``sub >= thr`` (thr: float32 per column; -inf: all),
    found through the maxima of 32-row tiles first.

    Almost no tile reaches the thresholds, so one cheap reduction replaces a full compare + nonzero.
    On CPU the sparse steps run in numpy (``np.flatnonzero`` is much faster than ``torch.nonzero``).
    """
    import torch

    n_rows, n_cols = sub.shape
    thr = np.asarray(thr, np.float32)
    if sub.device.type != "cpu":
        t = torch.as_tensor(thr, device=sub.device)
        ri, ci = torch.nonzero(sub >= t, as_tuple=True)
        return (ri.cpu().numpy().astype(np.int64), ci.cpu().numpy().astype(np.int64), sub[ri, ci].cpu().numpy())
    x = sub.numpy()
    full = 0 if np.all(thr == -np.inf) else n_rows - n_rows % TILE_ROWS  # all candidates: skip the tiles
    rows_l, cols_l, vals_l = [], [], []
    if full:
        tmax = sub[:full].view(full // TILE_ROWS, TILE_ROWS, n_cols).amax(dim=1).numpy()
        flat = np.flatnonzero(tmax >= thr[None, :])
        if flat.size:
            ti, ci = np.divmod(flat, n_cols)
            rows = ti[:, None] * TILE_ROWS + np.arange(TILE_ROWS)[None, :]
            v = x[rows, ci[:, None]]
            hit = np.flatnonzero(v >= thr[ci][:, None])
            k, r = np.divmod(hit, TILE_ROWS)
            rows_l.append(rows[k, r])
            cols_l.append(ci[k])
            vals_l.append(v[k, r])
    if full < n_rows:
        rest = x[full:]
        flat = np.flatnonzero(rest >= thr[None, :])
        r, c = np.divmod(flat, n_cols)
        rows_l.append(r + full)
        cols_l.append(c)
        vals_l.append(rest[r, c])
    if not rows_l:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return (np.concatenate(rows_l).astype(np.int64), np.concatenate(cols_l).astype(np.int64),
            np.concatenate(vals_l).astype(np.float32))


def _columns(x, idx: np.ndarray):
    """``x[:, idx]``: a slice view when ``idx`` is one contiguous ascending run, else a gather."""
    import torch

    if idx.size and idx[-1] - idx[0] + 1 == idx.size and np.all(np.diff(idx) == 1):
        return x[:, int(idx[0]):int(idx[-1]) + 1]
    return x.index_select(1, torch.as_tensor(idx, device=x.device))


class MegafaceAccumulator:
    """update / merge / compute for the streaming MegaFace pass (see module docstring)."""

    def __init__(self, plans: list[VariantPlan], n_classes: int, k: int, hist: HistSpec | None = None) -> None:
        self.plans = plans
        self.n_classes = int(n_classes)
        self.k = int(k)
        self.hist_spec = hist or HistSpec()
        c = self.n_classes
        self.state: dict[str, dict[str, object]] = {}
        for p in plans:
            self.state[p.name] = {
                "rank_diff": np.zeros((c, p.n_trials + 1), np.int64),
                "tie_diff": np.zeros((c, p.n_trials + 1), np.int64),
                "hist": np.zeros((c, self.hist_spec.n_bins), np.int64),
                "n_imp": np.zeros(c, np.int64),
                "top": [np.empty(0, np.float32) for _ in range(c)],
                "low_ge": np.zeros((c, p.low_pos.size), np.int64),
                "low_eq": np.zeros((c, p.low_pos.size), np.int64),
            }
        thr = np.stack([p.thr for p in plans]).min(axis=0) if plans else np.empty(0, np.float32)
        self.t_rank = thr.astype(np.float32)

    # --- helpers ------------------------------------------------------------------------------
    def _hist(self, x) -> np.ndarray:
        """int64 histogram of a float32 tensor (chunked so every float32 bin count stays exact).

        Small inputs run single-threaded on the CPU (torch.histc's per-thread buffers cost ~40 ms
        per call with 2^20 bins); the binning is the same function either way.
        """
        import torch

        hs = self.hist_spec
        out = np.zeros(hs.n_bins, np.int64)
        flat = x.reshape(-1)
        if flat.numel() == 0:
            return out
        small = flat.numel() < (1 << 22) and flat.device.type == "cpu"
        n_threads = torch.get_num_threads()
        if small:
            torch.set_num_threads(1)
        try:
            step = 1 << 24
            for lo in range(0, flat.numel(), step):
                h = torch.histc(flat[lo:lo + step], bins=hs.n_bins, min=hs.lo, max=hs.hi)
                out += h.to(torch.int64).cpu().numpy()
        finally:
            if small:
                torch.set_num_threads(n_threads)
        return out

    def _merge_top(self, top: np.ndarray, new: np.ndarray) -> np.ndarray:
        if new.size == 0:
            return top
        v = np.concatenate([top, new.astype(np.float32, copy=False)])
        if v.size > self.k:
            v = np.partition(v, v.size - self.k)[v.size - self.k:]
        return -np.sort(-v)

    def _floor(self, cls: int) -> float:
        """The lowest top-K floor over the variants for a class (-inf while a buffer is not full)."""
        tops = [self.state[p.name]["top"][cls] for p in self.plans]
        return min((float(t[-1]) if t.size >= self.k else -np.inf) for t in tops)

    # --- update -------------------------------------------------------------------------------
    def update(self, S, row_class: np.ndarray, row_noisy: np.ndarray) -> None:
        """Add one score block.

        ``S``: float32 tensor (B, n_stack), any device. ``row_class``: int (B,) class ids in
        ``[0, n_classes)``, non-decreasing; ``row_noisy``: bool (B,), within each class the noisy rows
        come last (sort rows by ``(class, noisy)``).
        """
        import torch

        row_class = np.asarray(row_class, dtype=np.int64)
        row_noisy = np.asarray(row_noisy, dtype=bool)
        if S.shape[0] != row_class.size or S.shape[1] != self.t_rank.size or row_noisy.size != row_class.size:
            raise ValueError(f"score block {tuple(S.shape)} does not match rows {row_class.size} / "
                             f"stack {self.t_rank.size}")
        if S.shape[0] == 0:
            return
        order_key_rows = row_class * 2 + row_noisy
        if np.any(np.diff(order_key_rows) < 0):
            raise ValueError("score block rows must be sorted by (class, noisy)")
        bounds = np.flatnonzero(np.diff(row_class)) + 1
        starts = np.concatenate([[0], bounds]).tolist()
        stops = np.concatenate([bounds, [row_class.size]]).tolist()
        hs = self.hist_spec
        if not hasattr(self, "_zero_hist"):
            self._zero_hist = self._hist(torch.zeros(1))
        zero_hist = self._zero_hist
        rank_parts = []
        for a, b in zip(starts, stops, strict=True):
            cls = int(row_class[a])
            m = a + int((~row_noisy[a:b]).sum())  # clean rows [a, m), noisy rows [m, b)
            clean = S[a:m]
            h_clean = self._hist(clean)
            if h_clean.sum() != clean.numel():
                raise ValueError(f"{clean.numel() - int(h_clean.sum())} scores are NaN or outside "
                                 f"[{hs.lo:.4f}, {hs.hi:.4f}]; features must be finite and L2-normalised")
            for p in self.plans:
                st = self.state[p.name]
                h = h_clean.copy()
                if p.excluded.size and m > a:
                    h -= self._hist(_columns(clean, p.excluded))
                n_noisy = b - m
                if n_noisy:
                    if p.noise_mode == "keep":
                        h += self._hist(_columns(S[m:b], p.cols))
                    elif p.noise_mode == "zero":
                        h += zero_hist * (n_noisy * p.cols.size)
                st["hist"][cls] += h
                st["n_imp"][cls] += (b - a - (n_noisy if p.noise_mode == "drop" else 0)) * p.cols.size
            rank_parts.append(self._scan_segment(S, a, b, cls, row_noisy))
        rows = np.concatenate([r[0] for r in rank_parts])
        cols = np.concatenate([r[1] for r in rank_parts])
        vals = np.concatenate([r[2] for r in rank_parts])
        self._update_ranks(rows, cols, vals, row_class, row_noisy)
        self._update_low(S, starts, stops, row_class, row_noisy)

    def _scan_segment(self, S, a: int, b: int, cls: int, row_noisy: np.ndarray):
        """One compare pass over rows [a, b): top-K candidates (> floor) and rank candidates (>= thr).

        Rows go in chunks that double in size so the top-K floor rises between them; while a buffer
        is not full its first rows are taken whole. Returns the rank candidates (rows, cols, values).
        """
        out_r, out_c, out_v = [], [], []
        lo, step = a, b - a  # steady state: one pass over the segment
        floor = self._floor(cls)
        if floor == -np.inf:
            min_cols = min(max(1, p.cols.size) for p in self.plans)
            step = -(-self.k // min_cols) + int(row_noisy[a:b].sum()) + 1
        while lo < b:
            hi = min(b, lo + step)
            rows, cols, vals = _above(S[lo:hi], np.minimum(self.t_rank, np.float32(floor)))
            rows += lo
            is_top = vals > floor
            self._add_top(rows[is_top], cols[is_top], vals[is_top], row_noisy, int(row_noisy[lo:hi].sum()), cls)
            is_rank = vals >= self.t_rank[cols]
            out_r.append(rows[is_rank])
            out_c.append(cols[is_rank])
            out_v.append(vals[is_rank])
            floor = self._floor(cls)
            lo, step = hi, max(64, step * 2)
        return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_v)

    def _add_top(self, rows, cols, vals, row_noisy, n_noisy_rows: int, cls: int) -> None:
        for p in self.plans:
            st = self.state[p.name]
            keep = p.in_v[cols]
            if p.noise_mode != "keep":
                keep &= ~row_noisy[rows]
            new = vals[keep]
            if p.noise_mode == "zero" and n_noisy_rows:
                new = np.concatenate([new, np.zeros(min(self.k, n_noisy_rows * p.cols.size), np.float32)])
            st["top"][cls] = self._merge_top(st["top"][cls], new)

    def _update_low(self, S, starts, stops, row_class: np.ndarray, row_noisy: np.ndarray) -> None:
        """Exact counts for the low trials from every distractor of the block.

        Columns with one low trial: ``sum(x >= g)`` and ``sum(x == g)`` over the column. Columns with
        several: sort the column once and ``searchsorted`` its low genuine scores into it.
        """
        import torch

        dev = S.device
        for p in self.plans:
            if p.low_pos.size == 0:
                continue
            st = self.state[p.name]
            m_per = np.bincount(p.low_u, minlength=p.low_ucols.size)
            single = np.flatnonzero(m_per[p.low_u] == 1)  # trial indices whose column has one low trial
            multi_u = np.flatnonzero(m_per > 1)
            s_cols = torch.as_tensor(p.low_cols[single], device=dev)
            s_g = torch.as_tensor(p.low_g[single], device=dev)
            m_cols = torch.as_tensor(p.low_ucols[multi_u], device=dev)
            m_g = torch.as_tensor(p.low_matrix[multi_u], device=dev)
            multi_trials = np.flatnonzero(np.isin(p.low_u, multi_u))
            slot = np.searchsorted(multi_u, p.low_u[multi_trials])
            for a, b in zip(starts, stops, strict=True):
                cls = int(row_class[a])
                m = a + int((~row_noisy[a:b]).sum())
                fill = 0.0 if p.noise_mode == "zero" else -np.inf
                patch = b > m and p.noise_mode != "keep"
                step = max(1, (1 << 23) // (b - a))
                for lo in range(0, single.size, step):
                    x = S[a:b].index_select(1, s_cols[lo:lo + step])
                    if patch:
                        x[m - a:] = fill
                    g = s_g[lo:lo + step]
                    idx = single[lo:lo + step]
                    # float32 sums of 0/1 are exact below 2**24 rows and several times faster than int sums
                    st["low_ge"][cls, idx] += (x >= g).to(x.dtype).sum(0).cpu().numpy().astype(np.int64)
                    st["low_eq"][cls, idx] += (x == g).to(x.dtype).sum(0).cpu().numpy().astype(np.int64)
                if multi_u.size:
                    x = S[a:b].index_select(1, m_cols)
                    if patch:
                        x[m - a:] = fill
                    if dev.type == "cpu":  # numpy's sort is several times faster than torch's on CPU
                        xs = torch.from_numpy(np.ascontiguousarray(np.sort(np.ascontiguousarray(x.T.numpy()), axis=1)))
                    else:
                        xs = torch.sort(x.T.contiguous(), dim=1).values  # (n_multi, rows) ascending
                    n_lt = torch.searchsorted(xs, m_g, right=False).cpu().numpy()  # #{x < g}
                    n_le = torch.searchsorted(xs, m_g, right=True).cpu().numpy()  # #{x <= g}
                    t = p.low_t[multi_trials]
                    st["low_ge"][cls, multi_trials] += (b - a) - n_lt[slot, t]
                    st["low_eq"][cls, multi_trials] += n_le[slot, t] - n_lt[slot, t]

    def _update_ranks(self, rows, cols, vals, row_class: np.ndarray, row_noisy: np.ndarray) -> None:
        """Candidate counts (scores >= the column's lowest high genuine score) into the difference arrays."""
        noisy_rows = np.flatnonzero(row_noisy)
        c = self.n_classes
        for p in self.plans:
            st = self.state[p.name]
            t1 = p.n_trials + 1
            keep = vals >= p.thr[cols]
            if p.noise_mode != "keep":
                keep &= ~row_noisy[rows]
            kc, kv, kr = cols[keep], vals[keep], rows[keep]
            kcls = row_class[kr]
            keys = trial_keys(kc, kv)
            start = p.col_start[kc]
            right = np.searchsorted(p.gen_keys, keys, side="right")
            left = np.searchsorted(p.gen_keys, keys, side="left")
            base = kcls * t1
            diff = np.bincount(base + start, minlength=c * t1) - np.bincount(base + right, minlength=c * t1)
            tie = left < right
            tdiff = (np.bincount(base[tie] + left[tie], minlength=c * t1)
                     - np.bincount(base[tie] + right[tie], minlength=c * t1))
            if p.noise_mode == "zero" and noisy_rows.size:
                per_cls = np.bincount(row_class[noisy_rows], minlength=c)
                zc = p.cols[p.thr[p.cols] <= 0]
                for cls in np.flatnonzero(per_cls):
                    w = int(per_cls[cls])
                    o = cls * t1
                    diff += w * (np.bincount(o + p.col_start[zc], minlength=c * t1)
                                 - np.bincount(o + p.zero_right[zc], minlength=c * t1))
                    zt = p.zero_left[zc] < p.zero_right[zc]
                    tdiff += w * (np.bincount(o + p.zero_left[zc][zt], minlength=c * t1)
                                  - np.bincount(o + p.zero_right[zc][zt], minlength=c * t1))
            st["rank_diff"] += diff.reshape(c, t1)
            st["tie_diff"] += tdiff.reshape(c, t1)

    # --- merge / state ------------------------------------------------------------------------
    def merge(self, other: MegafaceAccumulator) -> None:
        """Add another accumulator's counts (same plans, classes, k and histogram)."""
        for p in self.plans:
            a, b = self.state[p.name], other.state[p.name]
            for key in ("rank_diff", "tie_diff", "hist", "n_imp", "low_ge", "low_eq"):
                a[key] += b[key]
            a["top"] = [self._merge_top(x, y) for x, y in zip(a["top"], b["top"], strict=True)]

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Flat dict of arrays (sparse encoding for the mostly-zero ones) for saving and all_gather."""
        out: dict[str, np.ndarray] = {}
        for p in self.plans:
            st = self.state[p.name]
            for key in ("rank_diff", "tie_diff", "hist"):
                flat = st[key].reshape(-1)
                nz = np.flatnonzero(flat)
                out[f"{p.name}/{key}/idx"] = nz.astype(np.int64)
                out[f"{p.name}/{key}/val"] = flat[nz]
            out[f"{p.name}/n_imp"] = st["n_imp"].copy()
            out[f"{p.name}/low_ge"] = st["low_ge"].reshape(-1).copy()
            out[f"{p.name}/low_eq"] = st["low_eq"].reshape(-1).copy()
            out[f"{p.name}/top_len"] = np.array([t.size for t in st["top"]], np.int64)
            out[f"{p.name}/top"] = (np.concatenate(st["top"]) if st["top"] else np.empty(0, np.float32))
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the state by :meth:`state_arrays` output."""
        for p in self.plans:
            st = self.state[p.name]
            for key in ("rank_diff", "tie_diff", "hist"):
                flat = np.zeros(st[key].size, np.int64)
                flat[arrays[f"{p.name}/{key}/idx"]] = arrays[f"{p.name}/{key}/val"]
                st[key] = flat.reshape(st[key].shape)
            st["n_imp"] = np.asarray(arrays[f"{p.name}/n_imp"], np.int64).copy()
            for key in ("low_ge", "low_eq"):
                st[key] = np.asarray(arrays[f"{p.name}/{key}"], np.int64).reshape(st[key].shape).copy()
            lens = np.asarray(arrays[f"{p.name}/top_len"], np.int64)
            cuts = np.concatenate([[0], np.cumsum(lens)])
            top = np.asarray(arrays[f"{p.name}/top"], np.float32)
            st["top"] = [top[cuts[i]:cuts[i + 1]].copy() for i in range(self.n_classes)]

    # --- compute ------------------------------------------------------------------------------
    def size_view(self, name: str, classes: np.ndarray) -> dict[str, np.ndarray]:
        """Per-trial counts and impostor summary arrays for the union of ``classes`` (class ids).

        Returns ``{count_ge, count_eq}`` (int64 per sorted trial), ``top`` (desc, at most k), ``hist``, ``n_imp``.
        """
        st = self.state[name]
        classes = np.asarray(classes, dtype=np.int64)
        rd = st["rank_diff"][classes].sum(axis=0)
        td = st["tie_diff"][classes].sum(axis=0)
        top = np.empty(0, np.float32)
        for c in classes.tolist():
            top = self._merge_top(top, st["top"][c])
        ge, eq = np.cumsum(rd)[:-1], np.cumsum(td)[:-1]
        plan = next(p for p in self.plans if p.name == name)
        ge[plan.low_pos] += st["low_ge"][classes].sum(axis=0)
        eq[plan.low_pos] += st["low_eq"][classes].sum(axis=0)
        return {"count_ge": ge, "count_eq": eq, "top": top,
                "hist": st["hist"][classes].sum(axis=0), "n_imp": int(st["n_imp"][classes].sum())}
