"""Published weights into megabench checkpoints: insightface ``arcface_torch`` IR-ResNet backbones.

insightface's ``recognition/arcface_torch/backbones/iresnet.py`` (``r50``: blocks (3, 4, 14, 3),
``r100``: (3, 13, 30, 3)) is the same network as our ``iresnet50`` / ``iresnet100``; only the names
differ. Their module -> ours:

    conv1, bn1, prelu                     -> stem.0, stem.1, stem.2
    layer{s}.{i}.bn1 conv1 bn2 prelu conv2 bn3 -> blocks.{k}.branch.0 .1 .2 .3 .4 .5
    layer{s}.{i}.downsample.0 / .1        -> blocks.{k}.shortcut.0 / .1   (k counts blocks over stages)
    bn2, fc, features                     -> embedding.0, embedding.3, embedding.4

(their forward: bn2 -> flatten -> dropout -> fc -> features; ours: BN -> dropout -> flatten ->
Linear -> BN1d: equal in eval mode). Every tensor keeps its shape. A DDP ``module.`` prefix is
removed. BatchNorm ``num_batches_tracked`` counters, when a file lacks them, are set to 0 (they do
not change an eval forward); any other missing or unexpected key is an error that lists them.

insightface feeds ``(pixel / 255 - 0.5) / 0.5`` = ``(p - 127.5) / 127.5`` RGB and sums the
embeddings of an image and its flip: the checkpoint's preprocessing records exactly that.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from megabench.errors import DataError, MegabenchError, UnsafePickleError

#: registered model -> blocks per stage of the insightface backbone it takes
INSIGHTFACE_DEPTHS: dict[str, tuple[int, ...]] = {"iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3)}
_BRANCH = ("bn1", "conv1", "bn2", "prelu", "conv2", "bn3")  # branch.0 .. branch.5
_OPTIONAL_SUFFIX = ".num_batches_tracked"


def insightface_module_map(depths: tuple[int, ...]) -> dict[str, str]:
    """insightface module prefix -> megabench module prefix for a backbone with ``depths`` blocks."""
    mapping = {"conv1": "stem.0", "bn1": "stem.1", "prelu": "stem.2",
               "bn2": "embedding.0", "fc": "embedding.3", "features": "embedding.4"}
    k = 0
    for stage, depth in enumerate(depths, start=1):
        for i in range(depth):
            for j, name in enumerate(_BRANCH):
                mapping[f"layer{stage}.{i}.{name}"] = f"blocks.{k}.branch.{j}"
            if i == 0:  # the first block of every stage has stride 2: a projection shortcut
                mapping[f"layer{stage}.{i}.downsample.0"] = f"blocks.{k}.shortcut.0"
                mapping[f"layer{stage}.{i}.downsample.1"] = f"blocks.{k}.shortcut.1"
            k += 1
    return mapping


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain ``{name: tensor}`` file, read with ``torch.load(weights_only=True)``; ``module.`` stripped."""
    p = Path(path)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{p}: no such weights file") from None
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(f"{p}: refused to load: it needs pickled objects beyond tensors ({exc}); "
                                "re-save it as a plain state dict: torch.save(model.state_dict(), path)") from None
    except (RuntimeError, EOFError) as exc:
        raise DataError(f"{p}: not a readable torch file ({exc}); is it truncated?") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{p}: not a state dict (a dict of tensors); insightface backbone files "
                        "(backbone.pth) are one")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def infer_insightface_model(state: dict[str, torch.Tensor], source: str = "weights") -> str:
    """The registered model whose insightface depths match the ``layer*`` blocks in ``state``."""
    depths = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{s}.")}) for s in range(1, 5))
    for name, want in INSIGHTFACE_DEPTHS.items():
        if depths == want:
            return name
    raise MegabenchError(f"{source}: blocks per stage {depths} match no supported insightface backbone "
                         f"({', '.join(f'{n}: {d}' for n, d in INSIGHTFACE_DEPTHS.items())})")


def _show(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def convert_insightface(state: dict[str, torch.Tensor], model_name: str, *, source: str = "weights"
                        ) -> dict[str, torch.Tensor]:
    """Rename an insightface state dict to ``model_name``'s keys; checks every key and shape.

    Raises :class:`MegabenchError` listing missing, unexpected and mis-shaped keys.
    """
    from megabench.models import create_model

    if model_name not in INSIGHTFACE_DEPTHS:
        raise MegabenchError(f"{source}: insightface import supports {sorted(INSIGHTFACE_DEPTHS)}, not {model_name!r}")
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in create_model(model_name).state_dict().items()}
    modules = insightface_module_map(INSIGHTFACE_DEPTHS[model_name])
    out: dict[str, torch.Tensor] = {}
    unexpected, bad_shape = [], []
    for key, tensor in state.items():
        prefix, _, suffix = key.rpartition(".")
        ours = f"{modules[prefix]}.{suffix}" if prefix in modules else None
        if ours not in want:
            unexpected.append(key)
        elif tuple(tensor.shape) != want[ours]:
            bad_shape.append(f"{key} {tuple(tensor.shape)} (expected {want[ours]})")
        else:
            out[ours] = tensor.detach().clone()
    inverse = {v: k for k, v in modules.items()}
    missing = []
    for ours in want:
        if ours in out:
            continue
        if ours.endswith(_OPTIONAL_SUFFIX):
            out[ours] = torch.zeros((), dtype=torch.long)
            continue
        prefix, _, suffix = ours.rpartition(".")
        missing.append(f"{inverse.get(prefix, prefix)}.{suffix}")
    if missing or unexpected or bad_shape:
        parts = [f"missing keys: {_show(missing)}" if missing else "",
                 f"unexpected keys: {_show(unexpected)}" if unexpected else "",
                 f"wrong shapes: {_show(bad_shape)}" if bad_shape else ""]
        raise MegabenchError(f"{source}: not an insightface {model_name} backbone state dict; "
                             + "; ".join(p for p in parts if p))
    return out


def insightface_preprocessing():
    """insightface's input contract: RGB, (p - 127.5) / 127.5, embeddings of image and flip summed."""
    from megabench.models.preprocessing import Preprocessing

    return Preprocessing(input_size=(112, 112), channel_order="RGB", mean=127.5, std=127.5, flip="sum")


def import_insightface(path: str | os.PathLike, out: str | os.PathLike, model_name: str | None = None
                       ) -> dict[str, Any]:
    """Convert an arcface_torch backbone file into a megabench checkpoint at ``out``.

    Returns ``{"model", "weights_sha256", "source_sha256", "out"}``. ``model_name`` defaults to the
    model whose depths the file has. The checkpoint's ``extra.imported_from`` names the source.
    """
    from megabench.engine.checkpoint import save_checkpoint
    from megabench.models import create_model

    p = Path(path)
    state = read_state_dict(p)
    name = model_name or infer_insightface_model(state, str(p))
    converted = convert_insightface(state, name, source=str(p))
    model = create_model(name)
    model.load_state_dict(converted, strict=True)
    model.preprocessing = insightface_preprocessing()
    source_sha = hashlib.sha256(p.read_bytes()).hexdigest()
    extra = {"imported_from": {"format": "insightface", "file": p.name, "sha256": source_sha,
                               "definition": "deepinsight/insightface recognition/arcface_torch/backbones/iresnet.py"}}
    digest = save_checkpoint(out, model, extra=extra)
    return {"model": name, "weights_sha256": digest, "source_sha256": source_sha, "out": str(out)}
