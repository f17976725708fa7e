"""``megabench demo``: the main job end to end on data megabench generates itself.

It runs the commands a user types, through click (so options and checks are the real ones):
``synth faces`` -> ``train`` the tiny baseline and the tiny SRANet (recipes ``demo_tiny`` and
``demo_tiny_sranet``, ArcFace) -> ``verify --model`` both on the held-out pack (and the same networks
with their initial weights, the "before") -> ``synth megaface --images`` -> ``megaface --model`` both
(raw + refined, planted noise) -> ``profile`` both -> ``report``. One line per stage, then a summary:
trained vs untrained held-out accuracy and where the report is. The folder layout and the rules for
reusing a folder are in :mod:`megabench.demo_run`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click


@click.command("demo")
@click.option("--out", "out_dir", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Demo folder: generated data, training runs, results, report. Run again over it to reuse "
                   "what is finished; a folder that is not a demo folder is refused.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Training steps per model [default: the recipe's, 300]; the lr schedule keeps its shape.")
@click.option("--batch", type=click.IntRange(min=2), default=None, help="Training batch [default: the recipe's, 32].")
@click.option("--identities", default=50, show_default=True, type=click.IntRange(min=2),
              help="Training identities of `synth faces`.")
@click.option("--images-per-identity", default=40, show_default=True, type=click.IntRange(min=2),
              help="Training images per identity.")
@click.option("--pack-identities", default=100, show_default=True, type=click.IntRange(min=2),
              help="Held-out identities of the verification pack (6 pairs each, 200..6000 pairs).")
@click.option("--distractors", default=5_000, show_default=True, type=click.IntRange(min=10),
              help="MegaFace distractor images (unseen identities), rendered and embedded by each model.")
@click.option("--megaface-identities", default=20, show_default=True, type=click.IntRange(min=2),
              help="MegaFace probe identities (10 images each).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="torch CPU threads. 1 is steady on a shared machine (no OpenMP spinning); 2 can be faster on "
                   "an idle 2-core one.")
@click.option("--force", is_flag=True, help="Start the demo folder afresh (removes only what a demo writes).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def demo(ctx: click.Context, out_dir: str, threads: int, force: bool, quiet: bool, **scale: Any) -> None:
    """Train two tiny face models on generated faces and evaluate them end to end; report under --out.

    Rerunning over the same folder reuses the generated data, the finished training runs and the cached
    features (evaluation and report are redone); other options need --force or another --out."""
    import torch

    from megabench.demo_run import prepare_folder

    layout = prepare_folder(out_dir, scale, force=force)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        lines = _run(ctx, layout, scale, threads, quiet)
    finally:
        torch.set_num_threads(before)  # the caller's setting back (the demo may run inside another program)
    click.echo("")
    for line in lines:
        click.secho(line, fg="green")


def _run(ctx: click.Context, layout, scale: dict[str, Any], threads: int, quiet: bool) -> list[str]:
    """Every stage in order (one progress line each), then the demo.json record; returns the summary lines."""
    from megabench.demo_run import MODELS, learning_summary, summary_lines, write_marker

    models = [m for m, _ in MODELS]
    stages = [_synth_faces, *(_trainer(m, r) for m, r in MODELS), _verify, _synth_megaface, _megaface, _profile,
              _report]
    t0, times = time.perf_counter(), {}
    for k, stage in enumerate(stages, 1):
        t, name = time.perf_counter(), stage.__doc__.split(":")[0]
        click.secho(f"[{k}/{len(stages)}] {stage.__doc__}", bold=True)
        stage(ctx, layout, scale, quiet)
        times[name] = round(time.perf_counter() - t, 1)
        click.echo(f"[{k}/{len(stages)}] {name}: done in {times[name]:.0f} s")
    learning = learning_summary(layout, models)
    seconds = time.perf_counter() - t0
    lines = summary_lines(layout, learning, pairs=_pack_pairs(layout), seconds=seconds)
    write_marker(layout.root, {"options": scale, "status": "finished", "seconds": round(seconds, 1),
                               "stage_seconds": times, "threads": threads, "learning": learning,
                               "report": str(layout.report / "report.html")})
    return lines


def _recipe_size() -> int:
    from megabench.engine.recipe import load_recipe

    return int(load_recipe("demo_tiny").input_size[0])


def _pack_pairs(layout) -> int | None:
    import json

    try:
        return int(json.loads((layout.faces / "meta.json").read_text(encoding="utf-8"))["pairs"])
    except (OSError, ValueError, KeyError):
        return None


def _synth_faces(ctx, layout, scale, quiet) -> None:
    """synth faces: training identities and a held-out verification pack of unseen ones"""
    from megabench.commands.data import synth_faces

    if (layout.faces / "meta.json").is_file():
        click.echo(f"reusing {layout.faces}")
        return
    ctx.invoke(synth_faces, out_dir=str(layout.faces), identities=scale["identities"],
               images_per_identity=scale["images_per_identity"], pack_identities=scale["pack_identities"],
               size=_recipe_size(), force=True, quiet=quiet)


def _trainer(model: str, recipe: str):
    def stage(ctx, layout, scale, quiet) -> None:
        from megabench.commands.train import train

        sets = () if scale["batch"] is None else (f"batch_size={scale['batch']}",)
        ctx.invoke(train, recipe=recipe, data_path=str(layout.faces), out=str(layout.run(model)),
                   max_steps=scale["steps"], resume=True, overrides=sets, save_every=50, quiet=quiet)

    stage.__doc__ = f"train {model}: recipe {recipe} (ArcFace) on the synthetic training set"
    return stage


def _verify(ctx, layout, scale, quiet) -> None:
    """verify: both models on the held-out pack, trained and with their initial weights"""
    from megabench.commands.verify import verify
    from megabench.demo_run import MODELS, write_untrained_checkpoint

    partial = _pack_pairs(layout) != 600  # protocols/synth_heldout.toml: the default pack's 600 pairs
    common = dict(pairs_path=(str(layout.heldout_pack),), protocol="synth_heldout", allow_partial=partial,
                  cache=str(layout.cache), quiet=quiet)
    for model, _ in MODELS:
        ctx.invoke(verify, model_name=model, runs=str(layout.runs), out=str(layout.verification(model)), **common)
        ckpt = layout.untrained_checkpoint(model)
        if not ckpt.is_file():
            write_untrained_checkpoint(layout.run(model), ckpt)
        click.echo(f"untrained {model} (the run's initial weights, {ckpt}):")
        ctx.invoke(verify, checkpoint=str(ckpt), out=str(layout.untrained_verification(model)), **common)


def _synth_megaface(ctx, layout, scale, quiet) -> None:
    """synth megaface --images: probes and distractors of unseen identities, devkit lists, planted noise"""
    from megabench.commands.megaface import synth_megaface

    if (layout.megaface_data / "meta.json").is_file():
        click.echo(f"reusing {layout.megaface_data}")
        return
    ctx.invoke(synth_megaface, images=True, identities=scale["megaface_identities"], size=_recipe_size(),
               out=str(layout.megaface_data), distractors=scale["distractors"], quiet=quiet)


def _megaface(ctx, layout, scale, quiet) -> None:
    """megaface --model: MegaFace Challenge 1 from the images for both models, raw and refined"""
    from megabench.commands.megaface import megaface
    from megabench.demo_run import MODELS

    mf = layout.megaface_data
    for model, _ in MODELS:
        ctx.invoke(megaface, model_name=model, runs=str(layout.runs), facescrub_root=str(mf / "facescrub_images"),
                   megaface_root=str(mf / "megaface_images"), probe_list=str(mf / "facescrub_features_list.json"),
                   distractor_lists=str(mf / "lists"), facescrub_noises=str(mf / "facescrub_noises.txt"),
                   megaface_noises=str(mf / "megaface_noises.txt"), cache=str(layout.cache),
                   out=str(layout.megaface(model)), alg=model, quiet=quiet)


def _profile(ctx, layout, scale, quiet) -> None:
    """profile: parameters, size, FLOPs, latency and training memory of both models"""
    from megabench.commands.models import profile
    from megabench.demo_run import MODELS

    for model, _ in MODELS:
        if layout.profile(model).is_file():
            click.echo(f"reusing {layout.profile(model)}")
            continue
        ctx.invoke(profile, model_name=model, repeats=3, out=Path(layout.profile(model)))


def _report(ctx, layout, scale, quiet) -> None:
    """report: tables (models side by side) and figures from the result files"""
    from megabench.commands.report import report

    ctx.invoke(report, results=(str(layout.results),), out_dir=str(layout.report))
