"""Paper tables from hand-built results: which row a result fills, the cell values, diffs, rendering, CLI."""

from __future__ import annotations

import base64
import re

import pandas as pd
import pytest
from click.testing import CliRunner
from report_results import megaface, profile, verification

from megabench.cli import cli
from megabench.reporting import render
from megabench.reporting.paper_tables import column_decimals, paper_table
from megabench.results import write_result


def _lines(df: pd.DataFrame, row: str, source: str) -> pd.DataFrame:
    return df[(df["row"] == row) & (df["source"] == source)]


def test_ours_and_diff_lines_are_the_result_numbers():
    results = [verification("iresnet50", "lfw", 0.9950), verification("iresnet50", "agedb_30", 0.9400),
               profile("iresnet50", attn=(), ms=50.0, size_mb=174.36, mem_mb=3000.0)]
    df = paper_table(1, results)
    ours = _lines(df, "ResNet50 (Baseline)", "ours").iloc[0]
    diff = _lines(df, "ResNet50 (Baseline)", "diff").iloc[0]
    assert ours["LFW (%)"] == pytest.approx(99.50) and ours["AgeDB-30 (%)"] == pytest.approx(94.00)
    assert pd.isna(ours["CFP-FP (%)"]) and pd.isna(diff["CFP-FP (%)"])  # no cfp_fp result: no cell, no diff
    assert ours["Inference (ms)"] == 50.0 and ours["Model size (MB)"] == 174.36
    assert diff["LFW (%)"] == pytest.approx(99.50 - 99.42) and diff["Train GPU memory (MB)"] == pytest.approx(-583)
    # rows nobody filled have a paper line only
    assert list(df[df["row"] == "ResNet50 + Naive SSA"]["source"]) == ["paper"]


def test_recipe_tags_route_results_not_the_model_name():
    softmax = verification("iresnet50", "lfw", 0.9880, recipe={"name": "casia_iresnet50_softmax", "head": "softmax",
                                                               "paper": ["Table 3 SoftMax baseline"]})
    arc = verification("iresnet50", "lfw", 0.9940)  # untagged: model name + default head (arcface)
    df = paper_table(3, [softmax, arc])
    assert _lines(df, "SoftMax Loss: Baseline", "ours").iloc[0]["LFW (%)"] == pytest.approx(98.80)
    assert _lines(df, "ArcFace Loss: Baseline", "ours").iloc[0]["LFW (%)"] == pytest.approx(99.40)
    # a recorded head without tags also routes
    cos = megaface("iresnet50", 0.80, 0.82, recipe={"head": "cosface"})
    t5 = paper_table(5, [cos])
    assert len(_lines(t5, "AM-Softmax [6]", "ours")) == 1 and len(_lines(t5, "ArcFace [4]", "ours")) == 0


def test_alias_tags_and_user_mapping():
    cos = megaface("iresnet50", 0.80, 0.82, recipe={"paper": ["Table 5 small CosFace"]})
    t5 = paper_table(5, [cos])
    assert _lines(t5, "AM-Softmax [6]", "ours").iloc[0]["Id refined (%)"] == pytest.approx(83.0)
    tiny = verification("sranet_tiny", "lfw", 0.90)
    assert (paper_table(3, [tiny])["source"] == "ours").sum() == 0
    mapped = paper_table(3, [tiny], mapping={"sranet_tiny": "Table 3 ArcFace SRANet"})
    assert _lines(mapped, "ArcFace Loss: SRANet", "ours").iloc[0]["model"] == "sranet_tiny"


def test_megaface_cells_at_one_million_and_newest_result_wins():
    old = megaface("sranet_r50", 0.80, 0.85)
    old["created"] = "2020-01-01T00:00:00+00:00"
    new = megaface("sranet_r50", 0.88, 0.90, refined_gain=0.01)
    df = paper_table(5, [new, old])
    ours = _lines(df, "SRANet,Res50(ours)", "ours").iloc[0]
    top = new["variants"]["refined"]["sizes"]["1000000"]
    assert ours["Id refined (%)"] == pytest.approx(100 * top["rank1"]) == pytest.approx(89.0)
    assert ours["Ver refined (%)"] == pytest.approx(100 * top["verification"]["tar_at_far"]["1e-06"]["tar"])
    assert ours["Id raw (%)"] == pytest.approx(88.0) and ours["distractors"] == 1_000_000
    diff = _lines(df, "SRANet,Res50(ours)", "diff").iloc[0]
    assert diff["Id refined (%)"] == pytest.approx(89.0 - 88.79) and pd.isna(diff["Id raw (%)"])


def test_megaface_below_one_million_says_its_size():
    small = megaface("sranet_r50", 0.95, 0.96, sizes=(10, 100, 1000))
    ours = _lines(paper_table(5, [small]), "SRANet,Res50(ours)", "ours").iloc[0]
    assert ours["distractors"] == 1000 and ours["Id raw (%)"] == pytest.approx(95.0)


def test_render_formats():
    df = paper_table(1, [verification("iresnet50", "lfw", 0.9950)])
    table = render.Table("table1", "Table 1 & more_x", df, decimals=column_decimals(1))
    md = render.to_markdown(table)
    assert "| ResNet50 (Baseline) | diff |  | +0.08 |" in md
    assert "| ResNet50 (Baseline) | paper | iresnet50 | 99.42 | 94.45 | 95.24 | 14.31 | 170.51 | 3583 |" in md
    tex = render.to_latex(table)
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"Table 1 \& more\_x" in tex and r"LFW (\%)" in tex and r"\addlinespace" in tex
    body = [ln for ln in tex.splitlines() if ln.startswith("ResNet50 + Naive SSA & paper")][0]
    assert body.count("&") == len(df.columns) - 1 and body.endswith(r"\\")
    assert pd.read_csv(__import__("io").StringIO(render.to_csv(table)))["LFW (%)"].iloc[1] == pytest.approx(99.5)
    assert render.format_cell(float("nan")) == "" and render.format_cell(-0.5, 2, signed=True) == "-0.50"


def test_report_command_writes_every_table_figure_and_one_html(tmp_path):
    res_dir = tmp_path / "results"
    files = {"v1.json": verification("iresnet50", "lfw", 0.994), "v2.json": verification("sranet_r50", "lfw", 0.996),
             "m1.json": megaface("iresnet50", 0.86, 0.88), "m2.json": megaface("sranet_r50", 0.875, 0.90),
             "p0.json": profile("iresnet50", attn=(), ms=100, size_mb=174.36, mem_mb=3000),
             "p1.json": profile("iresnet50_ssa_light", attn=("ssa_light",), ms=140, size_mb=189.5, mem_mb=6000)}
    for name, r in files.items():
        write_result(res_dir / name, r)
    (res_dir / "devkit.json").write_text('{"not": "a result"}')
    out = tmp_path / "rep"
    res = CliRunner().invoke(cli, ["report", str(res_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "paper Table 5: ours in 2 row(s)" in res.output
    for n in range(1, 6):
        for ext in ("md", "csv", "tex"):
            assert (out / f"table{n}.{ext}").stat().st_size > 100
    figs = ["megaface_cmc_roc", "megaface_rank1_vs_distractors", "megaface_tar_vs_distractors", "profile_cost",
            "verification_accuracy", "verification_roc"]
    for f in figs:
        assert (out / f"{f}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{f}.pdf").read_bytes()[:5] == b"%PDF-"
    page = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(figs) and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "src=\"http" not in page and "Table 5." in page and 'class="diff"' in page
    t5 = pd.read_csv(out / "table5.csv")
    assert t5[(t5["row"] == "SRANet,Res50(ours)") & (t5["source"] == "ours")]["Id refined (%)"].iloc[0] == 90.5


def test_report_command_bad_inputs(tmp_path):
    write_result(tmp_path / "v.json", verification("iresnet50", "lfw", 0.99))
    run = CliRunner().invoke
    res = run(cli, ["report", str(tmp_path / "v.json"), "--out", str(tmp_path / "o"), "--format", "md,docx"])
    assert res.exit_code == 1 and "unknown format(s) ['docx']" in res.output
    res = run(cli, ["report", str(tmp_path / "v.json"), "--out", str(tmp_path / "o"), "--map", "x=Table 9 nothing"])
    assert res.exit_code == 1 and "--map" in res.output
    res = run(cli, ["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no such result file" in res.output
    res = run(cli, ["report", str(tmp_path / "v.json"), "--out", str(tmp_path / "o"), "--format", "md"])
    assert res.exit_code == 0 and not (tmp_path / "o" / "report.html").exists()
    assert (tmp_path / "o" / "table1.md").exists() and not (tmp_path / "o" / "table1.tex").exists()


def test_report_tolerates_old_and_partial_results(tmp_path):
    """A profile result whose `model` is just the name, a verification without accuracy: no crash."""
    old = profile("iresnet50", attn=(), ms=10.0, size_mb=174.36, mem_mb=1000.0)
    old["model"] = "iresnet50"
    partial = verification("sranet_r50", "lfw", 0.99)
    partial["metrics"]["accuracy"] = None
    for i, r in enumerate([old, partial, verification("sranet_r50", "agedb_30", 0.95)]):
        write_result(tmp_path / "res" / f"{i}.json", r)
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "res"), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    t1 = pd.read_csv(tmp_path / "rep" / "table1.csv")
    assert t1[(t1["source"] == "ours")]["Inference (ms)"].iloc[0] == 10.0
    (tmp_path / "afile").write_text("x")
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "res"), "--out", str(tmp_path / "afile")])
    assert res.exit_code != 0 and "is a file" in res.output and (tmp_path / "afile").read_text() == "x"


def test_training_run_results_name_their_recipe():
    """`megabench train` writes model.recipe = the recipe's name: its tags and head come from the shipped recipe."""
    soft = verification("iresnet50", "lfw", 0.9870, recipe="casia_iresnet50_softmax", run="runs/x", step=10)
    arc = verification("iresnet50", "agedb_30", 0.9400, recipe="casia_iresnet50_arcface")
    sra = verification("sranet_r50", "cfp_fp", 0.9600, recipe="casia_sranet_r50_arcface")
    t3 = paper_table(3, [soft, arc, sra])
    assert _lines(t3, "SoftMax Loss: Baseline", "ours").iloc[0]["LFW (%)"] == pytest.approx(98.70)
    assert pd.isna(_lines(t3, "ArcFace Loss: Baseline", "ours").iloc[0]["LFW (%)"])
    assert _lines(t3, "ArcFace Loss: Baseline", "ours").iloc[0]["AgeDB-30 (%)"] == pytest.approx(94.0)
    assert _lines(t3, "ArcFace Loss: SRANet", "ours").iloc[0]["CFP-FP (%)"] == pytest.approx(96.0)
    assert len(_lines(t3, "SoftMax Loss: SRANet", "ours")) == 0
    unknown = verification("iresnet50", "lfw", 0.99, recipe="my_own_recipe")  # not shipped: name + default head
    assert _lines(paper_table(1, [unknown]), "ResNet50 (Baseline)", "ours").iloc[0]["LFW (%)"] == pytest.approx(99.0)
