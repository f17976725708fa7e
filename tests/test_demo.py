"""`megabench demo` end to end at a reduced scale (the session fixture ``demo_run`` in conftest.py).

What is checked: every stage's result file, that the evaluations used the demo's own trained weights
(and the untrained baseline its initial ones), the report's every table and figure, the summary's
held-out accuracies against the result files, and the folder rules (reuse, refusals, --force). The
full-scale run (learning to >= 0.9) is `make demo`, timed in README.md.
"""

from __future__ import annotations

import json
import re

import pytest
from helpers import DEMO_SMALL, run_cli

from megabench.demo_run import MARKER, MODELS, prepare_folder
from megabench.engine.checkpoint import read_checkpoint
from megabench.errors import OutputError
from megabench.results import read_result

NAMES = [m for m, _ in MODELS]
TABLES = ["verification", "megaface", "profile", *(f"table{k}" for k in range(1, 6))]
FIGURES = ["megaface_cmc_roc", "megaface_rank1_vs_distractors", "megaface_tar_vs_distractors", "profile_cost",
           "verification_accuracy", "verification_roc"]
SUMMARY = re.compile(r"^\s+(\w+)\s+trained (\d\.\d{4}) \+- (\d\.\d{3})\s+untrained (\d\.\d{4})$")


def _run_json(out, model):
    return json.loads((out / "runs" / model / "run.json").read_text())


def test_every_stage_wrote_its_files(demo_run):
    out, output = demo_run
    for k in range(1, 9):
        assert re.search(rf"^\[{k}/8\] \S", output, re.M), f"no progress line for stage {k}"
    assert (out / "data" / "faces" / "train.rec").is_file() and (out / "data" / "faces" / "heldout.bin").is_file()
    assert json.loads((out / "data" / "megaface" / "meta.json").read_text())["n_distractors"] == 30
    for model in NAMES:
        run = _run_json(out, model)
        assert run["status"] == "finished" and run["step"] == 10 and run["batch_size"] == 8
        assert run["model"] == model
        assert read_result(out / "results" / f"verification_{model}.json")["kind"] == "verification"
        assert read_result(out / "untrained" / f"verification_{model}.json")["kind"] == "verification"
        assert read_result(out / "results" / f"megaface_{model}.json")["kind"] == "megaface"
        assert read_result(out / "results" / f"profile_{model}.json")["kind"] == "profile"
    marker = json.loads((out / MARKER).read_text())
    assert marker["status"] == "finished" and len(marker["stage_seconds"]) == 8


def test_evaluations_use_the_demo_weights(demo_run):
    """Trained results name the run's final.pt; the untrained baseline is the same network (config) with
    other weights; MegaFace ran on the held-out protocol's unseen identities with the noise lists."""
    out, _ = demo_run
    for model in NAMES:
        trained = _run_json(out, model)["weights_sha256"]
        ver = read_result(out / "results" / f"verification_{model}.json")
        assert ver["model"]["name"] == model and ver["model"]["checkpoint_sha256"] == trained
        assert ver["protocol"]["name"] == "synth_heldout"
        mf = read_result(out / "results" / f"megaface_{model}.json")
        assert mf["model"]["checkpoint_sha256"] == trained
        assert set(mf["variants"]) == {"raw", "refined"}
        before = read_result(out / "untrained" / f"verification_{model}.json")
        assert before["model"]["name"] == model and before["model"]["checkpoint_sha256"] != trained
        ck_untrained = read_checkpoint(out / "untrained" / f"{model}.pt")
        ck_final = read_checkpoint(out / "runs" / model / "final.pt")
        assert ck_untrained["config"] == ck_final["config"]
        assert ck_untrained["weights_sha256"] == before["model"]["checkpoint_sha256"]


def test_report_has_every_table_and_figure(demo_run):
    out, _ = demo_run
    rep = out / "report"
    for name in TABLES:
        for fmt in ("md", "csv", "tex"):
            assert (rep / f"{name}.{fmt}").stat().st_size > 0, f"{name}.{fmt}"
    for name in FIGURES:
        assert (rep / f"{name}.png").stat().st_size > 1000 and (rep / f"{name}.pdf").stat().st_size > 1000
    html = (rep / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)
    table = (rep / "verification.md").read_text()  # both trained models side by side
    for model in NAMES:
        assert f"{model}@{_run_json(out, model)['weights_sha256'][:8]}" in table
        assert model in (rep / "megaface.md").read_text() and model in (rep / "profile.md").read_text()


def test_summary_reports_the_held_out_accuracies(demo_run):
    out, output = demo_run
    rows = {m.group(1): m.groups()[1:] for m in map(SUMMARY.match, output.splitlines()) if m}
    assert set(rows) == set(NAMES)
    for model, (acc, std, untrained) in rows.items():
        ver = read_result(out / "results" / f"verification_{model}.json")["metrics"]
        before = read_result(out / "untrained" / f"verification_{model}.json")["metrics"]
        assert acc == f"{ver['accuracy']:.4f}" and std == f"{ver['accuracy_std']:.3f}"
        assert untrained == f"{before['accuracy']:.4f}"
    assert f"report: {out / 'report' / 'report.html'}" in output
    assert "on 200 pairs of identities never seen in training" in output


def test_rerun_reuses_the_folder(demo_run):
    out, _ = demo_run
    finals = {m: (out / "runs" / m / "final.pt").stat().st_mtime_ns for m in NAMES}
    res = run_cli("demo", "--out", out, *DEMO_SMALL)
    assert res.exit_code == 0, res.output
    assert f"reusing {out / 'data' / 'faces'}" in res.output
    assert res.output.count("already finished (final.pt); nothing to do") == 2
    assert res.output.count("features: reusing") == 8  # 4 held-out packs, 2 x (probes, distractors)
    assert {m: (out / "runs" / m / "final.pt").stat().st_mtime_ns for m in NAMES} == finals
    assert sum(bool(SUMMARY.match(line)) for line in res.output.splitlines()) == len(NAMES)


def test_other_options_over_a_demo_folder_are_refused(demo_run):
    out, _ = demo_run
    before = (out / MARKER).read_bytes()
    res = run_cli("demo", "--out", out, *DEMO_SMALL[:-1], "--distractors", "40")
    assert res.exit_code == 1
    assert "holds a demo made with other options (distractors 30 -> 40)" in res.output and "--force" in res.output
    assert (out / MARKER).read_bytes() == before


def test_a_folder_that_is_not_a_demo_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    res = run_cli("demo", "--out", tmp_path, *DEMO_SMALL)
    assert res.exit_code == 1 and "not a megabench demo folder" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    file = tmp_path / "mine.txt"
    res = run_cli("demo", "--out", file, *DEMO_SMALL)
    assert res.exit_code == 2 and "is a file" in res.output and file.read_text() == "precious"  # click refuses it


def test_force_removes_only_what_a_demo_writes(tmp_path):
    prepare_folder(tmp_path, {"steps": 1}, force=False)
    for name in ("data", "runs", "results", "report", "cache", "untrained"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x").write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"steps 1 -> 2"):
        prepare_folder(tmp_path, {"steps": 2}, force=False)
    prepare_folder(tmp_path, {"steps": 2}, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER, "notes.txt"]
    assert json.loads((tmp_path / MARKER).read_text())["options"] == {"steps": 2}
