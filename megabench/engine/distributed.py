"""The one torch.distributed helper: init from the torchrun environment, rank/world, gather arrays.

Nothing happens at import. :func:`init_from_env` starts a process group only when torchrun's
``WORLD_SIZE`` > 1 (backend ``nccl`` for CUDA devices, ``gloo`` otherwise); a single process gets
``DistInfo(rank=0, world=1)`` and every function below degrades to a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str = "cpu") -> DistInfo:
    """Initialise the default process group from torchrun's env (``RANK``, ``WORLD_SIZE``, ``MASTER_*``)."""
    if env_world_size() <= 1:
        return DistInfo()
    import torch.distributed as dist

    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if backend == "nccl":
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo(dist.get_rank(), dist.get_world_size(), backend)


def all_gather_arrays(arrays: dict[str, np.ndarray], info: DistInfo) -> list[dict[str, np.ndarray]]:
    """Every rank's ``arrays`` (same keys everywhere, any shapes), in rank order. No pickles involved."""
    if info.world <= 1:
        return [arrays]
    import torch
    import torch.distributed as dist

    dev = torch.device("cuda", torch.cuda.current_device()) if info.backend == "nccl" else torch.device("cpu")
    out: list[dict[str, np.ndarray]] = [{} for _ in range(info.world)]
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        n = torch.tensor([a.size], dtype=torch.int64, device=dev)
        sizes = [torch.zeros_like(n) for _ in range(info.world)]
        dist.all_gather(sizes, n)
        m = max(int(s.item()) for s in sizes)
        buf = torch.zeros(max(m, 1), dtype=_torch_dtype(a.dtype), device=dev)
        buf[: a.size] = torch.from_numpy(a.reshape(-1)).to(dev)
        parts = [torch.zeros_like(buf) for _ in range(info.world)]
        dist.all_gather(parts, buf)
        for r, (p, s) in enumerate(zip(parts, sizes, strict=True)):
            out[r][key] = p[: int(s.item())].cpu().numpy().astype(a.dtype, copy=False)
    return out


def _torch_dtype(dt: np.dtype):
    import torch

    return {np.dtype(np.int64): torch.int64, np.dtype(np.float32): torch.float32,
            np.dtype(np.float64): torch.float64, np.dtype(np.bool_): torch.bool}[np.dtype(dt)]


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def destroy(info: DistInfo) -> None:
    if info.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
