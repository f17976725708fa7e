"""Atomic writes, output guards, safe relative paths and content hashes.

- :func:`atomic_path` / :func:`atomic_write_bytes` / :func:`atomic_write_json`: nothing half-written is
  ever left under a final name; the file gets the user's normal mode (``0o666 & ~umask``).
- :func:`check_output` / :func:`check_output_dir`: called by every command BEFORE its work: an output
  must not be an input of the same run (same resolved path or same inode), must be writable, and must
  not replace a file the command did not write unless ``force``.
- :class:`RunFiles`: remember files this run created; delete only those (same inode).
- :func:`resolve_inside`: a path named by a data file (store ``paths``, pair lists, devkit lists) must
  resolve inside its root, or it is refused.
- :func:`sha256_file`, :class:`BackgroundSha256` (the same hash computed in a child process while the
  caller does other work); the digest of a large file is remembered while the file is unchanged (same
  device, inode, size, mtime and ctime: :func:`remembered_sha256`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from megabench.errors import DataError, OutputError

PathLike = str | os.PathLike
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read from /proc on Linux, else set-and-restore under a lock)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    On any exception the temporary file is removed and ``path`` is untouched. The published file
    gets ``mode`` (default :func:`default_file_mode`, not mkstemp's 0600).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, default_file_mode() if mode is None else mode)
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def _jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays -> Python; non-finite floats -> None (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps_json(obj: Any) -> str:
    return json.dumps(_jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, dumps_json(obj).encode("utf-8"))


#: files of at least this many bytes have their sha256 remembered in :func:`sha256_cache_path`
SHA256_CACHE_MIN_BYTES = 64 << 20
#: entries kept in that file (the longest-remembered go first)
SHA256_CACHE_ENTRIES = 256
#: a file changed less than this long before it was hashed is not remembered: file times tick coarsely
#: (a jiffy), so a second write within the same tick could leave size, mtime and ctime as they were
SHA256_SETTLE_NS = 2_000_000_000


def sha256_cache_path() -> Path:
    """``<megabench cache>/sha256-cache.json``: remembered digests of large files (see :func:`remembered_sha256`)."""
    from megabench.config import cache_dir

    return cache_dir() / "sha256-cache.json"


def _stat_key(path: PathLike) -> tuple[str, list[int]] | None:
    """(``dev:ino``, ``[size, mtime_ns, ctime_ns]``) of a regular file of at least SHA256_CACHE_MIN_BYTES."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size < SHA256_CACHE_MIN_BYTES:
        return None
    return f"{st.st_dev}:{st.st_ino}", [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _settled_key(path: PathLike) -> tuple[str, list[int]] | None:
    """:func:`_stat_key` of a file that has not changed for SHA256_SETTLE_NS (else None: not to be remembered)."""
    key = _stat_key(path)
    if key is None or time.time_ns() - max(key[1][1:]) < SHA256_SETTLE_NS:
        return None
    return key


def _read_sha256_cache() -> dict[str, Any]:
    try:
        data = json.loads(sha256_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("version") == 1 else None
    return entries if isinstance(entries, dict) else {}


def remembered_sha256(path: PathLike) -> str | None:
    """The sha256 remembered for ``path`` by :func:`remember_sha256`, if the file is unchanged since.

    Unchanged means the same file (device and inode) with the same size, modification time and status-change
    time, all in nanoseconds. Any write to a file moves its ctime, and ctime cannot be set back (``touch``
    and ``os.utime`` set mtime and so move ctime too): a changed file never matches (git decides which files
    to re-hash the same way). Files under SHA256_CACHE_MIN_BYTES are never remembered: hashing them is cheap.
    """
    key = _stat_key(path)
    if key is None:
        return None
    entry = _read_sha256_cache().get(key[0])
    if isinstance(entry, dict) and entry.get("stat") == key[1] and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    return None


def remember_sha256(path: PathLike, digest: str, key: tuple[str, list[int]] | None) -> None:
    """Remember ``digest`` for ``path`` if its stat still equals ``key`` (:func:`_settled_key`, taken before the
    hash was read: None when the file had changed less than SHA256_SETTLE_NS before, a "racy" entry as git
    calls it): a file written while it was hashed is not remembered. Best effort: an unwritable cache is
    ignored."""
    if key is None or _stat_key(path) != key:
        return
    entries = _read_sha256_cache()
    entries.pop(key[0], None)
    entries[key[0]] = {"stat": key[1], "sha256": digest, "path": str(Path(path).resolve())}
    for old in list(entries)[:-SHA256_CACHE_ENTRIES]:
        del entries[old]
    with contextlib.suppress(OSError):
        atomic_write_json(sha256_cache_path(), {"version": 1, "entries": entries})


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of the file's bytes, read in ``chunk_bytes`` pieces into one reused buffer (a large file's
    digest is remembered while the file is unchanged: :func:`remembered_sha256`)."""
    from megabench._sha256 import sha256_of

    known = remembered_sha256(path)
    if known is not None:
        return known
    key = _settled_key(path)
    digest = sha256_of(path, chunk_bytes)
    remember_sha256(path, digest, key)
    return digest


class BackgroundSha256:
    """:func:`sha256_file` of ``path`` computed in a child process from construction on.

    A 2 GB distractor store takes ~1.5 s to hash when cached (several seconds from disk) while the caller
    parses lists and builds tables. A thread could not keep up: it needs the GIL between pieces, and the
    caller's long C calls (an HDF5 read, a JSON parse, a dict of 1M paths) hold it, so the hash took
    ~3 s beside them; a process has its own interpreter. :meth:`result` waits and returns the hex digest,
    or raises the child's ``OSError`` (``FileNotFoundError`` for a missing file); :meth:`cancel` stops the
    child (the caller gave up: its own error wins). A digest that :func:`remembered_sha256` still holds for
    the file is returned without starting a child; a computed one is remembered.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._hex: str | None = remembered_sha256(self.path)
        self._cancelled = False
        self._proc: subprocess.Popen | None = None
        if self._hex is not None:  # unchanged since it was hashed: no child
            return
        self._key = _settled_key(self.path)
        child = Path(__file__).with_name("_sha256.py")  # sha256_file's loop, standard library only
        self._proc = subprocess.Popen([sys.executable, "-I", "-S", str(child), str(self.path)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @property
    def remembered(self) -> bool:
        """True when the digest came from :func:`remembered_sha256` (no child was started)."""
        return self._proc is None

    def result(self) -> str:
        if self._hex is not None:
            return self._hex
        out, err = self._proc.communicate()
        words = out.split(maxsplit=2)
        if self._proc.returncode == 0 and len(words) == 2 and words[0] == "ok":
            self._hex = words[1]
            remember_sha256(self.path, self._hex, self._key)
            return self._hex
        if self._cancelled:
            raise RuntimeError(f"the hash of {self.path} was cancelled before it finished")
        if len(words) == 3 and words[0] == "error":
            raise OSError(int(words[1]) or None, words[2].strip(), str(self.path))  # ENOENT: FileNotFoundError
        raise RuntimeError(f"hashing {self.path} failed (exit {self._proc.returncode}): {err.strip()[-500:]}")

    def cancel(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._cancelled = True
            self._proc.kill()
        self._proc.communicate()  # reap it, close the pipes


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# output guards
# --------------------------------------------------------------------------------------------
def file_identity(path: PathLike) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of ``path`` (symlinks followed), or None when it does not exist."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file: same resolved path, or same inode (hard link)."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    ia = file_identity(a)
    return ia is not None and ia == file_identity(b)


def _read_only(st: os.stat_result) -> bool:
    return not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def _check_writable_dir(folder: Path, *, shown: PathLike, option: str) -> None:
    """``folder`` (or its nearest existing ancestor, where it would be created) accepts new files."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{shown}: cannot write {option} there: {probe} is a file, not a folder; "
                          "choose another path")
    try:
        st = probe.stat()
    except OSError as exc:
        raise OutputError(f"{shown}: cannot write {option} there ({exc.strerror}); choose another path") from None
    if _read_only(st) or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{shown}: cannot write {option}: folder {probe} is read-only; "
                          "make it writable or choose another path")
    if probe == folder:  # the real test: create (and remove) an empty file there
        try:
            fd, tmp = tempfile.mkstemp(prefix=".megabench-probe.", dir=folder)
        except OSError as exc:
            raise OutputError(f"{shown}: cannot write {option} in {folder} ({exc.strerror}); "
                              "make it writable or choose another path") from None
        os.close(fd)
        os.unlink(tmp)


def check_output(
    path: PathLike,
    *,
    inputs: Iterable[PathLike | None] = (),
    force: bool = False,
    replaceable: Callable[[Path], bool] | None = None,
    option: str = "--out",
) -> Path:
    """Check, BEFORE any work, that this run may write the file ``path``; returns ``Path(path)``.

    Raises :class:`~megabench.errors.OutputError` (a one-line message naming the file) when

    - ``path`` is one of ``inputs`` (same resolved path or same inode; ``None`` entries ignored):
      never allowed, ``force`` or not;
    - ``path`` is a directory or another non-regular file, or is read-only (no write bit);
    - its folder cannot be created or written;
    - ``path`` exists, ``force`` is false and ``replaceable`` is None or ``replaceable(path)`` is
      false. ``replaceable`` recognises a file this kind of command writes (e.g.
      ``megabench.results.is_result_file``), which a re-run may replace.

    Nothing is created or changed (a probe file is made and removed in the folder).
    """
    out = Path(path)
    for inp in inputs:
        if inp is not None and same_file(out, inp):
            raise OutputError(f"{out}: {option} is also an input of this run ({inp}); writing it would destroy "
                              f"the input: choose another {option}")
    if out.exists() or out.is_symlink():
        try:
            st = out.stat()
        except OSError:
            raise OutputError(f"{out}: {option} is a dangling link; remove it or choose another path") from None
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{out}: {option} is a folder; give a file path")
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{out}: {option} is not a regular file; choose another path")
        if _read_only(st):
            raise OutputError(f"{out}: {option} exists and is read-only; it will not be replaced: "
                              "choose another path (or make it writable)")
        if not force and (replaceable is None or not replaceable(out)):
            raise OutputError(f"{out}: {option} exists and was not written by this kind of megabench command; "
                              "pass --force to replace it, or choose another path")
    _check_writable_dir(out.parent if str(out.parent) else Path("."), shown=out, option=option)
    return out


def check_output_dir(
    folder: PathLike,
    names: Iterable[str],
    *,
    inputs: Iterable[PathLike | None] = (),
    force: bool = False,
    replaceable: Callable[[Path], bool] | None = None,
    option: str = "--out",
) -> Path:
    """:func:`check_output` for each file ``folder / name`` a command will write; returns ``Path(folder)``.

    ``folder`` must be a folder (or not exist yet, then it is created by the command).
    """
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: {option} must be a folder, but it is a file; choose another path")
    inputs = list(inputs)
    for name in names:
        check_output(out / name, inputs=inputs, force=force, replaceable=replaceable, option=option)
    _check_writable_dir(out, shown=out, option=option)
    return out


class RunFiles:
    """The files this run created, by identity; only those may be deleted by it.

    >>> state_path = Path("run.state")
    >>> _ = state_path.write_bytes(b"...")
    >>> created = RunFiles()
    >>> created.add(state_path)          # right after writing it
    >>> created.remove(state_path)       # deletes only if it is still the file we wrote
    True
    """

    def __init__(self) -> None:
        self._ids: dict[Path, tuple[int, int]] = {}

    def add(self, path: PathLike) -> None:
        ident = file_identity(path)
        if ident is None:
            raise FileNotFoundError(path)
        self._ids[Path(path).resolve()] = ident

    def owns(self, path: PathLike) -> bool:
        ident = self._ids.get(Path(path).resolve())
        return ident is not None and ident == file_identity(path)

    def remove(self, path: PathLike) -> bool:
        """Delete ``path`` if this run created it and it was not replaced since; True when deleted."""
        if not self.owns(path):
            return False
        Path(path).unlink()
        del self._ids[Path(path).resolve()]
        return True


def resolve_inside(root: PathLike, relpath: PathLike, *, source: str, follow_links: bool = True) -> Path:
    """``root / relpath`` made absolute; refused unless it lies inside ``root``.

    ``relpath`` comes from a data file (store ``paths``, pair list, devkit list, image tree);
    ``source`` names that file (and entry) for the message. An absolute ``relpath`` is accepted only
    when it lies inside ``root``; ``..`` may be used only while staying inside. With
    ``follow_links`` (the default, required for anything written) symlinks are resolved first, so a
    link inside ``root`` pointing out is refused too; ``follow_links=False`` checks the path as
    written (``..`` collapsed), for reading trees of symlinked images. Raises
    :class:`~megabench.errors.DataError` for an empty path, a NUL byte, or a path leaving ``root``.
    """
    text = os.fspath(relpath)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    if not text or "\x00" in text:
        raise DataError(f"{source}: empty or NUL-containing path {text!r}; every entry must name a file "
                        f"inside {root}")
    base = Path(root).resolve()
    full = (base / text).resolve() if follow_links else Path(os.path.normpath(base / text))
    if full != base and base not in full.parents:
        raise DataError(f"{source}: path {text!r} resolves outside its root {base} (to {full}); refused: "
                        "entries must be relative paths inside the root")
    return full
