"""ONNX export of zoo models, checked against torch with onnxruntime.

The graph takes ``images``: float32 ``(B, 3, H, W)`` already normalised as ``model.preprocessing``
says (B dynamic), and returns ``embeddings``: float32 ``(B, D)`` (not L2-normalised). The file's
metadata (``metadata_props``) carries ``megabench.model``, ``megabench.preprocessing`` (JSON) and, when
known, ``megabench.weights_sha256``. ``onnx`` / ``onnxruntime`` are optional (``pip install
megabench[onnx]``).
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from pathlib import Path

import torch

from megabench.errors import MegabenchError
from megabench.fileio import atomic_path
from megabench.models.registry import FaceModel


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MegabenchError(
            f"{module} is not installed; ONNX export and checks need it: pip install 'megabench[onnx]'"
        ) from None


MIN_OPSET = 14


def max_opset() -> int:
    """The highest opset torch's TorchScript exporter (the one used here) can write."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(_constants, "ONNX_MAX_OPSET", 17)))


def check_opset(opset: int) -> int:
    """``opset`` if this torch can export it, else :class:`MegabenchError` naming the allowed range."""
    hi = max_opset()
    if not MIN_OPSET <= opset <= hi:
        raise MegabenchError(f"--opset {opset}: torch {torch.__version__} exports opsets {MIN_OPSET}..{hi}; "
                             f"choose one in that range")
    return opset


def is_megabench_onnx(path: str | os.PathLike) -> bool:
    """True when ``path`` is an ONNX model carrying megabench's metadata (a re-export may replace it)."""
    try:
        onnx = importlib.import_module("onnx")
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX, or onnx missing: treat as someone else's file  # noqa: BLE001
        return False
    return any(p.key == "megabench.model" for p in proto.metadata_props)


def export_onnx(model: FaceModel, path: str | os.PathLike, *, opset: int = 17,
                weights_sha256: str | None = None) -> Path:
    """Write ``model`` (eval mode, CPU) to ``path`` as ONNX with a dynamic batch axis; atomic."""
    check_opset(opset)
    onnx = _require("onnx")
    model = model.cpu().eval()
    h, w = model.preprocessing.input_size
    dummy = torch.zeros(2, 3, h, w)
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notes
        torch.onnx.export(
            model, (dummy,), str(tmp), dynamo=False, opset_version=opset,
            input_names=["images"], output_names=["embeddings"],
            dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
        )
        proto = onnx.load(str(tmp))
        meta = {"megabench.model": model.name,
                "megabench.preprocessing": json.dumps(model.preprocessing.to_dict())}
        if weights_sha256:
            meta["megabench.weights_sha256"] = weights_sha256
        onnx.helper.set_model_props(proto, meta)
        onnx.save(proto, str(tmp))
    return Path(path)


def check_onnx(model: FaceModel, path: str | os.PathLike, *, batch: int = 3, seed: int = 0) -> float:
    """Run ``path`` with onnxruntime on a random batch; return ``max |onnx - torch| / max |torch|``."""
    ort = _require("onnxruntime")
    model = model.cpu().eval()
    h, w = model.preprocessing.input_size
    x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["embeddings"], {"images": x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).numpy()
    return float(abs(got - want).max() / max(abs(want).max(), 1e-12))
