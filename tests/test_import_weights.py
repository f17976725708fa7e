"""insightface arcface_torch backbones -> megabench checkpoints: exact keys, shapes and outputs.

The expected key list and the reference forward below are written here from the definition in
deepinsight/insightface ``recognition/arcface_torch/backbones/iresnet.py`` (IBasicBlock:
bn1 -> conv1 -> bn2 -> prelu -> conv2(stride) -> bn3, plus a 1x1 conv + BN ``downsample`` on the first
block of every stage; trunk conv1 -> bn1 -> prelu -> layer1..4 -> bn2 -> flatten -> fc -> features),
with torch.nn.functional only: no megabench module is used to compute the expected output.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from megabench.cli import cli
from megabench.engine.checkpoint import model_from_checkpoint, read_checkpoint
from megabench.engine.import_weights import convert_insightface, infer_insightface_model, read_state_dict
from megabench.engine.model_source import resolve_model
from megabench.errors import MegabenchError, UnsafePickleError
from megabench.models import create_model

R50 = (3, 4, 14, 3)
R100 = (3, 13, 30, 3)
WIDTHS = (64, 128, 256, 512)


def arcface_torch_keys(depths) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of arcface_torch's IResNet(IBasicBlock, depths) with its shape."""
    keys: dict[str, tuple[int, ...]] = {}

    def bn(prefix, c):
        for s in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{s}"] = (c,)
        keys[f"{prefix}.num_batches_tracked"] = ()

    keys["conv1.weight"] = (64, 3, 3, 3)
    bn("bn1", 64)
    keys["prelu.weight"] = (64,)
    inplanes = 64
    for stage, (planes, depth) in enumerate(zip(WIDTHS, depths, strict=True), start=1):
        for i in range(depth):
            p, cin = f"layer{stage}.{i}", inplanes if i == 0 else planes
            bn(f"{p}.bn1", cin)
            keys[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            bn(f"{p}.bn2", planes)
            keys[f"{p}.prelu.weight"] = (planes,)
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn3", planes)
            if i == 0:
                keys[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                bn(f"{p}.downsample.1", planes)
        inplanes = planes
    bn("bn2", 512)
    keys["fc.weight"] = (512, 512 * 7 * 7)
    keys["fc.bias"] = (512,)
    bn("features", 512)
    return keys


def random_state(depths, dtype=torch.float32, seed=0) -> dict[str, torch.Tensor]:
    """Random weights with sane scales (unit-ish activations through 50 blocks in eval mode)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in arcface_torch_keys(depths).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.long)
        elif key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1 and "prelu" not in key):
            state[key] = torch.rand(shape, generator=g, dtype=dtype) + 0.5  # BN scale and variance
        elif "prelu" in key:
            state[key] = torch.rand(shape, generator=g, dtype=dtype) * 0.3
        elif len(shape) == 1:
            state[key] = torch.randn(shape, generator=g, dtype=dtype) * 0.1  # BN bias / mean, fc bias
        else:
            fan_in = torch.tensor(shape[1:]).prod().item()
            state[key] = torch.randn(shape, generator=g, dtype=dtype) / fan_in ** 0.5
    return state


def arcface_torch_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, depths) -> torch.Tensor:
    """arcface_torch IResNet.forward in eval mode, from the state dict alone."""

    def bn(p, t):
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                            training=False, eps=1e-5)

    x = F.prelu(bn("bn1", F.conv2d(x, sd["conv1.weight"], padding=1)), sd["prelu.weight"])
    for stage, depth in enumerate(depths, start=1):
        for i in range(depth):
            p, stride = f"layer{stage}.{i}", 2 if i == 0 else 1
            out = F.conv2d(bn(f"{p}.bn1", x), sd[f"{p}.conv1.weight"], padding=1)
            out = F.prelu(bn(f"{p}.bn2", out), sd[f"{p}.prelu.weight"])
            out = bn(f"{p}.bn3", F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1))
            identity = bn(f"{p}.downsample.1", F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=2)) if i == 0 else x
            x = out + identity
    x = torch.flatten(bn("bn2", x), 1)
    return bn("features", F.linear(x, sd["fc.weight"], sd["fc.bias"]))


@pytest.fixture(scope="module")
def r50_state():
    return random_state(R50)


def test_converted_r50_gives_arcface_torch_output(r50_state):
    converted = convert_insightface(r50_state, "iresnet50")
    model = create_model("iresnet50").eval()
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = arcface_torch_forward(r50_state, x, R50)
        got = model(x)
    assert want.shape == (1, 512) and torch.isfinite(want).all() and want.std() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    # every tensor was carried unchanged (no transposes, no copies of the wrong tensor)
    assert converted["blocks.3.branch.1.weight"].equal(r50_state["layer2.0.conv1.weight"])
    assert converted["blocks.3.shortcut.0.weight"].equal(r50_state["layer2.0.downsample.0.weight"])
    assert converted["embedding.4.running_var"].equal(r50_state["features.running_var"])


def test_r100_key_list_converts_exactly():
    keys = arcface_torch_keys(R100)
    state = {k: torch.zeros(s, dtype=torch.long if not s else torch.float32) for k, s in keys.items()}
    assert infer_insightface_model(state) == "iresnet100"
    converted = convert_insightface(state, "iresnet100")
    with torch.device("meta"):
        ours = create_model("iresnet100").state_dict()
    assert set(converted) == set(ours) and len(converted) == len(keys)
    assert all(tuple(converted[k].shape) == tuple(ours[k].shape) for k in ours)


def test_errors_list_missing_unexpected_and_misshaped_keys(r50_state):
    state = dict(r50_state)
    del state["layer3.5.conv2.weight"]
    state["head.kernel"] = torch.zeros(512, 10)
    state["fc.weight"] = torch.zeros(512, 10)
    with pytest.raises(MegabenchError) as exc:
        convert_insightface(state, "iresnet50", source="bad.pth")
    msg = str(exc.value)
    assert "bad.pth" in msg and "missing keys: layer3.5.conv2.weight" in msg
    assert "unexpected keys: head.kernel" in msg and "fc.weight (512, 10) (expected (512, 25088))" in msg
    with pytest.raises(MegabenchError, match="not 'sranet_r50'"):
        convert_insightface(r50_state, "sranet_r50")
    with pytest.raises(MegabenchError, match=r"blocks per stage \(3, 4, 6, 3\)"):
        infer_insightface_model(random_state((3, 4, 6, 3), dtype=torch.float32))


def test_missing_batch_counters_are_allowed(r50_state):
    state = {k: v for k, v in r50_state.items() if not k.endswith("num_batches_tracked")}
    converted = convert_insightface(state, "iresnet50")
    assert converted["stem.1.num_batches_tracked"].item() == 0


def test_read_state_dict_strips_ddp_prefix_and_refuses_pickles(tmp_path):
    torch.save({"module.conv1.weight": torch.ones(2)}, tmp_path / "ddp.pth")
    assert list(read_state_dict(tmp_path / "ddp.pth")) == ["conv1.weight"]
    torch.save({"state_dict": {"conv1.weight": torch.ones(2)}}, tmp_path / "wrapped.pth")
    assert list(read_state_dict(tmp_path / "wrapped.pth")) == ["conv1.weight"]
    torch.save({"model": Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafePickleError, match="refused"):
        read_state_dict(tmp_path / "evil.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(MegabenchError, match="not a state dict"):
        read_state_dict(tmp_path / "list.pth")


class Exploit:
    """Any class: weights_only loading must refuse to construct it."""


def test_cli_writes_a_checkpoint_with_insightface_preprocessing(tmp_path, r50_state):
    state = r50_state
    src = tmp_path / "backbone.pth"
    torch.save(state, src)
    before = src.read_bytes()
    out = tmp_path / "r50.pt"
    res = CliRunner().invoke(cli, ["import-weights", "--format", "insightface", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "model iresnet50" in res.output and src.read_bytes() == before
    payload = read_checkpoint(out)
    assert payload["model"] == "iresnet50"
    assert payload["preprocessing"]["std"] == 127.5 and payload["preprocessing"]["mean"] == 127.5
    assert payload["preprocessing"]["flip"] == "sum"
    assert payload["extra"]["imported_from"]["format"] == "insightface"
    model, _ = model_from_checkpoint(out)
    assert model.preprocessing.std == 127.5 and model.preprocessing.flip == "sum"  # restored, not the zoo default
    source = resolve_model(None, out)
    assert source.preprocessing["std"] == 127.5 and source.checkpoint_sha256 == payload["weights_sha256"]
    x = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = arcface_torch_forward(state, x, R50)
        torch.testing.assert_close(model.eval()(x), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    bad = CliRunner().invoke(cli, ["import-weights", str(src), "--model", "iresnet100",
                                   "--out", str(tmp_path / "x.pt")])
    assert bad.exit_code == 1 and "missing keys" in bad.output and not (tmp_path / "x.pt").exists()
    same = CliRunner().invoke(cli, ["import-weights", str(src), "--out", str(src)])
    assert same.exit_code == 1 and "never overwritten" in same.output and src.read_bytes() == before
