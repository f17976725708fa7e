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


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, extra: dict[str, Any] | None = None) -> str:
    """Write ``model`` (a zoo model: it has ``.name`` and ``.config``) to ``path``; returns weights_sha256."""
    name = getattr(model, "name", None)
    if not isinstance(name, str):
        raise MegabenchError(f"{path}: cannot save a model without a registered `.name` (build it with create_model)")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    digest = weights_sha256(state)
    prep = getattr(model, "preprocessing", None)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": name,
        "config": dict(getattr(model, "config", {})),
        "preprocessing": prep.to_dict() if prep is not None else None,
        "weights_sha256": digest,
        "state_dict": state,
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return digest


def read_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); check its format and, if ``verify``, its sha256."""
    p = Path(path)
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{p}: no such checkpoint file") from None
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(
            f"{p}: refused to load: the file needs pickled objects beyond tensors and plain data ({exc}); "
            "only load checkpoints written by megabench or re-save the weights as a plain state dict"
        ) from None
    except (RuntimeError, EOFError) as exc:
        raise DataError(f"{p}: not a readable torch checkpoint ({exc}); is the file truncated?") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(f"{p}: not a megabench checkpoint (no format={FORMAT!r}); save it with save_checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{p}: checkpoint format_version {payload.get('format_version')} is not {FORMAT_VERSION}")
    if verify:
        digest = weights_sha256(payload["state_dict"])
        if digest != payload["weights_sha256"]:
            raise DataError(f"{p}: weights sha256 {digest[:12]} does not match the stored "
                            f"{payload['weights_sha256'][:12]}; the file is corrupt")
    return payload


def load_checkpoint(path: str | os.PathLike, model: nn.Module) -> dict[str, Any]:
    """Load weights from ``path`` into ``model`` (strict); returns the checkpoint dict.

    Raises :class:`MegabenchError` naming both models when the checkpoint was saved from another model
    name or its tensors do not fit.
    """
    payload = read_checkpoint(path)
    want = getattr(model, "name", type(model).__name__)
    if payload["model"] != want:
        raise MegabenchError(
            f"{path}: checkpoint is for model {payload['model']!r}, not {want!r}; "
            f"build it with create_model({payload['model']!r})"
        )
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:3]
        raise MegabenchError(
            f"{path}: checkpoint of {payload['model']!r} (config {payload['config']}) does not fit model "
            f"{want!r} (config {getattr(model, 'config', {})}): {' '.join(first)}"
        ) from None
    return payload


def model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint names (with its stored config) and load its weights."""
    from megabench.models import create_model

    payload = read_checkpoint(path)
    config = dict(payload["config"])
    try:
        model = create_model(payload["model"], **config)
    except KeyError as exc:
        raise MegabenchError(f"{path}: {exc.args[0]}") from None
    model.load_state_dict(payload["state_dict"], strict=True)
    prep = payload.get("preprocessing")
    if isinstance(prep, dict):  # the input contract the weights were saved with (e.g. imported: /127.5)
        from megabench.models.preprocessing import Preprocessing

        model.preprocessing = Preprocessing(**{**prep, "input_size": tuple(prep["input_size"])})
    return model, payload
