"""``megabench train`` (one recipe on one training set) and ``megabench train-baselines`` (the paper's grids)."""

from __future__ import annotations

import click

_COMMON = [
    click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                 help="Override a recipe key (type-checked), e.g. --set batch_size=32 --set schedule.max_steps=200."),
    click.option("--device", default=None, help="cpu or cuda (default: cuda when available). Under torchrun each "
                                                "process takes cuda:LOCAL_RANK."),
    click.option("--amp/--no-amp", default=None, help="bf16 autocast (default: on for CUDA, off on CPU)."),
    click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0), help="DataLoader workers."),
    click.option("--val-every", default=0, show_default=True, type=click.IntRange(min=0),
                 help="Validate every N steps (0: only at the end)."),
    click.option("--save-every", default=1000, show_default=True, type=click.IntRange(min=0),
                 help="Checkpoint every N steps (0: only when stopping early)."),
    click.option("--keep", "keep_checkpoints", default=3, show_default=True, type=click.IntRange(min=1),
                 help="Step checkpoints kept."),
    click.option("--log-every", default=10, show_default=True, type=click.IntRange(min=1), help="log.jsonl period."),
    click.option("--skip-bad-images", is_flag=True, help="Skip (and count) undecodable images instead of failing."),
    click.option("--quiet", is_flag=True, help="No progress bar."),
]


def _common(f):
    for opt in reversed(_COMMON):
        f = opt(f)
    return f


def _device_and_dist(device: str | None):
    import os

    import torch

    from megabench.engine.distributed import init_from_env

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev == "cuda" and "LOCAL_RANK" in os.environ:
        dev = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        from megabench.errors import MegabenchError

        raise MegabenchError(f"--device {dev}: this torch build sees no CUDA device; use --device cpu")
    return dev, init_from_env(dev)


def _options(kw: dict, device: str, **more):
    from megabench.engine.train import TrainOptions

    return TrainOptions(device=device, amp=kw["amp"], workers=kw["workers"], save_every=kw["save_every"],
                        keep_checkpoints=kw["keep_checkpoints"], val_every=kw["val_every"], log_every=kw["log_every"],
                        progress=not kw["quiet"], echo=click.echo, **more)


@click.command("train")
@click.argument("recipe")
@click.option("--data", "data_path", required=True, type=click.Path(),
              help="Training set: a .rec (or folder with train.rec/.idx/property), an image folder or a list file.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (new, or --resume).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Shorten the run to N steps, scaling the recipe's lr steps and warm-up to keep its shape.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--force", is_flag=True, help="Resume even if recipe, data or world size differ.")
@click.option("--val", "val_packs", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="insightface .bin pack(s) for 10-fold validation (repeatable).")
@click.option("--stop-at", type=click.IntRange(min=1), default=None,
              help="Stop (with a checkpoint) after this many steps; continue later with --resume.")
@_common
def train(recipe, data_path, out, max_steps, resume, force, val_packs, stop_at, **kw) -> None:
    """Train RECIPE (a baselines/ name or a .toml path) on a training set into a run folder.

    The folder gets recipe.toml (+ sha256), log.jsonl, checkpoints/step_<N>.pt, final.pt (what
    `megabench extract --checkpoint` reads), run.json and, with --val, verification_<pack>.json.
    Many processes: torchrun --nproc-per-node K --no-python megabench train ...
    """
    from megabench.engine.distributed import destroy
    from megabench.engine.train_runs import train_from_files

    device, info = _device_and_dist(kw["device"])
    try:
        outcome = train_from_files(recipe, data_path, out, overrides=tuple(kw["overrides"]), max_steps=max_steps,
                                   skip_bad_images=kw["skip_bad_images"], dist_info=info,
                                   options=_options(kw, device, val_packs=tuple(val_packs), resume=resume,
                                                    force=force, stop_at=stop_at))
    finally:
        destroy(info)
    if info.is_main and outcome.metrics:
        for name, m in outcome.metrics.items():
            click.echo(f"{name}: accuracy {m['accuracy']:.5f} (std {m['accuracy_std']:.5f})")


@click.command("train-baselines")
@click.option("--grid", required=True, type=click.Choice(["table1", "table2", "table3", "table5-small",
                                                          "table5-large", "all"]),
              help="The paper's table whose trained rows to make (from the recipes' `paper` tags).")
@click.option("--data-root", required=True, type=click.Path(file_okay=False),
              help="Folder with faces_webface_112x112/ and/or faces_glint/ (insightface layout).")
@click.option("--out", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="One run folder per recipe; results copied to <out>/results/.")
@click.option("--val-root", default=None, type=click.Path(file_okay=False),
              help="Folder with lfw.bin, agedb_30.bin, cfp_fp.bin (default: beside each training set).")
@click.option("--only", multiple=True, help="Only these recipe names of the grid (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print each run, its recipe, data, steps and cost; train nothing.")
@_common
def train_baselines(grid, data_root, out, val_root, only, dry_run, **kw) -> None:
    """Train the paper's baselines and SRANet models of a table: finished runs are skipped, unfinished resumed.

    Then: megabench report <out>/results
    """
    from pathlib import Path

    from megabench.engine.train_runs import copy_results, forward_flops, plan_runs

    runs = plan_runs(grid, data_root, out, val_root=val_root, only=tuple(only), overrides=tuple(kw["overrides"]),
                     check_data=not dry_run)
    if dry_run:
        cache: dict = {}
        for r in runs:
            key = (r.recipe.model, tuple(r.recipe.input_size))
            cache.setdefault(key, forward_flops(*key))
            click.echo(r.describe(cache[key]))
            click.echo(f"    recipe {r.recipe_path}  out {r.out}  val {[str(v) for v in r.val] or '-'}")
        click.echo(f"{len(runs)} run(s); dry run: nothing trained")
        return
    _run_grid(runs, Path(out), kw, copy_results)


def _run_grid(runs, out, kw, copy_results) -> None:
    from megabench.engine.distributed import destroy
    from megabench.engine.train_runs import train_from_files

    device, info = _device_and_dist(kw["device"])
    try:
        for r in runs:
            click.echo(f"== {r.name} ({r.status})")
            if r.status != "finished":
                train_from_files(str(r.recipe_path), r.data, r.out, overrides=tuple(kw["overrides"]),
                                 skip_bad_images=kw["skip_bad_images"], dist_info=info,
                                 options=_options(kw, device, val_packs=tuple(map(str, r.val)),
                                                  resume=r.status == "resume"))
            if info.is_main:
                for dest in copy_results(r.out, out / "results"):
                    click.echo(f"result: {dest}")
    finally:
        destroy(info)
    if info.is_main:
        click.echo(f"next: megabench report {out / 'results'}")
