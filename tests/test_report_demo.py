"""`megabench demo` end to end on tiny sizes, and `megabench report` built from its result files only."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from megabench.cli import cli
from megabench.reporting.tables import megaface_table, profile_table, verification_table
from megabench.results import read_result


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEGABENCH_CACHE", str(out / "cache"))
    try:
        res = CliRunner().invoke(cli, ["demo", "--out", str(out), "--distractors", "1000", "--quiet"])
    finally:
        mp.undo()
    assert res.exit_code == 0, res.output
    return out, res.output


def test_demo_writes_valid_results(demo_run):
    out, output = demo_run
    results = out / "results"
    kinds = {read_result(p)["kind"] for p in results.glob("*.json")}
    assert kinds == {"verification", "megaface", "profile"}
    assert "rank-1 raw" in output and "accuracy" in output


def test_report_tables_are_the_result_numbers(demo_run):
    out, _ = demo_run
    ver = read_result(out / "results" / "verification_lfw.json")
    mf = read_result(out / "results" / "megaface.json")
    prof = read_result(next((out / "results").glob("profile_*.json")))

    vt = verification_table([ver])
    assert vt.iloc[0]["lfw (%)"] == pytest.approx(100 * ver["metrics"]["accuracy"])
    assert vt.iloc[0]["lfw std"] == pytest.approx(100 * ver["metrics"]["accuracy_std"])

    mt = megaface_table([mf])
    top = mf["variants"]["refined"]["sizes"]["1000"]
    row = mt.iloc[0]
    assert row["distractors"] == 1000
    assert row["Id refined (%)"] == pytest.approx(100 * top["rank1"])
    assert row["Ver refined (%)"] == pytest.approx(100 * top["verification"]["tar_at_far"]["1e-06"]["tar"])
    assert row["Id raw (%)"] == pytest.approx(100 * mf["variants"]["raw"]["sizes"]["1000"]["rank1"])

    pt = profile_table([prof])
    assert pt.iloc[0]["size (MB)"] == pytest.approx(prof["size_mb"])

    # the demo's own report step wrote the same tables and both figures
    rep = out / "report"
    csv = pd.read_csv(rep / "verification.csv", index_col=0)
    assert csv.iloc[0]["lfw (%)"] == pytest.approx(100 * ver["metrics"]["accuracy"])
    assert (rep / "megaface_cmc_roc.png").stat().st_size > 1000
    assert (rep / "profile_cost.png").stat().st_size > 1000


def test_report_rejects_a_non_result_file(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    res = CliRunner().invoke(cli, ["report", str(bad), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 1 and "not a megabench result" in res.output
