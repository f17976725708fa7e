"""Every cell of the packaged paper reference equals what the paper prints (tests/fixtures/paper/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megabench.errors import ConfigError
from megabench.reporting.paper_tables import paper_rows
from megabench.reporting.reference import paper_reference, parse_reference

FIXTURE = Path(__file__).parent / "fixtures" / "paper" / "sranet_tables.txt"

# printed column order of each table (the paper's header), as our column keys; text columns by name
PRINTED = {
    1: ["lfw", "agedb_30", "cfp_fp", "time_ms", "size_mb", "memory_mb"],
    2: ["lfw", "agedb_30", "cfp_fp", "time_ms", "size_mb", "memory_mb"],
    3: ["lfw", "agedb_30", "cfp_fp"],
    4: ["images", "lfw", "agedb_30", "cfp_fp"],
    5: ["id_refined", "ver_refined", "protocol"],
}


def printed_tables() -> dict[int, list[tuple[str, list[str]]]]:
    """Table number -> [(method, cells)] as printed; Table 3's loss group is prefixed ("SoftMax Loss: SCANet")."""
    tables: dict[int, list[tuple[str, list[str]]]] = {}
    current = None
    group = ""
    for line in FIXTURE.read_text(encoding="utf-8").splitlines():
        if line.startswith("TABLE "):
            current = int(line.split()[1].rstrip("."))
            tables[current] = []
            continue
        cells = line.split("\t")
        if current is None or len(cells) < 3 or cells[-1].endswith(")") and "%" in line:
            continue  # blank lines, captions, headers
        if cells[0] in ("Method", "Methods", "Loss"):
            continue
        if current == 3:
            group = cells[0] or group
            tables[current].append((f"{group}: {cells[1]}", cells[2:]))
        else:
            tables[current].append((cells[0], cells[1:]))
    return tables


def test_fixture_holds_the_five_tables():
    tables = printed_tables()
    assert {n: len(rows) for n, rows in tables.items()} == {1: 5, 2: 5, 3: 8, 4: 12, 5: 12}


@pytest.mark.parametrize("number", [1, 2, 3, 4, 5])
def test_every_reference_cell_is_the_printed_number(number):
    printed = printed_tables()[number]
    rows = paper_reference().table(number).rows
    assert [r.method for r in rows] == [method for method, _ in printed]
    for row, (method, cells) in zip(rows, printed, strict=True):
        assert len(cells) == len(PRINTED[number]), (method, cells)
        for key, cell in zip(PRINTED[number], cells, strict=True):
            if key in row.text or key in ("images", "protocol"):
                assert row.text[key] == cell, (method, key)
            elif cell == "-":
                assert key not in row.values, (method, key)
            else:
                value = row.values[key]
                assert value == float(cell), (method, key, value, cell)
                digits = len(cell.split(".")[1]) if "." in cell else 0
                assert f"{value:.{digits}f}" == cell, (method, key)


def test_spot_cells_against_the_paper_text():
    """A few cells written out by hand from the paper (independent of the fixture parser)."""
    t = {n: {r.tag: r for r in paper_reference().table(n).rows} for n in range(1, 6)}
    assert t[1]["Table 1 Naive SSA"].values["memory_mb"] == 15422
    assert t[2]["Table 2 Naive SCA"].values["size_mb"] == 191.85
    assert t[3]["Table 3 SoftMax SRANet"].values["agedb_30"] == 88.75
    assert t[4]["Table 4 SRANet"].values == {"lfw": 99.83, "agedb_30": 98.47, "cfp_fp": 95.60}
    assert t[5]["Table 5 large SRANet"].values == {"id_refined": 98.34, "ver_refined": 98.38}
    assert t[5]["Table 5 small ArcFace"].values["ver_refined"] == 90.24


def test_recipe_tags_all_name_reference_rows():
    """Every paper tag in baselines/*.toml is a row (or alias) of the reference: recipes' results can land."""
    from megabench.reporting.reference import tomllib

    tags = {t for table in paper_reference().tables.values() for row in table.rows for t in row.tags}
    root = Path(__file__).resolve().parents[1] / "baselines"
    used = {t for f in root.glob("*.toml") for t in tomllib.loads(f.read_text()).get("paper", [])}
    assert used and used <= tags, sorted(used - tags)


def test_paper_rows_keeps_the_flat_layout_profiling_uses():
    rows = paper_rows(1)
    assert rows[0]["model"] == "iresnet50" and rows[0]["memory_mb"] == 3583 and isinstance(rows[0]["memory_mb"], int)
    assert [r["model"] for r in paper_rows(2)][1:] == ["iresnet50_sca_naive", "iresnet50_sca_avg", "iresnet50_sca_max",
                                                       "iresnet50_sca_light"]


def test_reference_rejects_a_value_outside_its_table():
    lfw = {"header": "LFW", "from": {"kind": "verification", "metric": "accuracy"}}
    data = {"source": "x", "columns": {"lfw": lfw},
            "tables": {"1": {"title": "t", "columns": ["lfw"], "rows": [
                {"tag": "a", "method": "m", "values": {"cfp_fp": 1.0}}]}}}
    with pytest.raises(ConfigError, match="not in table 1"):
        parse_reference(data)
    data["tables"]["1"]["columns"] = ["nope"]
    with pytest.raises(ConfigError, match="unknown column"):
        parse_reference(data)
