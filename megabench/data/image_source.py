"""Images to embed, as a map-style dataset that DataLoader workers can decode in parallel.

Every source gives ``len(source)`` images; ``source[i]`` is ``(image, error)``: ``image`` an RGB uint8
``(H, W, 3)`` array of the expected ``size`` (zeros when something is wrong) and ``error`` ``""`` or a
one-line message naming the file and the problem. Errors travel as values (not exceptions) so that a
worker process never turns a bad file into a multi-line traceback; the extraction loop raises the
first one as :class:`~megabench.errors.DataError` after saving what it finished.

- :class:`ImageFiles`: files named by a list (``root / path``), decoded with Pillow;
- :class:`PackImages`: the images of an insightface ``.bin`` pack (:mod:`megabench.data.bin_format`).

MegaFace test pack layout (insightface ``gen_megaface.py``): FaceScrub probe ``path`` entries of
``facescrub_features_list.json`` (``<Name>/<Name>_<k>.png``) are relative to ``facescrub_images/``;
distractor entries of ``megaface_features_list.json_<size>_<set>`` (``<a>/<b>@N00/<file>.jpg``)
are relative to ``megaface_images/``. :func:`list_files` joins them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from megabench.errors import DataError


def _blank(size: tuple[int, int]) -> np.ndarray:
    return np.zeros((size[0], size[1], 3), np.uint8)


def size_error(where: str, shape: tuple[int, ...], size: tuple[int, int], model: str) -> str:
    """The message for an image of the wrong size (``shape`` is numpy's (H, W, C))."""
    return (f"{where}: image is {shape[1]}x{shape[0]}, but model {model} takes aligned {size[1]}x{size[0]} RGB "
            "crops; align and crop the faces first (megabench does not detect or align faces)")


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file with Pillow into RGB uint8 (H, W, 3); :class:`DataError` if it cannot."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc}); not a valid JPEG/PNG file") from None


def list_files(root: str | os.PathLike, paths: Sequence[str], *, source: str) -> list[Path]:
    """``root / path`` for every list entry; an absolute entry or one that leaves ``root`` is refused."""
    base = Path(root)
    out = []
    for p in paths:
        pure = PurePosixPath(p.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts:
            raise DataError(f"{source}: entry {p!r} is absolute or leaves the image root; list entries are "
                            f"paths relative to the root ({base})")
        out.append(base / pure)
    return out


def check_files_exist(files: Sequence[Path], *, source: str, hint: str = "") -> None:
    """Raise :class:`DataError` with the count and the first missing files when any does not exist."""
    missing = [f for f in files if not f.is_file()]
    if missing:
        first = ", ".join(str(f) for f in missing[:5])
        raise DataError(f"{source}: {len(missing)} of {len(files)} listed images do not exist (first: {first})"
                        + (f"; {hint}" if hint else ""))


class ImageFiles:
    """Image files decoded on demand; ``size`` = (H, W) the model expects, ``model`` names it in errors."""

    def __init__(self, files: Sequence[Path], size: tuple[int, int], *, model: str = "?") -> None:
        self.files = [Path(f) for f in files]
        self.size = (int(size[0]), int(size[1]))
        self.model = model

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[np.ndarray, str]:
        path = self.files[i]
        try:
            im = read_image_file(path)
        except DataError as exc:
            return _blank(self.size), str(exc)
        if im.shape[:2] != self.size:
            return _blank(self.size), size_error(str(path), im.shape, self.size, self.model)
        return im, ""


class PackImages:
    """The 2N images of a verification pack, decoded on demand (same contract as :class:`ImageFiles`)."""

    def __init__(self, pack, size: tuple[int, int], *, model: str = "?") -> None:
        self.pack = pack
        self.size = (int(size[0]), int(size[1]))
        self.model = model

    def __len__(self) -> int:
        return int(self.pack.n_images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, str]:
        try:
            im = self.pack.image(i)
        except DataError as exc:
            return _blank(self.size), str(exc)
        if im.shape[:2] != self.size:
            where = f"{self.pack.source}: image {i}"
            return _blank(self.size), size_error(where, im.shape, self.size, self.model)
        return im, ""
