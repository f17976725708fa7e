"""`megabench extract`: model + real insightface pack -> feature store that `verify` reads."""

from __future__ import annotations

import numpy as np
import torch
from click.testing import CliRunner

from megabench.cli import cli
from megabench.data.bin_format import read_bin, write_bin
from megabench.data.feature_store import open_features
from megabench.engine.checkpoint import save_checkpoint
from megabench.models import create_model


def _reference(model, images: list[np.ndarray], flip: bool) -> np.ndarray:
    """One image at a time, written out by hand: HWC uint8 RGB -> (x - 127.5) / 128 -> CHW -> model."""
    out = []
    with torch.no_grad():
        for im in images:
            x = (torch.tensor(im, dtype=torch.float32) - 127.5) / 128.0
            x = x.permute(2, 0, 1)[None]
            if flip:
                x = x[..., torch.arange(x.shape[-1] - 1, -1, -1)]
            out.append(model(x)[0].numpy())
    return np.stack(out)


def test_extract_checkpoint_matches_per_image_reference(tmp_path, small_lfw_bin):
    torch.manual_seed(0)
    model = create_model("iresnet_tiny").eval()
    digest = save_checkpoint(tmp_path / "m.pt", model)
    res = CliRunner().invoke(cli, ["extract", "--checkpoint", str(tmp_path / "m.pt"), "--pairs", str(small_lfw_bin),
                                   "--out", str(tmp_path / "f.h5"), "--batch", "7", "--quiet"])
    assert res.exit_code == 0, res.output
    pack = read_bin(small_lfw_bin)
    images = list(pack.images())
    with open_features(tmp_path / "f.h5") as fs:
        assert fs.n == 20 and fs.has_flip
        meta = fs.meta
        np.testing.assert_allclose(fs.read(), _reference(model, images, False), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(fs.read("features_flip"), _reference(model, images, True), rtol=1e-4, atol=1e-4)
    assert meta.model == "iresnet_tiny" and meta.checkpoint_sha256 == digest
    assert meta.source_sha256 == pack.sha256 and meta.preprocessing["mean"] == 127.5

    res = CliRunner().invoke(cli, ["verify", "--pairs", str(small_lfw_bin), "--features", str(tmp_path / "f.h5"),
                                   "--allow-partial", "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output


def test_extract_wrong_model_and_wrong_size(tmp_path, small_lfw_bin):
    save_checkpoint(tmp_path / "m.pt", create_model("iresnet_tiny"))
    res = CliRunner().invoke(cli, ["extract", "--model", "sranet_tiny", "--checkpoint", str(tmp_path / "m.pt"),
                                   "--pairs", str(small_lfw_bin), "--out", str(tmp_path / "f.h5")])
    assert res.exit_code == 1 and "iresnet_tiny" in res.output and "sranet_tiny" in res.output
    small = [np.full((64, 64, 3), 100, np.uint8)] * 2
    write_bin(tmp_path / "small.bin", small, [True])
    res = CliRunner().invoke(cli, ["extract", "--model", "iresnet_tiny", "--random-weights", "--pairs",
                                   str(tmp_path / "small.bin"), "--out", str(tmp_path / "g.h5"), "--quiet"])
    assert res.exit_code == 1 and "64x64" in res.output and "align" in res.output
    assert not (tmp_path / "g.h5").exists() and not (tmp_path / "f.h5").exists()


def test_extract_needs_a_model(tmp_path, small_lfw_bin):
    res = CliRunner().invoke(cli, ["extract", "--pairs", str(small_lfw_bin), "--out", str(tmp_path / "f.h5")])
    assert res.exit_code != 0 and "--model" in res.output


def test_extract_truncated_pack(tmp_path, small_lfw_bin):
    data = small_lfw_bin.read_bytes()
    (tmp_path / "t.bin").write_bytes(data[: len(data) // 2])
    res = CliRunner().invoke(cli, ["extract", "--model", "iresnet_tiny", "--random-weights", "--pairs",
                                   str(tmp_path / "t.bin"), "--out", str(tmp_path / "f.h5")])
    assert res.exit_code == 1 and "t.bin" in res.output
