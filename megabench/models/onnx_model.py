"""An ONNX face model as a megabench model: ``OnnxEmbedder(path)`` runs the file with onnxruntime.

It behaves like a zoo model for extraction: ``.name``, ``.preprocessing`` (input size, channel order,
``(p - mean) / std``, flip mode) and ``forward(x)`` with ``x`` float ``(B, 3, H, W)`` already
normalised; it returns float32 ``(B, D)`` embeddings on ``x``'s device. No gradients.

Defaults, in order: explicit options; the ``megabench.preprocessing`` metadata that ``megabench
export`` writes; insightface's convention for its ONNX recognition models (``w600k_r50.onnx`` ...):
NCHW, RGB, ``(p - 127.5) / 127.5``, embeddings of an image and its flip summed. The input size is
read from the graph (``[N, 3, H, W]`` or ``[N, H, W, 3]``); a graph with symbolic H, W needs
``input_size``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from megabench.errors import DataError, MegabenchError
from megabench.models.preprocessing import Preprocessing

INSIGHTFACE_DEFAULTS: dict[str, Any] = {"channel_order": "RGB", "mean": 127.5, "std": 127.5, "flip": "sum"}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise MegabenchError("onnxruntime is not installed; ONNX models need it: "
                             "pip install 'megabench[onnx]'") from None
    return onnxruntime


def parse_onnx_options(text: str | None) -> dict[str, Any]:
    """``"layout=NHWC,channels=BGR,mean=127.5,std=128,flip=sum"`` (any subset) -> OnnxEmbedder options."""
    keys = {"layout": ("layout", str), "channels": ("channel_order", str), "mean": ("mean", float),
            "std": ("std", float), "flip": ("flip", str)}
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in keys:
            raise MegabenchError(f"--onnx-input {text!r}: expected KEY=VALUE items with KEY in {sorted(keys)}")
        name, cast = keys[key.strip()]
        try:
            out[name] = cast(value.strip().upper() if name in ("layout", "channel_order") else value.strip())
        except ValueError:
            raise MegabenchError(f"--onnx-input {text!r}: {key.strip()} must be a number, not {value!r}") from None
    return out


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxEmbedder(nn.Module):
    """An ONNX embedding model (see the module docstring). ``layout``: the graph's input layout."""

    def __init__(self, path: str | os.PathLike, *, layout: Literal["NCHW", "NHWC"] = "NCHW",
                 channel_order: Literal["RGB", "BGR"] | None = None, mean: float | None = None,
                 std: float | None = None, flip: Literal["concat", "sum", "none"] | None = None,
                 input_size: tuple[int, int] | None = None, providers: list[str] | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such ONNX file")
        if layout not in ("NCHW", "NHWC"):
            raise MegabenchError(f"{self.path}: input layout must be NCHW or NHWC, not {layout!r}")
        ort = _ort()
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise DataError(f"{self.path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise DataError(f"{self.path}: the graph has {len(inputs)} inputs; an embedding model has one image input")
        self.input_name = inputs[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.layout = layout
        shape = list(inputs[0].shape)
        if len(shape) != 4:
            raise DataError(f"{self.path}: input {self.input_name!r} has shape {shape}; expected 4-D {layout}")
        self.fixed_batch = _static(shape[0])
        h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
        channels = shape[1] if layout == "NCHW" else shape[3]
        if _static(channels) not in (None, 3):
            raise DataError(f"{self.path}: input shape {shape} has {channels} channels as {layout}; "
                            f"is the layout {'NHWC' if layout == 'NCHW' else 'NCHW'}?")
        graph_size = (_static(h), _static(w))
        if None in graph_size:
            if input_size is None:
                raise DataError(f"{self.path}: the graph's input size is symbolic ({shape}); pass input_size")
            graph_size = tuple(input_size)
        elif input_size is not None and tuple(input_size) != graph_size:
            raise DataError(f"{self.path}: the graph takes {graph_size[1]}x{graph_size[0]} images, "
                            f"not the {input_size[1]}x{input_size[0]} asked for")
        meta = self.session.get_modelmeta().custom_metadata_map
        stored = json.loads(meta["megabench.preprocessing"]) if "megabench.preprocessing" in meta else {}
        chosen = {**INSIGHTFACE_DEFAULTS, **{k: stored[k] for k in INSIGHTFACE_DEFAULTS if k in stored}}
        explicit = {"channel_order": channel_order, "mean": mean, "std": std, "flip": flip}
        chosen.update({k: v for k, v in explicit.items() if v is not None})
        self.preprocessing = Preprocessing(input_size=graph_size, **chosen)
        self.name = meta.get("megabench.model") or self.path.stem
        self.config = {"onnx": str(self.path), "layout": layout}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float (B, 3, H, W) normalised as ``.preprocessing``; returns float32 (B, D)."""
        h, w = self.preprocessing.input_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, h, w):
            raise DataError(f"{self.path}: the model takes {w}x{h} RGB images (input (B, 3, {h}, {w})), "
                            f"got a batch of shape {tuple(x.shape)}; align and crop the faces to {w}x{h}")
        arr = x.detach().float().cpu().numpy()
        if self.layout == "NHWC":
            arr = arr.transpose(0, 2, 3, 1)
        arr = np.ascontiguousarray(arr)
        step = self.fixed_batch or len(arr)
        if self.fixed_batch and self.fixed_batch != 1 and len(arr) % self.fixed_batch:
            raise DataError(f"{self.path}: the graph has a fixed batch of {self.fixed_batch}; "
                            f"a batch of {len(arr)} does not divide into it")
        outs = [self.session.run([self.output_name], {self.input_name: arr[i:i + step]})[0]
                for i in range(0, len(arr), step)]
        return torch.from_numpy(np.concatenate(outs).astype(np.float32, copy=False)).to(x.device)
