"""Models in, results out: `verify --model`, `megaface --model` (images -> cached stores -> protocol),
checkpoint resolution from training runs, and the bad-input errors of that path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from megabench.cli import cli
from megabench.data.feature_store import StoreMeta, open_features, write_features
from megabench.data.megaface_io import read_distractor_list, read_probe_list
from megabench.data.synthetic_faces import render_face
from megabench.data.synthetic_megaface_images import generate_images
from megabench.engine.checkpoint import save_checkpoint
from megabench.engine.model_source import resolve_model
from megabench.errors import MegabenchError
from megabench.models import create_model


def _checkpoint(path: Path, name: str = "iresnet_tiny", seed: int = 0) -> str:
    torch.manual_seed(seed)
    return save_checkpoint(path, create_model(name))


def _invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


# ------------------------------------------------------------------------------ checkpoint resolution
def _run(folder: Path, model: str, status: str, finished: str, seed: int) -> Path:
    folder.mkdir(parents=True)
    _checkpoint(folder / "final.pt", model, seed)
    (folder / "run.json").write_text(json.dumps({"model": model, "status": status, "finished": finished}))
    return folder


def test_model_resolves_to_the_newest_finished_run(tmp_path):
    runs = tmp_path / "runs"
    _run(runs / "old", "iresnet_tiny", "finished", "2026-11-01T00:00:00+00:00", 1)
    new = _run(runs / "deep" / "new", "iresnet_tiny", "finished", "2026-11-02T00:00:00+00:00", 2)
    _run(runs / "busy", "iresnet_tiny", "running", "2026-11-03T00:00:00+00:00", 3)
    _run(runs / "other", "sranet_tiny", "finished", "2026-11-04T00:00:00+00:00", 4)
    said: list[str] = []
    src = resolve_model("iresnet_tiny", runs=runs, echo=said.append)
    assert src.checkpoint == new / "final.pt" and src.run == new and src.name == "iresnet_tiny"
    torch.manual_seed(2)
    want = create_model("iresnet_tiny").state_dict()
    assert all(torch.equal(v, src.model.state_dict()[k]) for k, v in want.items())
    assert len(said) == 1 and str(new) in said[0] and "newest of 2" in said[0]

    with pytest.raises(MegabenchError) as exc:
        resolve_model("sranet_r50", runs=runs)
    msg = str(exc.value)
    assert "sranet_r50" in msg and "megabench train" in msg and "--checkpoint" in msg and str(runs) in msg
    with pytest.raises(MegabenchError) as exc:
        resolve_model("sranet_tiny", runs / "old" / "final.pt")
    assert "iresnet_tiny" in str(exc.value) and "sranet_tiny" in str(exc.value)
    with pytest.raises(KeyError, match="unknown"):
        resolve_model("no_such_net", runs=runs)


# ------------------------------------------------------------------------------------- verify --model
def _same_result(a: dict, b: dict) -> None:
    for key in ("metrics", "folds", "roc"):
        assert a[key] == b[key], key
    for key in ("name", "checkpoint_sha256"):
        assert a["model"][key] == b["model"][key]
    assert a["input"]["flip"] == b["input"]["flip"] and a["input"]["pairs_sha256"] == b["input"]["pairs_sha256"]


def test_verify_model_equals_extract_then_verify_bit_for_bit(tmp_path, small_lfw_bin):
    sha = _checkpoint(tmp_path / "m.pt")
    cache = tmp_path / "cache"
    res = _invoke("extract", "--checkpoint", tmp_path / "m.pt", "--pairs", small_lfw_bin, "--out", tmp_path / "f.h5",
                  "--quiet")
    assert res.exit_code == 0, res.output
    res = _invoke("verify", "--pairs", small_lfw_bin, "--features", tmp_path / "f.h5", "--allow-partial",
                  "--out", tmp_path / "two_step.json")
    assert res.exit_code == 0, res.output
    res = _invoke("verify", "--checkpoint", tmp_path / "m.pt", "--pairs", small_lfw_bin, "--allow-partial",
                  "--cache", cache, "--out", tmp_path / "one_step.json", "--quiet")
    assert res.exit_code == 0, res.output
    assert "extracted into" in res.output and "iresnet_tiny" in res.output
    one = json.loads((tmp_path / "one_step.json").read_text())
    _same_result(one, json.loads((tmp_path / "two_step.json").read_text()))
    assert one["model"]["checkpoint_sha256"] == sha and one["model"]["checkpoint"] == str(tmp_path / "m.pt")
    stores = list(cache.rglob("small_lfw.h5"))
    assert len(stores) == 1
    with open_features(stores[0]) as a, open_features(tmp_path / "f.h5") as b:
        assert np.array_equal(a.read(), b.read()) and np.array_equal(a.read("features_flip"), b.read("features_flip"))

    res = _invoke("verify", "--checkpoint", tmp_path / "m.pt", "--pairs", small_lfw_bin, "--allow-partial",
                  "--cache", cache, "--out", tmp_path / "again.json", "--quiet")
    assert res.exit_code == 0 and "reusing" in res.output and "extracted into" not in res.output
    _same_result(json.loads((tmp_path / "again.json").read_text()), one)


def _lfw_tree(root: Path, n_sets: int = 10) -> Path:
    """LFW-style images (<Name>/<Name>_<NNNN>.jpg, 112x112) and a pairs.txt of n_sets x (1 same + 1 different)."""
    lines = [f"{n_sets} 1"]
    for s in range(n_sets):
        a, b = f"Person_{s:02d}", f"Person_{(s + 1) % n_sets:02d}"
        lines += [f"{a} 1 2", f"{a} 1 {b} 1"]
    for s in range(n_sets):
        name = f"Person_{s:02d}"
        for k in (1, 2):
            p = root / name / f"{name}_{k:04d}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(render_face(s, k, seed=0)).save(p, quality=95)
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root / "pairs.txt"


def test_verify_model_on_pairs_txt_and_several_sets(tmp_path, small_lfw_bin):
    _checkpoint(tmp_path / "m.pt")
    pairs = _lfw_tree(tmp_path / "lfw")
    res = _invoke("extract", "--checkpoint", tmp_path / "m.pt", "--pairs", pairs, "--images", tmp_path / "lfw",
                  "--out", tmp_path / "f.h5", "--quiet")
    assert res.exit_code == 0, res.output
    res = _invoke("verify", "--pairs", pairs, "--images", tmp_path / "lfw", "--features", tmp_path / "f.h5",
                  "--allow-partial", "--flip", "sum", "--out", tmp_path / "two_step.json")
    assert res.exit_code == 0, res.output
    res = _invoke("verify", "--checkpoint", tmp_path / "m.pt", "--pairs", small_lfw_bin, "--pairs", pairs,
                  "--images", tmp_path / "lfw", "--allow-partial", "--flip", "sum", "--cache", tmp_path / "c",
                  "--out-dir", tmp_path / "res", "--quiet")
    assert res.exit_code == 0, res.output
    _same_result(json.loads((tmp_path / "res" / "iresnet_tiny_lfw.json").read_text()),
                 json.loads((tmp_path / "two_step.json").read_text()))
    table = res.output[res.output.index("protocol"):]
    assert table.count("iresnet_tiny_lfw.json") == 2 and "accuracy" in table  # one row per set, one table

    res = _invoke("verify", "--checkpoint", tmp_path / "m.pt", "--pairs", pairs, "--images", tmp_path / "lfw",
                  "--allow-partial", "--flip", "none", "--cache", tmp_path / "c", "--out", tmp_path / "none.json",
                  "--quiet")
    assert res.exit_code == 0, res.output
    stores = sorted(tmp_path.joinpath("c").rglob("pairs.h5"))
    flips = []
    for s in stores:
        with open_features(s) as fs:
            flips.append(fs.has_flip)
    assert sorted(flips) == [False, True]  # --flip none extracted no mirrors, into its own cache entry


def test_verify_needs_features_or_a_model(tmp_path, small_lfw_bin):
    res = _invoke("verify", "--pairs", small_lfw_bin)
    assert res.exit_code == 1 and "--features" in res.output and "--model" in res.output
    res = _invoke("verify", "--model", "iresnet_tiny", "--runs", tmp_path / "none", "--pairs", small_lfw_bin)
    assert res.exit_code == 1 and "megabench train" in res.output


# ----------------------------------------------------------------------------------- megaface --model
@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mf_images")
    generate_images(out, n_identities=4, per_identity=3, n_distractors=30, n_mislabelled=1, n_duplicates=2,
                    progress=False)
    return out


def _mf_args(pack: Path, out: Path, *more) -> list:
    return ["megaface", "--facescrub-root", pack / "facescrub_images", "--megaface-root", pack / "megaface_images",
            "--probe-list", pack / "facescrub_features_list.json", "--distractor-lists", pack / "lists",
            "--facescrub-noises", pack / "facescrub_noises.txt", "--megaface-noises", pack / "megaface_noises.txt",
            "--out", out, "--quiet", *more]


def _embed_like_extract(model, files: list[Path], batch: int) -> np.ndarray:
    """Extract-style code written out in the test: Pillow decode, batches of `batch`, (x - 127.5) / 128."""
    out = []
    with torch.no_grad():
        for lo in range(0, len(files), batch):
            x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[lo:lo + batch]])
            t = (torch.from_numpy(x).permute(0, 3, 1, 2).float() - 127.5) / 128.0
            out.append(model(t).numpy())
    return np.concatenate(out)


def test_megaface_from_images_equals_megaface_from_features(tmp_path, pack):
    sha = _checkpoint(tmp_path / "m.pt")
    cache = tmp_path / "cache"
    res = _invoke(*_mf_args(pack, tmp_path / "img.json", "--checkpoint", tmp_path / "m.pt", "--cache", cache,
                            "--batch", "4", "--workers", "0"))
    assert res.exit_code == 0, res.output
    assert res.output.count("extracted into") == 2

    model = resolve_model(None, tmp_path / "m.pt").model
    pl = read_probe_list(pack / "facescrub_features_list.json")
    dist = read_distractor_list(pack / "lists" / "megaface_features_list.json_30_1")
    meta = StoreMeta(model="iresnet_tiny")
    write_features(tmp_path / "p.h5", _embed_like_extract(model, [pack / "facescrub_images" / p for p in pl.paths], 4),
                   list(pl.paths), ids=pl.labels(), meta=meta)
    write_features(tmp_path / "d.h5", _embed_like_extract(model, [pack / "megaface_images" / p for p in dist], 4),
                   dist, meta=meta)
    res = _invoke("megaface", "--probes", tmp_path / "p.h5", "--distractors", tmp_path / "d.h5", "--probe-list",
                  pack / "facescrub_features_list.json", "--distractor-lists", pack / "lists", "--facescrub-noises",
                  pack / "facescrub_noises.txt", "--megaface-noises", pack / "megaface_noises.txt",
                  "--out", tmp_path / "feat.json", "--quiet")
    assert res.exit_code == 0, res.output
    a = json.loads((tmp_path / "img.json").read_text())
    b = json.loads((tmp_path / "feat.json").read_text())
    assert a["variants"] == b["variants"] and a["noise"]["facescrub_matched"] == 1
    assert set(a["variants"]["raw"]["sizes"]) == {"10", "30"}
    assert a["model"]["name"] == "iresnet_tiny" and a["model"]["checkpoint_sha256"] == sha

    # a second run reuses both stores: nothing extracted, the same result
    stores = sorted(cache.rglob("*.h5"))
    mtimes = [s.stat().st_mtime_ns for s in stores]
    res = _invoke(*_mf_args(pack, tmp_path / "again.json", "--checkpoint", tmp_path / "m.pt", "--cache", cache))
    assert res.exit_code == 0, res.output
    assert res.output.count("reusing") == 2 and "extracted into" not in res.output
    assert [s.stat().st_mtime_ns for s in stores] == mtimes
    assert json.loads((tmp_path / "again.json").read_text())["variants"] == a["variants"]

    # other weights: a new cache key, extracted again; only the distractors --sizes 10 needs
    _checkpoint(tmp_path / "m2.pt", seed=5)
    res = _invoke(*_mf_args(pack, tmp_path / "m2.json", "--checkpoint", tmp_path / "m2.pt", "--cache", cache,
                            "--sizes", "10"))
    assert res.exit_code == 0, res.output
    assert res.output.count("extracted into") == 2 and "reusing" not in res.output
    new_dist = [s for s in cache.rglob("megaface.h5") if s not in stores]
    with open_features(new_dist[0]) as fs:
        assert fs.n == 10 and fs.meta.checkpoint_sha256 != a["model"].get("checkpoint_sha256")


def test_megaface_model_bad_input(tmp_path, pack):
    _checkpoint(tmp_path / "m.pt")
    res = _invoke(*_mf_args(pack, tmp_path / "r.json", "--checkpoint", tmp_path / "m.pt", "--cache", tmp_path / "c",
                            "--megaface-root", tmp_path / "nowhere"))
    assert res.exit_code == 1 and "30 of 30" in res.output and "nowhere" in res.output
    assert "--megaface-root" in res.output

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = _invoke(*_mf_args(pack, tmp_path / "r.json", "--checkpoint", tmp_path / "m.pt", "--cache", blocker / "c"))
    assert res.exit_code == 1 and "not writable" in res.output and str(blocker) in res.output
    assert blocker.read_text() == "not a folder" and not (tmp_path / "r.json").exists()

    _checkpoint(tmp_path / "s.pt", "sranet_tiny")
    res = _invoke(*_mf_args(pack, tmp_path / "r.json", "--model", "iresnet_tiny", "--checkpoint", tmp_path / "s.pt",
                            "--cache", tmp_path / "c"))
    assert res.exit_code == 1 and "sranet_tiny" in res.output and "iresnet_tiny" in res.output
    res = _invoke(*_mf_args(pack, tmp_path / "r.json", "--checkpoint", tmp_path / "m.pt", "--probes", "x.h5"))
    assert res.exit_code == 1 and "--probes" in res.output


def test_synth_megaface_images_cli(tmp_path):
    res = _invoke("synth", "megaface", "--images", "--out", tmp_path / "s", "--distractors", "12",
                  "--identities", "3", "--per-identity", "2", "--size", "64", "--quiet")
    assert res.exit_code == 0, res.output
    pl = read_probe_list(tmp_path / "s" / "facescrub_features_list.json")
    assert len(pl.paths) == 6 and len(set(pl.names)) == 3
    assert all((tmp_path / "s" / "facescrub_images" / p).is_file() for p in pl.paths)
    dist = read_distractor_list(tmp_path / "s" / "lists" / "megaface_features_list.json_12_1")
    assert read_distractor_list(tmp_path / "s" / "lists" / "megaface_features_list.json_10_1") == dist[:10]
    for p in dist:
        with Image.open(tmp_path / "s" / "megaface_images" / p) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    noise = (tmp_path / "s" / "megaface_noises.txt").read_text().split("\n")
    assert sum(n in dist for n in noise) == 3  # the planted near-duplicates
    assert "megabench megaface --model" in res.output
    # the images are megabench's synthetic faces (render_face), not a stand-in: probe k of identity c is
    # render_face(first_identity + c, k) (PNG, exact), or identity c + 1's for a planted mislabelled probe
    for i, p in enumerate(pl.paths):
        c, k = divmod(i, 2)
        with Image.open(tmp_path / "s" / "facescrub_images" / p) as im:
            got = np.asarray(im.convert("RGB"))
        assert any(np.array_equal(got, render_face(100_000 + shown, k, seed=0, size=64))
                   for shown in (c, (c + 1) % 3)), p
