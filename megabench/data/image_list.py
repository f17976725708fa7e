"""Training images as files: an image folder ``root/<identity>/<image>`` or a list file.

List file: one image per line, ``relative/path<TAB>label`` (insightface's ``label.txt``); the path is
relative to the list file's folder, the label a non-negative integer. Blank lines and lines starting
with ``#`` are ignored. A path that is absolute or leaves that folder (``../``) is refused.

Image folder: every sub-folder of ``root`` is one identity; identities are numbered 0..C-1 in sorted
name order, images sorted by name inside each. Files whose suffix is not an image suffix are ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from megabench.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageList:
    """``paths[i]`` (relative to ``root``, POSIX form) has class ``labels[i]``; ``identities`` names the
    classes of a folder (empty for a list file, whose labels are numbers already)."""

    root: Path
    paths: list[str]
    labels: np.ndarray  # (N,) int64
    identities: list[str]


def _inside(root: Path, rel: str, where: str) -> str:
    """``rel`` as a clean POSIX relative path that stays inside ``root`` (else DataError)."""
    rel_posix = rel.replace("\\", "/")
    pure = PurePosixPath(rel_posix)
    if pure.is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        raise DataError(f"{where}: path {rel!r} is absolute; list paths must be relative to {root}")
    parts: list[str] = []
    for part in pure.parts:
        if part == "..":
            if not parts:
                raise DataError(f"{where}: path {rel!r} leaves the list's folder {root}; refused")
            parts.pop()
        elif part != ".":
            parts.append(part)
    if not parts:
        raise DataError(f"{where}: empty image path")
    return "/".join(parts)


def _parse_line(line: str) -> tuple[str, str]:
    if "\t" in line:
        path, _, label = line.rpartition("\t")
    else:
        path, _, label = line.rstrip().rpartition(" ")
    return path.strip(), label.strip()


def read_list_file(path: str | os.PathLike) -> ImageList:
    """Parse a ``relative/path<TAB>label`` list file (see module docstring)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{p}: no such list file") from None
    except UnicodeDecodeError:
        raise DataError(f"{p}: not a text list file (expected 'relative/path<TAB>label' lines)") from None
    root = p.parent
    paths: list[str] = []
    labels: list[int] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rel, label = _parse_line(line)
        where = f"{p}:{n}"
        if not rel or not label.isdigit():
            raise DataError(f"{where}: expected 'relative/path<TAB>label' with a non-negative integer label, "
                            f"got {line[:80]!r}")
        paths.append(_inside(root, rel, where))
        labels.append(int(label))
    if not paths:
        raise DataError(f"{p}: the list names no images")
    return ImageList(root=root, paths=paths, labels=np.asarray(labels, dtype=np.int64), identities=[])


def scan_image_folder(root: str | os.PathLike) -> ImageList:
    """List ``root/<identity>/<image>`` (see module docstring)."""
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"{r}: not a folder")
    identities = sorted(d.name for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths: list[str] = []
    labels: list[int] = []
    used: list[str] = []
    for ident in identities:
        files = sorted(f.name for f in (r / ident).iterdir()
                       if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        if not files:
            continue
        label = len(used)
        used.append(ident)
        paths += [f"{ident}/{f}" for f in files]
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"{r}: no images found as {r}/<identity>/<image> "
                        f"(suffixes {', '.join(sorted(IMAGE_SUFFIXES))}); "
                        "pass a .rec, a list file or an image folder")
    return ImageList(root=r, paths=paths, labels=np.asarray(labels, dtype=np.int64), identities=used)
