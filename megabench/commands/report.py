"""``megabench report``: the paper's tables and figures from result files (never from anything else)."""

from __future__ import annotations

import click


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", default="reports/generated", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the tables, figures and report.html.")
@click.option("--format", "formats", default="md,csv,tex,html", show_default=True,
              help="Comma-separated: md, csv, tex (booktabs), html (one file, figures inlined).")
@click.option("--size", default=None, help="MegaFace distractor size for the summary table (default: largest).")
@click.option("--map", "mapping", multiple=True, metavar="MODEL=TAG",
              help="Put MODEL's results in the paper row TAG (e.g. sranet_tiny='Table 3 ArcFace SRANet'); repeatable.")
def report(results: tuple[str, ...], out_dir: str, formats: str, size: str | None, mapping: tuple[str, ...]) -> None:
    """Tables 1-5 of the paper (paper / ours / diff), summary tables and figures from RESULTS.

    RESULTS are result JSON files or folders holding them (searched recursively). A result fills a
    paper row by the paper tags of its training recipe, else by its model name and head, else --map.
    """
    from megabench.fileio import check_output_dir
    from megabench.reporting.build import build_report, parse_formats, parse_mapping
    from megabench.reporting.render import to_markdown

    check_output_dir(out_dir, [])  # a folder we can write, checked before reading anything
    rep = build_report(results, out_dir, formats=parse_formats(formats), size=size, mapping=parse_mapping(mapping))
    for path, reason in rep.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    for table in rep.tables:
        if not table.name.startswith("table"):
            click.echo(to_markdown(table))
    for number, rows in rep.filled.items():
        click.echo(f"paper Table {number}: ours in {len(rows)} row(s)" + (f": {', '.join(rows)}" if rows else ""))
    for fig in rep.figures:
        click.echo(f"figure: {fig} (+ .pdf)")
    click.echo(f"report: {out_dir} ({len(rep.files)} table files" +
               (", report.html)" if any(f.name == "report.html" for f in rep.files) else ")"))
