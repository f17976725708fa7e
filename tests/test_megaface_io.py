"""Devkit formats: matio bytes, template lists, noise lists, matio <-> HDF5 conversion, synthetic set."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import UPSTREAM_SHA256

from megabench.config import spec_folder
from megabench.data import megaface_io as io
from megabench.errors import DataError

SHIPPED = spec_folder("protocols") / "megaface_noises"


def test_matio_bytes_match_hand_built_layout(tmp_path):
    v = np.array([0.5, -1.25, 3.0, 1e-7], np.float32)
    expected = struct.pack("<iiii", 4, 1, 4, 5) + struct.pack("<4f", *v.tolist())
    assert io.matio_bytes(v) == expected
    io.write_matio(tmp_path / "a.bin", v)
    assert (tmp_path / "a.bin").read_bytes() == expected
    np.testing.assert_array_equal(io.read_matio(tmp_path / "a.bin"), v)


@pytest.mark.parametrize("data, match", [
    (struct.pack("<iiii", 4, 1, 4, 6) + bytes(16), "type=6"),
    (struct.pack("<iiii", 4, 2, 4, 5) + bytes(32), "cols=2"),
    (struct.pack("<iiii", 4, 1, 4, 5) + bytes(12), "truncated"),
    (struct.pack("<iiii", 4, 1, 4, 5) + bytes(20), "truncated"),
    (b"\x00" * 8, "shorter than the 16-byte"),
])
def test_matio_bad_header_or_length(data, match):
    with pytest.raises(DataError, match=match):
        io.parse_matio(data, source="x.bin")


def test_template_lists_roundtrip_and_errors(tmp_path):
    io.write_probe_list(tmp_path / "facescrub_features_list.json", ["A/A_1.png", "B/B_2.png"], ["A", "B"])
    pl = io.read_probe_list(tmp_path / "facescrub_features_list.json")
    assert pl.paths == ("A/A_1.png", "B/B_2.png") and list(pl.labels()) == [0, 1]
    (tmp_path / "bad.json").write_text(json.dumps({"path": ["a"], "id": []}))
    with pytest.raises(DataError, match="`id` list as long as `path`"):
        io.read_probe_list(tmp_path / "bad.json")
    (tmp_path / "notjson.json").write_text("{")
    with pytest.raises(DataError, match="not a JSON template list"):
        io.read_distractor_list(tmp_path / "notjson.json")
    for s in (10, 100):
        io.write_distractor_list(tmp_path / "l" / f"megaface_features_list.json_{s}_1",
                                 [f"x/{i}.jpg" for i in range(s)])
    io.write_distractor_list(tmp_path / "l" / "megaface_features_list.json_10_2", ["y.jpg"])
    files = io.distractor_list_files(tmp_path / "l")
    assert list(files) == [10, 100] and files[10].name.endswith("_10_1")
    assert list(io.distractor_list_files(tmp_path / "l", 2)) == [10]
    assert len(io.read_distractor_list(files[100])) == 100
    with pytest.raises(DataError, match="no lists for set 3"):
        io.distractor_list_files(tmp_path / "l", 3)
    with pytest.raises(DataError, match="no megaface_features_list"):
        io.distractor_list_files(tmp_path)


def test_noise_lists_and_matching(tmp_path):
    (tmp_path / "n.txt").write_text("# comment\n\nA_1.png\n  B_2.png \n#x\n")
    assert io.read_noise_list(tmp_path / "n.txt") == ["A_1.png", "B_2.png"]
    mask, matched = io.match_facescrub_noise(["A/A_1.png", "A/A_2.png", "B/B_2.png"], ["A_1.png", "B_2.png", "C.png"])
    assert mask.tolist() == [True, False, True] and matched == 2
    store = ["FlickrFinal2/375/1@N00/9_0.jpg", "375/1@N00/9_1.jpg", "375/2@N00/9_0.jpg"]
    mask, matched = io.match_megaface_noise(store, ["375/1@N00/9_0.jpg", "375/2@N00/9_0.jpg", "999/z@N00/1_0.jpg"])
    assert mask.tolist() == [True, False, True] and matched == 2


def test_shipped_noise_lists():
    from megabench.fileio import sha256_file

    fs, mf = io.read_noise_list(SHIPPED / "facescrub_noises.txt"), io.read_noise_list(SHIPPED / "megaface_noises.txt")
    assert len(fs) == 605 and len(mf) == 719
    assert fs[0] == "Aaron_Eckhart_136.png" and mf[0] == "375/37531198@N00/4174611825_0.jpg"
    attribution = (SHIPPED / "ATTRIBUTION.md").read_text()
    for name in ("facescrub_noises.txt", "megaface_noises.txt"):
        digest = sha256_file(SHIPPED / name)
        assert digest == UPSTREAM_SHA256[name]  # verbatim copy
        assert digest in attribution
    assert "We used the noises list proposed by InsightFace" in attribution and "9fc3cc9c" in attribution


def test_convert_matio_tree_roundtrip(tmp_path):
    from megabench.data.feature_store import open_features

    rng = np.random.default_rng(0)
    paths = [f"P{i % 2}/P{i % 2}_{i}.png" for i in range(6)]
    vecs = rng.normal(size=(6, 8)).astype(np.float32)
    for p, v in zip(paths[:5], vecs[:5], strict=True):  # the last one is missing
        io.write_matio(tmp_path / "tree" / f"{p}_r100.bin", v)
    with pytest.raises(DataError, match=r"1 of 6 listed features are missing \(first: \['P1/P1_5.png'\]"):
        io.matio_to_store(tmp_path / "tree", paths, tmp_path / "s.h5", progress=False)
    assert not (tmp_path / "s.h5").exists()
    rep = io.matio_to_store(tmp_path / "tree", paths, tmp_path / "s.h5", ids=np.arange(6), allow_missing=True,
                            dtype="float16", progress=False)
    assert (rep.written, rep.missing, rep.first_missing) == (5, 1, ("P1/P1_5.png",))
    with open_features(tmp_path / "s.h5") as fs:
        assert fs.paths() == paths[:5] and fs.dtype == np.float16 and list(fs.ids()) == [0, 1, 2, 3, 4]
        np.testing.assert_array_equal(fs.read(), vecs[:5].astype(np.float16).astype(np.float32))
    n = io.store_to_matio(tmp_path / "s.h5", tmp_path / "back", progress=False)
    assert n == 5
    assert io.read_matio(tmp_path / "back" / f"{paths[0]}_r100.bin").tolist() == \
        vecs[0].astype(np.float16).astype(np.float32).tolist()
    io.write_matio(tmp_path / "tree" / f"{paths[5]}_r100.bin", np.zeros(4, np.float32))
    with pytest.raises(DataError, match="dimension 4"):
        io.matio_to_store(tmp_path / "tree", paths, tmp_path / "s2.h5", progress=False)


def test_convert_cli(tmp_path):
    from megabench.cli import cli

    paths = ["A/A_1.png", "A/A_2.png"]
    io.write_probe_list(tmp_path / "facescrub_features_list.json", paths, ["A", "A"])
    for p in paths:
        io.write_matio(tmp_path / "tree" / f"{p}_r50.bin", np.ones(4, np.float32))
    r = CliRunner().invoke(cli, ["convert", "--root", str(tmp_path / "tree"), "--list",
                                 str(tmp_path / "facescrub_features_list.json"), "--store", str(tmp_path / "p.h5"),
                                 "--file-ending", "_r50.bin", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "wrote 2 features" in r.output and "missing 0" in r.output
    r = CliRunner().invoke(cli, ["convert", "--root", str(tmp_path / "nowhere"), "--list",
                                 str(tmp_path / "facescrub_features_list.json"), "--store", str(tmp_path / "q.h5"),
                                 "--quiet"])
    assert r.exit_code == 1 and "error:" in r.output and "2 of 2 listed features are missing" in r.output


def test_probe_sizes_match_facescrub():
    from megabench.data.synthetic_megaface import probe_sizes

    m = probe_sizes()
    assert m.size == 80 and m.sum() == 3530 and int((m * (m - 1)).sum()) == 153_634 and m.min() >= 2


def test_synthetic_set_structure(tmp_path):
    from megabench.data.feature_store import open_features
    from megabench.data.synthetic_megaface import generate

    meta = generate(tmp_path, 1500, 16, 3, dtype="float16", progress=False)
    assert meta["sizes"] == [10, 100, 1000, 1500]
    files = io.distractor_list_files(tmp_path / "lists")
    lists = {s: io.read_distractor_list(f) for s, f in files.items()}
    assert all(lists[a] == lists[b][:a] for a, b in ((10, 100), (100, 1000), (1000, 1500)))  # nested
    with open_features(tmp_path / "megaface.h5") as fs:
        assert fs.n == 1500 and fs.dim == 16 and fs.dtype == np.float16
        dpaths = fs.paths()
    pl = io.read_probe_list(tmp_path / "facescrub_features_list.json")
    fsn = io.read_noise_list(tmp_path / "facescrub_noises.txt")
    mfn = io.read_noise_list(tmp_path / "megaface_noises.txt")
    assert io.match_facescrub_noise(pl.paths, fsn)[1] == meta["n_mislabelled_probes"] == len(fsn) - 1
    assert io.match_megaface_noise(dpaths, mfn)[1] == meta["n_near_duplicates"] == len(mfn) - 1


# --- issue 9: what the lists and stores may hold ---------------------------------------------------------
def test_identity_names_and_whole_number_ids():
    from megabench.data.megaface_io import identity_name, labels_from_ids

    assert [identity_name(v, source="s") for v in ("Ann", 3, 3.0, np.int64(4))] == ["Ann", "3", "3", "4"]
    for bad in (2.5, float("nan"), float("inf"), None, True, [1], ""):
        with pytest.raises(DataError, match="^s: identity"):
            identity_name(bad, source="s")
    np.testing.assert_array_equal(labels_from_ids(np.array([5, 2, 5]), source="s"), [5, 2, 5])
    np.testing.assert_array_equal(labels_from_ids(np.array([5.0, 2.0]), source="s"), [5, 2])
    names = np.array([b"Zoe", b"Ann", b"Zoe"], dtype=object)
    np.testing.assert_array_equal(labels_from_ids(names, source="s"), [1, 0, 1])
    for bad in (np.array([1.0, 1.5]), np.array([1.0, np.nan])):
        with pytest.raises(DataError, match="^s: 1 `ids` are not whole numbers"):
            labels_from_ids(bad, source="s")


def test_probe_list_refuses_repeats_and_empty(tmp_path):
    from megabench.data.megaface_io import read_probe_list

    p = tmp_path / "fs.json"
    io.write_probe_list(p, ["a/1.png", "b/1.png", "a/1.png", "b/1.png", "c/1.png"], ["a", "b", "a", "b", "c"])
    with pytest.raises(DataError, match=r"2 image\(s\) listed more than once \(first: \['a/1.png', 'b/1.png'\]"):
        read_probe_list(p)
    io.write_probe_list(p, [], [])
    with pytest.raises(DataError, match="empty"):
        read_probe_list(p)
    p.write_text('{"path": ["a.png", "b.png"], "id": [1, 1.0]}')
    assert read_probe_list(p).names == ("1", "1")  # the same identity, written two ways


def test_noise_list_second_tab_field_and_encoding(tmp_path):
    p = tmp_path / "n.txt"
    p.write_text("#c\n375/x@N00/1_0.jpg\nid7\t375/y@N00/2_0.jpg\t0.93\n\n")
    assert io.read_noise_list(p, tab_field=True) == ["375/x@N00/1_0.jpg", "375/y@N00/2_0.jpg"]
    assert io.read_noise_list(p) == ["375/x@N00/1_0.jpg", "id7\t375/y@N00/2_0.jpg\t0.93"]
    p.write_bytes(b"\xff\xfeA_1.png\n")
    with pytest.raises(DataError, match=f"{p}: not a UTF-8"):
        io.read_noise_list(p)


@pytest.mark.parametrize("rel, ok", [("a/b.bin", True), ("a/../b.bin", True), ("../b.bin", False),
                                     ("a/../../b.bin", False), ("/etc/passwd", False), ("", False)])
def test_inside_root(tmp_path, rel, ok):
    from megabench.data.megaface_io import inside_root

    if ok:
        assert tmp_path.resolve() in inside_root(tmp_path, rel, source="s").parents
    else:
        with pytest.raises(DataError, match="^s: "):
            inside_root(tmp_path, rel, source="s")
