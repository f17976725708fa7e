"""Model checkpoints: ``torch.save`` of plain data, read back with ``torch.load(weights_only=True)``.

A checkpoint file holds a dict::

    format          "megabench.checkpoint"
    format_version  1
    model           registered model name (e.g. "sranet_r50")
    config          the model's builder arguments (``model.config``)
    preprocessing   the model's input contract (``Preprocessing.to_dict()``)
    weights_sha256  sha256 over the state dict (names, dtypes, shapes, bytes; see :func:`weights_sha256`)
    state_dict      the model's tensors
    extra           caller's data (plain types and tensors only)

Files are written atomically; loading never executes pickled code.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from megabench.errors import DataError, MegabenchError, UnsafePickleError
from megabench.fileio import atomic_path
from megabench.models.registry import FaceModel

FORMAT = "megabench.checkpoint"
FORMAT_VERSION = 1


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted names, dtypes, shapes and raw bytes of every tensor (device-independent)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _face_model(model: nn.Module, what: str) -> FaceModel:
    """``model`` itself if it is a :class:`FaceModel`; else a :class:`MegabenchError` saying what to do."""
    if not isinstance(model, FaceModel):
        raise MegabenchError(f"{what}: {type(model).__name__} is not a megabench FaceModel (no registered name, "
                             "config or preprocessing); build it with megabench.models.create_model")
    return model


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, extra: dict[str, Any] | None = None) -> str:
    """Write ``model`` (a :class:`FaceModel`: its ``.name``, ``.config``, ``.preprocessing`` and weights)
    to ``path``; returns weights_sha256. Any other module is a :class:`MegabenchError`."""
    model = _face_model(model, f"{path}: cannot save the model")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    digest = weights_sha256(state)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.name,
        "config": dict(model.config),
        "preprocessing": model.preprocessing.to_dict(),
        "weights_sha256": digest,
        "state_dict": state,
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return digest


#: payload key -> (type, what it must be) checked on every read
_PAYLOAD_TYPES: dict[str, tuple[type, str]] = {
    "model": (str, "a registered model name"),
    "config": (dict, "the model's builder arguments (a table)"),
    "weights_sha256": (str, "the sha256 of the weights"),
    "state_dict": (dict, "the model's tensors"),
}


def _hostile_detail(exc: Exception) -> str:
    """What torch's safe unpickler refused, without torch's advice to retry unsafely."""
    import re

    text = " ".join(str(exc).split())
    m = re.search(r"(Unsupported global: GLOBAL [\w.]+|Unsupported operand \w+|[\w ]*not an allowed global[^.]*)", text)
    return m.group(1) if m else type(exc).__name__


def _torch_load(p: Path) -> Any:
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{p}: no such checkpoint file") from None
    except IsADirectoryError:
        raise DataError(f"{p}: is a folder, not a checkpoint file") from None
    except pickle.UnpicklingError as exc:
        # never repeat torch's hint to retry with weights_only=False: this file asked to run code
        raise UnsafePickleError(
            f"{p}: refused: the file asks for objects a megabench checkpoint never holds ({_hostile_detail(exc)}); "
            "nothing from it was executed. Do not load it elsewhere either: get the weights from a source you "
            "trust, saved by megabench (save_checkpoint)"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, IndexError, KeyError, TypeError, AttributeError,
            OverflowError, UnicodeDecodeError) as exc:
        # corrupt bytes reach torch's weights-only unpickler in many ways: 7% of random 2 kB files raise an
        # IndexError or KeyError from its opcode handlers (a fuzz test feeds it seeded random files)
        first = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataError(f"{p}: not a readable torch checkpoint ({first}); is the file truncated?") from None


def _check_payload(payload: Any, p: Path) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(f"{p}: not a megabench checkpoint (no format={FORMAT!r}); save it with save_checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{p}: checkpoint format_version {payload.get('format_version')} is not {FORMAT_VERSION}")
    for key, (tp, what) in _PAYLOAD_TYPES.items():
        if key not in payload:
            raise DataError(f"{p}: megabench checkpoint lacks `{key}` ({what}); the file is damaged or was "
                            "edited: save it again with save_checkpoint")
        if not isinstance(payload[key], tp):
            raise DataError(f"{p}: checkpoint `{key}` is a {type(payload[key]).__name__}, expected {what}")
    bad = [k for k, v in payload["state_dict"].items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise DataError(f"{p}: `state_dict` entries {bad[:3]} are not named tensors; the file is damaged")
    return payload


def read_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); check its format, its keys' types and, if
    ``verify``, its sha256. Every problem is a :class:`DataError` naming the file."""
    p = Path(path)
    payload = _check_payload(_torch_load(p), p)
    if verify:
        digest = weights_sha256(payload["state_dict"])
        if digest != payload["weights_sha256"]:
            raise DataError(f"{p}: weights sha256 {digest[:12]} does not match the stored "
                            f"{payload['weights_sha256'][:12]}; the file is corrupt")
    return payload


def _first(names: list[str]) -> str:
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")


def check_weights_fit(state_dict: dict[str, torch.Tensor], model: nn.Module, *, source: str,
                      lead: str = "", advice: str = "") -> None:
    """Raise :class:`DataError` unless ``state_dict`` has exactly ``model``'s tensor names and shapes.

    The message is ``<source>: <lead>: tensors <what differs>. <advice>``."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(want.keys() - got.keys())
    unexpected = sorted(got.keys() - want.keys())
    reshaped = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
    if missing or unexpected or reshaped:
        parts = [f"{len(missing)} missing ({_first(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({_first(unexpected)})" if unexpected else "",
                 f"{len(reshaped)} of another shape ({_first(reshaped)})" if reshaped else ""]
        lead = lead or f"the weights are not those of model {_face_model(model, source).name!r}"
        advice = advice or ("The checkpoint's `model`/`config` do not describe its weights (edited or damaged "
                            "file); use the checkpoint the model was trained into")
        raise DataError(f"{source}: {lead}: tensors {'; '.join(p for p in parts if p)}. {advice}")


def _registered_structure(name: str, source: str) -> nn.Module:
    """The registered model ``name`` with its own config, on the meta device (no memory, no init)."""
    from megabench.models import create_model

    try:
        with torch.device("meta"):
            return create_model(name)
    except KeyError as exc:
        raise DataError(f"{source}: {exc.args[0] if exc.args else exc}") from None


def load_checkpoint(path: str | os.PathLike, model: FaceModel) -> dict[str, Any]:
    """Load weights from ``path`` into ``model`` (strict); returns the checkpoint dict.

    Raises :class:`MegabenchError` naming both models when the checkpoint was saved from another model
    name or its tensors do not fit.
    """
    model = _face_model(model, f"{path}: cannot load the checkpoint into the model")
    payload = read_checkpoint(path)
    want = model.name
    if payload["model"] != want:
        raise MegabenchError(
            f"{path}: checkpoint is for model {payload['model']!r}, not {want!r}; "
            f"build it with create_model({payload['model']!r})"
        )
    check_weights_fit(payload["state_dict"], model, source=str(path),
                      lead=f"checkpoint of {payload['model']!r} (config {payload['config']}) does not fit model "
                           f"{want!r} (config {model.config})",
                      advice="build the model with the checkpoint's config (model_from_checkpoint)")
    model.load_state_dict(payload["state_dict"], strict=True)
    return payload


def model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint names (with its stored config) and load its weights.

    The weights' tensor names must be those of the registered model (its blocks and attention
    modules), and their shapes those of the model built with the stored config: a `model` field
    edited to another name is refused rather than labelling the features with it.
    """
    from megabench.models import create_model

    payload = read_checkpoint(path)
    name = payload["model"]
    reference = _registered_structure(name, str(path))
    got, want = set(payload["state_dict"]), set(reference.state_dict())
    if got != want:
        check_weights_fit(payload["state_dict"], reference, source=str(path))
    try:
        model = create_model(name, **payload["config"])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: checkpoint `config` does not build {name!r} ({exc}); the file was edited or "
                        "written by another megabench version") from None
    check_weights_fit(payload["state_dict"], model, source=str(path))
    model.load_state_dict(payload["state_dict"], strict=True)
    prep = payload.get("preprocessing")
    if isinstance(prep, dict):  # the input contract the weights were saved with (e.g. imported: /127.5)
        from megabench.models.preprocessing import Preprocessing

        model.preprocessing = Preprocessing(**{**prep, "input_size": tuple(prep["input_size"])})
    return model, payload
