"""Configuration is data: TOML files read into frozen dataclasses.

Rules (detectron2 / lm-eval style):
- ``base = "other.toml"`` (relative to the file) inherits; tables merge key by key, the child wins.
- Unknown keys are an error naming the file and the key; missing required keys likewise.
- Each file has a ``kind`` (``verification``, ``megaface``, ``recipe``...) that selects its dataclass
  (:func:`spec_kinds`: the registered evaluations of :mod:`megabench.evaluation.registry`, plus
  ``recipe``); ``megabench validate`` checks any such file.

Where named specs live: the shipped folders ``protocols/`` and ``baselines/`` of the source tree are
packaged as ``megabench._specs.protocols`` / ``megabench._specs.baselines`` (``pyproject.toml``) and
read with :mod:`importlib.resources`, so lookups by name work from any folder after a plain
``pip install``. A path to an existing ``.toml`` file always wins over a name.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.resources
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from megabench.errors import ConfigError, UnknownNameError
from megabench.fileio import sha256_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")

#: the source checkout's root. Not where specs live after a plain install: use :func:`spec_folder`.
REPO_ROOT = Path(__file__).resolve().parents[1]

#: spec folder name -> the package that ships it (``pyproject.toml`` maps the top-level folders there).
SPEC_FOLDERS: dict[str, str] = {
    "protocols": "megabench._specs.protocols",
    "baselines": "megabench._specs.baselines",
}

#: kinds that are not evaluations: kind -> "module:Class". Import is lazy (reading a spec imports no torch).
OTHER_SPEC_KINDS: dict[str, str] = {"recipe": "megabench.engine.recipe:Recipe"}


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


def _convert_union(args: tuple[Any, ...], value: Any, where: str) -> Any:
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


def _convert_sequence(origin: type, args: tuple[Any, ...], value: Any, where: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    item_tp = args[0] if args else Any
    items = [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _convert_table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table, got {value!r}")
    return dict(value)


def _convert_literal(args: tuple[Any, ...], value: Any, where: str) -> Any:
    if value not in args:
        raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
    return value


def _convert_scalar(tp: Any, value: Any, where: str) -> Any:
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


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` (from TOML) as type ``tp``: nested dataclasses, unions, lists/tuples, tables, literals, scalars."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value, where=where)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(args, value, where)
    if origin in (tuple, list):
        return _convert_sequence(origin, args, value, where)
    if origin is dict:
        return _convert_table(value, where)
    if origin is typing.Literal:
        return _convert_literal(args, value, where)
    return _convert_scalar(tp, value, where)


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


def spec_folder(folder: str = "protocols") -> Path:
    """The folder of the shipped spec files named ``folder`` (``protocols`` or ``baselines``).

    Read through :mod:`importlib.resources`: the source tree's folder in an editable install, the
    copy inside the package after a plain ``pip install``; the source tree's folder when megabench runs
    from a checkout that was never installed.
    """
    try:
        package = SPEC_FOLDERS[folder]
    except KeyError:
        raise UnknownNameError(f"unknown spec folder {folder!r}; known: {sorted(SPEC_FOLDERS)}") from None
    try:
        return Path(str(importlib.resources.files(package)))
    except ModuleNotFoundError:  # a source tree on sys.path that was never installed: read the folder itself
        return REPO_ROOT / folder


def find_spec_file(name: str, folder: str = "protocols") -> Path | None:
    """The shipped ``<folder>/<name>.toml``, or None when there is no such spec."""
    candidate = spec_folder(folder) / f"{name}.toml"
    return candidate if candidate.is_file() else None


def resolve_spec_path(name_or_path: str | os.PathLike, folder: str = "protocols") -> Path:
    """A path to an existing ``.toml`` file (the user's own file wins), or a shipped spec by name."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.is_file():
        return p
    found = find_spec_file(str(name_or_path), folder) if p.suffix != ".toml" else None
    if found is not None:
        return found
    known = [q.stem for q in list_specs(folder)]
    raise ConfigError(f"no spec {str(name_or_path)!r} (not a .toml file, not a shipped {folder} name: known {known})")


def spec_kinds() -> dict[str, str]:
    """Every spec ``kind`` -> "module:Class": the registered evaluations plus :data:`OTHER_SPEC_KINDS`."""
    from megabench.evaluation.registry import EVALUATIONS

    return {**{name: entry.spec for name, entry in EVALUATIONS.items()}, **OTHER_SPEC_KINDS}


def spec_class(kind: str) -> type:
    """The dataclass of spec ``kind``; :class:`ConfigError` for an unknown kind."""
    kinds = spec_kinds()
    try:
        target = kinds[kind]
    except KeyError:
        raise ConfigError(f"unknown spec kind {kind!r}; known kinds: {sorted(kinds)}") from None
    return import_object(target)


def import_object(target: str) -> Any:
    """Import ``"package.module:attribute"`` (the lazy references registries hold)."""
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
        raise ConfigError(f"{path}: missing `kind` (one of {sorted(spec_kinds())})")
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


def load_recipe(name_or_path: str | os.PathLike) -> Any:
    """A training recipe (``kind = "recipe"``) by path or by name in the shipped ``baselines/``."""
    return load_spec(name_or_path, "baselines", kind="recipe")


def list_specs(folder: str = "protocols") -> list[Path]:
    """The shipped spec files of ``folder``, sorted by name."""
    return sorted(spec_folder(folder).glob("*.toml"))


def cache_dir() -> Path:
    """Where generated data is cached: ``$MEGABENCH_CACHE``, else ``~/.cache/megabench``."""
    return Path(os.environ.get("MEGABENCH_CACHE") or Path.home() / ".cache" / "megabench")


def synthetic_megaface_folder(n_distractors: int, dim: int, seed: int = 0, dtype: str = "float32") -> Path:
    """The cache folder of one synthetic MegaFace set (``megabench megaface --synthetic``, benchmarks)."""
    return cache_dir() / f"synth_megaface_n{n_distractors}_d{dim}_s{seed}_{dtype}"
