"""``megabench report``: tables and figures from result files (never from anything else)."""

from __future__ import annotations

from pathlib import Path

import click


def _markdown(df) -> str:
    """A GitHub markdown table (pandas' to_markdown needs tabulate; this needs nothing)."""
    cols = [df.index.name or ""] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(name=None):  # keeps each column's dtype (iterrows upcasts ints to float)
        cells = [str(row[0])]
        for v in row[1:]:
            cells.append(f"{v:.2f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "out_dir", default="reports/generated", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the tables (.md, .csv) and figures (.png).")
@click.option("--size", default=None, help="MegaFace distractor size for the table (default: largest in each file).")
def report(results: tuple[str, ...], out_dir: str, size: str | None) -> None:
    """Paper-style tables (verification, MegaFace Table 5, cost Tables 1-2) and figures from RESULTS.

    RESULTS are result JSON files or folders holding them (searched recursively).
    """
    from megabench.errors import DataError
    from megabench.fileio import atomic_write_bytes, check_output_dir
    from megabench.reporting import plots, tables
    from megabench.results import read_result

    check_output_dir(out_dir, [])  # a folder we can write, checked before reading anything

    files: list[Path] = []
    for r in results:
        p = Path(r)
        files.extend(sorted(p.rglob("*.json")) if p.is_dir() else [p])
    by_kind: dict[str, list[dict]] = {}
    for f in files:
        try:
            res = read_result(f)
        except DataError as exc:  # a folder may hold other JSON (devkit files); a named file must be a result
            if Path(f) in map(Path, results):
                raise
            click.echo(f"skipped {f}: {exc}", err=True)
            continue
        by_kind.setdefault(res["kind"], []).append(res)
    if not by_kind:
        raise click.ClickException("no megabench result files among the inputs")

    out = Path(out_dir)
    builders = {"verification": tables.verification_table, "megaface": lambda rs: tables.megaface_table(rs, size=size),
                "profile": tables.profile_table}
    for kind, rs in sorted(by_kind.items()):
        if kind not in builders:
            continue
        df = builders[kind](rs)
        md = _markdown(df)
        atomic_write_bytes(out / f"{kind}.md", md.encode())
        atomic_write_bytes(out / f"{kind}.csv", df.to_csv().encode())
        click.secho(f"{kind} ({len(rs)} result file(s))", bold=True)
        click.echo(md)
    if "megaface" in by_kind:
        click.echo(f"figure: {plots.megaface_curves(by_kind['megaface'], out / 'megaface_cmc_roc.png')}")
    if "profile" in by_kind:
        click.echo(f"figure: {plots.cost_bars(by_kind['profile'], out / 'profile_cost.png')}")
    click.echo(f"tables: {out}/*.md, *.csv")
