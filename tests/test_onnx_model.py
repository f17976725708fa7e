"""OnnxEmbedder: `megabench export` files and insightface-style graphs give the torch model's embeddings."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from megabench.cli import cli
from megabench.data.feature_store import open_features
from megabench.data.image_source import ImageFiles
from megabench.engine.checkpoint import save_checkpoint
from megabench.engine.extract import embed_batch, extract_features
from megabench.engine.model_source import resolve_model
from megabench.errors import DataError, MegabenchError
from megabench.export import export_onnx
from megabench.fileio import sha256_file
from megabench.models import create_model
from megabench.models.onnx_model import OnnxEmbedder, parse_onnx_options


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
    files = []
    for i, im in enumerate(_images(2)):  # 112 x 112
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(files[-1])
    images = ImageFiles(files, onnx.preprocessing.input_size, model=onnx.name)
    with pytest.raises(DataError, match=r"0.png: image is 112x112, but model iresnet_tiny takes aligned 64x64"):
        extract_features(onnx, images, tmp_path / "f.h5", progress=False, echo=lambda _m: None)
    assert not (tmp_path / "f.h5").exists()
    with pytest.raises(DataError, match="small.onnx: the model takes 64x64"):
        onnx(torch.zeros(1, 3, 112, 112))
    with pytest.raises(DataError, match="graph takes 64x64 images, not the 112x112"):
        OnnxEmbedder(path, input_size=(112, 112))


def test_resolve_model_and_verify_model_onnx(tiny, tmp_path, small_lfw_bin):
    """`--model path.onnx` through the one model-resolution function: the `megabench export` file gives the
    torch checkpoint's features (to float tolerance) and the same accuracy on a real insightface pack."""
    model, path = tiny
    save_checkpoint(tmp_path / "m.pt", model)
    source = resolve_model(str(path), onnx_options={"flip": "concat"})
    assert isinstance(source.model, OnnxEmbedder) and source.name == "iresnet_tiny"
    assert source.checkpoint == path and source.checkpoint_sha256 == sha256_file(path)
    run = CliRunner().invoke
    outs = {}
    for key, args in (("onnx", ["--model", str(path)]), ("torch", ["--checkpoint", str(tmp_path / "m.pt")])):
        res = run(cli, ["verify", *args, "--pairs", str(small_lfw_bin), "--allow-partial", "--cache",
                        str(tmp_path / "cache"), "--out", str(tmp_path / f"{key}.json"), "--quiet"])
        assert res.exit_code == 0, res.output
        outs[key] = json.loads((tmp_path / f"{key}.json").read_text())
    assert outs["onnx"]["metrics"]["accuracy"] == outs["torch"]["metrics"]["accuracy"]
    assert outs["onnx"]["model"]["checkpoint_sha256"] == sha256_file(path)
    stores = sorted((tmp_path / "cache").rglob("small_lfw.h5"))
    assert len(stores) == 2  # keyed by the weights' sha256: the ONNX file and the checkpoint differ
    a, b = stores
    with open_features(a) as fa, open_features(b) as fb:
        np.testing.assert_allclose(fa.read(), fb.read(), rtol=1e-4, atol=1e-4 * np.abs(fb.read()).max())
    bad = run(cli, ["verify", "--model", str(path), "--checkpoint", str(tmp_path / "m.pt"), "--pairs",
                    str(small_lfw_bin), "--allow-partial"])
    assert bad.exit_code == 1 and "drop --checkpoint" in bad.output
    bad = run(cli, ["verify", "--model", str(path), "--onnx-input", "layout=NHWC,mean=x", "--pairs",
                    str(small_lfw_bin), "--allow-partial"])
    assert bad.exit_code == 1 and "mean must be a number" in bad.output


def test_parse_onnx_options():
    assert parse_onnx_options("layout=nhwc, channels=bgr,mean=0,std=1,flip=sum") == {
        "layout": "NHWC", "channel_order": "BGR", "mean": 0.0, "std": 1.0, "flip": "sum"}
    assert parse_onnx_options(None) == {} and parse_onnx_options("") == {}
    with pytest.raises(MegabenchError, match="KEY=VALUE"):
        parse_onnx_options("size=3")


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(DataError, match="no such ONNX file"):
        OnnxEmbedder(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataError, match="onnxruntime cannot load it"):
        OnnxEmbedder(bad)
