"""The reference block kernel of the streaming MegaFace accumulator: per-block torch operations.

:class:`TorchKernel` reads a score block ``S`` (float32 tensor ``(B, n_stack)``, any device, rows sorted by
``(class, noisy)``) in several passes (``torch.histc`` per class and variant, a tile-max candidate scan,
dense compares for the low trials) and adds what it finds to a
:class:`~megabench.metrics.streaming.MegafaceAccumulator`. It runs on CPU and CUDA and is the fallback
of the fused CPU kernel (:mod:`megabench.metrics.kernels_numba`), which must give bit-identical state.
"""

from __future__ import annotations

import numpy as np

#: rows per tile of the candidate scan (one max per tile and column first)
TILE_ROWS = 32


def histogram(x, spec) -> np.ndarray:
    """int64 histogram of a float32 tensor over ``spec`` (a HistSpec), binned by ``torch.histc``.

    Chunked so every float32 bin count stays exact. Small inputs run single-threaded on the CPU
    (torch.histc's per-thread buffers cost ~40 ms per call with 2^20 bins); the binning is the same
    function either way.
    """
    import torch

    out = np.zeros(spec.n_bins, np.int64)
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
            h = torch.histc(flat[lo:lo + step], bins=spec.n_bins, min=spec.lo, max=spec.hi)
            out += h.to(torch.int64).cpu().numpy()
    finally:
        if small:
            torch.set_num_threads(n_threads)
    return out


def above(sub, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def columns(x, idx: np.ndarray):
    """``x[:, idx]``: a slice view when ``idx`` is one contiguous ascending run, else a gather."""
    import torch

    if idx.size and idx[-1] - idx[0] + 1 == idx.size and np.all(np.diff(idx) == 1):
        return x[:, int(idx[0]):int(idx[-1]) + 1]
    return x.index_select(1, torch.as_tensor(idx, device=x.device))


def class_segments(row_class: np.ndarray) -> tuple[list[int], list[int]]:
    """(starts, stops) of the runs of equal class ids in a class-sorted row array."""
    bounds = np.flatnonzero(np.diff(row_class)) + 1
    return np.concatenate([[0], bounds]).tolist(), np.concatenate([bounds, [row_class.size]]).tolist()


class TorchKernel:
    """Multi-pass torch kernel (the reference). Expects rows sorted by (class, noisy), no unused rows."""

    name = "torch"
    needs_sorted_rows = True

    def update(self, acc, S, row_class: np.ndarray, row_noisy: np.ndarray) -> None:
        """Add the block ``S`` to ``acc``'s state (histograms, N, top-K, ranks, low-trial counts)."""
        starts, stops = class_segments(row_class)
        rank_parts = []
        for a, b in zip(starts, stops, strict=True):
            cls = int(row_class[a])
            m = a + int((~row_noisy[a:b]).sum())  # clean rows [a, m), noisy rows [m, b)
            self._hist_segment(acc, S, a, m, b, cls)
            rank_parts.append(self._scan_segment(acc, S, a, b, cls, row_noisy))
        rows = np.concatenate([r[0] for r in rank_parts])
        cols = np.concatenate([r[1] for r in rank_parts])
        vals = np.concatenate([r[2] for r in rank_parts])
        acc.add_rank_candidates(rows, cols, vals, row_class, row_noisy)
        self._update_low(acc, S, starts, stops, row_class, row_noisy)

    def flush(self, acc) -> None:
        """Nothing is held between blocks."""

    def _hist_segment(self, acc, S, a: int, m: int, b: int, cls: int) -> None:
        """Histograms of one class's rows: clean rows [a, m), noisy rows [m, b)."""
        hs = acc.hist_spec
        clean = S[a:m]
        h_clean = histogram(clean, hs)
        if h_clean.sum() != clean.numel():
            raise ValueError(f"{clean.numel() - int(h_clean.sum())} scores are NaN or outside "
                             f"[{hs.lo:.4f}, {hs.hi:.4f}]; features must be finite and L2-normalised")
        zero_hist = acc.zero_hist
        for p in acc.plans:
            h = h_clean.copy()
            if p.excluded.size and m > a:
                h -= histogram(columns(clean, p.excluded), hs)
            n_noisy = b - m
            if n_noisy:
                if p.noise_mode == "keep":
                    h += histogram(columns(S[m:b], p.cols), hs)
                elif p.noise_mode == "zero":
                    h += zero_hist * (n_noisy * p.cols.size)
            acc._state[p.name]["hist"][cls] += h

    def _scan_segment(self, acc, S, a: int, b: int, cls: int, row_noisy: np.ndarray):
        """One compare pass over rows [a, b): top-K candidates (> floor) and rank candidates (>= thr).

        Rows go in chunks that double in size so the top-K floor rises between them; while a buffer
        is not full its first rows are taken whole. Returns the rank candidates (rows, cols, values).
        """
        out_r, out_c, out_v = [], [], []
        lo, step = a, b - a  # steady state: one pass over the segment
        floor = acc.floor(cls)
        if floor == -np.inf:
            step = acc.fill_rows() + int(row_noisy[a:b].sum())
        while lo < b:
            hi = min(b, lo + step)
            rows, cols, vals = above(S[lo:hi], np.minimum(acc.t_rank, np.float32(floor)))
            rows += lo
            is_top = vals > floor
            acc.add_top(rows[is_top], cols[is_top], vals[is_top], row_noisy, int(row_noisy[lo:hi].sum()), cls)
            is_rank = vals >= acc.t_rank[cols]
            out_r.append(rows[is_rank])
            out_c.append(cols[is_rank])
            out_v.append(vals[is_rank])
            floor = acc.floor(cls)
            lo, step = hi, max(64, step * 2)
        return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_v)

    def _update_low(self, acc, S, starts, stops, row_class: np.ndarray, row_noisy: np.ndarray) -> None:
        """Exact counts for the low trials from every distractor of the block.

        Columns with one low trial: ``sum(x >= g)`` and ``sum(x == g)`` over the column. Columns with
        several: sort the column once and ``searchsorted`` its low genuine scores into it.
        """
        for p in acc.plans:
            if p.low_pos.size:
                self._low_plan(acc._state[p.name], p, S, starts, stops, row_class, row_noisy)

    @staticmethod
    def _low_plan(st, p, S, starts, stops, row_class: np.ndarray, row_noisy: np.ndarray) -> None:
        import torch

        dev = S.device
        m_per = np.bincount(p.low_u, minlength=p.low_ucols.size)
        single = np.flatnonzero(m_per[p.low_u] == 1)  # trial indices whose column has one low trial
        multi_u = np.flatnonzero(m_per > 1)
        s_cols = torch.as_tensor(p.low_cols[single], device=dev)
        s_g = torch.as_tensor(p.low_g[single], device=dev)
        m_cols = torch.as_tensor(p.low_ucols[multi_u], device=dev)
        m_g = torch.as_tensor(p.low_matrix[multi_u], device=dev)
        multi_trials = np.flatnonzero(np.isin(p.low_u, multi_u))
        slot = np.searchsorted(multi_u, p.low_u[multi_trials])
        fill = 0.0 if p.noise_mode == "zero" else -np.inf
        for a, b in zip(starts, stops, strict=True):
            cls = int(row_class[a])
            m = a + int((~row_noisy[a:b]).sum())
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
