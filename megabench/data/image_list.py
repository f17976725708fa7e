"""Training images as files: an image folder ``root/<identity>/<image>`` or a list file.

List file: one image per line, ``relative/path<TAB>label`` (insightface's ``label.txt``); the path is
relative to the list file's folder, the label a non-negative integer. Blank lines and lines starting
with ``#`` are ignored. A path that leaves that folder (``../``, or absolute and outside it) is refused:
the rule of :func:`megabench.fileio.resolve_inside`, as for pair lists.

Image folder: every sub-folder of ``root`` is one identity; identities are numbered 0..C-1 in sorted
name order, images sorted by name inside each. Files whose suffix is not an image suffix are ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megabench.errors import DataError
from megabench.fileio import resolve_inside

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
    """``rel`` as a clean POSIX path relative to ``root`` that stays inside it (else DataError).

    The rule is :func:`megabench.fileio.resolve_inside`'s (as for pair lists), checked as written
    (``..`` collapsed, symlinked images allowed); Windows separators are read as ``/`` and a Windows
    drive path is refused as absolute."""
    rel_posix = rel.replace("\\", "/")
    if len(rel) > 1 and rel[1] == ":":
        raise DataError(f"{where}: path {rel!r} is absolute (a Windows drive); list paths must be relative "
                        f"to {root}")
    base = Path(root).resolve()
    full = resolve_inside(base, rel_posix, source=where, follow_links=False)
    if full == base:
        raise DataError(f"{where}: empty image path")
    return full.relative_to(base).as_posix()


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
