"""Pair lists over an image folder: LFW ``pairs.txt`` and plain ``path1 path2 0|1`` lists.

Both give a :class:`PairList`: 2N image keys (pair k = keys 2k and 2k+1, the same order as a
``.bin`` pack) with the 2N absolute paths, and N ``issame`` flags. A key is the image path relative
to the images root, with ``/`` separators (``Aaron_Peirsol/Aaron_Peirsol_0001.jpg``); a feature
store made from the folder names its rows by that key.

LFW ``pairs.txt`` (view 2): a header ``<sets> <pairs_per_set>`` (``10 300``), then per set
``pairs_per_set`` positive lines ``name n1 n2`` and as many negative lines ``name1 n1 name2 n2``;
image ``<root>/<name>/<name>_<n:04d>.<ext>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megabench.errors import DataError
from megabench.fileio import resolve_inside, sha256_file


@dataclass(frozen=True)
class PairList:
    """``keys``/``paths``: 2N image keys and absolute paths; ``issame``: (N,) bool; ``source``: list file."""

    keys: tuple[str, ...]
    paths: tuple[Path, ...]
    issame: np.ndarray
    source: str
    root: Path

    @property
    def n_pairs(self) -> int:
        return int(self.issame.size)

    @property
    def n_images(self) -> int:
        return len(self.keys)

    @property
    def sha256(self) -> str:
        """sha256 of the pair-list file (the images are not hashed)."""
        return sha256_file(self.source)


def _check_exist(paths: list[Path], source: str) -> None:
    missing = [p for p in dict.fromkeys(paths) if not p.is_file()]
    if missing:
        first = ", ".join(str(p) for p in missing[:3])
        raise DataError(f"{source}: {len(missing)} image(s) named by the pair list do not exist (first: {first}); "
                        "check the images root (--images) and the file extension")


def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such pair list") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text pair list (binary content); a .bin pack must end in .bin") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            out.append((lineno, stripped.split()))
    return out


def read_lfw_pairs(
    pairs_txt: str | os.PathLike, images_root: str | os.PathLike, *, ext: str = "jpg", check_files: bool = True
) -> PairList:
    """Read LFW ``pairs.txt`` over ``images_root``; missing images raise :class:`DataError`."""
    src = Path(pairs_txt)
    root = Path(images_root).resolve()
    lines = _read_lines(src)
    if not lines:
        raise DataError(f"{src}: empty pair list")
    (_, header), body = lines[0], lines[1:]
    if len(header) != 2 or not all(h.isdigit() for h in header):
        raise DataError(f"{src}: first line must be the header `<sets> <pairs_per_set>` (e.g. `10 300`), "
                        f"found {' '.join(header)!r}")
    n_sets, per_set = int(header[0]), int(header[1])
    if len(body) != 2 * n_sets * per_set:
        raise DataError(f"{src}: header promises {n_sets} x 2 x {per_set} = {2 * n_sets * per_set} pairs, "
                        f"file has {len(body)} pair lines")
    keys: list[str] = []
    issame: list[bool] = []
    for lineno, tok in body:
        try:
            if len(tok) == 3:
                name, a, b = tok
                keys += [f"{name}/{name}_{int(a):04d}.{ext}", f"{name}/{name}_{int(b):04d}.{ext}"]
                issame.append(True)
            elif len(tok) == 4:
                n1, a, n2, b = tok
                keys += [f"{n1}/{n1}_{int(a):04d}.{ext}", f"{n2}/{n2}_{int(b):04d}.{ext}"]
                issame.append(False)
            else:
                raise ValueError
        except ValueError:
            raise DataError(f"{src}:{lineno}: expected `name n1 n2` or `name1 n1 name2 n2`, "
                            f"found {' '.join(tok)!r}") from None
    paths = [resolve_inside(root, k, source=f"{src} (image {k})", follow_links=False) for k in keys]
    if check_files:
        _check_exist(paths, str(src))
    return PairList(tuple(keys), tuple(paths), np.asarray(issame, dtype=bool), str(src), root)


def read_pair_list(
    path: str | os.PathLike, images_root: str | os.PathLike | None = None, *, check_files: bool = True
) -> PairList:
    """Read a plain pair list: one ``path1 path2 label`` line per pair, label 1 (same) or 0.

    Relative paths are taken relative to ``images_root`` (default: the list's folder); every path,
    absolute ones included, must lie inside that root (``..`` may not leave it). Blank lines and
    ``#`` comments are skipped. Missing images raise :class:`DataError` naming them.
    """
    src = Path(path)
    root = Path(images_root).resolve() if images_root is not None else src.resolve().parent
    keys: list[str] = []
    paths: list[Path] = []
    issame: list[bool] = []
    for lineno, tok in _read_lines(src):
        if len(tok) != 3 or tok[2] not in ("0", "1"):
            raise DataError(f"{src}:{lineno}: expected `path1 path2 0|1`, found {' '.join(tok)!r}")
        for t in tok[:2]:
            full = resolve_inside(root, t, source=f"{src}:{lineno}", follow_links=False)
            paths.append(full)
            keys.append(full.relative_to(root).as_posix())
        issame.append(tok[2] == "1")
    if not issame:
        raise DataError(f"{src}: no pairs found; expected lines `path1 path2 0|1`")
    if check_files:
        _check_exist(paths, str(src))
    return PairList(tuple(keys), tuple(paths), np.asarray(issame, dtype=bool), str(src), root)


def looks_like_lfw_pairs(path: str | os.PathLike) -> bool:
    """True when the first non-comment line is an LFW header of two integers (``10 300``)."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                tok = line.split()
                if tok and not tok[0].startswith("#"):
                    return len(tok) == 2 and all(t.isdigit() for t in tok)
    except (OSError, UnicodeDecodeError):
        return False
    return False


def rows_for_keys(pairs: PairList, store_paths: list[str], *, source: str) -> np.ndarray:
    """Feature-store row of every pair image (2N,), matching store paths to image keys.

    A store path matches when it equals the key, or is an absolute path that is the image's path.
    Missing images raise :class:`DataError` naming the first ones and the count.
    """
    index: dict[str, int] = {}
    repeated: dict[str, list[int]] = {}
    for row, sp in enumerate(store_paths):
        norm = sp[2:] if sp.startswith("./") else sp
        p = Path(norm)
        if p.is_absolute():
            try:
                norm = p.resolve().relative_to(pairs.root).as_posix()
            except ValueError:
                norm = p.as_posix()
        first = index.setdefault(norm, row)
        if first != row:
            repeated.setdefault(norm, [first]).append(row)
    used_twice = [k for k in dict.fromkeys(pairs.keys) if k in repeated]
    if used_twice:
        k = used_twice[0]
        raise DataError(f"{source}: `paths` names {len(used_twice)} image(s) of the pair list more than once "
                        f"(first: {k!r} at rows {repeated[k][:5]}); which row holds its features is ambiguous: "
                        "write each image once")
    rows = np.empty(len(pairs.keys), dtype=np.int64)
    missing: list[str] = []
    for i, k in enumerate(pairs.keys):
        r = index.get(k)
        if r is None:
            missing.append(k)
            r = -1
        rows[i] = r
    if missing:
        uniq = list(dict.fromkeys(missing))
        raise DataError(f"{source}: no features for {len(uniq)} image(s) of the pair list (first: {uniq[:3]}); "
                        "the store's `paths` must name images relative to the images root")
    return rows
