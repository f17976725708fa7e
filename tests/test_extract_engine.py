"""The extraction engine: files -> DataLoader -> model -> chunks -> one store; resume, workers, ranks, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_gloo_ranks
from PIL import Image

from megabench.data.feature_store import open_features
from megabench.data.image_source import ImageFiles, check_files_exist
from megabench.engine.extract import extract_features, parts_dir
from megabench.errors import DataError, MegabenchError
from megabench.models import create_model


def _write_tree(root: Path, n: int, size: int = 112, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        p = root / f"id{i % 3}" / f"img_{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        files.append(p)
    return files


def _model():
    torch.manual_seed(0)
    return create_model("iresnet_tiny").eval()


def _read(path: Path) -> dict:
    with open_features(path) as fs:
        return {"features": fs.read(), "flip": fs.read("features_flip") if fs.has_flip else None,
                "paths": fs.paths(), "ids": fs.ids(), "meta": fs.meta}


def _reference(model, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """One image at a time, by hand: Pillow decode -> (x - 127.5) / 128 -> CHW -> model (and the mirror)."""
    out, out_flip = [], []
    with torch.no_grad():
        for f in files:
            im = np.asarray(Image.open(f).convert("RGB"))
            x = ((torch.tensor(im, dtype=torch.float32) - 127.5) / 128.0).permute(2, 0, 1)[None]
            out.append(model(x)[0].numpy())
            out_flip.append(model(x[..., torch.arange(x.shape[-1] - 1, -1, -1)])[0].numpy())
    return np.stack(out), np.stack(out_flip)


def test_files_to_store_match_reference_and_workers_change_nothing(tmp_path):
    files = _write_tree(tmp_path / "img", 7)
    model = _model()
    names = [f.relative_to(tmp_path / "img").as_posix() for f in files]
    ids = np.arange(7) % 3
    a = extract_features(model, ImageFiles(files, (112, 112)), tmp_path / "a.h5", paths=names, ids=ids,
                         batch_size=2, chunk_rows=4, progress=False, echo=lambda m: None)
    b = extract_features(model, ImageFiles(files, (112, 112)), tmp_path / "b.h5", paths=names, ids=ids,
                         batch_size=2, chunk_rows=4, workers=2, progress=False, echo=lambda m: None)
    ra, rb = _read(a), _read(b)
    ref, ref_flip = _reference(model, files)
    np.testing.assert_allclose(ra["features"], ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ra["flip"], ref_flip, rtol=1e-4, atol=1e-4)
    assert ra["paths"] == names and ra["ids"].tolist() == ids.tolist()
    assert np.array_equal(ra["features"], rb["features"]) and np.array_equal(ra["flip"], rb["flip"])
    assert not parts_dir(a).exists()


def test_killed_extraction_resumes_to_the_identical_store(tmp_path):
    files = _write_tree(tmp_path / "img", 11)
    model = _model()
    kw = dict(batch_size=2, chunk_rows=4, progress=False, flip=False)
    full = extract_features(model, ImageFiles(files, (112, 112)), tmp_path / "full.h5", echo=lambda m: None, **kw)

    saved: list[int] = []

    def kill_after_two(chunk: int) -> None:
        saved.append(chunk)
        if len(saved) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C / SIGINT would, after chunk 1 is on disk

    out = tmp_path / "r.h5"
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, ImageFiles(files, (112, 112)), out, on_chunk=kill_after_two, echo=lambda m: None, **kw)
    assert not out.exists() and sorted(p.name for p in parts_dir(out).glob("chunk_*")) == ["chunk_000000.npz",
                                                                                          "chunk_000001.npz"]
    messages: list[str] = []
    redone: list[int] = []
    extract_features(model, ImageFiles(files, (112, 112)), out, on_chunk=redone.append, echo=messages.append, **kw)
    assert redone == [2]  # the saved chunks were not embedded again
    assert any("resuming" in m and "2 of 3" in m for m in messages)
    assert np.array_equal(_read(out)["features"], _read(full)["features"])
    assert not parts_dir(out).exists()


def test_stale_chunks_of_another_job_are_dropped(tmp_path):
    files = _write_tree(tmp_path / "img", 6)
    out = tmp_path / "s.h5"
    kw = dict(batch_size=2, chunk_rows=4, progress=False, flip=False)

    def stop(chunk: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(_model(), ImageFiles(files, (112, 112)), out, on_chunk=stop, echo=lambda m: None, **kw)
    torch.manual_seed(1)
    other = create_model("sranet_tiny").eval()
    messages: list[str] = []
    extract_features(other, ImageFiles(files, (112, 112)), out, echo=messages.append, **kw)
    assert any("another extraction" in m for m in messages)
    fresh = extract_features(other, ImageFiles(files, (112, 112)), tmp_path / "fresh.h5", echo=lambda m: None, **kw)
    assert np.array_equal(_read(out)["features"], _read(fresh)["features"])  # not the stale chunk's rows


def test_missing_and_wrong_size_images(tmp_path):
    files = _write_tree(tmp_path / "img", 10)
    gone = [tmp_path / "img" / "nobody" / f"x{i}.png" for i in range(7)]
    with pytest.raises(DataError) as exc:
        check_files_exist(files + gone, source="probe list")
    msg = str(exc.value)
    assert "7 of 17" in msg and "nobody/x0.png" in msg and "\n" not in msg

    _write_tree(tmp_path / "small", 1, size=64)
    bad = sorted((tmp_path / "small").rglob("*.png"))[0]
    files[7] = bad  # in the second chunk: the first chunk is saved, then the error names the file
    out = tmp_path / "w.h5"
    with pytest.raises(DataError) as exc:
        extract_features(_model(), ImageFiles(files, (112, 112), model="iresnet_tiny"), out, batch_size=2,
                         chunk_rows=4, progress=False, flip=False, echo=lambda m: None)
    msg = str(exc.value)
    assert str(bad) in msg and "64x64" in msg and "112x112" in msg and "kept" in msg
    assert not out.exists() and (parts_dir(out) / "chunk_000000.npz").is_file()


def test_amp_needs_cuda(tmp_path):
    files = _write_tree(tmp_path / "img", 2)
    with pytest.raises(MegabenchError, match="CUDA"):
        extract_features(_model(), ImageFiles(files, (112, 112)), tmp_path / "a.h5", amp="bf16", progress=False)


# ---------------------------------------------------------------------------------------- 2 gloo ranks
def _rank_worker(info, folder: Path) -> None:
    files = sorted((folder / "img").rglob("*.png"))
    extract_features(_model(), ImageFiles(files, (112, 112)), folder / "ranks.h5", batch_size=2, chunk_rows=4,
                     progress=False, dist_info=info, echo=lambda m: None)


def test_two_gloo_ranks_give_the_identical_store(tmp_path):
    files = sorted(_write_tree(tmp_path / "img", 11))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        one = extract_features(_model(), ImageFiles(files, (112, 112)), tmp_path / "one.h5", batch_size=2,
                               chunk_rows=4, progress=False, echo=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    run_gloo_ranks(_rank_worker, tmp_path)
    a, b = _read(one), _read(tmp_path / "ranks.h5")
    assert np.array_equal(a["features"], b["features"]) and np.array_equal(a["flip"], b["flip"])
    assert a["paths"] == b["paths"]
    assert not parts_dir(tmp_path / "ranks.h5").exists()


# ------------------------------------------------------------------- CUDA: `pytest -m cuda` on a GPU machine
@pytest.mark.cuda
@pytest.mark.parametrize(("amp", "min_cos"), [("none", 0.9999), ("bf16", 0.99)])
def test_cuda_extraction_matches_the_cpu_store(tmp_path, amp, min_cos):
    """The same images, model and batches on the GPU (float32, or bf16 autocast): every row and its flip
    point the same way as on the CPU, and the stores name the same paths."""
    files = _write_tree(tmp_path / "img", 6)
    model = _model()
    src = ImageFiles(files, (112, 112))
    cpu = _read(extract_features(model, src, tmp_path / "cpu.h5", batch_size=4, progress=False,
                                 echo=lambda m: None))
    gpu = _read(extract_features(_model().to("cuda"), src, tmp_path / "gpu.h5", batch_size=4, device="cuda",
                                 amp=amp, progress=False, echo=lambda m: None))
    assert gpu["paths"] == cpu["paths"]
    for key in ("features", "flip"):
        a, b = cpu[key].astype(np.float64), gpu[key].astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() > min_cos, (key, amp, cos)
