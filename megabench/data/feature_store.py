"""The HDF5 feature store: one layout for every protocol.

Layout (``schema_version`` attribute "1")::

    /features        (N, D) float32 or float16, rows in the source's order
    /features_flip   (N, D) optional: embeddings of the horizontally flipped images
    /paths           (N,)   utf-8 strings: image path / pack index, as the source names it
    /ids             (N,)   optional int64 identity labels
    attrs: schema_version, model, checkpoint_sha256, preprocessing (JSON text), source_sha256

Datasets are chunked by rows (about 1 MiB a chunk) so 1M x 512 streams block by block.
Writing goes to a temporary file renamed into place on success (:class:`FeatureStoreWriter`).
float16 stores are returned as float32.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from megabench.errors import DataError
from megabench.fileio import atomic_path, sha256_file

STORE_SCHEMA_VERSION = "1"
_STR = h5py.string_dtype("utf-8")


def _chunk_rows(dim: int, itemsize: int, n: int) -> int:
    return int(max(1, min(n, (1 << 20) // max(1, dim * itemsize))))


@dataclass
class StoreMeta:
    """Provenance attributes of a feature store; ``preprocessing`` is a JSON-able dict."""

    model: str = ""
    checkpoint_sha256: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    source_sha256: str = ""


class FeatureStoreWriter:
    """Write a store of known size block by block; the file appears only after :meth:`close`.

    >>> with FeatureStoreWriter("f.h5", n=10, dim=4) as w:
    ...     w.write(0, np.ones((10, 4), np.float32), paths=[str(i) for i in range(10)])
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n: int,
        dim: int,
        *,
        dtype: str | np.dtype = "float32",
        with_flip: bool = False,
        with_ids: bool = False,
        meta: StoreMeta | None = None,
    ) -> None:
        self.path = Path(path)
        self.n, self.dim = int(n), int(dim)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float16):
            raise ValueError(f"feature dtype must be float32 or float16, not {self.dtype}")
        self._ctx = atomic_path(self.path, suffix=".h5")
        self._tmp = self._ctx.__enter__()
        self._h5 = h5py.File(self._tmp, "w")
        rows = _chunk_rows(self.dim, self.dtype.itemsize, max(self.n, 1))
        shape = (self.n, self.dim)
        self._h5.create_dataset("features", shape=shape, dtype=self.dtype, chunks=(rows, self.dim) if self.n else None)
        if with_flip:
            self._h5.create_dataset("features_flip", shape=shape, dtype=self.dtype,
                                    chunks=(rows, self.dim) if self.n else None)
        self._h5.create_dataset("paths", shape=(self.n,), dtype=_STR)
        if with_ids:
            self._h5.create_dataset("ids", shape=(self.n,), dtype=np.int64)
        meta = meta or StoreMeta()
        attrs = self._h5.attrs
        attrs["schema_version"] = STORE_SCHEMA_VERSION
        attrs["model"] = meta.model
        attrs["checkpoint_sha256"] = meta.checkpoint_sha256
        attrs["preprocessing"] = json.dumps(meta.preprocessing, sort_keys=True)
        attrs["source_sha256"] = meta.source_sha256
        self._written = np.zeros(self.n, dtype=bool)

    def write(
        self,
        start: int,
        features: np.ndarray,
        *,
        paths: Sequence[str] | None = None,
        ids: np.ndarray | None = None,
        features_flip: np.ndarray | None = None,
    ) -> None:
        """Write rows ``start : start + len(features)``."""
        features = np.asarray(features)
        stop = start + features.shape[0]
        if features.ndim != 2 or features.shape[1] != self.dim or stop > self.n or start < 0:
            raise ValueError(f"block of shape {features.shape} does not fit rows {start}:{stop} of "
                             f"({self.n}, {self.dim})")
        self._h5["features"][start:stop] = features.astype(self.dtype, copy=False)
        if features_flip is not None:
            self._h5["features_flip"][start:stop] = np.asarray(features_flip).astype(self.dtype, copy=False)
        if paths is not None:
            if len(paths) != features.shape[0]:
                raise ValueError("paths and features differ in length")
            self._h5["paths"][start:stop] = np.asarray(list(paths), dtype=object)
        if ids is not None:
            self._h5["ids"][start:stop] = np.asarray(ids, dtype=np.int64)
        self._written[start:stop] = True

    def close(self) -> Path:
        """Finish and rename into place. Raises if some rows were never written."""
        if not self._written.all():
            missing = np.flatnonzero(~self._written)
            self.abort()
            raise DataError(f"{self.path}: {missing.size} feature rows never written (first {missing[:5].tolist()})")
        self._h5.close()
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file; the final path is left untouched."""
        try:
            self._h5.close()
        finally:
            exc = RuntimeError("feature store write aborted")
            self._ctx.__exit__(RuntimeError, exc, None)

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_features(
    path: str | os.PathLike,
    features: np.ndarray,
    paths: Sequence[str],
    *,
    ids: np.ndarray | None = None,
    features_flip: np.ndarray | None = None,
    meta: StoreMeta | None = None,
    dtype: str | np.dtype = "float32",
) -> Path:
    """Write a whole store at once (atomic). ``features``: (N, D); ``paths``: N strings."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {features.shape}")
    if features_flip is not None and np.shape(features_flip) != features.shape:
        raise ValueError(f"features_flip shape {np.shape(features_flip)} != features shape {features.shape}")
    n, d = features.shape
    with FeatureStoreWriter(path, n, d, dtype=dtype, with_flip=features_flip is not None,
                            with_ids=ids is not None, meta=meta) as w:
        if n:
            w.write(0, features, paths=paths, ids=ids, features_flip=features_flip)
    return Path(path)


class RawRows:
    """Row slices of an uncompressed little-endian float32 (N, D) dataset read straight from the file.

    HDF5 stores such a dataset as one contiguous extent or as chunks of whole rows (``(rows, D)``, as
    :class:`FeatureStoreWriter` writes); each piece is at a known byte offset, so a row slice is a few
    ``os.preadv`` calls (one per run of chunks that follow each other in the file) into one new array: 2.6 ms
    for 8192 x 512 vs 5.5 ms through h5py (the MegaFace pass reads 122 such blocks while the GEMM runs).
    :meth:`read` returns None where it cannot (a chunk never written): the caller reads through h5py.
    """

    def __init__(self, path: Path, ds: h5py.Dataset) -> None:
        self.dim = int(ds.shape[1])
        self.row_bytes = self.dim * 4
        if ds.chunks is None:
            off = ds.id.get_offset()
            self.chunk_rows = max(int(ds.shape[0]), 1)
            self.offsets = {0: off} if off is not None else {}
        else:
            self.chunk_rows = int(ds.chunks[0])
            self.offsets = {}
            for i in range(ds.id.get_num_chunks()):
                info = ds.id.get_chunk_info(i)
                if info.filter_mask == 0 and info.byte_offset is not None:
                    self.offsets[int(info.chunk_offset[0])] = int(info.byte_offset)
        self.fd = os.open(path, os.O_RDONLY)

    @staticmethod
    def usable(ds: h5py.Dataset) -> bool:
        """Uncompressed ``<f4``, 2-D, contiguous or chunked by whole rows."""
        plist = ds.id.get_create_plist()
        if ds.ndim != 2 or ds.dtype != np.dtype("<f4") or plist.get_nfilters() or plist.get_external_count():
            return False
        layout = plist.get_layout()
        if layout == h5py.h5d.CONTIGUOUS:
            return True
        return layout == h5py.h5d.CHUNKED and ds.chunks[1] == ds.shape[1]

    def read(self, lo: int, hi: int) -> np.ndarray | None:
        """Rows ``lo:hi`` (float32, new array), or None when a piece of them is not in the file."""
        out = np.empty((hi - lo, self.dim), np.float32)
        flat = memoryview(out).cast("B")
        row = lo
        while row < hi:
            c0 = row - row % self.chunk_rows
            off = self.offsets.get(c0)
            if off is None:
                return None
            start = off + (row - c0) * self.row_bytes
            end = min(hi, c0 + self.chunk_rows)
            while end < hi and self.offsets.get(end) == off + (end - c0) * self.row_bytes:
                end = min(hi, end + self.chunk_rows)  # the next chunk follows in the file: one read for both
            a, b = (row - lo) * self.row_bytes, (end - lo) * self.row_bytes
            if os.preadv(self.fd, [flat[a:b]], start) != b - a:
                return None
            row = end
        return out

    def close(self) -> None:
        os.close(self.fd)


class FeatureStore:
    """Read-only view of a store; open with :func:`open_features` (a context manager)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise DataError(f"{self.path}: no such feature store") from None
        except OSError as exc:
            raise DataError(f"{self.path}: not an HDF5 feature store ({exc}); write one with "
                            "`megabench convert` or megabench.data.feature_store.write_features") from None
        try:
            self.n, self.dim = self._check_layout()
        except BaseException:
            self._h5.close()
            raise
        self._raw: dict[str, RawRows | None] = {}

    def _check_layout(self) -> tuple[int, int]:
        """(N, D) of ``features``; :class:`DataError` naming the file for any other layout."""
        h5 = self._h5
        if not isinstance(h5.get("features"), h5py.Dataset):
            what = "has no `features` dataset" if "features" not in h5 else "has a group named `features`"
            raise DataError(f"{self.path}: HDF5 file {what}; a megabench feature store holds an (N, D) dataset "
                            "`features`")
        f = h5["features"]
        if f.ndim != 2:
            raise DataError(f"{self.path}: `features` must be 2-D (N, D), found shape {f.shape}")
        if f.dtype.kind != "f":
            raise DataError(f"{self.path}: `features` has dtype {f.dtype}; a feature store holds float32 or float16")
        for name in ("features_flip", "paths", "ids"):
            if name in h5 and not isinstance(h5[name], h5py.Dataset):
                raise DataError(f"{self.path}: `{name}` is a group, expected a dataset")
        if "features_flip" in h5 and h5["features_flip"].shape != f.shape:
            raise DataError(f"{self.path}: `features_flip` has shape {h5['features_flip'].shape} but `features` "
                            f"has {f.shape}; re-extract both from the same image list")
        for name in ("paths", "ids"):
            if name in h5 and (h5[name].ndim != 1 or h5[name].shape[0] != f.shape[0]):
                raise DataError(f"{self.path}: `{name}` has shape {h5[name].shape} but `features` has "
                                f"{f.shape[0]} rows; expected ({f.shape[0]},)")
        return int(f.shape[0]), int(f.shape[1])

    # --- metadata -----------------------------------------------------------------------------
    @property
    def has_flip(self) -> bool:
        return "features_flip" in self._h5

    @property
    def has_ids(self) -> bool:
        return "ids" in self._h5

    @property
    def dtype(self) -> np.dtype:
        return self._h5["features"].dtype

    @property
    def meta(self) -> StoreMeta:
        a = self._h5.attrs

        def text(key: str) -> str:
            v = a.get(key, "")
            return v.decode() if isinstance(v, bytes) else str(v)

        try:
            prep = json.loads(text("preprocessing") or "{}")
        except json.JSONDecodeError:
            prep = {"raw": text("preprocessing")}
        return StoreMeta(model=text("model"), checkpoint_sha256=text("checkpoint_sha256"),
                         preprocessing=prep, source_sha256=text("source_sha256"))

    def paths(self) -> list[str]:
        """Row names (``paths``), or the row indices as strings when the store has none."""
        if "paths" not in self._h5:
            return [str(i) for i in range(self.n)]
        raw = self._h5["paths"][:]
        try:  # the common case (h5py gives bytes) in one C map (1M paths: ~0.05 s); the loop below names a bad row
            return list(map(bytes.decode, raw))
        except (TypeError, UnicodeDecodeError):
            pass
        out = []
        for row, p in enumerate(raw):
            if isinstance(p, bytes):
                try:
                    p = p.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(f"{self.path}: `paths` row {row} is not UTF-8 ({p[:40]!r}); write paths as "
                                    "UTF-8 strings (h5py.string_dtype('utf-8'))") from None
            out.append(str(p))
        return out

    def ids(self) -> np.ndarray | None:
        return self._h5["ids"][:].astype(np.int64) if self.has_ids else None

    def sha256(self) -> str:
        return sha256_file(self.path)

    # --- data ---------------------------------------------------------------------------------
    def read(self, dataset: str = "features", rows: slice | np.ndarray | None = None) -> np.ndarray:
        """Rows of ``dataset`` as float32 (N, D). ``rows``: a slice or sorted index array."""
        if dataset not in self._h5:
            raise DataError(f"{self.path}: no `{dataset}` dataset")
        ds = self._h5[dataset]
        if isinstance(rows, slice) and rows.step in (None, 1):
            raw = self._raw_rows(dataset, ds)
            lo, hi, _ = rows.indices(ds.shape[0])
            out = raw.read(lo, hi) if raw is not None and hi > lo else None
            if out is not None:
                return out
        out = ds[...] if rows is None else ds[rows]
        return np.asarray(out, dtype=np.float32)

    def _raw_rows(self, dataset: str, ds: h5py.Dataset) -> RawRows | None:
        if dataset not in self._raw:
            self._raw[dataset] = RawRows(self.path, ds) if RawRows.usable(ds) else None
        return self._raw[dataset]

    def iter_blocks(
        self, block_rows: int, dataset: str = "features", start: int = 0
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, block)`` with float32 blocks of at most ``block_rows`` rows."""
        ds = self._h5[dataset]
        for lo in range(start, self.n, block_rows):
            hi = min(self.n, lo + block_rows)
            yield lo, np.asarray(ds[lo:hi], dtype=np.float32)

    def close(self) -> None:
        for raw in self._raw.values():
            if raw is not None:
                raw.close()
        self._raw.clear()
        self._h5.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_feature_store(path: str | os.PathLike) -> bool:
    """True when ``path`` is an HDF5 file with a ``features`` dataset and a ``schema_version`` attribute."""
    try:
        with h5py.File(path, "r") as h5:
            return "features" in h5 and "schema_version" in h5.attrs
    except (OSError, ValueError):
        return False


def open_features(path: str | os.PathLike) -> FeatureStore:
    return FeatureStore(path)


def check_embeddings(x: np.ndarray, *, source: str, what: str = "embedding") -> None:
    """Raise :class:`DataError` naming the first rows that are NaN/inf or have zero norm.

    ``x``: (N, D). Zero norm means ``||x_i|| == 0`` (cannot be L2-normalised).
    """
    x = np.asarray(x)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataError(f"{source}: {bad.size} {what} row(s) contain NaN or inf (first rows {bad[:5].tolist()}); "
                        "re-extract them, the model or its input produced non-finite values")
    norms = np.linalg.norm(x.astype(np.float64, copy=False), axis=1)
    zero = norms == 0
    if zero.any():
        bad = np.flatnonzero(zero)
        raise DataError(f"{source}: {bad.size} {what} row(s) have zero norm (first rows {bad[:5].tolist()}); "
                        "they cannot be L2-normalised: re-extract them or drop those images")

