"""The paper's Tables 1-5 with our numbers beside the published ones, built from result files only.

For each printed row of a table (``paper_reference.toml``) the output has a ``paper`` line, and,
when result files fill that row, an ``ours`` line and a ``diff`` line (ours - paper, where both
exist). Which results fill a row is data, never names in code (:mod:`megabench.reporting.matching`):
the paper tags a result carries from its training recipe, else its model name and head, else a
user's ``--map MODEL=TAG``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from megabench.reporting.matching import cell_value, result_label, rows_filled
from megabench.reporting.reference import PaperReference, PaperTable, paper_reference

SOURCE_COLUMN = "source"


def paper_rows(table: int) -> list[dict[str, Any]]:
    """Rows of paper Table ``table`` as flat dicts (``method``, ``model``, ``tag``, text and value
    columns by key), in print order."""
    t = paper_reference().table(table)
    return [{"method": r.method, "model": r.model, "tag": r.tag, **r.text, **r.values} for r in t.rows]


def _newest(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(results, key=lambda r: str(r.get("created", "")))


def _ours_line(table: PaperTable, results: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Our cells for one row from the results that fill it (newest wins per cell) and the labels used."""
    cells: dict[str, Any] = {}
    labels: list[str] = []
    for res in _newest(results):
        for col in table.columns:
            got = cell_value(res, col, distractors=table.distractors)
            if got is None:
                continue
            value, size = got
            cells[col.key] = value
            if size is not None:
                cells["distractors"] = size
            label = result_label(res)
            if label not in labels:
                labels.append(label)
    return cells, labels


def paper_table(number: int, results: list[dict[str, Any]], *, mapping: Mapping[str, str] | None = None,
                reference: PaperReference | None = None) -> pd.DataFrame:
    """Table ``number``: columns ``row``, ``source`` (paper | ours | diff), ``model``, the table's text
    columns, its value columns (headers as printed) and, for MegaFace tables, ``distractors`` of ours.

    ``results``: result dicts of any kind; ``mapping``: model label -> row tag, applied first.
    """
    ref = reference or paper_reference()
    table = ref.table(number)
    filled: dict[str, list[dict[str, Any]]] = {}
    for res in results:
        for row in rows_filled(res, table, default_head=ref.default_head, mapping=mapping):
            filled.setdefault(row.tag, []).append(res)
    headers = {c.key: c.header for c in table.columns}
    lines = []
    for row in table.rows:
        base = {"row": row.method, **{c: row.text.get(c, "") for c in table.text_columns}}
        lines.append({**base, SOURCE_COLUMN: "paper", "model": row.model or "",
                      **{headers[k]: v for k, v in row.values.items()}})
        if row.tag not in filled:
            continue
        cells, labels = _ours_line(table, filled[row.tag])
        if not any(k in headers for k in cells):
            continue
        ours = {**base, SOURCE_COLUMN: "ours", "model": ", ".join(labels),
                **{headers[k]: v for k, v in cells.items() if k in headers}}
        if "distractors" in cells:
            ours["distractors"] = cells["distractors"]
        lines.append(ours)
        diff = {k: cells[k] - row.values[k] for k in cells if k in row.values and k in headers}
        if diff:
            lines.append({**base, SOURCE_COLUMN: "diff", "model": "",
                          **{headers[k]: v for k, v in diff.items()}})
    order = ["row", SOURCE_COLUMN, "model", *table.text_columns, *headers.values()]
    df = pd.DataFrame(lines)
    if "distractors" in df.columns:
        order.append("distractors")
        df["distractors"] = df["distractors"].astype("Int64")
    return df.reindex(columns=order)


def column_decimals(number: int) -> dict[str, int]:
    """Printed digits per value header of Table ``number`` (as the paper prints them)."""
    return {c.header: c.decimals for c in paper_reference().table(number).columns}
