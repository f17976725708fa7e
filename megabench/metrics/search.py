"""Score blocks for the streaming MegaFace pass: one GEMM per distractor block, no stored matrix.

A backend turns a block of L2-normalised distractor vectors ``(B, D)`` float32 into the score block
``S = block @ probes.T`` of shape ``(B, n_probes)``: a float32 torch tensor on the backend's device, or a
numpy array for the CPU-only backends (``numpy``, ``faiss``), whose path imports no torch at all.
Backends are registered in :data:`BACKENDS` (``torch``: CPU or CUDA; ``numpy``: OpenBLAS, CPU;
``faiss``: flat inner product, needs ``faiss-cpu``); ``auto`` picks numpy on the CPU, torch elsewhere.
float16 inputs are computed in float32. Another GEMM library may round a score differently in its last
bit, so compare runs made with the same backend (the result records it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from megabench.errors import DataError
from megabench.registry import Registry

BACKENDS: Registry[Callable[..., ScoreBackend]] = Registry("search backend")


class ScoreBackend:
    """Base: holds the probe matrix; :meth:`scores` returns the (B, n_probes) block; :meth:`to_device` puts a
    numpy block where :meth:`scores` wants it (here: a C-contiguous float32 numpy array, for the CPU backends)."""

    def __init__(self, probes: np.ndarray, device: str = "cpu") -> None:
        self.device = str(device)
        self.probes_np = np.ascontiguousarray(probes, dtype=np.float32)

    def to_device(self, block: np.ndarray):
        return np.ascontiguousarray(block, dtype=np.float32)

    def scores(self, block):  # pragma: no cover - interface
        raise NotImplementedError


@BACKENDS.register("torch")
class TorchBackend(ScoreBackend):
    """``torch.matmul`` in float32 on ``device`` (cpu or cuda)."""

    def __init__(self, probes: np.ndarray, device: str = "cpu") -> None:
        super().__init__(probes, device)
        import torch

        self.device = torch.device(device)
        self.probes_t = torch.from_numpy(self.probes_np).to(self.device)

    def to_device(self, block: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(self.device)

    def scores(self, block):
        return block @ self.probes_t.T


@BACKENDS.register("numpy")
class NumpyBackend(ScoreBackend):
    """numpy's ``matmul`` in float32 (OpenBLAS in the numpy wheels), CPU only.

    On the AMD EPYC this project is measured on, OpenBLAS's SGEMM runs the 8192 x 512 x 3555 block
    1.6-2x faster than torch's MKL build (``benchmarks/megaface.py`` prints both floors).
    """

    def __init__(self, probes: np.ndarray, device: str = "cpu") -> None:
        if not str(device).startswith("cpu"):
            raise DataError(f"the numpy backend runs on the CPU only (got --device {device}); use --backend torch")
        super().__init__(probes, device)
        self.probes_t_np = np.ascontiguousarray(self.probes_np.T)
        self._out = np.empty((0, self.probes_np.shape[0]), np.float32)

    def scores(self, block) -> np.ndarray:
        """The block's scores, written into one buffer that this backend reuses: valid until the next call
        (a fresh 116 MB result per 8192-row block cost ~10 ms of page faults)."""
        x = block.numpy() if hasattr(block, "numpy") else block
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._out.shape[0] < x.shape[0]:
            self._out = np.empty((x.shape[0], self.probes_np.shape[0]), np.float32)
        return np.matmul(x, self.probes_t_np, out=self._out[:x.shape[0]])


@BACKENDS.register("faiss")
class FaissBackend(ScoreBackend):
    """faiss flat inner product (``IndexFlatIP`` arithmetic via ``faiss.pairwise_distances``), CPU only."""

    def __init__(self, probes: np.ndarray, device: str = "cpu") -> None:
        if not str(device).startswith("cpu"):
            raise DataError(f"the faiss backend runs on the CPU only (got --device {device}); use --backend torch")
        super().__init__(probes, device)
        try:
            import faiss
        except ImportError:
            raise DataError("the faiss backend needs faiss: pip install 'megabench[faiss]'") from None
        self.faiss = faiss

    def scores(self, block) -> np.ndarray:
        x = block.cpu().numpy() if hasattr(block, "cpu") else np.asarray(block, np.float32)
        s = self.faiss.pairwise_distances(np.ascontiguousarray(x), self.probes_np, self.faiss.METRIC_INNER_PRODUCT)
        return np.ascontiguousarray(s, dtype=np.float32)


def auto_backend(device: str = "cpu") -> str:
    """The backend ``--backend auto`` runs on ``device``: ``numpy`` on the CPU (OpenBLAS's SGEMM: 1.6-2x torch's
    on the machines this project is measured on, ``benchmarks/megaface.py``), ``torch`` on any other device."""
    return "numpy" if str(device).split(":")[0] == "cpu" else "torch"


def make_backend(name: str, probes: np.ndarray, device: str = "cpu") -> ScoreBackend:
    """The registered backend ``name`` (or ``"auto"``: :func:`auto_backend`) holding ``probes`` on ``device``."""
    if name == "auto":
        name = auto_backend(device)
    return BACKENDS.get(name)(probes, device)


def normalize_block(x, *, source: str, rows: np.ndarray | None = None, inplace: bool = False):
    """L2-normalise the rows of a float32 torch tensor or numpy array (numpy: no torch import; ``inplace``
    divides ``x`` itself); NaN/inf/zero-norm rows -> :class:`DataError`.

    The message names store rows: ``rows[i]`` for row i when given, else i.
    """
    if isinstance(x, np.ndarray):
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    else:
        import torch

        norms = torch.linalg.vector_norm(x, dim=1)
        bad = torch.nonzero(~torch.isfinite(norms) | (norms == 0)).reshape(-1).cpu().numpy()
    if bad.size:
        named = (np.asarray(rows)[bad] if rows is not None else bad).tolist()
        raise DataError(f"{source}: {len(named)} feature row(s) are NaN/inf or have zero norm (first rows "
                        f"{named[:5]}); re-extract them or drop those images")
    if isinstance(x, np.ndarray):
        return np.divide(x, norms[:, None], out=x if inplace else None)
    return x / norms[:, None]
