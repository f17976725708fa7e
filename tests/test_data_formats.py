"""megabench/data/formats.py: registration, detection order, opening, and errors."""

from __future__ import annotations

import pytest

from megabench.data.formats import DataFormat, detect_format, open_data, register_data_format
from megabench.errors import DataError, UnknownNameError
from megabench.registry import Registry


def _registry() -> Registry[DataFormat]:
    reg: Registry[DataFormat] = Registry("data format")
    register_data_format(DataFormat("folder", open="pathlib:Path", detect=f"{__name__}:_is_dir"), registry=reg)
    register_data_format(DataFormat("list", open="pathlib:Path", detect="megabench.data.formats:is_text_list"),
                         registry=reg)
    register_data_format(DataFormat("rec_folder", open="os:listdir", detect=f"{__name__}:_has_rec", priority=10),
                         registry=reg)
    return reg


def _is_dir(path) -> bool:
    return path.is_dir()


def _has_rec(path) -> bool:
    return (path / "train.rec").is_file()


def test_detection_prefers_the_higher_priority_layout(tmp_path) -> None:
    (tmp_path / "train.rec").write_bytes(b"")
    assert detect_format(tmp_path, registry=_registry()).name == "rec_folder"  # also a folder
    (tmp_path / "plain").mkdir()
    assert detect_format(tmp_path / "plain", registry=_registry()).name == "folder"


def test_open_data_calls_the_detected_opener_with_options(tmp_path) -> None:
    (tmp_path / "train.rec").write_bytes(b"")
    assert open_data(tmp_path, registry=_registry()) == ["train.rec"]


def test_open_data_with_a_named_format_skips_detection(tmp_path) -> None:
    (tmp_path / "train.rec").write_bytes(b"")
    assert open_data(tmp_path, "folder", registry=_registry()) == tmp_path


def test_unknown_layout_and_unknown_name_are_clear_errors(tmp_path) -> None:
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(DataError, match="not a known data layout"):
        detect_format(tmp_path / "x.bin", registry=_registry())
    with pytest.raises(DataError, match="no such file"):
        detect_format(tmp_path / "missing", registry=_registry())
    with pytest.raises(UnknownNameError, match="did you mean 'list'"):
        open_data(tmp_path, "lst", registry=_registry())


def test_duplicate_format_is_refused() -> None:
    reg = _registry()
    with pytest.raises(ValueError, match="already registered"):
        register_data_format(DataFormat("list", open="pathlib:Path"), registry=reg)
