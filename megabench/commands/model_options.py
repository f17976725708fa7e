"""Click options shared by the commands that run a model: ``--model``, ``--checkpoint``, ``--runs`` and
how to extract (``--batch``, ``--workers``, ``--amp``, ``--cache``).

``model_options`` adds them to a command; :func:`pop_model_options` takes them out of the command's
keyword arguments again (so a command that forwards ``**kw`` elsewhere is not disturbed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

MODEL_KEYS = ("model_name", "checkpoint", "runs", "cache", "batch_size", "workers", "amp", "onnx_input")


def model_options(*, device: bool = False) -> Callable:
    """Decorator adding the model/extraction options (``device``: also ``--device``)."""
    opts = [
        click.option("--model", "model_name", default=None,
                     help="Registered model; without --checkpoint the newest finished `megabench train` run of it "
                          "under --runs."),
        click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                     help="megabench checkpoint (loaded with weights_only=True); names its model."),
        click.option("--onnx-input", default=None, metavar="KEY=VALUE,...",
                     help="For --model path.onnx: layout=NCHW|NHWC, channels=RGB|BGR, mean=, std=, flip= "
                          "(default: the file's megabench metadata, else insightface's NCHW RGB 127.5/127.5 sum)."),
        click.option("--runs", type=click.Path(file_okay=False), default="runs", show_default=True,
                     help="Folder searched for finished training runs when --checkpoint is omitted."),
        click.option("--cache", type=click.Path(file_okay=False), default=None,
                     help="Feature cache folder (default $MEGABENCH_CACHE/features, ~/.cache/megabench/features)."),
        click.option("--batch", "batch_size", default=64, show_default=True, type=click.IntRange(min=1),
                     help="Images per forward pass when extracting."),
        click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0),
                     help="DataLoader processes decoding images (0 = in the main process)."),
        click.option("--amp", type=click.Choice(["none", "bf16", "fp16"]), default="none", show_default=True,
                     help="CUDA autocast precision of the model when extracting."),
    ]
    if device:
        opts.append(click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:K."))

    def wrap(fn: Callable) -> Callable:
        for o in reversed(opts):
            fn = o(fn)
        return fn

    return wrap


def pop_model_options(kw: dict[str, Any]) -> dict[str, Any]:
    """Remove and return the options :func:`model_options` added (``device`` stays in ``kw``)."""
    return {k: kw.pop(k) for k in MODEL_KEYS if k in kw}


def onnx_options(mo: dict[str, Any]) -> dict[str, Any]:
    """``--onnx-input`` as :class:`~megabench.models.onnx_model.OnnxEmbedder` keyword options."""
    from megabench.models.onnx_model import parse_onnx_options

    return parse_onnx_options(mo.get("onnx_input"))


def extract_options(mo: dict[str, Any], device: str, quiet: bool):
    from megabench.engine.extract_images import ExtractOptions

    return ExtractOptions(batch_size=mo["batch_size"], workers=mo["workers"], device=device, amp=mo["amp"],
                          progress=not quiet)


def features_from_model(mo: dict[str, Any], *, facescrub_root: str | None, megaface_root: str | None,
                        probe_list: str | None, distractor_lists: str | None, list_set: int | None,
                        sizes, device: str, quiet: bool, dist_info=None) -> tuple[str, str]:
    """``megaface --model``: resolve the model, extract (or reuse) the probe and distractor stores.

    Returns the two store paths for ``--probes`` / ``--distractors``."""
    from pathlib import Path

    from megabench.engine.extract import check_amp
    from megabench.engine.extract_images import MegafaceImages, megaface_features
    from megabench.engine.model_source import resolve_model
    from megabench.errors import MegabenchError

    missing = [name for name, v in (("--facescrub-root", facescrub_root), ("--megaface-root", megaface_root),
                                    ("--probe-list", probe_list), ("--distractor-lists", distractor_lists)) if not v]
    if missing:
        raise MegabenchError(f"megaface --model needs {', '.join(missing)} (the aligned images and the devkit lists "
                             "that name them; see docs/extraction.md)")
    check_amp(mo["amp"], device)
    main = dist_info is None or dist_info.is_main
    echo = click.echo if main else (lambda _msg: None)
    source = resolve_model(mo["model_name"], mo["checkpoint"], runs=mo["runs"], echo=echo,
                           onnx_options=onnx_options(mo))
    where = MegafaceImages(Path(facescrub_root), Path(megaface_root), Path(probe_list), Path(distractor_lists),
                           list_set, tuple(int(s) for s in sizes) if sizes else None)
    probes, distractors = megaface_features(source, where, cache=mo["cache"],
                                            opts=extract_options(mo, device, quiet or not main),
                                            dist_info=dist_info, echo=echo)
    return str(probes), str(distractors)
