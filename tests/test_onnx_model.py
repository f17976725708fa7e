"""OnnxEmbedder: `megabench export` files and insightface-style graphs give the torch model's embeddings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from megabench.engine.extract import embed_batch, extract_features
from megabench.errors import DataError
from megabench.export import export_onnx
from megabench.models import create_model
from megabench.models.onnx_model import OnnxEmbedder


def _images(n, h=112, w=112, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("iresnet_tiny").eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(model, path, weights_sha256="abc")
    return model, path


def test_megabench_export_through_onnxruntime_matches_torch(tiny):
    model, path = tiny
    onnx = OnnxEmbedder(path)
    assert onnx.name == "iresnet_tiny" and onnx.preprocessing == model.preprocessing  # read from the metadata
    images = _images(5)
    want, want_flip = embed_batch(model, images)
    got, got_flip = embed_batch(onnx, images)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(got_flip, want_flip, rtol=1e-4, atol=1e-4 * np.abs(want).max())


class InsightfaceStyle(nn.Module):
    """A foreign graph without megabench metadata, taking (N, H, W, 3) input (the NHWC option)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


def test_insightface_defaults_and_nhwc_layout(tiny, tmp_path):
    model, _ = tiny
    wrapped = InsightfaceStyle(model).eval()
    path = tmp_path / "w600k_like.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (torch.zeros(1, 112, 112, 3),), str(path), dynamo=False, input_names=["data"],
                          output_names=["fc1"], dynamic_axes={"data": {0: "None"}, "fc1": {0: "None"}})
    onnx = OnnxEmbedder(path, layout="NHWC")
    prep = onnx.preprocessing
    assert (prep.mean, prep.std, prep.channel_order, prep.flip, prep.input_size) == (127.5, 127.5, "RGB", "sum",
                                                                                     (112, 112))
    assert onnx.name == "w600k_like"
    images = _images(3, seed=1)
    x = (torch.from_numpy(images).float() - 127.5) / 127.5  # insightface's normalisation, NHWC
    with torch.no_grad():
        want = wrapped(x).numpy()
    got, _ = embed_batch(onnx, images, flip=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    bgr = OnnxEmbedder(path, layout="NHWC", channel_order="BGR", std=128.0)
    assert bgr.preprocessing.channel_order == "BGR" and bgr.preprocessing.std == 128.0
    with pytest.raises(DataError, match="is the layout NHWC"):
        OnnxEmbedder(path)  # (N, 112, 112, 3) read as NCHW has 112 channels


def test_other_input_size_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    small = create_model("iresnet_tiny", input_size=(64, 64)).eval()
    path = tmp_path / "small.onnx"
    export_onnx(small, path)
    onnx = OnnxEmbedder(path)
    assert onnx.preprocessing.input_size == (64, 64)
    images = _images(2)  # 112 x 112
    with pytest.raises(DataError, match=r"image 0 .* is 112x112, but model iresnet_tiny takes aligned 64x64"):
        extract_features(onnx, lambda i: images[i], 2, tmp_path / "f.h5", progress=False)
    assert not (tmp_path / "f.h5").exists()
    with pytest.raises(DataError, match="small.onnx: the model takes 64x64"):
        onnx(torch.zeros(1, 3, 112, 112))
    with pytest.raises(DataError, match="graph takes 64x64 images, not the 112x112"):
        OnnxEmbedder(path, input_size=(112, 112))


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(DataError, match="no such ONNX file"):
        OnnxEmbedder(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataError, match="onnxruntime cannot load it"):
        OnnxEmbedder(bad)
