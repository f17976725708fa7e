"""MegaFace devkit file formats: template lists, "matio" feature files, noise lists, conversion
(docs/megaface.md §8).

- ``facescrub_features_list.json``: ``{"path": [...], "id": [...]}`` (probe images and identity names).
- ``megaface_features_list.json_<size>_<set>``: ``{"path": [...]}`` (distractor images).
- matio feature file: 16-byte little-endian header of four int32 ``rows=D, cols=1, stride=4, type=5``
  (OpenCV ``CV_32F``) followed by ``D`` little-endian float32. The file of a listed image is
  ``<root>/<list path incl. extension><file_ending>`` (e.g. ``Aaron_Eckhart/Aaron_Eckhart_136.png_r100.bin``).
- noise lists: one file name (FaceScrub) or relative path (MegaFace) per line; ``#`` starts a comment.

:func:`matio_to_store` packs a matio tree into the HDF5 feature store (:mod:`megabench.data.feature_store`),
:func:`store_to_matio` writes it back.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megabench.errors import DataError

MATIO_TYPE_CV_32F = 5
_HEADER = struct.Struct("<4i")
DISTRACTOR_LIST_RE = re.compile(r"^megaface_features_list\.json_(\d+)_(\d+)$")


# --- template lists -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeList:
    """FaceScrub probe list: ``paths[i]`` (relative, with extension) of identity ``names[i]``."""

    paths: tuple[str, ...]
    names: tuple[str, ...]

    def labels(self) -> np.ndarray:
        """Identity names mapped to int64 labels 0..C-1 in sorted-name order."""
        uniq = sorted(set(self.names))
        index = {n: i for i, n in enumerate(uniq)}
        return np.array([index[n] for n in self.names], dtype=np.int64)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such template list") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON template list ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("path"), list):
        raise DataError(f"{path}: a devkit template list is a JSON object with a `path` list")
    return data


def duplicates(items: Sequence[str], distinct: set[str] | None = None) -> list[str]:
    """The entries that occur more than once, in order of their second occurrence (each once).
    ``distinct``: ``set(items)`` when the caller has it."""
    if len(set(items) if distinct is None else distinct) == len(items):  # the common case, in C: 1M in ~0.1 s
        return []
    seen: set[str] = set()
    dup: dict[str, None] = {}
    for x in items:
        if x in seen:
            dup[x] = None
        seen.add(x)
    return list(dup)


def _check_paths(path: Path, paths: list, what: str) -> list[str]:
    """Non-empty list of distinct non-empty strings, else :class:`DataError` naming ``path``."""
    if not paths:
        raise DataError(f"{path}: the {what} list is empty; a devkit template list names at least one image")
    distinct = set(paths) if set(map(type, paths)) == {str} else None  # C loops; unhashable entries: None
    if distinct is None or "" in distinct:
        bad = [p for p in paths if not isinstance(p, str) or not p]
        raise DataError(f"{path}: `path` entries must be non-empty strings (first bad: {bad[:3]!r})")
    dup = duplicates(paths, distinct)
    if dup:
        raise DataError(f"{path}: {len(dup)} image(s) listed more than once (first: {dup[:5]}); each image may be "
                        "listed once (repeats would count its trials twice)")
    return paths


def identity_name(value: object, *, source: str) -> str:
    """An identity as a name: strings as they are, integers (and integral floats) as decimal text.

    Fractional, NaN or infinite floats, booleans, null and containers are :class:`DataError`.
    """
    if isinstance(value, str) and value:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DataError(f"{source}: identity {value!r} is neither a name nor a whole number")
    if isinstance(value, (float, np.floating)) and not (np.isfinite(value) and float(value).is_integer()):
        raise DataError(f"{source}: identity {value!r} is not a whole number (fractional, NaN or inf ids would "
                        "merge or invent identities); store integer labels or identity names")
    return str(int(value))


def read_probe_list(path: str | os.PathLike) -> ProbeList:
    """Read ``facescrub_features_list.json`` (``path`` and ``id`` lists of equal length).

    Paths must be distinct; ids are names (strings) or whole numbers (see :func:`identity_name`).
    """
    data = _read_json(Path(path))
    ids = data.get("id")
    if not isinstance(ids, list) or len(ids) != len(data["path"]):
        raise DataError(f"{path}: needs an `id` list as long as `path` ({len(data['path'])} entries)")
    paths = _check_paths(Path(path), data["path"], "probe")
    return ProbeList(tuple(paths), tuple(identity_name(i, source=f"{path}: entry {k}") for k, i in enumerate(ids)))


def read_distractor_list(path: str | os.PathLike) -> list[str]:
    """Read ``megaface_features_list.json_<size>_<set>`` -> list of distinct relative paths."""
    return _check_paths(Path(path), _read_json(Path(path))["path"], "distractor")


def read_template_list(path: str | os.PathLike) -> tuple[list[str], np.ndarray | None]:
    """Either template list: (paths, int64 labels or None) -- labels when the list has an ``id`` list."""
    data = _read_json(Path(path))
    if "id" in data:
        pl = read_probe_list(path)
        return list(pl.paths), pl.labels()
    return read_distractor_list(path), None


def labels_from_ids(ids: np.ndarray, *, source: str) -> np.ndarray:
    """int64 labels from a store's raw ``ids`` (integers, integral floats, or identity-name strings).

    Names map to 0..C-1 in sorted-name order; fractional / NaN / inf floats are :class:`DataError`.
    """
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    if ids.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(ids) | (ids != np.round(ids)))
        if bad.size:
            raise DataError(f"{source}: {bad.size} `ids` are not whole numbers (first rows {bad[:5].tolist()}: "
                            f"{ids[bad[:3]].tolist()}); store integer labels or identity names")
        return ids.astype(np.int64)
    if ids.dtype.kind in "SOU":
        names = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in ids.tolist()]
        uniq = {n: i for i, n in enumerate(sorted(set(names)))}
        return np.array([uniq[n] for n in names], dtype=np.int64)
    raise DataError(f"{source}: `ids` of dtype {ids.dtype} are neither labels nor identity names")


def read_store_labels(path: str | os.PathLike) -> np.ndarray | None:
    """The ``ids`` of a feature store as int64 labels (:func:`labels_from_ids`); None without ``ids``."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            if "ids" not in h5:
                return None
            if not isinstance(h5["ids"], h5py.Dataset) or h5["ids"].ndim != 1:
                raise DataError(f"{path}: `ids` must be a 1-D dataset")
            raw = h5["ids"][:]
    except OSError as exc:
        raise DataError(f"{path}: not an HDF5 feature store ({exc})") from None
    return labels_from_ids(raw, source=str(path))


def write_probe_list(path: str | os.PathLike, paths: Sequence[str], names: Sequence[str]) -> Path:
    from megabench.fileio import atomic_write_bytes

    if len(paths) != len(names):
        raise ValueError("paths and names differ in length")
    return atomic_write_bytes(path, json.dumps({"path": list(paths), "id": list(names)}).encode())


def write_distractor_list(path: str | os.PathLike, paths: Sequence[str]) -> Path:
    from megabench.fileio import atomic_write_bytes

    return atomic_write_bytes(path, json.dumps({"path": list(paths)}).encode())


def distractor_list_files(folder: str | os.PathLike, set_id: int | None = None) -> dict[int, Path]:
    """``{size: file}`` for the ``megaface_features_list.json_<size>_<set>`` files in ``folder``.

    With several sets present ``set_id`` must choose one (devkit default: 1).
    """
    folder = Path(folder)
    found: dict[int, dict[int, Path]] = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = DISTRACTOR_LIST_RE.match(p.name)
        if m:
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = p
    if not found:
        raise DataError(f"{folder}: no megaface_features_list.json_<size>_<set> files")
    if set_id is None:
        set_id = 1 if 1 in found else min(found)
    if set_id not in found:
        raise DataError(f"{folder}: no lists for set {set_id} (sets present: {sorted(found)})")
    return dict(sorted(found[set_id].items()))


def open_store(path: str | os.PathLike, role: str):
    """:func:`~megabench.data.feature_store.open_features` after a layout check of ``features`` (a group or a
    non-2-D dataset is a one-line :class:`DataError` naming the file and its ``role``, e.g. ``--probes``)."""
    import h5py

    from megabench.data.feature_store import open_features

    if Path(path).is_dir():
        raise DataError(f"{path}: {role} is a folder; give the HDF5 feature store file")
    try:
        with h5py.File(path, "r") as h5:
            f = h5.get("features")
            if f is not None and not isinstance(f, h5py.Dataset):
                raise DataError(f"{path}: {role}: `features` is an HDF5 group, not an (N, D) dataset; not a "
                                "megabench feature store")
            if f is not None and f.ndim != 2:
                raise DataError(f"{path}: {role}: `features` must be 2-D (N, D), found shape {f.shape}")
    except OSError:
        pass  # missing / not HDF5: open_features says so
    return open_features(path)


# --- matio ------------------------------------------------------------------------------------------
def matio_bytes(vector: np.ndarray) -> bytes:
    """The bytes of one matio feature file holding ``vector`` (D,) as float32."""
    v = np.asarray(vector, dtype="<f4").reshape(-1)
    return _HEADER.pack(v.size, 1, 4, MATIO_TYPE_CV_32F) + v.tobytes()


def write_matio(path: str | os.PathLike, vector: np.ndarray) -> Path:
    from megabench.fileio import atomic_write_bytes

    return atomic_write_bytes(path, matio_bytes(vector))


def parse_matio(data: bytes, *, source: str = "matio") -> np.ndarray:
    """Parse matio bytes -> float32 (D,). Wrong header or length -> :class:`DataError`."""
    if len(data) < _HEADER.size:
        raise DataError(f"{source}: {len(data)} bytes, shorter than the 16-byte matio header")
    rows, cols, stride, typ = _HEADER.unpack_from(data)
    if cols != 1 or stride != 4 or typ != MATIO_TYPE_CV_32F or rows <= 0:
        raise DataError(f"{source}: matio header rows={rows} cols={cols} stride={stride} type={typ}; "
                        "expected a float32 column vector (cols=1, stride=4, type=5)")
    if len(data) != _HEADER.size + 4 * rows:
        raise DataError(f"{source}: header says {rows} float32 values ({16 + 4 * rows} bytes) but the file "
                        f"has {len(data)} bytes; the file is truncated or not a matio feature")
    return np.frombuffer(data, dtype="<f4", offset=_HEADER.size).astype(np.float32)


def read_matio(path: str | os.PathLike) -> np.ndarray:
    return parse_matio(Path(path).read_bytes(), source=str(path))


# --- noise lists ----------------------------------------------------------------------------------
def read_noise_list(path: str | os.PathLike, *, tab_field: bool = False) -> list[str]:
    """Entries of a noise list, in file order; blank lines and ``#`` comment lines are skipped.

    ``tab_field``: a line with tabs contributes its second tab-separated field (as insightface's
    ``remove_noises.py`` reads the MegaFace list: ``line.split("\t")[1]`` when there is more than one field).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such noise list") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a noise list") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text noise list (byte {exc.start}: {exc.reason}); "
                        "convert it to UTF-8") from None
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        fields = s.split("\t")
        out.append(fields[1].strip() if tab_field and len(fields) > 1 else s)
    return out


def match_facescrub_noise(paths: Sequence[str], noise: Sequence[str]) -> tuple[np.ndarray, int]:
    """Probe rows whose file name (last path component) is in ``noise``.

    Returns (bool mask (N,), number of noise entries that matched at least one path).
    """
    names = {os.path.basename(n) for n in noise}
    base = [os.path.basename(p) for p in paths]
    mask = np.array([b in names for b in base], dtype=bool)
    return mask, len(names & set(base))


def match_megaface_noise(paths: Sequence[str], noise: Sequence[str]) -> tuple[np.ndarray, int]:
    """Distractor rows whose relative path is a noise entry (a path ending ``/<entry>`` also matches).

    Returns (bool mask (N,), number of noise entries that matched at least one path).
    """
    entries = {n.strip().lstrip("./") for n in noise}
    depth = {e.count("/") + 1 for e in entries}
    names = {e.rpartition("/")[2] for e in entries}
    mask = np.zeros(len(paths), dtype=bool)
    hit: set[str] = set()
    # only a path whose file name is some entry's file name can match: the file names first (1M paths ~0.2 s)
    if "\\" in "".join(paths):  # one C pass
        paths = [p.replace("\\", "/") for p in paths]
    base = [p.rpartition("/")[2] for p in paths]
    hits = names.intersection(base)
    maybe = [i for i, b in enumerate(base) if b in hits] if hits else []
    for i in maybe:
        parts = paths[i].split("/")
        for k in depth:
            tail = "/".join(parts[-k:])
            if tail in entries:
                mask[i] = True
                hit.add(tail)
                break
    return mask, len(hit)


# --- conversion -----------------------------------------------------------------------------------
def inside_root(root: Path, relpath: str, *, source: str) -> Path:
    """``root / relpath`` resolved, refused (:class:`DataError`) when absolute or leaving ``root``."""
    from megabench.fileio import resolve_inside

    if os.path.isabs(relpath) or relpath.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relpath):
        raise DataError(f"{source}: path {relpath!r} is absolute; refused: entries must be relative paths "
                        f"inside {root}")
    return resolve_inside(root, relpath, source=source)


@dataclass(frozen=True)
class ConvertReport:
    """What :func:`matio_to_store` did: rows written and listed paths without a feature file."""

    written: int
    missing: int
    first_missing: tuple[str, ...]


def matio_to_store(
    root: str | os.PathLike,
    paths: Sequence[str],
    out: str | os.PathLike,
    *,
    file_ending: str = "_r100.bin",
    ids: np.ndarray | None = None,
    dtype: str = "float32",
    allow_missing: bool = False,
    progress: bool = True,
    source: str = "",
) -> ConvertReport:
    """Pack ``<root>/<path><file_ending>`` for every listed path into an HDF5 feature store.

    A missing file is an error naming how many and the first few, unless ``allow_missing`` (then those
    rows are left out and counted). All vectors must share one dimension.
    """
    from tqdm import tqdm

    from megabench.data.feature_store import FeatureStoreWriter, StoreMeta

    root = Path(root)
    files = [inside_root(root, f"{p}{file_ending}", source=source or "list") for p in paths]
    present = [f.is_file() for f in files]
    missing = [p for p, ok in zip(paths, present, strict=True) if not ok]
    if missing and not allow_missing:
        raise DataError(f"{root}: {len(missing)} of {len(paths)} listed features are missing (first: "
                        f"{missing[:5]}; looked for <root>/<path>{file_ending}); fix the root/file ending "
                        "or pass --allow-missing")
    keep = [i for i, ok in enumerate(present) if ok]
    if not keep:
        raise DataError(f"{root}: none of the {len(paths)} listed features exist")
    dim = read_matio(files[keep[0]]).size
    block = 4096
    with FeatureStoreWriter(out, len(keep), dim, dtype=dtype, with_ids=ids is not None,
                            meta=StoreMeta(preprocessing={"source": "matio", "file_ending": file_ending})) as w:
        bar = tqdm(total=len(keep), unit="feat", desc="convert", disable=not progress)
        for lo in range(0, len(keep), block):
            rows = keep[lo:lo + block]
            feats = np.empty((len(rows), dim), np.float32)
            for k, i in enumerate(rows):
                v = read_matio(files[i])
                if v.size != dim:
                    raise DataError(f"{files[i]}: dimension {v.size}, but {files[keep[0]]} has {dim}")
                feats[k] = v
            w.write(lo, feats, paths=[paths[i] for i in rows],
                    ids=None if ids is None else np.asarray(ids)[rows])
            bar.update(len(rows))
        bar.close()
    return ConvertReport(len(keep), len(missing), tuple(missing[:5]))


def store_to_matio(
    store: str | os.PathLike, root: str | os.PathLike, *, file_ending: str = "_r100.bin", progress: bool = True
) -> int:
    """Write every row of a feature store as ``<root>/<path><file_ending>``; returns the count."""
    from tqdm import tqdm

    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: --root is a file; give the folder the matio tree goes into")
    with open_store(store, "--store") as fs:
        paths = fs.paths()
        dup = duplicates(paths)
        if dup:
            raise DataError(f"{store}: {len(dup)} paths occur more than once (first: {dup[:5]}); their matio files "
                            "would overwrite each other: fix the store's `paths`")
        targets = [inside_root(root, f"{p}{file_ending}", source=str(store)) for p in paths]
        if any(t == Path(store).resolve() for t in targets):
            raise DataError(f"{store}: a matio file would be written over the store itself; choose another --root")
        bar = tqdm(total=fs.n, unit="feat", desc="export", disable=not progress)
        for lo, block in fs.iter_blocks(4096):
            for k, v in enumerate(block):
                target = targets[lo + k]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(matio_bytes(v))
            bar.update(len(block))
        bar.close()
        return fs.n
