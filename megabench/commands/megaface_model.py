"""The model-facing parts of ``megabench megaface`` and ``megabench synth megaface``, as decorators.

``@megaface_model_options`` adds ``--model/--checkpoint/--runs/--cache/--batch/--workers/--amp`` and
``--facescrub-root/--megaface-root`` to ``megabench megaface``; with a model it extracts (or reuses)
the probe and distractor feature stores and hands them to the command as ``--probes/--distractors``.
``@synthetic_images_options`` adds ``--images`` (and its sizes) to ``megabench synth megaface``: an
aligned image tree with devkit lists instead of feature stores. The commands themselves are unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import click

from megabench.commands.model_options import features_from_model, model_options, pop_model_options


def _parse_sizes(value) -> tuple[int, ...] | None:
    """``--sizes`` as ints when it parses (the command itself reports a bad value)."""
    if not value:
        return None
    try:
        return tuple(int(float(v)) for v in str(value).replace(",", " ").split())
    except ValueError:
        return None


def megaface_model_options(fn: Callable) -> Callable:
    """Decorator for ``megabench megaface``: run it from a model over the MegaFace test pack's images."""

    @functools.wraps(fn)
    def run(**kw):
        from megabench.errors import MegabenchError

        mo = pop_model_options(kw)
        roots = {k: kw.pop(k) for k in ("facescrub_root", "megaface_root")}
        if mo["model_name"] or mo["checkpoint"]:
            if kw.get("probes") or kw.get("distractors") or kw.get("synthetic") is not None:
                raise MegabenchError("--model / --checkpoint extract the features: drop --probes, --distractors "
                                     "and --synthetic")
            from megabench.engine.distributed import init_from_env

            info = init_from_env(kw.get("device", "cpu"))
            kw["probes"], kw["distractors"] = features_from_model(
                mo, **roots, probe_list=kw.get("probe_list"), distractor_lists=kw.get("distractor_lists"),
                list_set=kw.get("list_set"), sizes=_parse_sizes(kw.get("sizes")), device=kw.get("device", "cpu"),
                quiet=kw.get("quiet", False), dist_info=info)
        return fn(**kw)

    run = model_options()(run)
    run = click.option("--megaface-root", type=click.Path(file_okay=False), default=None,
                       help="With --model: folder the distractor lists' paths are relative to (megaface_images/).")(run)
    run = click.option("--facescrub-root", type=click.Path(file_okay=False), default=None,
                       help="With --model: folder the probe list's paths are relative to (facescrub_images/).")(run)
    return run


def synthetic_images_options(fn: Callable) -> Callable:
    """Decorator for ``megabench synth megaface``: ``--images`` writes an aligned image tree instead."""

    @functools.wraps(fn)
    def run(**kw):
        images, identities, per_identity = kw.pop("images"), kw.pop("identities"), kw.pop("per_identity")
        first_identity, size = kw.pop("first_identity"), kw.pop("size")
        if not images:
            return fn(**kw)
        from megabench.data.synthetic_megaface_images import generate_images

        meta = generate_images(kw["out"], n_identities=identities, per_identity=per_identity,
                               n_distractors=kw["distractors"], seed=kw["seed"], first_identity=first_identity,
                               size=size, progress=not kw.get("quiet"))
        out = kw["out"]
        click.echo(f"wrote {meta['n_probes']} {size}x{size} probe images of {identities} identities and "
                   f"{meta['n_distractors']:,} distractor images to {out} (sizes {meta['sizes']}, "
                   f"{meta['n_mislabelled_probes']} mislabelled probes, {meta['n_near_duplicates']} near-duplicates)")
        click.echo(f"next:     megabench megaface --model NAME --facescrub-root {out}/facescrub_images "
                   f"--megaface-root {out}/megaface_images --probe-list {out}/facescrub_features_list.json "
                   f"--distractor-lists {out}/lists --facescrub-noises {out}/facescrub_noises.txt "
                   f"--megaface-noises {out}/megaface_noises.txt")
        return None

    run = click.option("--size", default=112, show_default=True, type=click.IntRange(min=16),
                       help="With --images: image side in pixels (the model's input size, e.g. 64 for the demo "
                            "recipe).")(run)
    run = click.option("--first-identity", default=100_000, show_default=True, type=click.IntRange(min=0),
                       help="With --images: render identities from this number on (a `synth faces` training set "
                            "uses 0..N-1, so the default tests on unseen people).")(run)
    run = click.option("--per-identity", default=10, show_default=True, type=click.IntRange(min=2),
                       help="With --images: probe images per identity.")(run)
    run = click.option("--identities", default=20, show_default=True, type=click.IntRange(min=2),
                       help="With --images: probe identities.")(run)
    run = click.option("--images", is_flag=True,
                       help="Write aligned 112x112 images (facescrub_images/, megaface_images/) with devkit lists "
                            "instead of feature stores; give --distractors (e.g. 1000).")(run)
    return run
