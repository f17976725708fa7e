"""``megabench data info PATH``: what a training set holds (RecordIO, image folder or list file)."""

from __future__ import annotations

import click


@click.group("data")
def data() -> None:
    """Inspect training data (insightface RecordIO, image folders, list files)."""


@data.command("info")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--format", "format_name", help="A registered data format (`megabench data formats`) "
                                               "[default: detected from PATH].")
def info(path: str, as_json: bool, format_name: str | None) -> None:
    """Format, images, identities, images per identity (min/median/max), image size of PATH.

    PATH: any registered data format (`megabench data formats`): built in, a .rec (with its .idx and
    property beside it) or a folder holding train.rec, an image folder root/<identity>/<image>, or a
    list file of 'relative/path<TAB>label' lines.
    """
    from megabench.data.training import open_training_set
    from megabench.fileio import dumps_json

    summary = open_training_set(path, format_name).info()
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


@data.command("formats")
def formats() -> None:
    """The registered data formats, in detection order (the first whose detector accepts a path opens it)."""
    from megabench.data.formats import in_detection_order

    for fmt in in_detection_order():
        click.echo(f"{fmt.name:10s} {fmt.description}")


@click.command("faces")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for train.rec/train.idx/property, the held-out pack and meta.json.")
@click.option("--identities", default=50, show_default=True, type=click.IntRange(min=2),
              help="Training identities (classes).")
@click.option("--images-per-identity", default=40, show_default=True, type=click.IntRange(min=1),
              help="Training images per identity.")
@click.option("--pack-identities", default=100, show_default=True, type=click.IntRange(min=2),
              help="Held-out identities (never in the training set) for the verification pack.")
@click.option("--pairs", type=click.IntRange(min=20),
              help="Pairs in the pack, a multiple of 20 [default: 6 per held-out identity, 200..6000].")
@click.option("--name", default="heldout", show_default=True, help="The pack is written as OUT/NAME.bin.")
@click.option("--size", default=112, show_default=True, type=click.IntRange(min=32),
              help="Image side in pixels (insightface's aligned crops are 112; the CPU demo trains at 64).")
@click.option("--seed", default=0, show_default=True, type=int, help="Everything is deterministic given it.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1),
              help="Processes that render (the files are the same for any number).")
@click.option("--force", is_flag=True, help="Replace a data set already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synth_faces(out_dir: str, identities: int, images_per_identity: int, pack_identities: int, pairs: int | None,
                name: str, size: int, seed: int, workers: int, force: bool, quiet: bool) -> None:
    """Synthetic faces a small network can learn: an insightface RecordIO training set and a
    verification pack of held-out identities (LFW's 10-fold layout), for `megabench train` and
    `megabench verify`."""
    from pathlib import Path

    from megabench.data.synthetic_faces import generate_synthetic_faces
    from megabench.errors import MegabenchError

    out = Path(out_dir)
    if pairs is not None and pairs % 20:
        raise MegabenchError(f"--pairs {pairs}: must be a multiple of 20 (10 folds, each half genuine pairs)")
    existing = [n for n in ("train.rec", "train.idx", "property", f"{name}.bin", "meta.json") if (out / n).exists()]
    if existing and not force:
        raise MegabenchError(f"{out}: already holds {', '.join(existing)}; pass --force to replace them "
                             "or choose another --out")
    res = generate_synthetic_faces(out, identities=identities, images_per_identity=images_per_identity, seed=seed,
                                   pack_identities=pack_identities, pairs=pairs, name=name, size=size,
                                   workers=workers, progress=not quiet)
    click.echo(f"train: {res.rec} ({res.images:,d} images, {res.identities} identities)")
    click.echo(f"pack:  {res.pack} ({res.pairs} pairs of {res.pack_identities} held-out identities)")
    click.echo(f"next:  megabench data info {res.out}")
