"""Training sets as a torch ``Dataset``: insightface RecordIO, an image folder or a list file.

:func:`open_training_set` opens a path with a format registered in :mod:`megabench.data.formats`
(named, or detected from the path); the built-in ones, in detection order:

- a ``.rec`` file (its ``.idx`` and ``property`` beside it), or a folder holding ``train.rec``:
  ``format = "recordio"`` (insightface layout; see :mod:`megabench.data.recordio`);
- any other folder: ``root/<identity>/<image>``, ``format = "folder"``;
- any other file: a ``relative/path<TAB>label`` list, ``format = "list"``
  (see :mod:`megabench.data.image_list`).

``dataset[i]`` is ``(image, label)``: ``image`` a uint8 ``(3, H, W)`` RGB tensor decoded with Pillow,
``label`` an ``int`` in ``[0, num_classes)``. No augmentation and no normalisation here (the engine
does flips and ``(x - 127.5) / 128``). Files are opened lazily in each process, so a dataset may be
handed to DataLoader workers.

An image that does not decode (or whose size differs from the first image's) raises
:class:`~megabench.errors.DataError` naming the file and record key or image path. With
``skip_bad_images=True`` the item is ``None`` instead; :func:`collate_skipping_bad` drops those and
reports how many it dropped.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from megabench.data.image_list import ImageList, read_list_file, scan_image_folder
from megabench.data.recordio import RecordReader, read_property
from megabench.errors import DataError


def decode_rgb(buf: bytes, *, source: str) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 (H, W, 3) with Pillow; DataError naming ``source`` if it fails."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(buf)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, ValueError, SyntaxError...
        raise DataError(f"{source}: cannot decode image ({type(exc).__name__}: {exc})") from None


class TrainingSet(torch.utils.data.Dataset):
    """Base class; see the module docstring. Subclasses implement ``_load(i)`` and ``labels()``."""

    format: str = ""

    def __init__(self, source: Path, *, skip_bad_images: bool = False) -> None:
        self.source = Path(source)
        self.skip_bad_images = skip_bad_images
        self.num_classes = 0
        self.image_size: tuple[int, int] = (0, 0)

    # -- subclass interface
    def _load(self, i: int) -> tuple[bytes, int, str]:
        """``(encoded bytes, label, description for errors)`` of item ``i``."""
        raise NotImplementedError

    def labels(self) -> np.ndarray:
        """(N,) int64 class labels, without decoding any image."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 (hex) of the small files that identify the data (index/list/property)."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    # -- shared
    def _decode(self, i: int) -> tuple[np.ndarray, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        buf, label, where = self._load(i)
        arr = decode_rgb(buf, source=where)
        if self.image_size != (0, 0) and arr.shape[:2] != self.image_size:
            raise DataError(f"{where}: image is {arr.shape[0]}x{arr.shape[1]}, the data set's first image is "
                            f"{self.image_size[0]}x{self.image_size[1]}; training needs one size (re-align it)")
        return arr, label

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        try:
            arr, label = self._decode(int(i))
        except DataError:
            if self.skip_bad_images:
                return None
            raise
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), int(label)

    def _first_image_size(self) -> tuple[int, int]:
        """(h, w) of the first image (of the first decodable one when skipping bad images)."""
        for i in range(len(self)):
            try:
                arr, _ = self._decode(i)
            except DataError:
                if not self.skip_bad_images:
                    raise
                continue
            return int(arr.shape[0]), int(arr.shape[1])
        raise DataError(f"{self.source}: no image decodes")

    def _check_labels(self, labels: np.ndarray, what: str) -> None:
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DataError(f"{what}: labels span {labels.min()}..{labels.max()} but the data set declares "
                            f"{self.num_classes} classes (0..{self.num_classes - 1}); fix the labels or num_classes")

    def info(self) -> dict:
        """Summary: format, source, images, identities (distinct labels), num_classes, images per
        identity min/median/max, image_size [h, w] of the first image, fingerprint."""
        labels = self.labels()
        counts = np.bincount(labels) if labels.size else np.zeros(0, dtype=np.int64)
        counts = counts[counts > 0]
        return {
            "format": self.format,
            "source": str(self.source),
            "images": int(labels.size),
            "identities": int(counts.size),
            "num_classes": int(self.num_classes),
            "images_per_identity": {
                "min": int(counts.min()) if counts.size else 0,
                "median": float(np.median(counts)) if counts.size else 0.0,
                "max": int(counts.max()) if counts.size else 0,
            },
            "image_size": list(self.image_size),
            "fingerprint": self.fingerprint(),
        }

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.source}, images={len(self)}, classes={self.num_classes}, "
                f"size={self.image_size})")


class RecordIOTrainingSet(TrainingSet):
    """insightface ``train.rec`` + ``train.idx`` + ``property``."""

    format = "recordio"

    def __init__(self, rec_path: Path, *, skip_bad_images: bool = False) -> None:
        super().__init__(rec_path, skip_bad_images=skip_bad_images)
        self.property_path = rec_path.parent / "property"
        self.num_classes, h, w = read_property(self.property_path)
        self.reader = RecordReader(rec_path)
        head = self.reader.read_header(0) if 0 in self.reader else None
        if head is not None and head.flag >= 2:
            a, b = int(head.label[0]), int(head.label[1])
            if not 1 <= a <= b:
                raise DataError(f"{rec_path}: record 0 header (a, b) = ({a}, {b}) is not a valid image range")
            self.keys = np.arange(1, a, dtype=np.int64)
            missing = [int(k) for k in self.keys[:1].tolist() + self.keys[-1:].tolist() if k not in self.reader]
            if missing:
                raise DataError(f"{self.reader.idx_path}: record 0 says images are keys 1..{a - 1} but key "
                                f"{missing[0]} is not in the index; the .idx does not belong to the .rec")
        else:
            self.keys = np.sort(self.reader.keys)
        if self.keys.size == 0:
            raise DataError(f"{rec_path}: no image records")
        self._labels: np.ndarray | None = None
        self.image_size = self._first_image_size()
        if self.image_size != (h, w):
            raise DataError(f"{self.property_path}: says images are {h}x{w} but the first image of "
                            f"{rec_path.name} is {self.image_size[0]}x{self.image_size[1]}")

    def __len__(self) -> int:
        return int(self.keys.size)

    def _load(self, i: int) -> tuple[bytes, int, str]:
        key = int(self.keys[i])
        header, buf = self.reader.read_record(key)
        return buf, header.class_label, f"{self.reader.rec_path} record {key}"

    def labels(self) -> np.ndarray:
        if self._labels is None:
            labels = np.fromiter((self.reader.read_header(int(k)).class_label for k in self.keys),
                                 dtype=np.int64, count=self.keys.size)
            self._check_labels(labels, str(self.property_path))
            self._labels = labels
        return self._labels

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in (self.reader.idx_path, self.property_path):
            h.update(p.read_bytes())
        h.update(str(self.reader.rec_path.stat().st_size).encode())
        return h.hexdigest()


class FileTrainingSet(TrainingSet):
    """Images as files: an image folder or a list file (:class:`~megabench.data.image_list.ImageList`)."""

    def __init__(self, source: Path, listing: ImageList, fmt: str, *, skip_bad_images: bool = False) -> None:
        super().__init__(source, skip_bad_images=skip_bad_images)
        self.format = fmt
        self.listing = listing
        self.num_classes = int(listing.labels.max()) + 1
        self.image_size = self._first_image_size()

    def __len__(self) -> int:
        return len(self.listing.paths)

    def _load(self, i: int) -> tuple[bytes, int, str]:
        path = self.listing.root / self.listing.paths[i]
        try:
            buf = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read image ({exc.strerror or exc})") from None
        return buf, int(self.listing.labels[i]), str(path)

    def labels(self) -> np.ndarray:
        return self.listing.labels

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for rel, label in zip(self.listing.paths, self.listing.labels.tolist(), strict=True):
            h.update(f"{rel}\t{label}\n".encode())
        return h.hexdigest()


def _find_rec(p: Path) -> Path | None:
    if p.is_file() and p.suffix == ".rec":
        return p
    if p.is_dir() and (p / "train.rec").is_file():
        return p / "train.rec"
    return None


# -- the registered training-set formats (megabench.data.formats): detectors and openers
def is_recordio(path: Path) -> bool:
    """A ``.rec`` file, or a folder holding ``train.rec``."""
    return _find_rec(path) is not None


def is_image_folder(path: Path) -> bool:
    """Any folder (checked after RecordIO, which claims folders holding ``train.rec``)."""
    return path.is_dir()


def is_list_file(path: Path) -> bool:
    """Any file that is not part of a RecordIO set or a verification ``.bin``."""
    return path.is_file() and path.suffix not in (".rec", ".idx", ".bin")


def open_recordio(path: Path, *, skip_bad_images: bool = False) -> TrainingSet:
    """insightface ``train.rec`` (or a folder holding it) with ``train.idx`` and ``property`` beside it."""
    rec = _find_rec(path)
    if rec is None:
        raise DataError(f"{path}: not a .rec file nor a folder holding train.rec")
    return RecordIOTrainingSet(rec, skip_bad_images=skip_bad_images)


def open_image_folder(path: Path, *, skip_bad_images: bool = False) -> TrainingSet:
    """``root/<identity>/<image>``."""
    return FileTrainingSet(path, scan_image_folder(path), "folder", skip_bad_images=skip_bad_images)


def open_list_file(path: Path, *, skip_bad_images: bool = False) -> TrainingSet:
    """``relative/path<TAB>label`` lines, paths relative to the list's folder."""
    return FileTrainingSet(path, read_list_file(path), "list", skip_bad_images=skip_bad_images)


def open_training_set(path: str | os.PathLike, format: str | None = None, *,
                      skip_bad_images: bool = False) -> TrainingSet:
    """Open a training set with the registered data ``format`` (:data:`megabench.data.formats.DATA_FORMATS`)
    named, or the one detected from ``path``: built in are ``recordio`` (a ``.rec`` file or a folder
    holding ``train.rec``/``train.idx``/``property``), ``folder`` (``root/<identity>/<image>``) and
    ``list`` (``relative/path<TAB>label`` lines). Raises DataError for anything unreadable (missing
    path, bad index, missing property, labels beyond num_classes...)."""
    from megabench.data.formats import open_data

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder; pass a .rec, a folder with train.rec, "
                        "an image folder or a list file")
    if format is None and p.suffix in (".idx", ".bin"):
        raise DataError(f"{p}: a {p.suffix} file is not a training set; pass the .rec (or its folder)")
    return open_data(p, format, skip_bad_images=skip_bad_images)


class SkippingBatch(NamedTuple):
    """What :func:`collate_skipping_bad` returns: ``images`` uint8 (B, 3, H, W), ``labels`` int64 (B,),
    ``skipped`` the number of items dropped because they did not decode."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: int


def collate_skipping_bad(batch: list[tuple[torch.Tensor, int] | None]) -> SkippingBatch:
    """DataLoader ``collate_fn`` for ``skip_bad_images=True``: drops the ``None`` items and counts them.

    Unpacks as ``images, labels, skipped = batch``. A batch in which every item was bad gives
    ``images`` of shape (0,) and ``labels`` of shape (0,).
    """
    good = [item for item in batch if item is not None]
    skipped = len(batch) - len(good)
    if not good:
        return SkippingBatch(torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), skipped)
    images = torch.stack([im for im, _ in good])
    labels = torch.tensor([lab for _, lab in good], dtype=torch.int64)
    return SkippingBatch(images, labels, skipped)
