"""``megabench extract``: a model (registered name, training run or checkpoint) + images -> a feature store."""

from __future__ import annotations

import click


@click.command("extract")
@click.option("--model", "model_name", default=None,
              help="Registered model; without --checkpoint the newest finished training run of it under --runs.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="megabench checkpoint; names its model (loaded with weights_only=True).")
@click.option("--runs", type=click.Path(file_okay=False), default="runs", show_default=True,
              help="Folder searched for finished training runs when --checkpoint is omitted.")
@click.option("--random-weights", is_flag=True, help="Use --model with random weights (a pipeline check only).")
@click.option("--pairs", "pack_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="insightface .bin pack, LFW pairs.txt or `path1 path2 0|1` list (with --images).")
@click.option("--images", type=click.Path(file_okay=False), default=None,
              help="Image folder a pair list names its images in.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Feature store to write (HDF5).")
@click.option("--batch", "batch_size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="DataLoader processes decoding images.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:K.")
@click.option("--amp", type=click.Choice(["none", "bf16", "fp16"]), default="none", show_default=True,
              help="CUDA autocast precision.")
@click.option("--no-flip", is_flag=True, help="Skip the flipped images (then verify only with --flip none).")
@click.option("--float16", is_flag=True, help="Store features as float16.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--force", is_flag=True, help="Replace an existing --out that is not a megabench feature store.")
def extract(model_name, checkpoint, runs, random_weights, pack_path, images, out, batch_size, workers, device, amp,
            no_flip, float16, quiet, force) -> None:
    """Embed every image of a pack or pair list (and its horizontal flip) into a feature store for `verify`.

    A killed extraction started again with the same arguments continues from its last saved chunk."""
    from megabench.data.feature_store import is_feature_store
    from megabench.engine.device import check_device
    from megabench.engine.extract_images import ExtractOptions, pair_images, run_extraction
    from megabench.engine.model_source import resolve_model
    from megabench.evaluation.verification import load_pairs
    from megabench.fileio import check_output

    def check_out(*inputs) -> None:  # before any work: never over an input, a read-only or a foreign file
        check_output(out, inputs=[pack_path, *inputs], force=force, replaceable=is_feature_store)

    check_out(checkpoint)
    check_device(device)
    source = resolve_model(model_name, checkpoint, runs=runs, allow_random=random_weights and not checkpoint,
                           echo=click.echo)
    check_out(source.checkpoint)  # a checkpoint found under --runs
    if source.checkpoint is None:
        click.secho(f"warning: --random-weights: {source.name} has random weights (a pipeline check, not a result)",
                    fg="yellow", err=True)
    pairs = load_pairs(pack_path, images)
    data, names, sha = pair_images(pairs, source)
    opts = ExtractOptions(batch_size=batch_size, workers=workers, device=device, amp=amp,
                          dtype="float16" if float16 else "float32", progress=not quiet)
    path = run_extraction(source, data, out, paths=names, source_sha256=sha, flip=not no_flip, opts=opts,
                          echo=click.echo)
    click.echo(f"features: {path} ({len(names)} images, {source.describe()})")
    hint = f" --images {images}" if images else ""
    click.echo(f"next:     megabench verify --pairs {pack_path}{hint} --features {path}")
