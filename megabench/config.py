"""Configuration is data: TOML files read into frozen dataclasses.

Rules (detectron2 / lm-eval style):
- ``base = "other.toml"`` (relative to the file) inherits; tables merge key by key, the child wins.
- Unknown keys are an error naming the file and the key; missing required keys likewise.
- Each file has a ``kind`` (``verification``, ``megaface``, ``recipe``...) that selects its dataclass
  through :data:`SPEC_KINDS`; ``megabench validate`` checks any such file.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from megabench.errors import ConfigError
from megabench.fileio import sha256_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]

#: kind -> "module:Class". Import is lazy so that reading a spec does not import torch.
SPEC_KINDS: dict[str, str] = {
    "verification": "megabench.evaluation.verification:VerificationSpec",
    "megaface": "megabench.evaluation.megaface:MegafaceSpec",
    "recipe": "megabench.engine.recipe:Recipe",
}

#: where named specs live: kind-independent folders searched in order.
SPEC_DIRS: dict[str, str] = {"protocols": "protocols", "baselines": "baselines"}


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_toml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a TOML file and resolve its ``base`` chain. The result has no ``base`` key."""
    p = Path(path).resolve()
    if p in _seen:
        raise ConfigError(f"{p}: `base` chain loops back to itself ({' -> '.join(map(str, _seen))})")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such spec file; check the path or `megabench ls protocols`") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc}); fix the syntax at the position given") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}); TOML files must be saved as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the spec file ({exc.strerror})") from None
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(load_toml(p.parent / base, (*_seen, p)), data)


def spec_sha256(path: str | os.PathLike) -> str:
    """sha256 of the resolved spec (base chain merged), so an edited base changes the hash."""
    import json

    resolved = load_toml(path)
    return sha256_bytes(json.dumps(resolved, sort_keys=True).encode())


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value, where=where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(tp, type):
        if tp is int and isinstance(value, bool):
            raise ConfigError(f"{where}: expected int, got {value!r}")
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown or missing keys raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}; allowed: {sorted(fields)}"
        )
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{where}.{name}" if where else name)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where or cls.__name__}: required key {name!r} is missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def resolve_spec_path(name_or_path: str | os.PathLike, folder: str = "protocols") -> Path:
    """A path to an existing file, or a name looked up as ``<repo>/<folder>/<name>.toml``."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    candidate = REPO_ROOT / folder / f"{name_or_path}.toml"
    if candidate.exists():
        return candidate
    known = sorted(q.stem for q in (REPO_ROOT / folder).glob("*.toml"))
    raise ConfigError(f"no spec {str(name_or_path)!r} (not a file, not in {folder}/: known {known})")


def spec_class(kind: str) -> type:
    try:
        target = SPEC_KINDS[kind]
    except KeyError:
        raise ConfigError(f"unknown spec kind {kind!r}; known kinds: {sorted(SPEC_KINDS)}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_spec(name_or_path: str | os.PathLike, folder: str = "protocols", kind: str | None = None) -> Any:
    """Load a spec/recipe file (by path or name) into its dataclass, checking every key.

    The returned object has ``source`` (path) and ``sha256`` attributes when its dataclass declares them.
    """
    path = resolve_spec_path(name_or_path, folder)
    data = load_toml(path)
    file_kind = data.pop("kind", None)
    if file_kind is None:
        raise ConfigError(f"{path}: missing `kind` (one of {sorted(SPEC_KINDS)})")
    if kind is not None and file_kind != kind:
        raise ConfigError(f"{path}: is a {file_kind!r} spec, expected {kind!r}")
    try:
        cls = spec_class(file_kind)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    names = {f.name for f in dataclasses.fields(cls)}
    extra = {}
    if "source" in names:
        extra["source"] = str(path)
    if "sha256" in names:
        extra["sha256"] = spec_sha256(path)
    return from_dict(cls, {**data, **extra}, where=str(path))


def list_specs(folder: str = "protocols") -> list[Path]:
    return sorted((REPO_ROOT / folder).glob("*.toml"))
