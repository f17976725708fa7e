"""Bad inputs and misuse of ``megaface``, ``convert`` and ``synth megaface`` (issue 9), table-driven.

Every case: exit code 1, one ``error:`` line naming the offending file (or option), no traceback, and
every file in the folder byte-identical afterwards (nothing written, nothing deleted).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from test_megaface_protocol import make_world, write_world

from megabench.cli import cli
from megabench.data.feature_store import write_features
from megabench.data.megaface_io import write_distractor_list, write_probe_list


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(12)
    folder = tmp_path_factory.mktemp("bad_inputs_world")
    write_world(w, folder, membership="lists", sizes=(10, 50))
    return w, folder


def base_args(f: Path) -> list[str]:
    return ["megaface", "--probes", str(f / "probes.h5"), "--distractors", str(f / "dist.h5"),
            "--probe-list", str(f / "fs.json"), "--facescrub-noises", str(f / "fs_noise.txt"),
            "--megaface-noises", str(f / "mf_noise.txt"), "--block-rows", "37", "--quiet"]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _ids_store(f, w, ids):
    with h5py.File(f / "probes_ids.h5", "w") as h5:  # written by hand: feature_store writes int64 ids only
        h5["features"] = w["P"]
        h5["paths"] = np.array(w["paths"], dtype=h5py.string_dtype())
        h5["ids"] = ids
        h5.attrs["schema_version"] = "1"


# --- each case: (name, setup(folder, world) -> argv, the text the message names) ---------------------
def _same(option):
    def setup(f, w):
        return [*base_args(f), option, str(f / "probes.h5")]
    return setup


def _state_is_out(f, w):
    return [*base_args(f), "--out", str(f / "r.json"), "--state", str(f / "r.json")]


def _devkit_is_lists(f, w):
    return [*base_args(f), "--distractor-lists", str(f / "lists"), "--devkit-json", str(f / "lists")]


def _out_parent_is_file(f, w):
    (f / "afile").write_text("x")
    return [*base_args(f), "--out", str(f / "afile" / "r.json")]


def _out_read_only(f, w):
    (f / "ro").mkdir()
    (f / "ro").chmod(0o555)
    return [*base_args(f), "--out", str(f / "ro" / "r.json")]


def _state_foreign(f, w):
    (f / "notes.txt").write_text("my notes\n")
    return [*base_args(f), "--state", str(f / "notes.txt")]


def _out_foreign(f, w):
    (f / "data.csv").write_text("a,b\n1,2\n")
    return [*base_args(f), "--out", str(f / "data.csv")]


def _list_size_lies(f, w):
    write_distractor_list(f / "l2" / "megaface_features_list.json_50_1", w["dpaths"][:40])
    return [*base_args(f), "--distractor-lists", str(f / "l2")]


def _repeated_probes(f, w):
    write_probe_list(f / "fs_rep.json", [*w["paths"], w["paths"][3]], ["a"] * (len(w["paths"]) + 1))
    args = base_args(f)
    args[args.index("--probe-list") + 1] = str(f / "fs_rep.json")
    return args


def _no_list(ids_value):
    def setup(f, w):
        ids = np.asarray(w["labels"], np.float64)
        ids[2] = ids_value
        _ids_store(f, w, ids)
        args = base_args(f)
        i = args.index("--probe-list")
        del args[i:i + 2]
        args[args.index("--probes") + 1] = str(f / "probes_ids.h5")
        return args
    return setup


def _probes_as_distractors(f, w):
    args = base_args(f)
    args[args.index("--distractors") + 1] = str(f / "probes.h5")
    return [*args, "--sizes", "10"]


def _probe_copies(f, w):
    P = np.concatenate([w["P"]] * 3)
    write_features(f / "copies.h5", P, [f"c/{i}.jpg" for i in range(len(P))])
    args = base_args(f)
    args[args.index("--distractors") + 1] = str(f / "copies.h5")
    return [*args, "--sizes", "10,50", "--refine", "none"]


def _opt(*extra):
    def setup(f, w):
        return [*base_args(f), *extra]
    return setup


def _empty_probe_list(f, w):
    (f / "fs_empty.json").write_text('{"path": [], "id": []}')
    args = base_args(f)
    args[args.index("--probe-list") + 1] = str(f / "fs_empty.json")
    return args


def _dup_store_path(f, w):
    paths = list(w["dpaths"])
    paths[1] = paths[0]
    write_features(f / "dist_dup.h5", w["X"], paths)
    write_distractor_list(f / "l3" / "megaface_features_list.json_10_1", [w["dpaths"][0], *w["dpaths"][2:11]])
    args = base_args(f)
    args[args.index("--distractors") + 1] = str(f / "dist_dup.h5")
    return [*args, "--distractor-lists", str(f / "l3")]


def _features_layout(kind):
    def setup(f, w):
        with h5py.File(f / "bad_layout.h5", "w") as h5:
            if kind == "group":
                h5.create_group("features")
            else:
                h5["features"] = np.ones(8, np.float32)
        args = base_args(f)
        args[args.index("--distractors") + 1] = str(f / "bad_layout.h5")
        return args
    return setup


def _bytes_file(name, option, data=b"\xff\xfe\x00bad \xc3\x28\n"):
    def setup(f, w):
        (f / name).write_bytes(data)
        args = base_args(f)
        if option in args:
            args[args.index(option) + 1] = str(f / name)
            return args
        return [*args, option, str(f / name)]
    return setup


def _corrupt_state(data):
    def setup(f, w):
        (f / "st.npz").write_bytes(data)
        return [*base_args(f), "--state", str(f / "st.npz"), "--resume"]
    return setup


def _npz_state(f, w):
    np.savez(f / "st.npz", x=np.arange(3))
    return [*base_args(f), "--state", str(f / "st.npz"), "--resume"]


def _convert_store_is_list(f, w):
    return ["convert", "--root", str(f / "matio"), "--list", str(f / "fs.json"), "--store", str(f / "fs.json")]


def _convert_traversal(bad_path):
    def setup(f, w):
        write_features(f / "evil.h5", w["P"][:2], ["ok/a.png", bad_path])
        (f / "victim.bin").write_bytes(b"precious")
        return ["convert", "--to", "matio", "--root", str(f / "matio_out"), "--store", str(f / "evil.h5"),
                "--file-ending", ""]
    return setup


def _convert_list_traversal(f, w):
    write_distractor_list(f / "evil_list.json", ["../victim.bin"])
    (f / "victim.bin").write_bytes(b"precious")
    (f / "matio_in").mkdir()
    return ["convert", "--root", str(f / "matio_in"), "--list", str(f / "evil_list.json"), "--store",
            str(f / "x.h5"), "--file-ending", ""]


def _convert_root_is_file(f, w):
    (f / "rootfile").write_text("x")
    return ["convert", "--to", "matio", "--root", str(f / "rootfile"), "--store", str(f / "probes.h5")]


def _synth_existing(f, w):
    (f / "set").mkdir()
    (f / "set" / "megaface.h5").write_bytes(b"someone's store")
    return ["synth", "megaface", "--out", str(f / "set"), "--distractors", "100", "--dim", "8", "--quiet"]


CASES = [
    ("state = probes", _same("--state"), "probes.h5"),
    ("out = probes", _same("--out"), "probes.h5"),
    ("devkit-json = probes", _same("--devkit-json"), "probes.h5"),
    ("state = out", _state_is_out, "r.json"),
    ("devkit-json = lists", _devkit_is_lists, "lists"),
    ("out parent is a file", _out_parent_is_file, "afile/r.json: cannot write --out"),
    ("out folder read-only", _out_read_only, "ro/r.json: cannot write --out"),
    ("state is someone's file", _state_foreign, "notes.txt"),
    ("out is someone's file", _out_foreign, "data.csv"),
    ("list _50_ holding 40", _list_size_lies, "megaface_features_list.json_50_1"),
    ("repeated probe entries", _repeated_probes, "fs_rep.json"),
    ("fractional float id", _no_list(2.5), "probes_ids.h5"),
    ("NaN id", _no_list(np.nan), "probes_ids.h5"),
    ("probe store as distractors", _probes_as_distractors, "probes.h5"),
    ("probe rows as distractors", _probe_copies, "copies.h5"),
    ("sizes 0", _opt("--sizes", "0"), "--sizes"),
    ("sizes negative", _opt("--sizes=-5"), "--sizes"),
    ("sizes 10.7", _opt("--sizes", "10.7"), "--sizes"),
    ("synthetic 0", _opt("--synthetic", "0"), "--synthetic"),
    ("synthetic negative", _opt("--synthetic=-5"), "--synthetic"),
    ("empty probe list", _empty_probe_list, "fs_empty.json"),
    ("duplicated store path", _dup_store_path, "l3: 1 paths of the size-10 list occur more than once"),
    ("features is a group", _features_layout("group"), "bad_layout.h5"),
    ("features is 1-D", _features_layout("1d"), "bad_layout.h5"),
    ("noise list not UTF-8", _bytes_file("noise_bad.txt", "--megaface-noises"), "noise_bad.txt"),
    ("probe list not UTF-8", _bytes_file("fs_bad.json", "--probe-list"), "fs_bad.json"),
    ("device typo", _opt("--device", "cpux"), "cpux"),
    ("cuda device absent", _opt("--device", "cuda:99"), "cuda:99"),
    ("empty state", _corrupt_state(b""), "st.npz: exists and is not a megabench resume state"),
    ("garbage zip state", _corrupt_state(b"PK\x03\x04" + b"\0" * 40), "st.npz: unreadable resume state"),
    ("state without marker", _npz_state, "st.npz: exists and is not a megabench resume state"),
    ("state is a text file", _corrupt_state(b"my notes"), "st.npz: exists and is not a megabench resume state"),
    ("convert store = list", _convert_store_is_list, "fs.json"),
    ("convert ../ path", _convert_traversal("../victim.bin"), "evil.h5"),
    ("convert absolute path", _convert_traversal("/tmp/megabench-victim.bin"), "evil.h5"),
    ("convert list ../ path", _convert_list_traversal, "evil_list.json"),
    ("convert root is a file", _convert_root_is_file, "rootfile"),
    ("synth over a set", _synth_existing, "set"),
]


@pytest.mark.parametrize("name, setup, named", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_error_and_touches_nothing(world, tmp_path, monkeypatch, name, setup, named):
    w, src = world
    for p in src.rglob("*"):  # a private copy: some cases add files
        if p.is_file():
            (tmp_path / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / p.relative_to(src)).write_bytes(p.read_bytes())
    monkeypatch.setenv("MEGABENCH_CACHE", str(tmp_path / "cache"))
    args = setup(tmp_path, w)
    before = snapshot(tmp_path)
    r = CliRunner().invoke(cli, args)
    text = r.output
    assert r.exit_code == 1, (name, text, r.exception)
    assert "Traceback" not in text
    assert r.exception is None or isinstance(r.exception, SystemExit), (name, repr(r.exception))
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, (name, text)
    assert named in errors[0], (name, errors[0])
    assert snapshot(tmp_path) == before, name
    if (tmp_path / "ro").exists():
        (tmp_path / "ro").chmod(0o755)


def test_string_identity_names_in_ids_are_supported(world, tmp_path):
    """FaceScrub names stored as strings in `ids` give the numbers of integer labels."""
    w, src = world
    for name in ("fs_noise.txt", "mf_noise.txt", "dist.h5"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    names = np.array([f"Person_{c}" for c in w["labels"]], dtype=object)
    _ids_store(tmp_path, w, np.array(names, dtype=h5py.string_dtype()))
    write_features(tmp_path / "probes_int.h5", w["P"], w["paths"], ids=w["labels"])
    outs = []
    for store in ("probes_ids.h5", "probes_int.h5"):
        out = tmp_path / f"{store}.json"
        args = ["megaface", "--probes", str(tmp_path / store), "--distractors", str(tmp_path / "dist.h5"),
                "--facescrub-noises", str(tmp_path / "fs_noise.txt"), "--megaface-noises",
                str(tmp_path / "mf_noise.txt"), "--sizes", "10,50", "--quiet", "--out", str(out)]
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        outs.append(json.loads(out.read_text())["variants"])
    assert outs[0] == outs[1]


def test_synth_force_replaces_and_cleans_a_killed_generation(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    stale = [out / ".megaface.h5.abc123.h5.tmp", out / ".meta.json.x1.tmp"]
    for p in stale:
        p.write_bytes(b"half a store")
    (out / ".hidden_user_file.tmp").write_bytes(b"not ours")
    args = ["synth", "megaface", "--out", str(out), "--distractors", "200", "--dim", "8", "--quiet"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert not any(p.exists() for p in stale) and (out / ".hidden_user_file.tmp").read_bytes() == b"not ours"
    first = (out / "megaface.h5").read_bytes()
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and "--force" in r.output
    r = CliRunner().invoke(cli, [*args, "--seed", "1", "--force"])
    assert r.exit_code == 0, r.output
    assert (out / "megaface.h5").read_bytes() != first


def test_out_checked_before_the_pass(world, tmp_path, monkeypatch):
    """An unwritable --out is refused before any block is scored (the pass is never lost)."""
    import megabench.evaluation.megaface as m

    w, src = world
    calls = []
    monkeypatch.setattr(m, "read_block", lambda *a: calls.append(a))
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        r = CliRunner().invoke(cli, [*base_args(src), "--out", str(tmp_path / "ro" / "r.json")])
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert r.exit_code == 1 and "read-only" in r.output and calls == []


def test_a_rerun_replaces_its_own_result_and_removes_only_its_state(world, tmp_path):
    w, src = world
    out = tmp_path / "r.json"
    args = [*base_args(src), "--out", str(out), "--checkpoint-seconds", "0"]
    for _ in range(2):  # the second run replaces a megabench result: allowed without --force
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        assert json.loads(out.read_text())["kind"] == "megaface"
        assert not (tmp_path / "r.json.state.npz").exists()  # written every block, removed after success
