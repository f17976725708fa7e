"""MegaFace devkit file formats: template lists, "matio" feature files, noise lists, conversion.

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


def read_probe_list(path: str | os.PathLike) -> ProbeList:
    """Read ``facescrub_features_list.json`` (``path`` and ``id`` lists of equal length)."""
    data = _read_json(Path(path))
    ids = data.get("id")
    if not isinstance(ids, list) or len(ids) != len(data["path"]):
        raise DataError(f"{path}: needs an `id` list as long as `path` ({len(data['path'])} entries)")
    return ProbeList(tuple(str(p) for p in data["path"]), tuple(str(i) for i in ids))


def read_distractor_list(path: str | os.PathLike) -> list[str]:
    """Read ``megaface_features_list.json_<size>_<set>`` -> list of relative paths."""
    return [str(p) for p in _read_json(Path(path))["path"]]


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
    mask = np.zeros(len(paths), dtype=bool)
    hit: set[str] = set()
    for i, p in enumerate(paths):
        parts = p.replace("\\", "/").split("/")
        for k in depth:
            tail = "/".join(parts[-k:])
            if tail in entries:
                mask[i] = True
                hit.add(tail)
                break
    return mask, len(hit)


# --- conversion -----------------------------------------------------------------------------------
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
) -> ConvertReport:
    """Pack ``<root>/<path><file_ending>`` for every listed path into an HDF5 feature store.

    A missing file is an error naming how many and the first few, unless ``allow_missing`` (then those
    rows are left out and counted). All vectors must share one dimension.
    """
    from tqdm import tqdm

    from megabench.data.feature_store import FeatureStoreWriter, StoreMeta

    root = Path(root)
    files = [root / f"{p}{file_ending}" for p in paths]
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

    from megabench.data.feature_store import open_features

    root = Path(root)
    with open_features(store) as fs:
        paths = fs.paths()
        bar = tqdm(total=fs.n, unit="feat", desc="export", disable=not progress)
        for lo, block in fs.iter_blocks(4096):
            for k, v in enumerate(block):
                target = root / f"{paths[lo + k]}{file_ending}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(matio_bytes(v))
            bar.update(len(block))
        bar.close()
        return fs.n
