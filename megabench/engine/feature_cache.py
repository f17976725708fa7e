"""A cache of extracted feature stores, keyed by what decides their content.

``<cache>/<model>/<key>/<name>.h5`` where ``key`` is the first 16 hex digits of the sha256 of the JSON of
{model name, checkpoint sha256, preprocessing (incl. autocast and flips), the image list's sha256, the
image root}. A second run with the same key reuses the store (and says so); another checkpoint, another
list or other preprocessing gives another key, so a stale store is never read. ``key.json`` beside the
store records the key's fields. An unfinished extraction leaves ``<name>.h5.parts/`` there and the next
run with the same key continues it (:mod:`megabench.engine.extract`).

The default folder is ``$MEGABENCH_CACHE/features`` (``MEGABENCH_CACHE`` defaults to
``~/.cache/megabench``, as the synthetic MegaFace sets use).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megabench.errors import MegabenchError
from megabench.fileio import atomic_write_json, sha256_bytes


def default_cache_dir() -> Path:
    """``features/`` in megabench's cache folder (:func:`megabench.config.cache_dir`)."""
    from megabench.config import cache_dir

    return cache_dir() / "features"


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be written there; else a clear error."""
    p = Path(folder).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise MegabenchError(f"{p}: the feature cache folder is not writable ({exc.strerror or exc}); pass "
                             "--cache DIR with a writable folder or set MEGABENCH_CACHE") from None
    return p


@dataclass(frozen=True)
class CacheEntry:
    """Where the store of one key lives; ``fields`` is what the key hashes."""

    folder: Path
    store: Path
    key: str
    fields: dict[str, Any]

    def exists(self) -> bool:
        return self.store.is_file()

    def record(self) -> None:
        atomic_write_json(self.folder / "key.json", {"key": self.key, **self.fields})


def cache_entry(cache: str | os.PathLike, name: str, *, model: str, checkpoint_sha256: str,
                preprocessing: dict[str, Any], list_sha256: str, root: str | os.PathLike | None) -> CacheEntry:
    """The cache entry for store ``name`` (e.g. ``facescrub``) of one model, weights, preprocessing and list."""
    fields = {"model": model, "checkpoint_sha256": checkpoint_sha256, "preprocessing": preprocessing,
              "list_sha256": list_sha256, "root": None if root is None else str(Path(root).resolve())}
    key = sha256_bytes(json.dumps(fields, sort_keys=True).encode())[:16]
    folder = Path(cache).expanduser() / model / key
    return CacheEntry(folder, folder / f"{name}.h5", key, fields)
