"""The distractor tables computed in a child process (megabench.evaluation.megaface_tables) equal the in-process
ones: the same numbers, the same errors, the same warnings; a failed child falls back; warm_kernels loads
exactly the kernel signatures a run uses."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from test_megaface_protocol import make_world, run, spec, write_world

import megabench.evaluation.megaface as mfe
import megabench.evaluation.megaface_tables as mft
from megabench.errors import DataError


def _calls(monkeypatch, name: str) -> list:
    """A list that grows by one at each call of ``megabench.evaluation.megaface.<name>`` in this process."""
    calls = []
    real = getattr(mfe, name)

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(mfe, name, spy)
    return calls


@pytest.fixture
def counted(monkeypatch):
    """Calls of distractor_tables in this process (the child's own calls are not counted)."""
    return _calls(monkeypatch, "distractor_tables")


def _child_on(monkeypatch, on: bool) -> None:
    monkeypatch.setattr(mft, "TABLES_CHILD_MIN_ROWS", 0 if on else 10**12)


@pytest.mark.parametrize("lists", [True, False])
@pytest.mark.parametrize("refine", ["insightface", "drop"])
def test_a_run_with_the_child_equals_the_in_process_run(tmp_path, monkeypatch, counted, lists, refine):
    w = make_world(3)
    write_world(w, tmp_path, membership="lists" if lists else "seed")
    _child_on(monkeypatch, False)
    here = run(tmp_path, w, refine=refine, lists=lists)
    assert len(counted) == 1
    _child_on(monkeypatch, True)
    child = run(tmp_path, w, refine=refine, lists=lists)
    assert len(counted) == 1  # the child computed them: no fallback here
    assert child["variants"] == here["variants"] and child["noise"] == here["noise"]
    assert child["input"] == here["input"]


def _opts(tmp_path, **kw):
    return mfe.MegafaceOptions(probes=tmp_path / "probes.h5", distractors=tmp_path / "dist.h5",
                               probe_list=tmp_path / "fs.json", facescrub_noises=tmp_path / "fs_noise.txt",
                               megaface_noises=tmp_path / "mf_noise.txt", progress=False, **kw).resolved(spec())


def test_the_childs_tables_and_data_errors_are_the_in_process_ones(tmp_path, counted):
    w = make_world(4)
    write_world(w, tmp_path, membership="lists")
    opts = _opts(tmp_path, distractor_lists=tmp_path / "lists")
    probe_paths = list(w["paths"])
    bg = mft.BackgroundTables(spec(), opts)
    bg.send_probe_paths(probe_paths)
    m1, sha1, n1 = bg.result()
    m2, sha2, n2 = mfe.distractor_tables(spec(), opts, probe_paths)
    assert len(counted) == 1
    assert m1.sizes == m2.sizes and m1.source == m2.source and sha1 == sha2
    for a, b in ((m1.row_class, m2.row_class), (m1.class_masks, m2.class_masks), (n1.noisy_probe, n2.noisy_probe),
                 (n1.noisy_dist, n2.noisy_dist)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert n1.report == n2.report
    # a list naming an image the store lacks: the same DataError text from the child
    lst = tmp_path / "lists" / "megaface_features_list.json_10_1"
    data = json.loads(lst.read_text())
    data["path"][3] = "nowhere/missing.jpg"
    lst.write_text(json.dumps(data))
    with pytest.raises(DataError) as here:
        mfe.distractor_tables(spec(), opts, probe_paths)
    bg = mft.BackgroundTables(spec(), opts)
    bg.send_probe_paths(probe_paths)
    with pytest.raises(DataError) as there:
        bg.result()
    assert str(there.value) == str(here.value) and "nowhere/missing.jpg" in str(there.value)
    assert len(counted) == 2


def test_the_childs_warnings_are_issued_here(tmp_path, counted):
    w = make_world(9)
    write_world(w, tmp_path)
    (tmp_path / "fs_noise.txt").write_text("# c\nNobody.png\n")
    opts = _opts(tmp_path, sizes=(10, 50, 300, 5000))  # 5000 > 300 distractors: skipped, with a warning
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        bg = mft.BackgroundTables(spec(), opts)
        bg.send_probe_paths(list(w["paths"]))
        bg.result()
    assert not counted
    kinds = sorted((r.category.__name__, str(r.message).split(": ", 1)[1][:29]) for r in rec)
    assert kinds == [("NoiseMatchWarning", "none of its 1 entries matched"),
                     ("UserWarning", "only 300 distractors; sizes [")]


@pytest.mark.parametrize("child", ["import sys; sys.exit(3)", "print('not the protocol')"])
def test_a_failed_child_leaves_the_work_to_this_process(tmp_path, monkeypatch, counted, child):
    w = make_world(5)
    write_world(w, tmp_path)
    _child_on(monkeypatch, False)
    here = run(tmp_path, w)
    _child_on(monkeypatch, True)
    monkeypatch.setattr(mft, "_CHILD", child)
    again = run(tmp_path, w)
    assert len(counted) == 2 and again["variants"] == here["variants"]


def test_cancel_stops_the_child_and_a_bad_store_stays_in_process(tmp_path):
    w = make_world(5)
    write_world(w, tmp_path)
    bg = mft.BackgroundTables(spec(), _opts(tmp_path))
    bg.cancel()  # before the probe paths were sent
    assert bg._proc.returncode is not None
    assert not mft.wants_child(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert not mft.wants_child(tmp_path / "junk.h5")


def test_warm_kernels_loads_the_signatures_a_run_uses(tmp_path):
    """In a clean interpreter: after warm_kernels, a run compiles or loads no other signature of any fused
    kernel function (each dispatcher holds exactly one), so the warm-up did the run's loading."""
    w = make_world(6)
    write_world(w, tmp_path, membership="lists")
    args = {"probes": str(tmp_path / "probes.h5"), "distractors": str(tmp_path / "dist.h5"),
            "probe_list": str(tmp_path / "fs.json"), "facescrub_noises": str(tmp_path / "fs_noise.txt"),
            "megaface_noises": str(tmp_path / "mf_noise.txt"), "distractor_lists": str(tmp_path / "lists"),
            "progress": False}
    code = (
        "import json\n"
        "import megabench.metrics.kernels_numba as kn\n"
        "from megabench.evaluation.megaface import MegafaceOptions, MegafaceSpec, run_megaface, warm_kernels\n"
        "sp = MegafaceSpec(sizes=(10, 50, 300), far_targets=(1e-3, 1e-1), topk_min=100_000, block_rows=37)\n"
        f"opts = MegafaceOptions(**json.loads({json.dumps(json.dumps(args))})).resolved(sp)\n"
        "fns = {'fused_block': kn.fused_block, 'young_threshold': kn.young_threshold, 'merge_hist': kn.merge_hist}\n"
        "warm_kernels(sp, opts)\n"
        "before = {k: len(f.signatures) for k, f in fns.items()}\n"
        "run_megaface(sp, opts, echo=lambda *a: None)\n"
        "print(json.dumps([before, {k: len(f.signatures) for k, f in fns.items()}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == after == {"fused_block": 1, "young_threshold": 1, "merge_hist": 1}


@pytest.mark.parametrize("sizes, builds", [((10, 50, 300), 2), ((10, 50), 3)])  # + warm_kernels' tiny stack
def test_the_stack_built_while_the_child_works_is_kept_only_when_confirmed(tmp_path, monkeypatch, sizes, builds):
    """The parent builds the stack on the store's first rows as the sample; with every row in use (the size-300
    list holds the whole store) that guess is the sample and the stack is kept, else it is built again."""
    w = make_world(7)
    write_world(w, tmp_path, membership="lists", sizes=sizes)
    _child_on(monkeypatch, False)
    here = run(tmp_path, w, lists=True, sp=spec(sizes=sizes))
    calls = _calls(monkeypatch, "build_stack")
    _child_on(monkeypatch, True)
    child = run(tmp_path, w, lists=True, sp=spec(sizes=sizes))
    assert len(calls) == builds
    drop = ("timings", "created", "environment")
    assert {k: v for k, v in child.items() if k not in drop} == {k: v for k, v in here.items() if k not in drop}


def test_the_child_imports_this_megabench_not_one_in_the_current_folder(tmp_path, monkeypatch, counted):
    """A folder named megabench where the run is started (another checkout, say) must not replace the package
    this process runs in the child: it would compute the tables with other code."""
    w = make_world(8)
    write_world(w, tmp_path)
    fake = tmp_path / "cwd" / "megabench"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise SystemExit('the wrong megabench was imported')\n")
    monkeypatch.chdir(tmp_path / "cwd")
    bg = mft.BackgroundTables(spec(), _opts(tmp_path))
    bg.send_probe_paths(list(w["paths"]))
    bg.result()
    assert not counted  # the child answered: it imported the right package
