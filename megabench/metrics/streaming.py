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

A score block is a float32 tensor ``S`` of shape ``(B, n_stack)`` (rows = distractors, any device,
in any order; each row has a class, -1 for none, and a noisy flag). :meth:`MegafaceAccumulator.update`
adds, per variant and class, to the fields declared in :class:`VariantState` (reduction in brackets):
- ``rank_diff`` (sum): difference array over the variant's sorted trials: a distractor scoring ``s >= g``
  for trial keys up to ``key(s)`` adds one to every trial of that probe with ``g <= s``;
- ``tie_diff`` (sum): the same for ``s == g`` (ties);
- ``low_ge`` / ``low_eq`` (sum): exact ``#{s >= g}`` / ``#{s == g}`` of the low trials (below ``cut``);
- ``top`` (topk): the largest ``k`` impostor scores (values, sorted descending);
- ``hist`` (sum): impostor histogram (int64) over ``[lo, hi)`` with ``n_bins`` bins;
- ``n_imp`` (sum): number of impostor scores (N), masked ones included.

The per-block work is done by a kernel: :mod:`megabench.metrics.kernels_torch` (the reference: several
torch passes over the block, rows ordered by (class, noisy) first, CPU or CUDA) or
:mod:`megabench.metrics.kernels_numba` (one fused pass, CPU, any row order). Both give the same state.

Memory: O(B x n_stack) for the block plus O(classes x (trials + K + bins)). Counts are integers and
top-K values are exact, so :meth:`merge` of shards equals one pass over everything, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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


def merge_top(top: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest of ``top`` (float32, sorted descending, at most ``k``) and ``new`` (any order),
    sorted descending.

    Only ``new`` is sorted (after dropping what cannot enter a full ``top``); the two sorted runs are merged
    in O(k): a block's few candidates cost far less than re-sorting the k kept values.
    """
    new = new.astype(np.float32, copy=False)
    if top.size >= k and new.size:
        new = new[new > top[k - 1]]  # an equal value would not change the kept values
    if new.size == 0:
        return top
    if new.size > k:
        new = np.partition(new, new.size - k)[new.size - k:]
    new = -np.sort(-new)
    at = np.searchsorted(-top, -new, side="right")  # after the equal kept values: any order of equals is the same
    return np.insert(top, at, new)[:k]


@dataclass(frozen=True)
class StateField:
    """A declared piece of per-variant state: ``reduce`` says how two shards combine.

    ``sum``: an int64 array added elementwise. ``topk``: one descending float32 array per class, two
    shards combined by keeping the ``k`` largest. ``sparse``: saved as (flat index, value) of its non-zeros.
    """

    name: str
    reduce: Literal["sum", "topk"]
    sparse: bool = False


class VariantState:
    """One variant's state: arrays declared with :meth:`add_state` (torchmetrics' shape, our own code).

    Indexing (``state["hist"]``) reads or replaces a field's value; :meth:`merge`, :meth:`to_arrays`
    and :meth:`load_arrays` work from the declarations, so a new field needs one ``add_state`` line.
    """

    def __init__(self, k: int) -> None:
        self.k = int(k)
        self.fields: dict[str, StateField] = {}
        self._values: dict[str, Any] = {}

    def add_state(self, name: str, default, reduce: Literal["sum", "topk"] = "sum", *, sparse: bool = False) -> None:
        """Declare ``name`` with its initial value (an int64 array for sum, a list of per-class arrays for topk)."""
        if reduce not in ("sum", "topk"):
            raise ValueError(f"reduce must be 'sum' or 'topk', not {reduce!r}")
        if name in self.fields:
            raise ValueError(f"state field {name!r} declared twice")
        self.fields[name] = StateField(name, reduce, sparse)
        self._values[name] = default

    def __getitem__(self, name: str):
        return self._values[name]

    def __setitem__(self, name: str, value) -> None:
        if name not in self.fields:
            raise KeyError(f"undeclared state field {name!r}")
        self._values[name] = value

    def merge(self, other: VariantState) -> None:
        """Combine ``other`` into this state, field by field, by each field's reduction."""
        for name, f in self.fields.items():
            if f.reduce == "sum":
                self._values[name] += other[name]
            else:
                self._values[name] = [merge_top(a, b, self.k) for a, b in zip(self[name], other[name], strict=True)]

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Flat ``{prefix/field...: array}`` (sparse fields as ``/idx`` + ``/val``, topk as ``_len`` + values)."""
        out: dict[str, np.ndarray] = {}
        for name, f in self.fields.items():
            v = self._values[name]
            if f.reduce == "topk":
                out[f"{prefix}/{name}_len"] = np.array([t.size for t in v], np.int64)
                out[f"{prefix}/{name}"] = np.concatenate(v) if v else np.empty(0, np.float32)
            elif f.sparse:
                flat = v.reshape(-1)
                nz = np.flatnonzero(flat)
                out[f"{prefix}/{name}/idx"] = nz.astype(np.int64)
                out[f"{prefix}/{name}/val"] = flat[nz]
            else:
                out[f"{prefix}/{name}"] = v.reshape(-1).copy()
        return out

    def load_arrays(self, prefix: str, arrays: dict[str, np.ndarray]) -> None:
        """Replace every field by its :meth:`to_arrays` encoding (shapes from the declarations)."""
        for name, f in self.fields.items():
            v = self._values[name]
            if f.reduce == "topk":
                lens = np.asarray(arrays[f"{prefix}/{name}_len"], np.int64)
                if lens.size != len(v):
                    raise ValueError(f"{prefix}/{name}: {lens.size} classes, expected {len(v)}")
                cuts = np.concatenate([[0], np.cumsum(lens)])
                top = np.asarray(arrays[f"{prefix}/{name}"], np.float32)
                self._values[name] = [top[cuts[i]:cuts[i + 1]].copy() for i in range(lens.size)]
            elif f.sparse:
                flat = np.zeros(v.size, np.int64)
                flat[arrays[f"{prefix}/{name}/idx"]] = arrays[f"{prefix}/{name}/val"]
                self._values[name] = flat.reshape(v.shape)
            else:
                self._values[name] = np.asarray(arrays[f"{prefix}/{name}"], np.int64).reshape(v.shape).copy()


#: block kernels: ``fused`` (numba, CPU), ``torch`` (the reference, CPU or CUDA), ``auto`` (fused where it can)
KERNELS = ("auto", "fused", "torch")


def numba_available() -> bool:
    """True when the fused kernel's module (and so numba) imports."""
    try:
        import megabench.metrics.kernels_numba  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_kernel(kernel: str = "auto", device: str = "cpu") -> str:
    """The kernel a run uses: ``auto`` -> ``fused`` when numba imports and ``device`` is the CPU, else ``torch``.

    ``fused`` without numba, or on a non-CPU device, is a :class:`MegabenchError`.
    """
    from megabench.errors import MegabenchError

    if kernel not in KERNELS:
        raise MegabenchError(f"kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
    on_cpu = str(device).split(":")[0] == "cpu"
    if kernel == "torch" or (kernel == "auto" and not on_cpu):
        return "torch"
    if not on_cpu:
        raise MegabenchError(f"the fused kernel runs on the CPU only (device {device}); use --kernel torch or auto")
    if numba_available():
        return "fused"
    if kernel == "fused":
        raise MegabenchError("the fused kernel needs numba (pip install numba); or use --kernel torch")
    return "torch"


def _make_kernel(name: str, acc: MegafaceAccumulator):
    if name == "fused":
        from megabench.metrics.kernels_numba import FusedKernel

        return FusedKernel(acc)
    from megabench.metrics.kernels_torch import TorchKernel

    return TorchKernel()


def block_row_order(row_class: np.ndarray, row_noisy: np.ndarray) -> np.ndarray | None:
    """Row order that sorts a block by (class, noisy) and drops unused rows (class < 0); None: already so."""
    sort_key = row_class * 2 + row_noisy
    if (row_class.size == 0 or row_class.min() >= 0) and not np.any(np.diff(sort_key) < 0):
        return None
    order = np.flatnonzero(row_class >= 0)
    return order[np.argsort(sort_key[order], kind="stable")]


class MegafaceAccumulator:
    """update / merge / compute for the streaming MegaFace pass (see module docstring).

    ``kernel``: ``auto`` (fused where numba imports and ``device`` is the CPU), ``fused`` or ``torch``
    (:func:`resolve_kernel`); :attr:`kernel_name` is the one in use. Every kernel gives the same state, bit
    for bit. ``device``: where the score blocks will live (only used to resolve ``auto``).
    """

    def __init__(self, plans: list[VariantPlan], n_classes: int, k: int, hist: HistSpec | None = None,
                 kernel: str = "auto", device: str = "cpu") -> None:
        self.plans = plans
        self.n_classes = int(n_classes)
        self.k = int(k)
        self.hist_spec = hist or HistSpec()
        self.requested_kernel = kernel
        self.kernel_name = resolve_kernel(kernel, device)
        c = self.n_classes
        self._state: dict[str, VariantState] = {}
        for p in plans:
            st = VariantState(self.k)
            st.add_state("rank_diff", np.zeros((c, p.n_trials + 1), np.int64), "sum", sparse=True)
            st.add_state("tie_diff", np.zeros((c, p.n_trials + 1), np.int64), "sum", sparse=True)
            st.add_state("hist", np.zeros((c, self.hist_spec.n_bins), np.int64), "sum", sparse=True)
            st.add_state("n_imp", np.zeros(c, np.int64), "sum")
            st.add_state("low_ge", np.zeros((c, p.low_pos.size), np.int64), "sum")
            st.add_state("low_eq", np.zeros((c, p.low_pos.size), np.int64), "sum")
            st.add_state("top", [np.empty(0, np.float32) for _ in range(c)], "topk")
            self._state[p.name] = st
        thr = np.stack([p.thr for p in plans]).min(axis=0) if plans else np.empty(0, np.float32)
        self.t_rank = thr.astype(np.float32)
        self._zero_hist: np.ndarray | None = None
        self._kernel = _make_kernel(self.kernel_name, self)
        self._torch_kernel = None

    @property
    def state(self) -> dict[str, VariantState]:
        """Each variant's :class:`VariantState`, complete (the kernel's pending partial counts flushed first)."""
        self.flush()
        return self._state

    # --- helpers used by the kernels ----------------------------------------------------------
    @property
    def zero_hist(self) -> np.ndarray:
        """The histogram of one score 0.0 (the bin a ``zero`` noisy distractor's scores fall in), binned with
        torch.histc's float32 arithmetic ``(x - lo) * n_bins / (hi - lo)`` (a test checks it against histc)."""
        if self._zero_hist is None:
            hs = self.hist_spec
            lo, hi = np.float32(hs.lo), np.float32(hs.hi)
            b = int((np.float32(0.0) - lo) * np.float32(hs.n_bins) / (hi - lo))
            self._zero_hist = np.zeros(hs.n_bins, np.int64)
            self._zero_hist[min(b, hs.n_bins - 1)] = 1
        return self._zero_hist

    def floor(self, cls: int) -> float:
        """The lowest top-K floor over the variants for a class (-inf while a buffer is not full)."""
        tops = [self._state[p.name]["top"][cls] for p in self.plans]
        return min((float(t[-1]) if t.size >= self.k else -np.inf) for t in tops)

    def fill_rows(self) -> int:
        """Clean rows that fill every variant's top-K buffer of a class (plus one)."""
        min_cols = min(max(1, p.cols.size) for p in self.plans)
        return -(-self.k // min_cols) + 1

    def add_top(self, rows, cols, vals, row_noisy, n_noisy_rows: int, cls: int) -> None:
        """Merge top-K candidates (every score > the class floor among ``rows``) of class ``cls``.

        ``n_noisy_rows``: noisy rows scanned (a ``zero`` variant's scores 0 for them join its candidates).
        """
        for p in self.plans:
            st = self._state[p.name]
            keep = p.in_v[cols]
            if p.noise_mode != "keep":
                keep &= ~row_noisy[rows]
            new = vals[keep]
            if p.noise_mode == "zero" and n_noisy_rows:
                new = np.concatenate([new, np.zeros(min(self.k, n_noisy_rows * p.cols.size), np.float32)])
            st["top"][cls] = merge_top(st["top"][cls], new, self.k)

    # --- update -------------------------------------------------------------------------------
    def update(self, S, row_class: np.ndarray, row_noisy: np.ndarray) -> None:
        """Add one score block.

        ``S``: float32 (B, n_stack): a torch tensor on any device, or a numpy array. ``row_class``: int (B,)
        class ids in ``[0, n_classes)``, or -1 for a row that belongs to no size (ignored); ``row_noisy``: bool
        (B,).
        Rows may come in any order: the accumulator orders them as its kernel needs.
        """
        row_class = np.asarray(row_class, dtype=np.int64).reshape(-1)
        row_noisy = np.asarray(row_noisy, dtype=bool).reshape(-1)
        if S.shape[0] != row_class.size or S.shape[1] != self.t_rank.size or row_noisy.size != row_class.size:
            raise ValueError(f"score block {tuple(S.shape)} does not match rows {row_class.size} / "
                             f"stack {self.t_rank.size}")
        if row_class.size and row_class.max() >= self.n_classes:
            raise ValueError(f"row class {int(row_class.max())} outside [0, {self.n_classes})")
        kernel = self._kernel
        if kernel.name == "torch" and isinstance(S, np.ndarray):
            import torch

            S = torch.from_numpy(S)
        if kernel.name == "fused" and not isinstance(S, np.ndarray) and S.device.type != "cpu":
            if self.requested_kernel == "fused":
                from megabench.errors import MegabenchError

                raise MegabenchError(f"the fused kernel runs on the CPU only (block on {S.device}); use --kernel "
                                     "torch or auto")
            kernel = self._torch_fallback()
        if kernel.needs_sorted_rows:
            order = block_row_order(row_class, row_noisy)
            if order is not None:
                import torch

                S = S.index_select(0, torch.as_tensor(order, device=S.device))
                row_class, row_noisy = row_class[order], row_noisy[order]
        else:
            row_noisy = row_noisy & (row_class >= 0)
        if not (row_class >= 0).any():
            return
        self._add_n_imp(row_class, row_noisy)
        kernel.update(self, S, row_class, row_noisy)

    def _torch_fallback(self):
        if self._torch_kernel is None:
            from megabench.metrics.kernels_torch import TorchKernel

            self._torch_kernel = TorchKernel()
        return self._torch_kernel

    def _add_n_imp(self, row_class: np.ndarray, row_noisy: np.ndarray) -> None:
        """N per class: every (row, probe column) pair, less the noisy rows of a ``drop`` variant."""
        used = row_class >= 0
        rows = np.bincount(row_class[used], minlength=self.n_classes)
        noisy = np.bincount(row_class[used & row_noisy], minlength=self.n_classes)
        for p in self.plans:
            n = rows - (noisy if p.noise_mode == "drop" else 0)
            self._state[p.name]["n_imp"] += n * p.cols.size

    def add_rank_candidates(self, rows, cols, vals, row_class: np.ndarray, row_noisy: np.ndarray) -> None:
        """Candidate counts (scores >= the column's lowest high genuine score) into the difference arrays.

        ``rows`` index ``row_class`` / ``row_noisy`` (the whole block; rows with class -1 are not noisy).
        """
        noisy_rows = np.flatnonzero(row_noisy)
        c = self.n_classes
        for p in self.plans:
            st = self._state[p.name]
            keep = vals >= p.thr[cols]
            if p.noise_mode != "keep":
                keep &= ~row_noisy[rows]
            kc, kv, kr = cols[keep], vals[keep], rows[keep]
            kcls = row_class[kr]
            keys = trial_keys(kc, kv)
            start = p.col_start[kc]
            right = np.searchsorted(p.gen_keys, keys, side="right")
            left = np.searchsorted(p.gen_keys, keys, side="left")
            diff, tdiff = st["rank_diff"], st["tie_diff"]  # (classes, trials + 1): the few candidates in place
            np.add.at(diff, (kcls, start), 1)
            np.subtract.at(diff, (kcls, right), 1)
            tie = left < right
            np.add.at(tdiff, (kcls[tie], left[tie]), 1)
            np.subtract.at(tdiff, (kcls[tie], right[tie]), 1)
            if p.noise_mode == "zero" and noisy_rows.size:
                per_cls = np.bincount(row_class[noisy_rows], minlength=c)
                zc = p.cols[p.thr[p.cols] <= 0]
                zt = p.zero_left[zc] < p.zero_right[zc]
                for cls in np.flatnonzero(per_cls):
                    w = int(per_cls[cls])
                    np.add.at(diff, (cls, p.col_start[zc]), w)
                    np.subtract.at(diff, (cls, p.zero_right[zc]), w)
                    np.add.at(tdiff, (cls, p.zero_left[zc][zt]), w)
                    np.subtract.at(tdiff, (cls, p.zero_right[zc][zt]), w)

    # --- merge / state ------------------------------------------------------------------------
    def flush(self) -> None:
        """Move whatever the kernel holds between blocks (per-thread partial counts) into the state."""
        self._kernel.flush(self)

    def merge(self, other: MegafaceAccumulator) -> None:
        """Add another accumulator's state (same plans, classes, k and histogram), field by field."""
        self.flush()
        other.flush()
        for p in self.plans:
            self._state[p.name].merge(other._state[p.name])

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Flat dict of arrays (sparse encoding for the mostly-zero ones) for saving and all_gather."""
        self.flush()
        out: dict[str, np.ndarray] = {}
        for p in self.plans:
            out.update(self._state[p.name].to_arrays(p.name))
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the state by :meth:`state_arrays` output."""
        self.flush()
        for p in self.plans:
            self._state[p.name].load_arrays(p.name, arrays)

    # --- compute ------------------------------------------------------------------------------
    def size_view(self, name: str, classes: np.ndarray) -> dict[str, np.ndarray]:
        """Per-trial counts and impostor summary arrays for the union of ``classes`` (class ids).

        Returns ``{count_ge, count_eq}`` (int64 per sorted trial), ``top`` (desc, at most k), ``hist``, ``n_imp``.
        """
        self.flush()
        st = self._state[name]
        classes = np.asarray(classes, dtype=np.int64)
        rd = st["rank_diff"][classes].sum(axis=0)
        td = st["tie_diff"][classes].sum(axis=0)
        top = np.empty(0, np.float32)
        for c in classes.tolist():
            top = merge_top(top, st["top"][c], self.k)
        ge, eq = np.cumsum(rd)[:-1], np.cumsum(td)[:-1]
        plan = next(p for p in self.plans if p.name == name)
        ge[plan.low_pos] += st["low_ge"][classes].sum(axis=0)
        eq[plan.low_pos] += st["low_eq"][classes].sum(axis=0)
        hist = np.zeros(st["hist"].shape[1], np.int64)
        for c in classes.tolist():  # in place: a fancy-indexed copy of (classes, 2**20) would be ~50 MB
            hist += st["hist"][c]
        return {"count_ge": ge, "count_eq": eq, "top": top, "hist": hist, "n_imp": int(st["n_imp"][classes].sum())}
