"""``megabench data info PATH``: what a training set holds (RecordIO, image folder or list file)."""

from __future__ import annotations

import click


@click.group("data")
def data() -> None:
    """Inspect training data (insightface RecordIO, image folders, list files)."""


@data.command("info")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def info(path: str, as_json: bool) -> None:
    """Format, images, identities, images per identity (min/median/max), image size of PATH.

    PATH: a .rec (with its .idx and property beside it), a folder holding train.rec, an image folder
    root/<identity>/<image>, or a list file of 'relative/path<TAB>label' lines.
    """
    from megabench.data.training import open_training_set
    from megabench.fileio import dumps_json

    summary = open_training_set(path).info()
    if as_json:
        click.echo(dumps_json(summary), nl=False)
        return
    per = summary["images_per_identity"]
    h, w = summary["image_size"]
    click.echo(f"source:       {summary['source']}")
    click.echo(f"format:       {summary['format']}")
    click.echo(f"images:       {summary['images']:,d}")
    click.echo(f"identities:   {summary['identities']:,d} (num_classes {summary['num_classes']:,d})")
    click.echo(f"per identity: min {per['min']}, median {per['median']:g}, max {per['max']}")
    click.echo(f"image size:   {h}x{w} (h x w, first image)")
    click.echo(f"fingerprint:  {summary['fingerprint']}")
