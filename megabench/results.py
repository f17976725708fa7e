"""Versioned result files: one JSON per (model, protocol variant), written atomically.

Common keys (every kind)::

    schema_version  "1.0"
    kind            "verification" | "megaface" | "profile" | ...
    created         ISO-8601 UTC timestamp
    megabench       {"version", "git"}
    model           {"name", "checkpoint_sha256", "preprocessing"}  (values may be null)
    protocol        {"name", "version", "sha256", "variant", ...}
    input           file fingerprints (sha256) and options that change the numbers
    metrics         the headline numbers; rates are fractions in [0, 1]
    timings         seconds per phase
    environment     python / numpy / torch versions, platform, device

Each kind adds its own required keys, declared where the kind is registered
(:data:`megabench.evaluation.registry.RESULT_KINDS`; see :func:`required_keys`); :func:`validate_result`
checks them. The keys of each kind are described in ``docs/results.md``.
Reports read only these files.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from megabench import __version__
from megabench.errors import DataError
from megabench.fileio import atomic_write_json

SCHEMA_VERSION = "1.0"

COMMON_KEYS = ("schema_version", "kind", "created", "megabench", "environment")


def required_keys(kind: str) -> tuple[str, ...]:
    """Keys a result of ``kind`` must hold besides :data:`COMMON_KEYS` (none for an unregistered kind)."""
    from megabench.evaluation.registry import RESULT_KINDS

    return RESULT_KINDS.get(kind).required_keys if kind in RESULT_KINDS else ()


def git_revision(repo: Path | None = None) -> str | None:
    """The megabench checkout's commit (with ``+dirty`` when modified), or None outside git."""
    root = repo or Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions and machine facts that can change a number. Imports torch only if already imported."""
    import sys

    import numpy as np

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device or "cpu",
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        if device and device.startswith("cuda") and torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(torch.device(device))
            env["cuda"] = torch.version.cuda
    for mod in ("scipy", "sklearn", "h5py", "faiss"):
        m = sys.modules.get(mod)
        if m is not None:
            env[mod] = getattr(m, "__version__", None)
    return env


def new_result(kind: str, *, device: str | None = None, **sections: Any) -> dict[str, Any]:
    """A result dict with the common keys filled in, plus ``sections`` in the given order."""
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "megabench": {"version": __version__, "git": git_revision()},
    }
    result.update(sections)
    result["environment"] = environment(device)
    return result


#: per kind, dotted fields that readers (tables, figures) rely on -> accepted types (None: may be null)
_NUMBER = (int, float, np.number)
REQUIRED_FIELDS: dict[str, dict[str, tuple]] = {
    "verification": {"model": (dict,), "protocol": (dict,), "protocol.name": (str,), "input": (dict,),
                     "metrics": (dict,), "metrics.accuracy": (*_NUMBER, type(None)), "folds": (list,)},
    "megaface": {"model": (dict,), "protocol": (dict,), "input": (dict,), "variants": (dict,)},
    "profile": {"model": (str, dict), "params": (int, np.integer), "size_mb": _NUMBER, "flops": (*_NUMBER, type(None)),
                "latency_ms": (dict,), "train_peak_mem_mb": (*_NUMBER, type(None)), "device": (str,)},
}


def _field(result: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = result
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_fields(result: dict[str, Any], source: str) -> None:
    for dotted, types in REQUIRED_FIELDS.get(result["kind"], {}).items():
        found, value = _field(result, dotted)
        if not found:
            raise DataError(f"{source}: {result['kind']} result lacks `{dotted}`; the file is incomplete or was "
                            "edited: re-run the evaluation")
        if not isinstance(value, types) or isinstance(value, bool):
            names = "/".join("null" if t is type(None) else t.__name__ for t in types)
            raise DataError(f"{source}: `{dotted}` is {type(value).__name__} {str(value)[:40]!r}, expected {names}")
    if result["kind"] == "megaface":
        _check_megaface_variants(result["variants"], source)


def _check_megaface_variants(variants: dict[str, Any], source: str) -> None:
    for name, variant in variants.items():
        sizes = variant.get("sizes") if isinstance(variant, dict) else None
        if not isinstance(sizes, dict) or not sizes:
            raise DataError(f"{source}: megaface variant {name!r} lacks `sizes`; re-run the evaluation")
        for size, entry in sizes.items():
            ok = (str(size).isdigit() and isinstance(entry, dict) and "rank1" in entry
                  and isinstance(entry.get("verification"), dict)
                  and isinstance(entry["verification"].get("tar_at_far"), dict))
            if not ok:
                raise DataError(f"{source}: megaface variants.{name}.sizes[{size!r}] lacks rank1 / "
                                "verification.tar_at_far; re-run the evaluation")


def validate_result(result: Any, *, source: str = "result") -> dict[str, Any]:
    """Check schema version, required keys and the fields readers use; returns ``result`` or raises
    :class:`DataError` naming ``source``."""
    if not isinstance(result, dict):
        what = "null" if result is None else f"a JSON {type(result).__name__}"
        raise DataError(f"{source}: not a megabench result (the file holds {what}, not an object)")
    missing = [k for k in COMMON_KEYS if k not in result]
    if missing:
        raise DataError(f"{source}: not a megabench result (missing {missing})")
    if not isinstance(result["kind"], str):
        raise DataError(f"{source}: `kind` is {result['kind']!r}, expected a string such as 'verification'")
    major = str(result["schema_version"]).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise DataError(
            f"{source}: schema_version {result['schema_version']} is not readable by megabench "
            f"{__version__} (schema {SCHEMA_VERSION}); re-run the evaluation"
        )
    need = required_keys(result["kind"])
    missing = [k for k in need if k not in result]
    if missing:
        raise DataError(f"{source}: {result['kind']} result lacks required keys {missing}")
    return result


def is_result_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a JSON object with megabench's common result keys (a re-run may replace it)."""
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read(64 << 20).decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(k in data for k in COMMON_KEYS)


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Validate, then write atomically (temp file + rename)."""
    validate_result(result, source=str(path))
    return atomic_write_json(path, result)


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such result file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); not a megabench result") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON ({exc}); was it written by megabench?") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the result file ({exc.strerror})") from None
    result = validate_result(data, source=str(path))
    _check_fields(result, str(path))  # the fields tables and figures read: a file, not a dict being built
    return result
