"""The read-ahead of the MegaFace stream (issue 11): same blocks, same order, same numbers, same errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_megaface_protocol import make_world, run, write_world

import megabench.evaluation.megaface as m
from megabench.errors import DataError, MegabenchError


def test_prefetcher_reads_every_block_once_in_order_and_one_ahead():
    order = [4, 1, 7, 2]
    reads: list[int] = []
    main = threading.get_ident()
    threads = set()

    def read(b):
        reads.append(b)
        threads.add(threading.get_ident())
        return b * 10

    with m.BlockPrefetcher(order, read) as pf:
        got = [pf.get(b) for b in order]
    assert got == [40, 10, 70, 20] and reads == order and main not in threads
    reads.clear()
    with m.BlockPrefetcher(order, read, prefetch=False) as pf:
        assert [pf.get(b) for b in order] == [40, 10, 70, 20]
    assert reads == order
    reads.clear()
    with m.BlockPrefetcher(order, read) as pf:  # stopped early (max_blocks): at most one block read ahead
        pf.get(4)
    assert reads in ([4], [4, 1])  # the read ahead is cancelled if it has not started


def test_reader_exception_surfaces_unchanged():
    def read(b):
        if b == 2:
            raise DataError(f"store.h5 rows {b}: not finite")
        return b

    with m.BlockPrefetcher([0, 1, 2, 3], read) as pf:
        assert pf.get(0) == 0 and pf.get(1) == 1
        with pytest.raises(DataError, match=r"^store.h5 rows 2: not finite$"):
            pf.get(2)


@pytest.fixture
def world(tmp_path):
    w = make_world(5)
    write_world(w, tmp_path)
    return w


def test_results_identical_with_and_without_prefetch(tmp_path, world, monkeypatch):
    seen: list[list[int]] = []
    real = m.read_block

    def spy(b, *a):
        seen[-1].append(b)
        return real(b, *a)

    monkeypatch.setattr(m, "read_block", spy)
    out = []
    for prefetch in (False, True):
        seen.append([])
        out.append(run(tmp_path, world, block_rows=16, prefetch=prefetch))
    assert out[0]["variants"] == out[1]["variants"]
    assert seen[0] == seen[1] == m.schedule_blocks(len(world["X"]), 16)
    state = tmp_path / "state.npz"  # interrupted with the read-ahead on, resumed: the same numbers
    with pytest.raises(MegabenchError, match="max_blocks"):
        run(tmp_path, world, block_rows=16, state=state, max_blocks=5, checkpoint_seconds=0)
    resumed = run(tmp_path, world, block_rows=16, state=state, resume=True)
    assert resumed["variants"] == out[0]["variants"]


def test_bad_block_in_the_reader_thread_is_the_one_line_error(tmp_path, world):
    from megabench.data.feature_store import FeatureStore

    real = FeatureStore.read

    def bad(self, dataset="features", rows=None):
        x = real(self, dataset, rows=rows)
        if isinstance(rows, slice) and rows.start == 32:
            x = x.copy()
            x[1] = np.nan
        return x

    errors = []
    for prefetch in (False, True):
        FeatureStore.read = bad
        try:
            with pytest.raises(DataError) as info:
                run(tmp_path, world, block_rows=16, prefetch=prefetch)
        finally:
            FeatureStore.read = real
        errors.append(str(info.value))
    assert errors[0] == errors[1] and "\n" not in errors[0] and "33" in errors[0]
