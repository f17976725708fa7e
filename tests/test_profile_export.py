"""Profiler keys and FLOP count, the paper-table comparison, ONNX round trip, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from megabench.cli import cli
from megabench.engine.checkpoint import load_checkpoint, model_from_checkpoint, read_checkpoint, save_checkpoint
from megabench.errors import DataError, MegabenchError, UnsafePickleError
from megabench.models import create_model
from megabench.profiling import compare_with_paper, count_flops, format_comparison, profile_model
from megabench.reporting.paper_tables import paper_rows
from megabench.results import read_result, write_result


def test_profile_tiny_returns_the_keys(tmp_path) -> None:
    r = profile_model("iresnet_tiny", batch=2, warmup=0, repeats=1, num_classes=10)
    for key in ("params", "size_mb", "flops", "latency_ms", "train_peak_mem_mb", "device", "model"):
        assert key in r
    assert r["kind"] == "profile" and r["device"] == "cpu" and r["model"]["name"] == "iresnet_tiny"
    assert r["size_mb"] == pytest.approx(r["params"] * 4 / 1e6)
    lat = r["latency_ms"]
    assert lat["batch"] == 2 and lat["batch1"] > 0 and lat["batchN"] > 0
    assert r["train_peak_mem_mb"] > 0 and "live tensor storages" in r["train_memory"]["method"]
    write_result(tmp_path / "p.json", r)
    assert read_result(tmp_path / "p.json")["params"] == r["params"]


def test_flops_equal_the_layer_formula() -> None:
    """FLOPs (2 per multiply-add) of convolutions and the Linear, written out for iresnet_tiny."""
    model = create_model("iresnet_tiny", input_size=(32, 32))
    cfg = model.config
    h = 32
    flops = 2 * 3 * cfg["stem_width"] * 9 * h * h
    c_in = cfg["stem_width"]
    for c in cfg["widths"]:  # one block per stage, stride 2
        flops += 2 * c_in * c * 9 * h * h  # conv3x3 stride 1 at the input size
        h = -(-h // 2)
        flops += 2 * c * c * 9 * h * h + 2 * c_in * c * h * h  # conv3x3 stride 2, conv1x1 shortcut
        c_in = c
    flops += 2 * c_in * h * h * cfg["embedding_size"]
    assert count_flops(model) == flops


def test_compare_with_paper_ratios() -> None:
    def fake(ms: float, size: float, mem: float) -> dict:
        return {"latency_ms": {"batchN": ms}, "size_mb": size, "train_peak_mem_mb": mem}

    rows = paper_rows(1)
    results = {rows[0]["model"]: fake(10.0, 174.36, 1000.0), rows[4]["model"]: fake(15.0, 189.55, 2500.0)}
    table = compare_with_paper(1, results)
    assert [r["model"] for r in table] == [r["model"] for r in rows]
    light = table[4]
    assert light["time_ratio"] == pytest.approx(1.5) and light["mem_ratio"] == pytest.approx(2.5)
    assert light["paper_time_ratio"] == pytest.approx(19.71 / 14.31)
    assert light["paper_mem_ratio"] == pytest.approx(7683 / 3583)
    assert light["size_delta_mb"] == pytest.approx(15.19) and light["paper_size_delta_mb"] == pytest.approx(15.16)
    assert table[1]["time_ratio"] is None  # not profiled: shown as "-"
    text = format_comparison(table)
    line = next(ln for ln in text.splitlines() if "Light SSA" in ln)
    assert line.split()[-4:] == ["2500", "7683", "2.50", "2.14"] and " 1.50 " in line


def test_profile_command(tmp_path) -> None:
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["profile", "--model", "iresnet_tiny", "--batch", "2", "--repeats", "1",
                                   "--warmup", "0", "--no-memory", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["params"] > 0 and data["train_peak_mem_mb"] is None
    res = CliRunner().invoke(cli, ["profile"])
    assert res.exit_code == 1 and "exactly one of" in res.output


@pytest.mark.parametrize(("name", "tol"), [("iresnet_tiny", 1e-5), ("sranet_tiny", 1e-3)])
def test_onnx_round_trip(tmp_path, name: str, tol: float) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from megabench.export import check_onnx, export_onnx

    torch.manual_seed(0)
    model = create_model(name, input_size=(64, 64))
    path = export_onnx(model, tmp_path / "m.onnx", weights_sha256="abc")
    x = torch.randn(3, 3, 64, 64)  # a batch size other than the export's
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    # sranet: SCA's unscaled softmax is nearly one-hot, so fp32 rounding differences grow; still 1e-3 relative
    assert np.abs(got - want).max() <= tol * np.abs(want).max()
    assert check_onnx(model, path) <= tol
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["megabench.model"] == name and props["megabench.weights_sha256"] == "abc"
    assert json.loads(props["megabench.preprocessing"])["mean"] == 127.5


def test_export_command(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    ckpt = tmp_path / "c.pt"
    save_checkpoint(ckpt, create_model("iresnet_tiny", input_size=(32, 32)))
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    assert "onnxruntime vs torch" in res.output and (tmp_path / "m.onnx").exists()
    res = CliRunner().invoke(cli, ["export", "--model", "sranet_tiny", "--checkpoint", str(ckpt),
                                   "--out", str(tmp_path / "n.onnx")])
    assert res.exit_code == 1 and "'iresnet_tiny'" in res.output and "'sranet_tiny'" in res.output


def test_checkpoint_round_trip_and_errors(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("iresnet_tiny", embedding_size=32)
    path = tmp_path / "ck.pt"
    digest = save_checkpoint(path, model, extra={"step": 7})
    payload = read_checkpoint(path)
    assert payload["model"] == "iresnet_tiny" and payload["weights_sha256"] == digest
    assert payload["config"]["embedding_size"] == 32 and payload["extra"] == {"step": 7}
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temp file left

    fresh = create_model("iresnet_tiny", embedding_size=32)
    load_checkpoint(path, fresh)
    for (k, v), (_, w) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(v, w), k
    rebuilt, _ = model_from_checkpoint(path)
    assert rebuilt.config == model.config

    with pytest.raises(MegabenchError, match="'iresnet_tiny', not 'sranet_tiny'"):
        load_checkpoint(path, create_model("sranet_tiny"))
    with pytest.raises(MegabenchError, match="does not fit"):
        load_checkpoint(path, create_model("iresnet_tiny"))  # same name, other embedding size

    bad = dict(payload)
    bad["state_dict"] = {**payload["state_dict"]}
    key = next(iter(bad["state_dict"]))
    bad["state_dict"][key] = bad["state_dict"][key] + 1
    torch.save(bad, tmp_path / "corrupt.pt")
    with pytest.raises(DataError, match="corrupt"):
        read_checkpoint(tmp_path / "corrupt.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(DataError, match="not a megabench checkpoint"):
        read_checkpoint(tmp_path / "plain.pt")
    torch.save({"format": "megabench.checkpoint", "obj": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError, match="refused"):
        read_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(DataError, match="no such"):
        read_checkpoint(tmp_path / "missing.pt")


class _Evil:
    """Any non-allow-listed class: ``weights_only=True`` must refuse to build it."""


def test_live_tensor_bytes_closed_form() -> None:
    from megabench.profiling import _live_bytes_mode

    with _live_bytes_mode() as mode:
        a = torch.zeros(1000)  # 4000 B
        b = torch.ones(2000)  # 8000 B -> 12000 live
        v = b[:10]  # a view: no new storage
        b.add_(1)  # in place: no new storage
        del a
        c = torch.empty(500).fill_(2.0)  # 2000 B -> 10000 live
        d = (c * 2).sum()  # while sum runs: b + c + (c * 2) + 4 B = 12004; then c * 2 is freed
    assert mode.peak == 12004
    assert mode.bytes == 8000 + 2000 + 4  # b, c, d alive
    assert v.shape == (10,) and float(d) == 2000.0


def test_rss_memory_method_runs() -> None:
    from megabench.profiling import train_peak_mem_mb

    mb, method = train_peak_mem_mb("iresnet_tiny", 2, num_classes=10, overrides={"input_size": (32, 32)},
                                   cpu_method="rss")
    assert mb > 0 and "RSS" in method
    with pytest.raises(ValueError, match="cpu_method"):
        train_peak_mem_mb("iresnet_tiny", 2, cpu_method="vms")


def test_random_bytes_are_never_a_checkpoint_and_never_a_traceback(tmp_path):
    """Seeded random files (7% of them raised a bare IndexError / KeyError from torch's weights-only
    unpickler before): each is one MegabenchError naming the file, whatever the bytes."""
    import warnings

    rng = np.random.default_rng(0)
    path = tmp_path / "junk.pt"
    seen = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about the odd pickle protocols random bytes declare
        for _ in range(400):
            path.write_bytes(rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes())
            with pytest.raises(MegabenchError, match="junk.pt") as info:
                read_checkpoint(path)
            seen.add(type(info.value).__name__)
    assert "DataError" in seen


@pytest.mark.cuda
def test_profile_on_cuda_measures_the_gpu() -> None:
    """`megabench profile --device cuda`: latencies and the training step's peak CUDA memory (the paper's
    GPU-memory column), larger at a larger batch."""
    from megabench.profiling import METHOD_CUDA

    small = profile_model("iresnet_tiny", batch=4, device="cuda", warmup=1, repeats=2, num_classes=100)
    big = profile_model("iresnet_tiny", batch=64, device="cuda", warmup=1, repeats=2, num_classes=100)
    assert small["device"] == "cuda" and small["train_memory"]["method"] == METHOD_CUDA
    assert small["latency_ms"]["batch1"] > 0 and small["latency_ms"]["batchN"] > 0
    assert 0 < small["train_peak_mem_mb"] < big["train_peak_mem_mb"]
    assert small["params"] == profile_model("iresnet_tiny", batch=2, warmup=0, repeats=1, memory=False)["params"]
