"""Build a whole report folder from result files: summary tables, the paper's Tables 1-5, figures.

Layout of ``out``::

    verification.* megaface.* profile.*   one row per model (what the results hold)
    table1.* ... table5.*                 the paper's tables: paper / ours / diff lines
    *.png, *.pdf                          figures (see megabench.reporting.plots)
    report.html                           everything in one file, figures inlined (format "html")

``*`` is each requested format among ``md``, ``csv``, ``tex``.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from megabench.errors import DataError, MegabenchError
from megabench.evaluation.registry import RESULT_KINDS
from megabench.fileio import atomic_write_bytes, check_output_dir
from megabench.reporting import plots, render
from megabench.reporting.paper_tables import column_decimals, paper_table
from megabench.reporting.reference import paper_reference
from megabench.results import read_result

FORMATS = ("md", "csv", "tex", "html")


@dataclasses.dataclass
class Report:
    """What :func:`build_report` wrote: ``tables`` (rendered), ``figures`` (PNG paths), ``files``,
    ``skipped`` (inputs that were not results: ``(path, reason)``) and ``filled`` (paper row tags
    with our numbers)."""

    tables: list[render.Table]
    figures: list[Path]
    files: list[Path]
    skipped: list[tuple[str, str]]
    filled: dict[int, list[str]]


def collect_results(inputs: Iterable[str | os.PathLike]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Read result files; folders are searched recursively for ``*.json``. A named file must be a
    result (else :class:`DataError`); other JSON in a folder (devkit files) is skipped with its reason."""
    results, skipped = [], []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise DataError(f"{p}: no such result file or folder")
        if not p.is_dir():
            results.append(read_result(p))
            continue
        for f in sorted(p.rglob("*.json")):
            try:
                results.append(read_result(f))
            except DataError as exc:
                skipped.append((str(f), str(exc)))
    return results, skipped


def parse_formats(text: str) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    bad = [f for f in wanted if f not in FORMATS]
    if bad or not wanted:
        raise MegabenchError(f"--format {text!r}: unknown format(s) {bad}; choose from {','.join(FORMATS)}")
    return wanted


def parse_mapping(items: Sequence[str]) -> dict[str, str]:
    """``MODEL=TAG`` strings -> dict; TAG must be a row tag (or alias) of the paper reference."""
    known = {t for table in paper_reference().tables.values() for row in table.rows for t in row.tags}
    mapping = {}
    for item in items:
        model, sep, tag = item.partition("=")
        if not sep or not model.strip() or tag.strip() not in known:
            raise MegabenchError(f"--map {item!r}: expected MODEL=TAG with TAG a paper row such as "
                                 f"'Table 3 ArcFace SRANet' (see docs/reporting.md)")
        mapping[model.strip()] = tag.strip()
    return mapping


def _summary_tables(by_kind: dict[str, list[dict[str, Any]]], size: str | None) -> list[render.Table]:
    """One table per result kind present, built by the kind's registered builder (``RESULT_KINDS``)."""
    options = {"size": size}
    out = []
    for kind, entry in RESULT_KINDS.items():
        build = entry.table_builder()
        if build is None or not by_kind.get(kind):
            continue
        accepted = inspect.signature(build).parameters
        df = build(by_kind[kind], **{k: v for k, v in options.items() if k in accepted})
        out.append(render.Table(kind, entry.table_title or kind, df, index=True))
    return out


def _paper_tables(results: list[dict[str, Any]], mapping: Mapping[str, str]) -> tuple[list[render.Table], dict]:
    out, filled = [], {}
    for number, spec in sorted(paper_reference().tables.items()):
        df = paper_table(number, results, mapping=mapping)
        ours = df[df["source"] == "ours"]
        filled[number] = list(dict.fromkeys(ours["row"]))
        out.append(render.Table(f"table{number}", spec.title + " -- paper vs ours", df,
                                decimals=column_decimals(number)))
    return out, filled


def _figures(by_kind: dict[str, list[dict[str, Any]]], out: Path) -> list[Path]:
    figs = []
    if by_kind.get("megaface"):
        mf = by_kind["megaface"]
        figs.append(plots.megaface_cmc_roc(mf, out / "megaface_cmc_roc.png"))
        figs.append(plots.megaface_vs_distractors(mf, out / "megaface_rank1_vs_distractors.png", metric="rank1"))
        figs.append(plots.megaface_vs_distractors(mf, out / "megaface_tar_vs_distractors.png", metric="tar"))
    if by_kind.get("profile"):
        figs.append(plots.cost_chart(by_kind["profile"], out / "profile_cost.png"))
    if by_kind.get("verification"):
        figs.append(plots.verification_bars(by_kind["verification"], out / "verification_accuracy.png"))
        figs.append(plots.verification_roc(by_kind["verification"], out / "verification_roc.png"))
    return figs


_WRITERS = {"md": render.to_markdown, "csv": render.to_csv, "tex": render.to_latex}


def build_report(inputs: Iterable[str | os.PathLike], out: str | os.PathLike, *, formats: Sequence[str] = FORMATS,
                 size: str | None = None, mapping: Mapping[str, str] | None = None) -> Report:
    """Read the results under ``inputs`` and write the report into ``out`` (see the module docstring)."""
    check_output_dir(out, [])  # a folder we can write, checked before reading anything
    results, skipped = collect_results(inputs)
    if not results:
        raise DataError("no megabench result files among the inputs " + ", ".join(map(str, inputs)))
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_kind.setdefault(r["kind"], []).append(r)
    out = Path(out)
    summary = _summary_tables(by_kind, size)
    paper, filled = _paper_tables(results, mapping or {})
    figures = _figures(by_kind, out)
    files: list[Path] = []
    for table in summary + paper:
        for fmt in formats:
            if fmt in _WRITERS:
                path = out / f"{table.name}.{fmt}"
                atomic_write_bytes(path, _WRITERS[fmt](table).encode("utf-8"))
                files.append(path)
    if "html" in formats:
        notes = [f"Made by megabench report from {len(results)} result file(s). Reference rows ('paper') are "
                 f"transcribed from {paper_reference().source}; 'diff' = ours - paper."]
        page = render.html_page("megabench report", summary + paper, figures, notes=notes)
        files.append(out / "report.html")
        atomic_write_bytes(files[-1], page.encode("utf-8"))
    return Report(tables=summary + paper, figures=figures, files=files, skipped=skipped, filled=filled)
