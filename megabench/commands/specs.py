"""``megabench ls`` and ``megabench validate``: list and check spec / recipe files."""

from __future__ import annotations

from pathlib import Path

import click

SPEC_FOLDERS = {"protocols": "protocols", "recipes": "baselines"}


@click.command("ls")
@click.argument("what", type=click.Choice(sorted(SPEC_FOLDERS)))
def ls(what: str) -> None:
    """List the protocol specs (protocols/) or training recipes (baselines/)."""
    from megabench.config import list_specs, load_toml

    for path in list_specs(SPEC_FOLDERS[what]):
        data = load_toml(path)
        desc = data.get("description", "")
        click.echo(f"{path.stem:<34} {data.get('kind', '?'):<13} v{data.get('version', '?'):<6} {desc}")


@click.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path())
def validate(files: tuple[str, ...]) -> None:
    """Check spec and recipe files: TOML syntax, `base` chain, known keys and types.

    Every file is checked and reported (`ok` or `FAIL <file>: why`); the exit code is 1 if any failed.
    """
    from megabench.config import load_spec
    from megabench.errors import MegabenchError

    failed = 0
    for f in files:
        try:
            spec = load_spec(f)
            click.echo(f"ok    {f} ({type(spec).__name__})")
        except MegabenchError as exc:
            failed += 1
            msg = " ".join(str(exc).split())
            named = str(f) in msg or str(Path(f).resolve()) in msg
            click.echo(f"FAIL  {msg if named else f'{f}: {msg}'}", err=True)
    if failed:
        click.echo(f"error: {failed} of {len(files)} file(s) failed validation", err=True)
        raise click.exceptions.Exit(1)
