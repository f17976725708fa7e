"""`megabench verify` and `megabench synth verification` through click's CliRunner: exit codes, result files."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import write_verification_spec

from megabench.cli import cli
from megabench.data.bin_format import write_bin
from megabench.data.feature_store import StoreMeta, open_features, write_features
from megabench.metrics import verification as mv

N = 100


def _spec(path: Path, n_pairs: int = N) -> Path:
    return write_verification_spec(path, n_pairs)


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    res = _run("synth", "verification", "--out", str(d), "--pairs", str(N), "--dim", "16", "--difficulty", "0.2",
               "--seed", "3")
    assert res.exit_code == 0, res.output
    assert "megabench verify --pairs" in res.output
    return d / "synthetic.bin", d / "synthetic.h5", _spec(d / "tiny.toml")


def test_synth_files_are_consistent(synth):
    pack, store, _ = synth
    from megabench.data.bin_format import read_bin

    p = read_bin(pack)
    assert p.n_pairs == N and p.image(0).shape == (112, 112, 3)
    with open_features(store) as fs:
        assert fs.n == 2 * N and fs.dim == 16 and fs.has_flip
        assert fs.paths()[:3] == ["0", "1", "2"] and fs.meta.source_sha256 == p.sha256


def test_verify_writes_result(synth, tmp_path):
    pack, store, spec = synth
    out = tmp_path / "r.json"
    res = _run("verify", "--pairs", str(pack), "--features", str(store), "--protocol", str(spec), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "std over folds" in res.output and f"result: {out}" in res.output and "VAL@FAR=0.001" in res.output
    r = json.loads(out.read_text())
    assert r["schema_version"] == "1.0" and r["kind"] == "verification"
    assert {"name", "version", "sha256", "variant"} <= set(r["protocol"])
    assert r["protocol"]["name"] == "tiny" and r["protocol"]["variant"] == "insightface"
    assert len(r["protocol"]["sha256"]) == 64
    assert {"pairs_sha256", "features_sha256", "flip"} <= set(r["input"]) and r["input"]["flip"] == "concat"
    assert {"accuracy", "accuracy_std", "val", "val_std", "far", "auc", "eer"} <= set(r["metrics"])
    assert {"name", "checkpoint_sha256", "preprocessing"} <= set(r["model"]) and r["model"]["name"] == "synthetic"
    assert "environment" in r and "timings" in r and len(r["roc"]["fpr"]) == 400
    assert len(r["folds"]) == 10 and all(0 <= f["accuracy"] <= 1 for f in r["folds"])
    # the same numbers as the metric functions on the store, pairs (2k, 2k+1), concat fusion
    with open_features(store) as fs:
        e = mv.fuse_flip(fs.read(), fs.read("features_flip"), "concat")
    from megabench.data.bin_format import read_bin

    acc = mv.ten_fold_accuracy(mv.pair_distances(e[0::2], e[1::2]), read_bin(pack).issame)
    assert [f["accuracy"] for f in r["folds"]] == acc.accuracy.tolist()
    assert r["metrics"]["accuracy"] == acc.mean and r["metrics"]["accuracy_std"] == acc.std
    assert 0.7 < acc.mean < 1.0  # difficulty 0.2 -> about 90%


def test_verify_builds_options_and_calls_the_registered_entry_point(synth, tmp_path, monkeypatch):
    """The CLI parses options into VerificationOptions and leaves the work to run_verification (the
    evaluation registry's entry point); the result file is what that entry point returned."""
    from megabench.evaluation import verification as ev
    from megabench.evaluation.registry import EVALUATIONS

    assert EVALUATIONS.get("verification").run_function() is ev.run_verification
    pack, store, spec = synth
    calls = []
    real = ev.run_verification

    def spy(spec_obj, options, **kw):
        calls.append((spec_obj, options, kw))
        return real(spec_obj, options, **kw)

    monkeypatch.setattr(ev, "run_verification", spy)
    out = tmp_path / "r.json"
    res = _run("verify", "--pairs", str(pack), "--features", str(store), "--protocol", str(spec), "--out", str(out),
               "--flip", "sum", "--threshold-search", "exact")
    assert res.exit_code == 0, res.output
    assert len(calls) == 1
    spec_obj, options, kw = calls[0]
    assert spec_obj.n_pairs == N and kw == {"pairs": None}
    assert options == ev.VerificationOptions(pairs=str(pack), features=str(store), images=None, flip="sum",
                                             threshold_search="exact", allow_partial=False)
    direct = real(spec_obj, options)
    written = json.loads(out.read_text())
    assert written["metrics"] == json.loads(json.dumps(direct["metrics"]))


def test_verify_variants_and_protocol_guess(synth, tmp_path):
    pack, store, spec = synth
    out = tmp_path / "x.json"
    res = _run("verify", "--pairs", str(pack), "--features", str(store), "--protocol", str(spec), "--out", str(out),
               "--threshold-search", "exact", "--flip", "sum")
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["protocol"]["variant"] == "exact" and r["input"]["flip"] == "sum"
    # a pack named like a protocol selects it (here partial, so --allow-partial)
    named = tmp_path / "agedb_30.bin"
    named.write_bytes(pack.read_bytes())
    res = _run("verify", "--pairs", str(named), "--features", str(store), "--out", str(out), "--allow-partial")
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["protocol"]["name"] == "agedb_30" and r["input"]["partial"] is True


def test_pair_count_mismatch_needs_allow_partial(synth, tmp_path, monkeypatch):
    pack, store, _ = synth
    monkeypatch.chdir(tmp_path)
    res = _run("verify", "--pairs", str(pack), "--features", str(store))  # default protocol lfw: 6000 pairs
    assert res.exit_code == 1
    assert "100 pairs, but protocol lfw expects 6000" in res.output and "--allow-partial" in res.output
    assert not (tmp_path / "results").exists()
    res = _run("verify", "--pairs", str(pack), "--features", str(store), "--allow-partial")
    assert res.exit_code == 0 and (tmp_path / "results" / "lfw.json").is_file()


def _store_variant(src: Path, dst: Path, *, rows=None, nan_row=None, drop_flip=False) -> Path:
    with open_features(src) as fs:
        f, ff, paths = fs.read(), fs.read("features_flip"), fs.paths()
    if rows is not None:
        f, ff, paths = f[:rows], ff[:rows], paths[:rows]
    if nan_row is not None:
        f[nan_row] = np.nan
    return write_features(dst, f, paths, features_flip=None if drop_flip else ff, meta=StoreMeta(model="m"))


@pytest.mark.parametrize(
    "kind, args, message",
    [
        ("rows", {"rows": 150}, "150 feature rows but the pack"),
        ("nan", {"nan_row": 5}, "first rows [5]"),
        ("noflip", {"drop_flip": True}, "needs a `features_flip` dataset"),
    ],
)
def test_bad_feature_stores(synth, tmp_path, kind, args, message):
    pack, store, spec = synth
    bad = _store_variant(store, tmp_path / f"{kind}.h5", **args)
    out = tmp_path / "r.json"
    res = _run("verify", "--pairs", str(pack), "--features", str(bad), "--protocol", str(spec), "--out", str(out),
               "--flip", "sum")
    assert res.exit_code == 1 and "error:" in res.output and message in res.output
    assert str(bad) in res.output
    assert not out.exists()


def test_flip_shape_mismatch(synth, tmp_path):
    pack, _, spec = synth
    bad = tmp_path / "shape.h5"
    with h5py.File(bad, "w") as h:
        h["features"] = np.ones((2 * N, 4), np.float32)
        h["features_flip"] = np.ones((2 * N, 5), np.float32)
    res = _run("verify", "--pairs", str(pack), "--features", str(bad), "--protocol", str(spec))
    assert res.exit_code == 1 and "features_flip" in res.output and "shape" in res.output


def test_truncated_and_malicious_packs(synth, tmp_path):
    pack, store, spec = synth
    out = tmp_path / "out" / "r.json"
    trunc = tmp_path / "trunc.bin"
    trunc.write_bytes(pack.read_bytes()[:5000])
    res = _run("verify", "--pairs", str(trunc), "--features", str(store), "--protocol", str(spec), "--out", str(out))
    assert res.exit_code == 1 and str(trunc) in res.output
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(([Evil(), b"x"], [True])))
    res = _run("verify", "--pairs", str(evil), "--features", str(store), "--protocol", str(spec), "--out", str(out))
    assert res.exit_code == 1 and "refused and nothing was executed" in res.output
    assert not marker.exists() and not out.exists()


def test_chance_level_warning(tmp_path):
    res = _run("synth", "verification", "--out", str(tmp_path), "--pairs", "200", "--dim", "8", "--difficulty", "1")
    assert res.exit_code == 0
    spec = _spec(tmp_path / "t.toml", n_pairs=200)
    res = _run("verify", "--pairs", str(tmp_path / "synthetic.bin"), "--features", str(tmp_path / "synthetic.h5"),
               "--protocol", str(spec), "--out", str(tmp_path / "r.json"))
    assert res.exit_code == 0
    assert "near chance" in res.stderr and "alignment" in res.stderr


def test_pair_list_over_image_folder(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    names = [f"P{i}/P{i}_{j:04d}.jpg" for i in range(4) for j in range(1, 4)]
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"jpeg")
    lines, issame = [], []
    for k in range(20):
        a, b = (0, 1) if k == 0 else rng.choice(len(names), 2, replace=False)
        same = names[a].split("/")[0] == names[b].split("/")[0]
        lines.append(f"{names[a]} {names[b]} {int(same)}")
        issame.append(same)
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    feats = rng.standard_normal((len(names), 8)).astype(np.float32)
    store = write_features(tmp_path / "f.h5", feats, names)
    spec = _spec(tmp_path / "t.toml", n_pairs=20)
    out = tmp_path / "r.json"
    res = _run("verify", "--pairs", str(tmp_path / "list.txt"), "--images", str(root), "--features", str(store),
               "--protocol", str(spec), "--flip", "none", "--out", str(out))
    assert res.exit_code == 0, res.output
    idx = {n: i for i, n in enumerate(names)}
    rows = np.array([[idx[t] for t in line.split()[:2]] for line in lines])
    e = mv.normalize_rows(feats)
    acc = mv.ten_fold_accuracy(mv.pair_distances(e[rows[:, 0]], e[rows[:, 1]]), np.array(issame))
    assert json.loads(out.read_text())["metrics"]["accuracy"] == acc.mean
    (root / names[0]).unlink()
    res = _run("verify", "--pairs", str(tmp_path / "list.txt"), "--images", str(root), "--features", str(store),
               "--protocol", str(spec), "--flip", "none", "--out", str(out))
    assert res.exit_code == 1 and names[0] in res.output and "do not exist" in res.output


def test_lfw_pairs_txt_needs_images(tmp_path):
    (tmp_path / "pairs.txt").write_text("1 1\nA 1 2\nA 1 B 1\n")
    pack_store = write_features(tmp_path / "f.h5", np.ones((4, 2), np.float32), ["a", "b", "c", "d"])
    res = _run("verify", "--pairs", str(tmp_path / "pairs.txt"), "--features", str(pack_store))
    assert res.exit_code == 1 and "--images" in res.output


def test_write_bin_round_trip_used_by_cli(tmp_path):
    # a pack written with numpy-array images (cv2.imencode style) goes through verify too
    rng = np.random.default_rng(1)
    ims = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2 * 20)]
    issame = np.tile([True, False], 10)
    pack = write_bin(tmp_path / "p.bin", ims, issame, as_arrays=True, protocol=2)
    feats = rng.standard_normal((40, 6)).astype(np.float32)
    store = write_features(tmp_path / "f.h5", feats, [str(i) for i in range(40)])
    res = _run("verify", "--pairs", str(pack), "--features", str(store), "--protocol", str(_spec(tmp_path / "t.toml",
               n_pairs=20)), "--flip", "none", "--out", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output


def test_real_small_lfw_pack(small_lfw_bin, tmp_path):
    # the real insightface pack: 10 same pairs; random features; degenerate metrics are NaN -> null, with warnings
    feats = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    store = write_features(tmp_path / "f.h5", feats, [str(i) for i in range(20)])
    out = tmp_path / "r.json"
    res = _run("verify", "--pairs", str(small_lfw_bin), "--features", str(store),
               "--allow-partial", "--flip", "none", "--out", str(out))
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["input"]["n_pairs"] == 10 and r["input"]["n_same"] == 10
    assert r["metrics"]["auc"] is None and r["metrics"]["far"] is None
    assert res.stderr.count("ROC undefined") == 1
    e = mv.normalize_rows(feats)
    d = mv.pair_distances(e[0::2], e[1::2])
    assert r["metrics"]["accuracy"] == mv.ten_fold_accuracy(d, np.ones(10, bool)).mean


@pytest.mark.parametrize("name, n_pairs", [("lfw", 6000), ("agedb_30", 6000), ("cfp_fp", 7000)])
def test_shipped_protocol_specs(name, n_pairs):
    from megabench.config import load_spec

    spec = load_spec(name, kind="verification")
    assert spec.name == name and spec.n_pairs == n_pairs and spec.n_folds == 10
    assert spec.thresholds.values().size == 400 and spec.val_thresholds.values().size == 4000
    assert np.array_equal(spec.thresholds.values(), np.arange(0, 4, 0.01))
    assert spec.flip == "concat" and spec.threshold_search == "insightface" and len(spec.sha256) == 64
    res = _run("ls", "protocols")
    assert res.exit_code == 0 and name in res.output
