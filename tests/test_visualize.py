"""Fig. 6 feature maps: the hooked maps equal a forward computed by hand; the command's figure and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from megabench.cli import cli
from megabench.data.bin_format import read_bin
from megabench.engine.checkpoint import save_checkpoint
from megabench.errors import MegabenchError
from megabench.models import create_model
from megabench.reporting.feature_maps import column_order, feature_maps, feature_taps


@pytest.fixture(scope="module")
def face():
    from pathlib import Path

    return read_bin(Path(__file__).parent / "fixtures" / "insightface" / "small_lfw.bin").image(0)


def _by_hand(model, face):
    """Stem, then block by block; the attention outputs of each stage's last block taken from its
    branch; every map averaged over channels."""
    prep = model.preprocessing
    x = (torch.from_numpy(face.copy()).permute(2, 0, 1)[None].float() - prep.mean) / prep.std
    want = {}
    with torch.no_grad():
        x = model.stem(x)
        want["stem"] = x.mean(1)[0]
        k = 0
        for stage, depth in enumerate(model.config["depths"], start=1):
            for i in range(depth):
                block = model.blocks[k]
                if i == depth - 1 and not isinstance(block.attn, torch.nn.Identity):
                    b = block.branch(x)
                    for m in block.attn:
                        b = m(b)
                        kind = "SCA" if "Channel" in type(m).__name__ else "SSA"
                        want[f"stage {stage} {kind} (light)"] = b.mean(1)[0]
                x = block(x)
                k += 1
            want[f"stage {stage}"] = x.mean(1)[0]
    return want


@pytest.mark.parametrize("name", ["iresnet_tiny", "sranet_tiny"])
def test_maps_equal_a_forward_by_hand(face, name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    got = feature_maps(model, face)
    want = _by_hand(model, face)
    assert list(got) == [n for n, _ in feature_taps(model)]
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value.numpy(), rtol=1e-4, atol=1e-4 * float(value.abs().max()))
    assert got["stem"].shape == (112, 112) and got["stage 4"].shape == (7, 7)
    if name == "sranet_tiny":
        assert list(got)[1:4] == ["stage 1 SCA (light)", "stage 1 SSA (light)", "stage 1"]


def test_column_order_interleaves_attention_columns():
    base = ["stem", "stage 1", "stage 2"]
    sra = ["stem", "stage 1 SCA (light)", "stage 1 SSA (light)", "stage 1", "stage 2 SCA (light)",
           "stage 2 SSA (light)", "stage 2"]
    assert column_order([base, sra]) == sra


def test_visualize_command(tmp_path, face):
    img = tmp_path / "face.png"
    Image.fromarray(face).save(img)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "base.pt", create_model("iresnet_tiny"))
    save_checkpoint(tmp_path / "sra.pt", create_model("sranet_tiny"))
    out = tmp_path / "fig6.png"
    run = CliRunner().invoke
    res = run(cli, ["visualize", "--checkpoint", str(tmp_path / "base.pt"), "--checkpoint", str(tmp_path / "sra.pt"),
                    "--image", str(img), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 row(s): iresnet_tiny, sranet_tiny" in res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as fig:
        assert fig.size[0] > 2 * fig.size[1]  # one wide row per model
    Image.fromarray(face[:100, :100].copy()).save(tmp_path / "small.png")
    res = run(cli, ["visualize", "--model", "iresnet_tiny", "--image", str(tmp_path / "small.png"),
                    "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 1 and "is 100x100, but the model takes aligned 112x112" in res.output
    res = run(cli, ["visualize", "--image", str(img), "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 1 and "at least one --checkpoint" in res.output
    res = run(cli, ["visualize", "--model", "iresnet_tiny", "--image", str(tmp_path / "nope.jpg"),
                    "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 1 and "no such image" in res.output
    assert not (tmp_path / "x.png").exists()


def test_models_without_stages_are_refused():
    with pytest.raises(MegabenchError, match="ONNX models cannot be hooked"):
        feature_taps(torch.nn.Linear(2, 2))
