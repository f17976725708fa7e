"""``megabench ls`` and ``megabench validate``: list and check spec / recipe files."""

from __future__ import annotations

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
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(files: tuple[str, ...]) -> None:
    """Check spec and recipe files: TOML syntax, `base` chain, known keys and types."""
    from megabench.config import load_spec
    from megabench.errors import ConfigError

    failed = 0
    for f in files:
        try:
            spec = load_spec(f)
            click.echo(f"ok    {f} ({type(spec).__name__})")
        except ConfigError as exc:
            failed += 1
            click.echo(f"FAIL  {exc}", err=True)
    if failed:
        raise click.exceptions.Exit(1)
