"""``megabench extract``: a model (registered name or checkpoint) + an image pack -> a feature store."""

from __future__ import annotations

import click


@click.command("extract")
@click.option("--model", "model_name", default=None, help="Registered model (random weights unless --checkpoint).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True), default=None,
              help="megabench checkpoint; names its model (loaded with weights_only=True).")
@click.option("--pairs", "pack_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="insightface .bin verification pack.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Feature store to write (HDF5).")
@click.option("--batch", "batch_size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:K.")
@click.option("--no-flip", is_flag=True, help="Skip the flipped images (then verify only with --flip none).")
@click.option("--float16", is_flag=True, help="Store features as float16.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--force", is_flag=True, help="Replace an existing --out that is not a megabench feature store.")
def extract(model_name, checkpoint, pack_path, out, batch_size, device, no_flip, float16, quiet, force) -> None:
    """Embed every image of a .bin pack (and its horizontal flip) into a feature store for `verify`."""
    from megabench.data.bin_format import read_bin
    from megabench.data.feature_store import StoreMeta, is_feature_store
    from megabench.engine.checkpoint import model_from_checkpoint
    from megabench.engine.device import check_device
    from megabench.engine.extract import extract_features
    from megabench.errors import MegabenchError
    from megabench.fileio import check_output
    from megabench.models import create_model

    if not (model_name or checkpoint):
        raise click.UsageError("give --model NAME or --checkpoint FILE")
    check_output(out, inputs=[pack_path, checkpoint], force=force, replaceable=is_feature_store)
    check_device(device)
    ckpt_sha = ""
    if checkpoint:
        model, payload = model_from_checkpoint(checkpoint)  # one safe read (weights_only), sha256 verified
        if model_name and model_name != payload["model"]:
            raise MegabenchError(f"{checkpoint}: checkpoint is for model {payload['model']!r}, not {model_name!r}; "
                                 "drop --model or pass the matching checkpoint")
        ckpt_sha = payload["weights_sha256"]
    else:
        model = create_model(model_name)
        click.secho(f"warning: no --checkpoint: {model_name} has random weights (a pipeline check, not a result)",
                    fg="yellow", err=True)
    pack = read_bin(pack_path)
    meta = StoreMeta(model=model.name, checkpoint_sha256=ckpt_sha, preprocessing=model.preprocessing.to_dict(),
                     source_sha256=pack.sha256)
    path = extract_features(model, pack.image, pack.n_images, out, batch_size=batch_size, device=device,
                            flip=not no_flip, meta=meta, dtype="float16" if float16 else "float32",
                            source=str(pack_path), progress=not quiet)
    click.echo(f"features: {path} ({pack.n_images} images, model {model.name})")
    click.echo(f"next:     megabench verify --pairs {pack_path} --features {path}")
