"""ONNX export of zoo models, checked against torch with onnxruntime.

The graph takes ``images``: float32 ``(B, 3, H, W)`` already normalised as ``model.preprocessing``
says (B dynamic), and returns ``embeddings``: float32 ``(B, D)`` (not L2-normalised). The file's
metadata (``metadata_props``) carries ``megabench.model``, ``megabench.preprocessing`` (JSON) and, when
known, ``megabench.weights_sha256``. ``onnx`` / ``onnxruntime`` are optional (``pip install
megabench[onnx]``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from megabench.errors import MegabenchError
from megabench.fileio import atomic_path
from megabench.models.registry import FaceModel


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MegabenchError(
            f"{module} is not installed; ONNX export and checks need it: pip install 'megabench[onnx]'"
        ) from None


def export_onnx(model: FaceModel, path: str | os.PathLike, *, opset: int = 17,
                weights_sha256: str | None = None) -> Path:
    """Write ``model`` (eval mode, CPU) to ``path`` as ONNX with a dynamic batch axis; atomic."""
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
