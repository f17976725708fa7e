"""Render report tables as Markdown, CSV, LaTeX (booktabs) and one self-contained HTML page.

A :class:`Table` is a DataFrame plus a title and the digits to print per column. Missing cells print
empty (Markdown, CSV, HTML) or ``--`` (LaTeX, as the paper prints "-"). Rows whose ``source`` is
``diff`` print a sign. The HTML page inlines every figure as a base64 PNG: one file, no links.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd


@dataclasses.dataclass
class Table:
    """``name``: file stem (``table5``); ``title``: caption; ``decimals``: column -> printed digits
    (default 2 for floats); ``index``: print the DataFrame's index as the first column."""

    name: str
    title: str
    df: pd.DataFrame
    decimals: dict[str, int] = dataclasses.field(default_factory=dict)
    index: bool = False

    def frame(self) -> pd.DataFrame:
        return self.df.reset_index() if self.index else self.df


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA:
        return True
    return isinstance(v, float) and math.isnan(v)


def format_cell(value: Any, decimals: int = 2, *, signed: bool = False) -> str:
    """One cell as text: floats with ``decimals`` digits (``+`` sign when ``signed``), missing -> ``""``."""
    if _missing(value):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) or (signed and isinstance(value, int)):
        return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"
    return str(value)


def text_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """Header and formatted body rows."""
    df = table.frame()
    cols = [str(c) for c in df.columns]
    body = []
    for row in df.itertuples(index=False, name=None):  # keeps each column's dtype
        signed = dict(zip(cols, row, strict=True)).get("source") == "diff"
        body.append([format_cell(v, table.decimals.get(c, 2), signed=signed and isinstance(v, (int, float))
                                 and not isinstance(v, bool))
                     for c, v in zip(cols, row, strict=True)])
    return cols, body


def to_markdown(table: Table) -> str:
    cols, body = text_rows(table)
    lines = [f"**{table.title}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    return table.frame().to_csv(index=False)


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A ``table`` environment with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    cols, body = text_rows(table)
    df = table.frame()
    align = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_escape(table.title)}}}",
             rf"\label{{tab:{tex_escape(table.name)}}}", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(tex_escape(c) for c in cols) + r" \\", r"\midrule"]
    previous = None
    for cells in body:
        first = cells[0]
        if "source" in cols and previous is not None and first != previous:
            lines.append(r"\addlinespace")
        previous = first
        lines.append(" & ".join(tex_escape(c) if c else "--" for c in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html_table(table: Table) -> str:
    cols, body = text_rows(table)
    src = cols.index("source") if "source" in cols else None
    out = [f"<table><caption>{html.escape(table.title)}</caption>", "<thead><tr>"]
    out += [f"<th>{html.escape(c)}</th>" for c in cols]
    out.append("</tr></thead><tbody>")
    for cells in body:
        cls = f' class="{html.escape(cells[src])}"' if src is not None else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0 2em;font-size:13px}caption{font-weight:bold;text-align:left;
padding:4px 0}th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}tr.paper{color:#555}tr.ours{font-weight:bold}
tr.diff{color:#06c;font-style:italic}figure{margin:1em 0 2em}img{max-width:100%}"""


def html_page(title: str, tables: Sequence[Table], figures: Sequence[str | os.PathLike], *,
              notes: Sequence[str] = ()) -> str:
    """One HTML document: the tables, then every PNG in ``figures`` inlined as base64."""
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts += [to_html_table(t) for t in tables]
    for fig in figures:
        data = base64.b64encode(Path(fig).read_bytes()).decode("ascii")
        name = html.escape(Path(fig).stem)
        parts.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{name}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
