"""`megabench report` built from the result files of `megabench demo` only (the session fixture ``demo_run``
in conftest.py: a reduced demo, see tests/test_demo.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from megabench.cli import cli
from megabench.reporting.matching import result_label
from megabench.reporting.tables import megaface_table, profile_table, verification_table
from megabench.results import read_result


def test_demo_writes_valid_results(demo_run):
    out, output = demo_run
    results = out / "results"
    kinds = {read_result(p)["kind"] for p in results.glob("*.json")}
    assert kinds == {"verification", "megaface", "profile"}
    assert "rank-1 raw" in output and "accuracy" in output


def test_report_tables_are_the_result_numbers(demo_run):
    out, _ = demo_run
    ver = read_result(out / "results" / "verification_iresnet_tiny.json")
    mf = read_result(out / "results" / "megaface_iresnet_tiny.json")
    prof = read_result(out / "results" / "profile_iresnet_tiny.json")

    vt = verification_table([ver])
    assert vt.iloc[0]["synth_heldout (%)"] == pytest.approx(100 * ver["metrics"]["accuracy"])
    assert vt.iloc[0]["synth_heldout std"] == pytest.approx(100 * ver["metrics"]["accuracy_std"])

    mt = megaface_table([mf])
    top = mf["variants"]["refined"]["sizes"]["30"]
    row = mt.iloc[0]
    assert row["distractors"] == 30
    assert row["Id refined (%)"] == pytest.approx(100 * top["rank1"])
    assert row["Ver refined (%)"] == pytest.approx(100 * top["verification"]["tar_at_far"]["1e-06"]["tar"])
    assert row["Id raw (%)"] == pytest.approx(100 * mf["variants"]["raw"]["sizes"]["30"]["rank1"])

    pt = profile_table([prof])
    assert pt.iloc[0]["size (MB)"] == pytest.approx(prof["size_mb"])

    # the demo's own report step wrote the same tables (both models side by side) and the figures
    rep = out / "report"
    csv = pd.read_csv(rep / "verification.csv", index_col=0)
    assert csv.loc[result_label(ver)]["synth_heldout (%)"] == pytest.approx(100 * ver["metrics"]["accuracy"])
    assert len(csv) == 2
    assert (rep / "megaface_cmc_roc.png").stat().st_size > 1000
    assert (rep / "profile_cost.png").stat().st_size > 1000


def test_report_rejects_a_non_result_file(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    res = CliRunner().invoke(cli, ["report", str(bad), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 1 and "not a megabench result" in res.output
