"""engine/distributed.py: gathering arrays over ranks (2 gloo processes on CPU) and the 1-process no-op."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_arrays(rank: int) -> dict[str, np.ndarray]:
    """Different sizes per rank (rank 1's ``flags`` is empty), three dtypes."""
    return {
        "ints": np.arange(3 * rank + 2, dtype=np.int64) * (rank + 1) - 7,
        "floats": np.linspace(-1.0, 1.0, 4 + rank).astype(np.float32) + rank,
        "flags": np.array([True, False, True][: 3 - 3 * rank], dtype=bool),
    }


def _gather_worker(rank: int, world: int, port: int, folder: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from megabench.engine.distributed import all_gather_arrays, destroy, init_from_env

    info = init_from_env("cpu")
    try:
        gathered = all_gather_arrays(_rank_arrays(rank), info)
    finally:
        destroy(info)
    flat = {f"{r}/{k}": v for r, arrays in enumerate(gathered) for k, v in arrays.items()}
    np.savez(Path(folder) / f"rank{rank}.npz", **flat)


def test_all_gather_two_gloo_ranks_returns_every_rank_in_order(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_gather_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    for rank in range(2):  # every rank receives the same list
        with np.load(tmp_path / f"rank{rank}.npz") as got:
            assert sorted(got.files) == sorted(f"{r}/{k}" for r in range(2) for k in _rank_arrays(r))
            for r in range(2):
                for key, want in _rank_arrays(r).items():
                    assert got[f"{r}/{key}"].dtype == want.dtype, (rank, r, key)
                    assert np.array_equal(got[f"{r}/{key}"], want), (rank, r, key)


def test_all_gather_one_process_returns_its_own_arrays_unchanged():
    from megabench.engine.distributed import DistInfo, all_gather_arrays, init_from_env

    info = init_from_env("cpu")
    assert info == DistInfo(rank=0, world=1, backend="")
    gathered = all_gather_arrays(_rank_arrays(1), info)
    assert len(gathered) == 1
    want = _rank_arrays(1)  # built again: the comparison is by value, not against the same objects
    assert sorted(gathered[0]) == sorted(want)
    for key in want:
        assert gathered[0][key].dtype == want[key].dtype and np.array_equal(gathered[0][key], want[key]), key
