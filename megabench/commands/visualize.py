"""``megabench visualize``: the paper's Fig. 6, channel-mean feature maps of one face per model."""

from __future__ import annotations

import click


@click.command("visualize")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(dir_okay=False),
              help="A megabench checkpoint (one row); repeatable.")
@click.option("--model", "models", multiple=True,
              help="A registered model with random weights (one row; for comparing structure); repeatable.")
@click.option("--image", required=True, type=click.Path(dir_okay=False), help="An aligned face crop (e.g. 112x112).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Figure file (.png or .pdf).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights for --model rows.")
def visualize(checkpoints: tuple[str, ...], models: tuple[str, ...], image: str, out: str, seed: int) -> None:
    """The feature map averaged over channels after the stem, each residual stage and each attention
    module of the stage's last block: one row per model, so a baseline and SRANet can be compared."""
    import torch

    from megabench.engine.checkpoint import model_from_checkpoint
    from megabench.errors import MegabenchError
    from megabench.models import create_model
    from megabench.reporting.feature_maps import feature_maps, load_face, plot_feature_maps

    if not checkpoints and not models:
        raise MegabenchError("visualize: give at least one --checkpoint CK or --model NAME")
    loaded = []
    for ck in checkpoints:
        model, payload = model_from_checkpoint(ck)
        loaded.append((f"{payload['model']}\n{click.format_filename(ck, shorten=True)}", model))
    for name in models:
        torch.manual_seed(seed)
        loaded.append((f"{name}\n(random weights)", create_model(name)))
    sizes = {tuple(m.preprocessing.input_size) for _, m in loaded}
    if len(sizes) > 1:
        raise MegabenchError(f"visualize: the models take different input sizes {sorted(sizes)}; compare models "
                             "of one input size")
    face = load_face(image, sizes.pop())
    rows = [(label, feature_maps(model, face)) for label, model in loaded]
    click.echo(f"wrote {plot_feature_maps(rows, face, out)} ({len(rows)} row(s): "
               + ", ".join(label.split(chr(10))[0] for label, _ in rows) + ")")
