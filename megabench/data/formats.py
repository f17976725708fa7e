"""Data formats: one registration per on-disk layout of a data set (training sets first).

A :class:`DataFormat` says how to recognise a path (``detect``) and how to open it (``open``), as
``"module:function"`` references imported on first use, so that listing formats imports nothing heavy.
Readers register here instead of growing an ``if/elif`` over paths (see CONTRIBUTING.md, "Add a data
format"):

>>> from megabench.registry import Registry
>>> formats = Registry("data format")
>>> _ = register_data_format(DataFormat("lines", open="pathlib:Path", detect="megabench.data.formats:is_text_list",
...                                     description="a text list"), registry=formats)
>>> _ = Path("train.txt").write_text("a.jpg\\t0\\n")
>>> detect_format("train.txt", registry=formats).name
'lines'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megabench.errors import DataError
from megabench.registry import Registry


@dataclass(frozen=True)
class DataFormat:
    """A registered data layout.

    ``open``: ``"module:function"``, ``open(path, **options) -> data set`` (raises
    :class:`~megabench.errors.DataError` naming the file for anything unreadable). ``detect``:
    ``"module:function"``, ``detect(path: Path) -> bool`` (cheap: looks at names and headers only), or
    None when the format is used only when named. ``priority``: detection order, higher first (a
    specific layout such as RecordIO before a generic image folder).
    """

    name: str
    open: str
    detect: str | None = None
    priority: int = 0
    description: str = ""

    def opener(self) -> Callable[..., Any]:
        from megabench.config import import_object

        return import_object(self.open)

    def matches(self, path: Path) -> bool:
        from megabench.config import import_object

        return self.detect is not None and bool(import_object(self.detect)(path))


#: every registered data format, by name.
DATA_FORMATS: Registry[DataFormat] = Registry("data format", listing="megabench data formats")


def register_data_format(fmt: DataFormat, *, registry: Registry[DataFormat] = DATA_FORMATS) -> DataFormat:
    """Register ``fmt`` (a duplicate name is an error)."""
    registry.add(fmt.name, fmt)
    return fmt


def in_detection_order(registry: Registry[DataFormat] = DATA_FORMATS) -> list[DataFormat]:
    """The registered formats as :func:`detect_format` tries them: by ``priority`` (higher first), then name."""
    return sorted((f for _, f in registry.items()), key=lambda f: (-f.priority, f.name))


def detect_format(path: str | os.PathLike, *, registry: Registry[DataFormat] = DATA_FORMATS) -> DataFormat:
    """The first format (by ``priority``, then name) whose ``detect`` accepts ``path``; DataError if none."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    for fmt in in_detection_order(registry):
        if fmt.matches(p):
            return fmt
    raise DataError(f"{p}: not a known data layout (formats: {', '.join(registry.names()) or 'none registered'}); "
                    "name the format explicitly or convert the data")


def open_data(path: str | os.PathLike, format: str | None = None, *,
              registry: Registry[DataFormat] = DATA_FORMATS, **options: Any) -> Any:
    """Open ``path`` with the named ``format``, or the detected one; ``options`` go to the opener."""
    fmt = registry.get(format) if format is not None else detect_format(path, registry=registry)
    return fmt.opener()(Path(path), **options)


def is_text_list(path: Path) -> bool:
    """A ``.txt`` / ``.lst`` file: the generic ``path<TAB>label`` list layout's detector."""
    return path.is_file() and path.suffix in (".txt", ".lst")


# -- built-in training-set formats (readers in megabench.data.training), in detection order
register_data_format(DataFormat(
    "recordio", open="megabench.data.training:open_recordio", detect="megabench.data.training:is_recordio",
    priority=20, description="insightface train.rec + train.idx + property (a .rec file or its folder)"))
register_data_format(DataFormat(
    "folder", open="megabench.data.training:open_image_folder", detect="megabench.data.training:is_image_folder",
    priority=10, description="an image folder root/<identity>/<image>"))
register_data_format(DataFormat(
    "list", open="megabench.data.training:open_list_file", detect="megabench.data.training:is_list_file",
    priority=0, description="a list file of relative/path<TAB>label lines"))
