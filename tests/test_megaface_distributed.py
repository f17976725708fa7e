"""Two gloo ranks on CPU shard the distractor blocks and merge: bit-identical to one process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_gloo_ranks
from test_megaface_protocol import make_world, mf, run, spec, write_world


def _worker(info, f: Path) -> None:
    from megabench.fileio import dumps_json

    res = mf(spec(block_rows=23), f / "probes.h5", f / "dist.h5", probe_list=f / "fs.json",
             facescrub_noises=f / "fs_noise.txt", megaface_noises=f / "mf_noise.txt",
             refine="facex", progress=False, echo=lambda *a: None, dist_info=info)
    if info.rank == 0:
        (f / "dist_result.json").write_text(dumps_json(res["variants"]))
    else:
        assert res is None


def test_two_gloo_ranks_equal_one_process(tmp_path):
    from megabench.fileio import dumps_json

    w = make_world(11)
    # random (inexact) features too: the same blocks go through the same GEMM on either rank
    w["X"] = w["X"] + np.random.default_rng(0).normal(0, 0.01, w["X"].shape).astype(np.float32)
    write_world(w, tmp_path)
    single = run(tmp_path, w, refine="facex", sp=spec(block_rows=23))
    run_gloo_ranks(_worker, tmp_path)
    merged = json.loads((tmp_path / "dist_result.json").read_text())
    assert merged == json.loads(dumps_json(single["variants"]))


@pytest.mark.parametrize("n", [0, 5])
def test_state_arrays_roundtrip_merge(n):
    """merge(A, B) == one accumulator fed both blocks; state_arrays/load_state_arrays round trip."""
    import torch

    from megabench.metrics.streaming import HistSpec, MegafaceAccumulator, VariantPlan, trial_keys

    rng = np.random.default_rng(n)
    P = rng.normal(size=(6, 8)).astype(np.float32)
    P /= np.linalg.norm(P, axis=1, keepdims=True)
    g = P @ P.T
    cols = np.array([0, 1, 2, 3, 4, 5])
    pj, pi = np.nonzero(~np.eye(3, dtype=bool))
    keys, scores = [], []
    for grp in (cols[:3], cols[3:]):
        keys.append(trial_keys(grp[pj], g[grp[pj], grp[pi]]))
        scores.append(g[grp[pj], grp[pi]])
    k, sc = np.concatenate(keys), np.concatenate(scores).astype(np.float32)
    o = np.argsort(k)
    plan = VariantPlan("raw", cols, k[o], sc[o], "keep", np.sort(sc), 6, cut=0.0)

    def acc():
        return MegafaceAccumulator([plan], 2, 10, HistSpec())

    blocks = []
    for _ in range(2):
        X = rng.normal(size=(20, 8)).astype(np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        blocks.append((torch.from_numpy(X @ P.T), np.repeat([0, 1], 10), np.zeros(20, bool)))
    one, a, b = acc(), acc(), acc()
    for blk in blocks:
        one.update(*blk)
    a.update(*blocks[0])
    b.update(*blocks[1])
    a.merge(b)
    c = acc()
    c.load_state_arrays(a.state_arrays())
    for x in (a, c):
        for key in ("rank_diff", "tie_diff", "hist", "n_imp", "low_ge", "low_eq"):
            np.testing.assert_array_equal(x.state["raw"][key], one.state["raw"][key])
        for t1, t2 in zip(x.state["raw"]["top"], one.state["raw"]["top"], strict=True):
            np.testing.assert_array_equal(t1, t2)


def _resume_worker(info, f: Path) -> None:
    """A full sharded run writing per-rank states, then a --resume run from those states."""
    from megabench.fileio import dumps_json

    kw = dict(probe_list=f / "fs.json", facescrub_noises=f / "fs_noise.txt", megaface_noises=f / "mf_noise.txt",
              refine="insightface", progress=False, dist_info=info, state=f / "run.state.npz",
              checkpoint_seconds=0)
    first = mf(spec(block_rows=29), f / "probes.h5", f / "dist.h5", **kw)
    # max_blocks=0: any block left to score would stop the run, so every block must come from the states
    again = mf(spec(block_rows=29), f / "probes.h5", f / "dist.h5", resume=True, max_blocks=0, **kw)
    if info.rank == 0:
        (f / "resume_result.json").write_text(dumps_json({"first": first["variants"], "again": again["variants"],
                                                          "fingerprint": first["input"]["fingerprint"]}))


def test_sharded_resume_and_removal_of_every_rank_state(tmp_path):
    from megabench.evaluation.megaface import remove_states

    w = make_world(13)
    write_world(w, tmp_path)
    (tmp_path / "run.state.npz.rank7").write_text("not ours")
    run_gloo_ranks(_resume_worker, tmp_path)
    out = json.loads((tmp_path / "resume_result.json").read_text())
    assert out["again"] == out["first"]
    states = [tmp_path / f"run.state.npz.rank{r}" for r in range(2)]
    assert all(p.exists() for p in states) and not (tmp_path / "run.state.npz").exists()
    assert remove_states(tmp_path / "run.state.npz", "0" * 64, 2) == []  # another run's fingerprint: kept
    assert remove_states(tmp_path / "run.state.npz", out["fingerprint"], 2) == states
    assert not any(p.exists() for p in states)
    assert (tmp_path / "run.state.npz.rank7").read_text() == "not ours"
