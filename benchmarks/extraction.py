"""Speed of the whole extraction path against the model alone, same run.

Whole path: image files on disk -> DataLoader workers decoding with Pillow -> batches -> model ->
saved chunks -> one HDF5 feature store (:func:`megabench.engine.extract.extract_features`).
Baseline: the same model on the same images already decoded into uint8 tensors in memory, the
same batches, the same normalisation (:func:`megabench.engine.extract.embed_batch`). Prints both
images/s (median of ``--repeats``) and their ratio; asserts the store holds the baseline's features.

    python benchmarks/extraction.py [--model iresnet50] [--images 128] [--batch 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from megabench.data.feature_store import open_features
from megabench.data.image_source import ImageFiles
from megabench.engine.extract import embed_batch, extract_features
from megabench.models import create_model


def _write_images(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        smooth = np.kron(rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3)), np.ones((8, 8, 1)))
        im = np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)
        p = folder / f"{i // 100:03d}" / f"{i:06d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(p, quality=95)
        files.append(p)
    return files


def _model_alone(model, batches: list[torch.Tensor]) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    feats = [embed_batch(model, b, flip=False)[0] for b in batches]
    return time.perf_counter() - t0, np.concatenate(feats)


def _whole_path(model, files: list[Path], out: Path, batch: int, workers: int) -> float:
    t0 = time.perf_counter()
    extract_features(model, ImageFiles(files, model.preprocessing.input_size), out, batch_size=batch,
                     workers=workers, flip=False, progress=False, echo=lambda m: None)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="iresnet50")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = create_model(args.model).eval()
    size = model.preprocessing.input_size
    with tempfile.TemporaryDirectory(prefix="megabench-bench-") as tmp:
        files = _write_images(Path(tmp) / "img", args.images, size)
        decoded = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        batches = [torch.from_numpy(decoded[lo:lo + args.batch]) for lo in range(0, len(files), args.batch)]
        embed_batch(model, batches[0], flip=False)  # warm-up
        alone, path = [], []
        for r in range(args.repeats):
            t, ref = _model_alone(model, batches)
            alone.append(t)
            out = Path(tmp) / f"store_{r}.h5"
            path.append(_whole_path(model, files, out, args.batch, args.workers))
            with open_features(out) as fs:
                assert np.array_equal(fs.read(), ref), "the store differs from the model-alone features"
    n = len(files)
    ips_alone, ips_path = n / statistics.median(alone), n / statistics.median(path)
    print(f"{args.model}, {n} images {size[1]}x{size[0]}, batch {args.batch}, {args.workers} workers, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} repeat(s)")
    print(f"model alone on decoded tensors:     {ips_alone:8.2f} images/s")
    print(f"files -> decode -> model -> store:  {ips_path:8.2f} images/s")
    print(f"ratio whole path / model alone:     {ips_path / ips_alone:8.3f}  (aim >= 0.85)")


if __name__ == "__main__":
    main()
