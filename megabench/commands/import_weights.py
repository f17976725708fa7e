"""``megabench import-weights``: published backbone weights into a megabench checkpoint."""

from __future__ import annotations

import click


@click.command("import-weights")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["insightface"]), default="insightface", show_default=True,
              help="Where the weights come from: insightface = arcface_torch backbone.pth (r50, r100).")
@click.option("--model", "model_name", type=click.Choice(["iresnet50", "iresnet100"]), default=None,
              help="Our model for the weights (default: the one whose depths the file has).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The megabench checkpoint to write.")
def import_weights(path: str, fmt: str, model_name: str | None, out: str) -> None:
    """Convert PATH (e.g. insightface ms1mv3_arcface_r100 backbone.pth) into a megabench checkpoint.

    Every key and shape is checked; the checkpoint records insightface's preprocessing
    ((p - 127.5) / 127.5, RGB, flip sum) and the source file's sha256.
    """
    from pathlib import Path

    from megabench.engine.import_weights import import_insightface
    from megabench.errors import MegabenchError

    if Path(out).resolve() == Path(path).resolve():
        raise MegabenchError(f"--out {out} is the input file; choose another path (inputs are never overwritten)")
    info = import_insightface(path, out, model_name)
    click.echo(f"{fmt} {Path(path).name} -> {info['out']}: model {info['model']}, "
               f"weights sha256 {info['weights_sha256'][:12]}, source sha256 {info['source_sha256'][:12]}")
