"""Synthetic faces: the renderer's contract, the RecordIO training set and the held-out insightface pack."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
from click.testing import CliRunner

from megabench.cli import cli
from megabench.data.bin_format import decode_image, read_bin
from megabench.data.recordio import RecordReader, read_property
from megabench.data.synthetic_faces import (
    default_pairs,
    face_jpeg,
    generate_synthetic_faces,
    heldout_pairs,
    identity_params,
    render_face,
    render_jpegs,
)
from megabench.data.training import open_training_set


def test_render_face_contract():
    a = render_face(3, 5, seed=7)
    assert a.shape == (112, 112, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, render_face(3, 5, seed=7))  # deterministic
    assert not np.array_equal(a, render_face(3, 6, seed=7))  # per-image jitter
    assert not np.array_equal(a, render_face(4, 5, seed=7))
    assert not np.array_equal(a, render_face(3, 5, seed=8))
    assert render_face(0, 0, seed=0, size=64).shape == (64, 64, 3)
    assert 20 < a.mean() < 235 and a.std() > 15  # not blank


def test_identities_differ_and_images_jitter():
    """Identity parameters are a function of (seed, identity) only; the images of one identity vary
    (pose, light) yet resemble each other more than they resemble other identities' images."""
    p1, p2 = identity_params(1, 0), identity_params(2, 0)
    assert p1.face_a != p2.face_a and p1.eye_x != p2.eye_x
    assert identity_params(1, 0) == identity_params(1, 0) or identity_params(1, 0) is identity_params(1, 0)

    def face_skin(k: int, j: int) -> np.ndarray:
        # mean colour of the cheek region, normalised by the image mean (removes global brightness)
        im = render_face(k, j, seed=0).astype(np.float64)
        return im[62:74, 30:46].mean((0, 1)) / im.mean()

    feats = np.array([[face_skin(k, j) for j in range(6)] for k in range(8)])  # (8, 6, 3)
    within = feats.std(axis=1).mean()
    between = feats.mean(axis=1).std(axis=0).mean()
    assert within > 0.0  # jitter exists
    assert between > within  # and identity dominates this simple cue


def test_heldout_pairs_layout():
    issame, pairs = heldout_pairs(200, 50, 30, seed=3)
    assert issame.shape == (200,)
    for fold in range(10):
        f = issame[fold * 20:(fold + 1) * 20]
        assert f[:10].all() and not f[10:].any()
    seen = set()
    for same, (a, i, b, j) in zip(issame, pairs, strict=True):
        assert 50 <= a < 80 and 50 <= b < 80
        assert (a == b) == bool(same)
        assert (a, i) not in seen and (b, j) not in seen and (a, i) != (b, j)
        seen |= {(a, i), (b, j)}
    assert default_pairs(100) == 600 and default_pairs(5) == 200 and default_pairs(10_000) == 6000
    with pytest.raises(ValueError, match="multiple of 20"):
        heldout_pairs(30, 0, 10, seed=0)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("faces")
    res = generate_synthetic_faces(out, identities=5, images_per_identity=3, pack_identities=6, pairs=40, seed=11)
    return out, res


def test_training_set_written(small_set):
    out, res = small_set
    assert read_property(out / "property") == (5, 112, 112)
    ds = open_training_set(out)
    assert (ds.format, len(ds), ds.num_classes, ds.image_size) == ("recordio", 15, 5, (112, 112))
    assert ds.labels().tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    h0 = RecordReader(out / "train.rec").read_header(0)
    assert h0.label.tolist() == [16.0, 21.0]  # images 1..15, identity ranges 16..20
    # record i+1 holds the JPEG of render_face(identity, image), byte for byte
    reader = RecordReader(out / "train.rec")
    for i in range(15):
        header, data = reader.read_record(i + 1)
        assert header.class_label == i // 3
        assert data == face_jpeg(i // 3, i % 3, seed=11)
    img, _ = ds[7]
    assert np.abs(img.permute(1, 2, 0).numpy().astype(np.int16) - render_face(2, 1, seed=11)).mean() < 6.0
    info = ds.info()
    assert info["images_per_identity"] == {"min": 3, "median": 3.0, "max": 3}


def test_pack_written_insightface_style(small_set):
    out, res = small_set
    raw = pickle.loads((out / "heldout.bin").read_bytes(), encoding="bytes")  # our own file: safe to load here
    bins, issame_list = raw
    assert isinstance(bins, list) and all(isinstance(b, bytes) for b in bins)
    assert isinstance(issame_list, list) and all(isinstance(v, bool) for v in issame_list)
    pack = read_bin(out / "heldout.bin")
    assert pack.n_pairs == 40 and pack.n_images == 80
    _, pairs = heldout_pairs(40, 5, 6, seed=11)
    np.testing.assert_array_equal(pack.issame, heldout_pairs(40, 5, 6, seed=11)[0])
    for n in (0, 13, 39):  # pack images are held-out identities' renders
        a, i, b, j = pairs[n]
        assert a >= 5 and b >= 5  # never a training identity
        assert pack.encoded[2 * n] == face_jpeg(a, i, seed=11)
        assert pack.encoded[2 * n + 1] == face_jpeg(b, j, seed=11)
    assert decode_image(bins[0]).shape == (112, 112, 3)
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["seed"], meta["identities"], meta["pack_first_identity"], meta["pairs"]) == (11, 5, 5, 40)


def test_deterministic_files(small_set, tmp_path):
    out, _ = small_set
    generate_synthetic_faces(tmp_path, identities=5, images_per_identity=3, pack_identities=6, pairs=40, seed=11)
    for name in ("train.rec", "train.idx", "property", "heldout.bin", "meta.json"):
        assert hashlib.sha256((out / name).read_bytes()).digest() == hashlib.sha256(
            (tmp_path / name).read_bytes()).digest(), name


def test_worker_processes_give_the_same_bytes():
    keys = [(k, i) for k in range(3) for i in range(4)]
    one = render_jpegs(keys, seed=5, size=48, workers=1)
    assert render_jpegs(keys, seed=5, size=48, workers=2, chunk=3) == one
    assert one[5] == face_jpeg(1, 1, seed=5, size=48)


def test_cli_synth_faces(tmp_path):
    out = tmp_path / "f"
    args = ["synth", "faces", "--out", str(out), "--identities", "3", "--images-per-identity", "2",
            "--pack-identities", "4", "--pairs", "20", "--seed", "1", "--quiet"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert (out / "train.rec").is_file() and (out / "heldout.bin").is_file()
    before = (out / "train.rec").read_bytes()
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and "already holds train.rec" in r.output and "--force" in r.output
    r = CliRunner().invoke(cli, [*args[:-2], "2", "--quiet", "--force"])
    assert r.exit_code == 0, r.output
    assert (out / "train.rec").read_bytes() != before
    r = CliRunner().invoke(cli, ["data", "info", str(out), "--json"])
    assert json.loads(r.output)["images"] == 6
    r = CliRunner().invoke(cli, [*args[:-1], "--pairs", "30", "--force"])
    assert r.exit_code == 1 and "multiple of 20" in r.output
