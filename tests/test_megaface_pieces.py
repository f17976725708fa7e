"""The pieces of the MegaFace run on their own: options, scheduling, block row order, the block loop,
resume state files (marker, fingerprint, removal), noise matching, gather."""

from __future__ import annotations

import numpy as np
import pytest

from megabench.errors import DataError, MegabenchError
from megabench.evaluation.megaface import (
    STATE_MAGIC,
    MegafaceOptions,
    MegafaceSpec,
    ResumeState,
    check_state_target,
    gather_accumulators,
    match_noise,
    membership_from_seed,
    rank_state_path,
    remove_states,
    schedule_blocks,
    state_marker,
    stream_blocks,
)


# --- options ----------------------------------------------------------------------------------------
def test_options_resolve_spec_defaults_and_keep_given_values():
    sp = MegafaceSpec(refine="facex", ties="optimistic", seed=7, block_rows=99)
    r = MegafaceOptions(probes="p.h5", distractors="d.h5").resolved(sp)
    assert (r.refine, r.ties, r.seed, r.block_rows, r.kernel) == ("facex", "optimistic", 7, 99, "auto")
    r = MegafaceOptions(refine="drop", ties="conservative", seed=0, block_rows=5, kernel="torch").resolved(sp)
    assert (r.refine, r.ties, r.seed, r.block_rows, r.kernel) == ("drop", "conservative", 0, 5, "torch")


@pytest.mark.parametrize("kw, match", [
    ({"sizes": (0,)}, "positive whole number"), ({"sizes": (-10,)}, "positive whole number"),
    ({"sizes": (10.7,)}, "positive whole number"), ({"sizes": (float("nan"),)}, "positive whole number"),
    ({"sizes": ()}, "no size"), ({"sizes": ("10",)}, "not a number"), ({"kernel": "cuda"}, "kernel"),
    ({"refine": "x"}, "refine"), ({"block_rows": 0}, "block_rows"), ({"resume": True}, "state"),
    ({"checkpoint_seconds": -1}, "checkpoint"),
])
def test_options_refuse_bad_values(kw, match):
    with pytest.raises(MegabenchError, match=match):
        MegafaceOptions(**kw)


def test_options_sizes_become_ints():
    assert MegafaceOptions(sizes=[10.0, 100]).sizes == (10, 100)


# --- scheduling ----------------------------------------------------------------------
@pytest.mark.parametrize("n, rows, world", [(0, 5, 1), (1, 5, 2), (100, 7, 3), (64, 8, 2), (10, 100, 4)])
def test_schedule_partitions_the_blocks_over_ranks(n, rows, world):
    parts = [schedule_blocks(n, rows, r, world) for r in range(world)]
    everything = sorted(b for p in parts for b in p)
    assert everything == list(range(-(-n // rows)))
    for r, p in enumerate(parts):
        assert all(b % world == r for b in p)


# --- the block loop ---------------------------------------------------------------------------------
def test_stream_blocks_checkpoints_and_stops_after_max_blocks():
    seen, saves = [], []
    with pytest.raises(MegabenchError, match=r"stopped after 2 blocks.*state in S.*--resume"):
        stream_blocks([4, 5, 6], seen.append, done=[1], save=lambda d: saves.append(list(d)), max_blocks=2,
                      checkpoint_seconds=1e9, where="S")
    assert seen == [4, 5] and saves == [[1, 4, 5]]  # saved at the interruption, not before (1e9 s)
    seen, saves = [], []
    done = stream_blocks([0, 1], seen.append, done=[], save=lambda d: saves.append(list(d)), checkpoint_seconds=0)
    assert done == [0, 1] and saves == [[0], [0, 1]]


# --- resume state -----------------------------------------------------------------------------------
class FakeAcc:
    def __init__(self, value=0):
        self.a = np.full(3, value, np.int64)

    def state_arrays(self):
        return {"raw/a": self.a.copy()}

    def load_state_arrays(self, arrays):
        self.a = arrays["raw/a"].copy()


def test_state_roundtrip_marker_and_fingerprint(tmp_path):
    st = ResumeState(tmp_path / "s.npz", "f" * 64)
    st.save([3, 1], FakeAcc(7))
    assert state_marker(st.path) == (STATE_MAGIC, "f" * 64)
    acc = FakeAcc()
    assert st.load(acc) == [1, 3] and acc.a.tolist() == [7, 7, 7]
    with pytest.raises(DataError, match="different inputs"):
        ResumeState(st.path, "e" * 64).load(FakeAcc())
    assert not ResumeState(st.path, "e" * 64).remove() and st.path.exists()  # another run's state: kept
    with pytest.raises(MegabenchError, match="another run"):
        ResumeState(st.path, "e" * 64).check_overwrite()  # nor overwritten by a fresh pass
    st.check_overwrite()  # the same run may start afresh over its own state
    assert st.remove() and not st.path.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", b"{\"a\": 1}", b"\x93NUMPY"])
def test_corrupt_state_is_one_line_error_naming_the_file(tmp_path, content):
    p = tmp_path / "s.npz"
    p.write_bytes(content)
    with pytest.raises(DataError, match=f"{p}: unreadable resume state"):
        ResumeState(p, "f").load(FakeAcc())
    with pytest.raises(MegabenchError, match="not a megabench resume state; refusing|unreadable resume state"):
        check_state_target(p)
    assert p.read_bytes() == content


def test_npz_without_marker_is_never_overwritten_or_removed(tmp_path):
    p = tmp_path / "mine.npz"
    np.savez(p, x=np.arange(3))
    before = p.read_bytes()
    with pytest.raises(MegabenchError, match="refusing to overwrite"):
        check_state_target(p)
    with pytest.raises(DataError, match="no marker"):
        ResumeState(p, "f").load(FakeAcc())
    assert remove_states(p, "f", 1) == [] and p.read_bytes() == before
    check_state_target(tmp_path / "absent.npz")  # a new file is fine


def test_rank_state_files_and_their_removal(tmp_path):
    base = tmp_path / "r.state.npz"
    assert rank_state_path(base, 0, 1) == base
    files = [rank_state_path(base, r, 3) for r in range(3)]
    assert [f.name for f in files] == ["r.state.npz.rank0", "r.state.npz.rank1", "r.state.npz.rank2"]
    for f in files[:2]:
        ResumeState(f, "f" * 8).save([0], FakeAcc())
    files[2].write_text("not ours")
    assert remove_states(base, "f" * 8, 3) == files[:2]
    assert not files[0].exists() and not files[1].exists() and files[2].read_text() == "not ours"


# --- noise ------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*none of its")
def test_noise_marks_only_used_distractors_and_named_probes(tmp_path):
    (tmp_path / "fs.txt").write_text("#c\nA_2.png\nNobody.png\n")
    (tmp_path / "mf.txt").write_text("#c\nx\t001/u@N00/1_0.jpg\n002/v@N00/2_0.jpg\n")  # devkit: 2nd tab field
    store = ["001/u@N00/1_0.jpg", "002/v@N00/2_0.jpg", "003/w@N00/3_0.jpg", "x"]
    mem = membership_from_seed(4, [2], 0)
    assert (mem.row_class >= 0).sum() == 2
    opts = MegafaceOptions(facescrub_noises=tmp_path / "fs.txt", megaface_noises=tmp_path / "mf.txt",
                           refine="insightface")
    nm = match_noise(MegafaceSpec(), opts, ["A/A_1.png", "A/A_2.png"], store, mem)
    assert nm.noisy_probe.tolist() == [False, True]
    used = mem.row_class >= 0
    expect = used & np.array([True, True, False, False])
    assert nm.noisy_dist.tolist() == expect.tolist()
    assert nm.report["facescrub_matched"] == 1 and nm.report["megaface_matched"] == int(expect.sum())
    everything = membership_from_seed(4, [4], 0)
    nm = match_noise(MegafaceSpec(), opts, ["A/A_1.png"], store, everything)
    assert nm.noisy_dist.tolist() == [True, True, False, False]  # "x\t001/..." matched, the store's "x" not
    none = match_noise(MegafaceSpec(), MegafaceOptions(refine="none", megaface_noises="/nonexistent"),
                       ["a"], store, mem)
    assert none.report == {} and not none.noisy_dist.any()


# --- gather -----------------------------------------------------------------------------------------
def test_gather_of_one_process_returns_the_accumulator_unmerged():
    from megabench.engine.distributed import DistInfo

    acc = FakeAcc(3)
    made = []
    assert gather_accumulators(acc, lambda: made.append(1), DistInfo()) is acc and made == []


# --- refinement -------------------------------------------------------------------------------------
def test_jitter_goes_onto_the_identity_sum_as_insightface():
    from megabench.evaluation.megaface import Probes, build_stack

    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    noisy = np.array([False, True, False, False, False, False, True])
    probes = Probes(x, labels, [f"p{i}" for i in range(7)])
    stack = build_stack(probes, noisy, "insightface", jitter_seed=5)
    u = np.random.default_rng(5).uniform(-0.001, 0.001, size=(2, 16))  # one draw per noisy probe, in order
    for r, lab in enumerate((0, 1)):
        s = x[(labels == lab) & ~noisy].astype(np.float64).sum(axis=0) + u[r]
        np.testing.assert_array_equal(stack.vectors[7 + r], (s / np.linalg.norm(s)).astype(np.float32))
    # the sum's norm (about 2-3 here, 34-58 at FaceScrub) makes the tilt far smaller than on the mean
    mean_version = x[(labels == 0) & ~noisy].astype(np.float64).mean(axis=0) + u[0]
    assert not np.array_equal(stack.vectors[7], (mean_version / np.linalg.norm(mean_version)).astype(np.float32))
    plain = build_stack(probes, noisy, "insightface")
    m = x[(labels == 0) & ~noisy].astype(np.float64).mean(axis=0)
    np.testing.assert_array_equal(plain.vectors[7], (m / np.linalg.norm(m)).astype(np.float32))


def test_a_killed_save_leaves_temporaries_that_the_next_run_removes(tmp_path):
    from megabench.evaluation.megaface import remove_state_temporaries

    state = tmp_path / "r[1].state.npz"  # glob metacharacters in the name are matched literally
    ours = [tmp_path / ".r[1].state.npz.k2j4.npz.tmp", tmp_path / ".r[1].state.npz.zz.npz.tmp"]
    others = [tmp_path / ".r[1].state.npz.k2j4.tmp", tmp_path / ".r1.state.npz.ab.npz.tmp", tmp_path / "keep.npz"]
    for p in ours + others:
        p.write_bytes(b"x")
    assert sorted(remove_state_temporaries(state)) == sorted(ours)
    assert all(p.exists() for p in others) and not any(p.exists() for p in ours)


# ---------------------------------------------------------------------------- membership from lists
def test_membership_from_lists_by_definition():
    from megabench.evaluation.megaface import membership_from_lists

    store = ["a", "b", "c", "d", "e"]
    m = membership_from_lists(store, {1: ["c"], 3: ["c", "a", "e"]}, "lists")
    # class = the set of sizes holding the row: "c" in both, "a"/"e" only in size 3, "b"/"d" in none (-1)
    in_both, only_3 = m.row_class[2], m.row_class[0]
    assert m.row_class[1] == m.row_class[3] == -1 and m.row_class[4] == only_3 != in_both
    assert m.class_masks[in_both] == 0b11 and m.class_masks[only_3] == 0b10


@pytest.mark.parametrize("store, lists, message", [
    (["a", "b"], {2: ["a", "z"]}, r"1 of 2 paths of the size-2 list have no feature .*\['z'\]"),
    (["a", "b", "a"], {1: ["a"]}, r"1 paths of the size-1 list occur more than once in the distractor store"),
    (["a", "b"], {2: ["b", "b"]}, r"the size-2 list names some images twice"),
])
def test_membership_from_lists_refuses(store, lists, message):
    from megabench.evaluation.megaface import membership_from_lists

    with pytest.raises(DataError, match=message):
        membership_from_lists(store, lists, "lists")


# ---------------------------------------------------------------------------- path matching by definition
def test_megaface_noise_matching_equals_its_definition():
    """A store path is noise when, with ``\\`` read as ``/``, it is an entry or ends with ``/<entry>``; file
    names shared by other folders, deeper and shallower entries, and Windows separators included."""
    from megabench.data.megaface_io import match_megaface_noise

    rng = np.random.default_rng(3)
    names = [f"{i}_0.jpg" for i in range(6)]
    dirs = ["375/1@N00", "375/2@N00", "FlickrFinal2/375/1@N00", "9/9@N00"]
    paths = sorted({f"{rng.choice(dirs)}/{rng.choice(names)}" for _ in range(80)})
    paths = [p.replace("/", "\\") if i % 5 == 0 else p for i, p in enumerate(paths)]
    noise = ["375/1@N00/1_0.jpg", "./2@N00/2_0.jpg", "3_0.jpg", "FlickrFinal2/375/1@N00/4_0.jpg", "7_0.jpg"]
    entries = {n.strip().lstrip("./") for n in noise}

    def is_noise(p):
        q = p.replace("\\", "/")
        return any(q == e or q.endswith("/" + e) for e in entries)

    mask, matched = match_megaface_noise(paths, noise)
    assert mask.tolist() == [is_noise(p) for p in paths] and mask.any() and not mask.all()
    assert matched == sum(any(is_noise(p) and (p.replace("\\", "/") + "#").endswith(e + "#") for p in paths)
                          for e in entries)


def test_overlap_check_refuses_only_probe_paths_in_use():
    from megabench.evaluation.megaface import Membership, Probes, check_overlap

    probes = Probes(np.eye(3, 4, dtype=np.float32), np.arange(3), ["f/a.png", "f/b.png", "f/c.png"])
    store = ["m/1.jpg", "f/b.png", "m/2.jpg", "f/c.png"]
    sample = np.zeros((0, 3), np.float32)

    def membership(row_class):
        return Membership([2], np.array(row_class), np.array([1]), "lists")

    check_overlap(probes, store, membership([0, -1, 0, -1]), sample, "d.h5")  # shared paths, none used: fine
    with pytest.raises(DataError, match=r"d.h5: 1 distractor path\(s\) are probe paths \(first: \['f/c.png'\]\)"):
        check_overlap(probes, store, membership([0, -1, -1, 0]), sample, "d.h5")


@pytest.mark.parametrize("case", ["a list equal to the store", "few wanted paths", "many wanted paths"])
def test_store_rows_of_equals_its_definition(case):
    """Row of each listed path: its one store row, -1 when absent, -2 when the store holds it twice; the same
    whichever way round the lookup goes."""
    from megabench.evaluation.megaface import store_rows_of

    rng = np.random.default_rng(7)
    store = [f"d{i % 97}/{i}.jpg" for i in range(400)]
    if case != "a list equal to the store":
        store[5] = store[300]  # held twice
    universe = store + ["x/absent1.jpg", "x/absent2.jpg"]
    n_list = {"a list equal to the store": 30, "few wanted paths": 30, "many wanted paths": 350}[case]
    lists = {10 * (k + 1): list(dict.fromkeys(rng.choice(universe, n_list, replace=False).tolist())) for k in range(3)}
    if case == "a list equal to the store":
        lists[400] = list(store)

    def row(p):
        hits = [i for i, q in enumerate(store) if q == p]
        return hits[0] if len(hits) == 1 else (-1 if not hits else -2)

    got = store_rows_of(store, lists)
    assert sorted(got) == sorted(lists)
    for size, paths in lists.items():
        assert got[size].tolist() == [row(p) for p in paths], size
    if case != "a list equal to the store":
        assert any((got[s] == -2).any() or (got[s] == -1).any() for s in got)
