"""engine/distributed.py: gathering arrays over ranks (2 gloo processes on CPU) and the 1-process no-op."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import run_gloo_ranks


def _rank_arrays(rank: int) -> dict[str, np.ndarray]:
    """Different sizes per rank (rank 1's ``flags`` is empty), three dtypes."""
    return {
        "ints": np.arange(3 * rank + 2, dtype=np.int64) * (rank + 1) - 7,
        "floats": np.linspace(-1.0, 1.0, 4 + rank).astype(np.float32) + rank,
        "flags": np.array([True, False, True][: 3 - 3 * rank], dtype=bool),
    }


def _gather_worker(info, folder: Path) -> None:
    from megabench.engine.distributed import all_gather_arrays

    gathered = all_gather_arrays(_rank_arrays(info.rank), info)
    flat = {f"{r}/{k}": v for r, arrays in enumerate(gathered) for k, v in arrays.items()}
    np.savez(folder / f"rank{info.rank}.npz", **flat)


def test_all_gather_two_gloo_ranks_returns_every_rank_in_order(tmp_path):
    run_gloo_ranks(_gather_worker, tmp_path)
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
