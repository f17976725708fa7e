"""`megabench train` / `train-baselines` through click: real small data, --set, bad input, extract of final.pt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from train_fixtures import one_thread

from megabench.cli import cli

SMALL = Path(__file__).resolve().parent / "fixtures" / "insightface" / "small_dataset"
SMALL_LFW = Path(__file__).resolve().parent / "fixtures" / "insightface" / "small_lfw.bin"
TINY_112 = ["--set", "input_size=[112, 112]", "--set", "batch_size=4", "--max-steps", "3", "--quiet",
            "--workers", "0"]

_threads = pytest.fixture(autouse=True)(one_thread)


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def small_rec(tmp_path_factory) -> Path:
    """A RecordIO written by the writer from the very images of the real small_dataset list."""
    from megabench.data.recordio import write_insightface_recordio

    items = []
    for line in (SMALL / "label.txt").read_text().splitlines():
        path, label = line.split("\t")
        items.append((int(label), (SMALL / path).read_bytes()))
    out = tmp_path_factory.mktemp("smallrec")
    write_insightface_recordio(out, sorted(items, key=lambda t: t[0]), image_size=(112, 112))
    return out


def test_real_small_list_trains_validates_and_final_pt_extracts(tmp_path):
    out = tmp_path / "run"
    res = run("train", "demo_tiny", "--data", SMALL / "label.txt", "--out", out, "--val", SMALL_LFW, *TINY_112)
    assert res.exit_code == 0, res.output
    assert "10 images, 10 classes, steps 0 -> 3 of 3" in res.output
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and record["model"] == "iresnet_tiny" and record["data"]["num_classes"] == 10
    assert "small_lfw" in record["metrics"] and record["results"] == ["verification_small_lfw.json"]
    from megabench.results import read_result

    result = read_result(out / "verification_small_lfw.json")
    assert result["kind"] == "verification" and result["model"]["name"] == "iresnet_tiny"
    assert result["model"]["checkpoint_sha256"] == record["weights_sha256"]
    # the resolved recipe says what was trained (num_classes 0 -> the data's 10; --max-steps shortened schedule)
    import tomllib

    resolved = tomllib.loads((out / "recipe.toml").read_text())
    assert resolved["data"]["num_classes"] == 10 and resolved["schedule"]["max_steps"] == 3
    # final.pt is what `megabench extract --checkpoint` reads, and gives the same verification numbers
    feats = tmp_path / "f.h5"
    res = run("extract", "--checkpoint", out / "final.pt", "--pairs", SMALL_LFW, "--out", feats, "--quiet")
    assert res.exit_code == 0, res.output
    res = run("verify", "--pairs", SMALL_LFW, "--features", feats, "--allow-partial", "--out", tmp_path / "v.json")
    assert res.exit_code == 0, res.output
    again = read_result(tmp_path / "v.json")
    assert again["metrics"]["accuracy"] == result["metrics"]["accuracy"]


def test_recordio_from_the_same_images_trains(tmp_path, small_rec):
    res = run("train", "demo_tiny", "--data", small_rec, "--out", tmp_path / "run", *TINY_112)
    assert res.exit_code == 0, res.output
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3] and (tmp_path / "run" / "final.pt").is_file()


@pytest.mark.parametrize("damage, message", [
    ("truncate", r"train\.(rec|idx).*truncated"),
    ("idx_past_end", r"train\.idx: key \d+ points to byte \d+ but train\.rec has only"),
    ("bad_header", r"train\.rec record 3: no RecordIO magic"),
])
def test_damaged_recordio_is_one_clear_line(tmp_path, small_rec, damage, message):
    data = tmp_path / "data"
    shutil.copytree(small_rec, data)
    rec = data / "train.rec"
    raw = bytearray(rec.read_bytes())
    if damage == "truncate":
        rec.write_bytes(bytes(raw[: len(raw) // 2]))
    elif damage == "idx_past_end":
        lines = (data / "train.idx").read_text().splitlines()
        lines[4] = f"{lines[4].split()[0]}\t{len(raw) + 64}"
        (data / "train.idx").write_text("\n".join(lines) + "\n")
    else:
        from megabench.data.recordio import read_index

        keys, offsets = read_index(data / "train.idx")
        at = int(offsets[list(keys).index(3)])
        raw[at:at + 4] = b"\0\0\0\0"
        rec.write_bytes(bytes(raw))
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    res = run("train", "demo_tiny", "--data", data, "--out", tmp_path / "run", *TINY_112)
    assert res.exit_code == 1
    assert res.output.count("error:") == 1 and "Traceback" not in res.output, res.output
    import re

    assert re.search(message, res.output), res.output
    assert before == {p.name: p.read_bytes() for p in data.iterdir()}
    assert not (tmp_path / "run" / "final.pt").exists()


def test_set_overrides_are_type_checked_and_classes_must_agree(tmp_path):
    data = SMALL / "label.txt"
    res = run("train", "demo_tiny", "--data", data, "--out", tmp_path / "a", "--set", "schedule.speed=3", *TINY_112)
    assert res.exit_code == 1 and "unknown key(s) ['speed']" in res.output
    res = run("train", "demo_tiny", "--data", data, "--out", tmp_path / "a", *TINY_112, "--set", "batch_size=big")
    assert res.exit_code == 1 and "batch_size: expected int" in res.output
    res = run("train", "demo_tiny", "--data", data, "--out", tmp_path / "a", "--set", "data.num_classes=7", *TINY_112)
    assert res.exit_code == 1 and "label.txt: has 10 identities but recipe demo_tiny says data.num_classes = 7" \
        in res.output
    assert "Traceback" not in res.output and not (tmp_path / "a").exists()


def test_out_holding_another_run_is_refused_through_the_cli(tmp_path):
    out = tmp_path / "run"
    assert run("train", "demo_tiny", "--data", SMALL / "label.txt", "--out", out, *TINY_112).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    res = run("train", "demo_tiny", "--data", SMALL / "label.txt", "--out", out, *TINY_112, "--set", "seed=1")
    assert res.exit_code == 1 and f"{out}: holds a run" in res.output and "Traceback" not in res.output
    res = run("train", "demo_tiny", "--data", SMALL / "label.txt", "--out", out, "--resume", *TINY_112,
              "--set", "seed=1")
    assert res.exit_code == 1 and "cannot resume: recipe sha256" in res.output
    assert before == {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_train_baselines_grids_come_from_paper_tags(tmp_path):
    res = run("train-baselines", "--grid", "table5-small", "--data-root", tmp_path, "--dry-run")
    assert res.exit_code == 0, res.output
    names = [line.split()[0] for line in res.output.splitlines() if line and not line.startswith(" ")][:-1]
    assert names == ["casia_iresnet50_arcface", "casia_iresnet50_cosface", "casia_iresnet50_sphereface",
                     "casia_sranet_r50_arcface"]
    assert "80000 steps x 128 = 10,240,000 images" in res.output and "FLOPs" in res.output
    from megabench.config import list_specs, load_toml
    from megabench.engine.train_runs import grid_recipes

    tagged = {p.stem for p in list_specs("baselines") if not p.stem.startswith("_") and load_toml(p).get("paper")}
    assert {p.stem for p in grid_recipes("all")} == tagged
    assert {p.stem for p in grid_recipes("table1")} == {f"casia_iresnet50_{a}" for a in (
        "arcface", "ssa_naive_arcface", "ssa_avg_arcface", "ssa_max_arcface", "ssa_light_arcface")}
    res = run("train-baselines", "--grid", "table5-large", "--data-root", tmp_path)
    assert res.exit_code == 1 and "faces_glint/train.rec" in res.output and "lfw.bin" in res.output
    res = run("train-baselines", "--grid", "table1", "--data-root", tmp_path, "--dry-run", "--only", "nope")
    assert res.exit_code == 1 and "--only ['nope']: not in grid table1" in res.output


def test_train_baselines_trains_skips_finished_and_copies_results(tmp_path, small_rec):
    root = tmp_path / "data"
    shutil.copytree(small_rec, root / "faces_webface_112x112")
    for name in ("lfw", "agedb_30", "cfp_fp"):
        shutil.copy(SMALL_LFW, root / "faces_webface_112x112" / f"{name}.bin")
    args = ["train-baselines", "--grid", "table5-small", "--only", "casia_iresnet50_arcface", "--data-root", root,
            "--out", tmp_path / "runs", "--set", "model=iresnet_tiny", "--set", "embedding_size=64",
            "--set", "data.num_classes=0", "--set", "batch_size=4", "--set", "schedule.max_steps=2",
            "--set", "schedule.lr_steps=[1]", "--quiet", "--workers", "0"]
    res = run(*args)
    assert res.exit_code == 0, res.output
    results = sorted(p.name for p in (tmp_path / "runs" / "results" / "casia_iresnet50_arcface").iterdir())
    assert results == ["verification_agedb_30.json", "verification_cfp_fp.json", "verification_lfw.json"]
    res = run(*args)
    assert res.exit_code == 0 and "(finished)" in res.output and "training" not in res.output
