"""insightface verification packs (``lfw.bin``, ``agedb_30.bin``, ``cfp_fp.bin``), read safely.

Layout: one pickle of ``(bins, issame_list)``. ``bins`` holds 2N encoded images (pair k is items
2k and 2k+1), each raw JPEG/PNG ``bytes`` or a 1-D / (L, 1) ``uint8`` numpy array (cv2.imencode);
``issame_list`` holds N bools. Packs written by Python 2 are read with ``encoding="bytes"``.

The pickle is never given to ``pickle.load``: :class:`RestrictedUnpickler` resolves only numpy
array reconstruction (``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``, ``_frombuffer``,
object dtypes refused) and ``_codecs.encode(text, "latin1")`` (how protocol 2 stores bytes).
Any other global raises :class:`~megabench.errors.UnsafePickleError` before anything is called.
"""

from __future__ import annotations

import _codecs
import io
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megabench.errors import DataError, UnsafePickleError
from megabench.fileio import atomic_write_bytes, sha256_bytes

# numpy's own reconstruct function, whichever module numpy keeps it in (1.x: numpy.core, 2.x: numpy._core)
_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]


def _safe_dtype(*args: object) -> np.dtype:
    dt = np.dtype(*args)  # type: ignore[call-overload]
    if dt.hasobject:
        raise UnsafePickleError(f"pickle asks for an object dtype ({dt}); refused")
    return dt


def _safe_scalar(dtype: np.dtype, data: bytes = b"") -> np.generic:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError("pickle asks for a numpy scalar of object dtype; refused")
    if not isinstance(data, bytes):
        raise UnsafePickleError("numpy scalar data must be bytes")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _safe_frombuffer(buf: object, dtype: np.dtype, shape: tuple[int, ...], order: str = "C") -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError("pickle asks for an array of object dtype; refused")
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise UnsafePickleError("numpy array buffer must be bytes")
    arr = np.frombuffer(bytes(buf), dtype=dtype)
    return arr.reshape(shape, order="F" if order == "F" else "C")


def _safe_encode(text: object, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode is only allowed as encode(str, 'latin1'), got {encoding!r}")
    return _codecs.encode(text, "latin1")


#: (module, name) -> callable the pickle may use. Nothing else resolves.
ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("_codecs", "encode"): _safe_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` (numpy arrays and plain containers).

    ``max_bytes`` bounds what the pickle may make it allocate (arrays it asks for, buffers it copies,
    text it encodes), counted before each allocation: a pack holds its pixels, so a legitimate pack
    never needs more than its own size. Exceeding it raises :class:`UnsafePickleError` at once.
    """

    def __init__(self, file: io.BufferedIOBase, *, source: str = "pickle", max_bytes: int | None = None) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source
        self.max_bytes = max_bytes
        self.charged = 0
        self._globals = dict(ALLOWED_GLOBALS)
        guarded = self._guarded()
        for key, target in ALLOWED_GLOBALS.items():
            if target in guarded:
                self._globals[key] = guarded[target]

    def charge(self, n_bytes: int, what: str) -> None:
        """Count ``n_bytes`` about to be allocated; refuse when the pack's budget is exceeded."""
        if n_bytes < 0:
            raise UnsafePickleError(f"{self.source}: the pickle asks for a negative size ({what}); refused")
        self.charged += n_bytes
        if self.max_bytes is not None and self.charged > self.max_bytes:
            raise UnsafePickleError(
                f"{self.source}: the pickle asks for {self.charged:,} bytes ({what}) but the file holds "
                f"{self.max_bytes:,}; a pack never needs more memory than its size: refused before allocating")

    def _guarded(self) -> dict[object, object]:
        """Budget-checked stand-ins for the allow-listed callables that allocate."""
        unpickler = self

        class GuardedArray(np.ndarray):  # what the pickle gets for numpy.ndarray: calling it is charged
            def __new__(cls, shape=(), dtype=float, *args, **kwargs):  # noqa: ANN001, ANN204
                dt = _safe_dtype(dtype)
                unpickler.charge(_nbytes(shape, dt, unpickler.source), "numpy.ndarray")
                return np.ndarray.__new__(np.ndarray, shape, dt, *args, **kwargs)

        def reconstruct(subtype: object, shape: object, dtype: object) -> np.ndarray:
            if subtype not in (np.ndarray, GuardedArray):
                raise UnsafePickleError(f"{unpickler.source}: _reconstruct of {subtype!r}; only numpy.ndarray")
            dt = _safe_dtype(dtype) if not isinstance(dtype, bytes) else np.dtype(np.uint8)
            unpickler.charge(_nbytes(shape, dt, unpickler.source), "numpy array")
            return _RECONSTRUCT(np.ndarray, shape, dtype)

        def frombuffer(buf: object, dtype: np.dtype, shape: tuple[int, ...], order: str = "C") -> np.ndarray:
            unpickler.charge(len(buf) if isinstance(buf, (bytes, bytearray)) else 0, "array buffer")
            return _safe_frombuffer(buf, dtype, shape, order)

        def encode(text: object, encoding: str = "utf-8") -> bytes:
            unpickler.charge(len(text) if isinstance(text, str) else 0, "encoded text")
            return _safe_encode(text, encoding)

        return {np.ndarray: GuardedArray, _RECONSTRUCT: reconstruct, _safe_frombuffer: frombuffer,
                _safe_encode: encode}

    def find_class(self, module: str, name: str) -> object:
        target = self._globals.get((module, name))
        if target is None:
            raise UnsafePickleError(
                f"{self.source}: the pickle asks for {module}.{name}, which an insightface pack never needs; "
                "refused and nothing was executed. Re-create the pack from its images "
                "(megabench.data.bin_format.write_bin) if you trust its origin"
            )
        return target

    def persistent_load(self, pid: object) -> object:
        raise UnsafePickleError(f"{self.source}: the pickle uses persistent ids; refused")


def _nbytes(shape: object, dtype: np.dtype, source: str) -> int:
    """Bytes of an array of ``shape`` and ``dtype``, in Python integers (no overflow)."""
    dims = (shape,) if isinstance(shape, int) else shape
    if not isinstance(dims, (tuple, list)) or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise UnsafePickleError(f"{source}: array shape {shape!r} is not a tuple of integers; refused")
    n = dtype.itemsize
    for d in dims:
        if d < 0:
            raise UnsafePickleError(f"{source}: negative array dimension in {shape!r}; refused")
        n *= int(d)
    return n


def safe_loads(data: bytes, *, source: str = "pickle", max_bytes: int | None = None) -> object:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; any failure is a :class:`DataError` naming ``source``.

    ``max_bytes`` (default: ``len(data)`` + 1 MiB) bounds the memory the pickle may ask for.
    """
    if data[:1] not in (b"\x80", b"(", b"]", b"}"):
        raise DataError(f"{source}: not a pickle (starts with {data[:8]!r}); expected an insightface .bin pack")
    budget = len(data) + (1 << 20) if max_bytes is None else max_bytes
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source, max_bytes=budget).load()
    except UnsafePickleError as exc:
        msg = str(exc)
        if msg.startswith(f"{source}:"):
            raise
        raise UnsafePickleError(f"{source}: {msg}") from None
    except EOFError:
        raise DataError(f"{source}: pickle ends early (truncated file?); copy or download the pack again") from None
    except Exception as exc:  # malformed pickle: UnpicklingError, ValueError, TypeError, struct errors...
        raise DataError(
            f"{source}: unreadable pickle ({type(exc).__name__}: {exc}); the pack is damaged or not an insightface .bin"
        ) from None


def decode_image(data: bytes, *, source: str = "image") -> np.ndarray:
    """Decode JPEG/PNG bytes with Pillow into RGB uint8 (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{source}: cannot decode image ({exc}); the pack entry is not a valid JPEG/PNG") from None


def encode_image(image: np.ndarray, *, fmt: str = "jpeg", quality: int = 95) -> bytes:
    """Encode an RGB uint8 (H, W, 3) image as JPEG or PNG bytes with Pillow."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    if fmt.lower() in ("jpeg", "jpg"):
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    elif fmt.lower() == "png":
        Image.fromarray(image).save(buf, format="PNG")
    else:
        raise ValueError(f"image format must be jpeg or png, not {fmt!r}")
    return buf.getvalue()


@dataclass
class VerificationPack:
    """A decoded-on-demand verification pack.

    ``encoded``: 2N encoded images (bytes); pair k is images ``2k`` and ``2k + 1``.
    ``issame``: (N,) bool. ``sha256``: of the file bytes ("" when built in memory).
    """

    encoded: list[bytes]
    issame: np.ndarray
    source: str = "pack"
    sha256: str = ""

    @property
    def n_pairs(self) -> int:
        return int(self.issame.size)

    @property
    def n_images(self) -> int:
        return len(self.encoded)

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` (0 <= i < 2N) as RGB uint8 (H, W, 3)."""
        return decode_image(self.encoded[i], source=f"{self.source} image {i}")

    def images(self) -> Iterator[np.ndarray]:
        """All 2N images in pack order, decoded one at a time."""
        for i in range(self.n_images):
            yield self.image(i)

    def pair_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Image indices of the two sides of every pair: ``(0, 2, 4, ...)``, ``(1, 3, 5, ...)``."""
        idx = np.arange(self.n_images)
        return idx[0::2], idx[1::2]


def _check_item(item: object, i: int, source: str) -> None:
    if isinstance(item, (bytes, bytearray)):
        return
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or (item.ndim == 2 and item.shape[1] != 1) or item.ndim > 2:
            raise DataError(f"{source}: image {i} is a {item.dtype} array of shape {item.shape}; "
                            "expected encoded bytes or a 1-D uint8 array (cv2.imencode)")
        return
    raise DataError(f"{source}: image {i} is a {type(item).__name__}; expected encoded bytes or a uint8 array")


def _as_bytes(item: bytes | bytearray | np.ndarray) -> bytes:
    return item.tobytes() if isinstance(item, np.ndarray) else bytes(item)


def _check_image_sizes(bins: list | tuple, source: str, max_bytes: int | None) -> None:
    """Each image a distinct object (no memo reference reused as another image), all of them within
    ``max_bytes`` together: checked before any image is copied."""
    seen: dict[int, int] = {}
    total = 0
    for i, b in enumerate(bins):
        if isinstance(b, (bytes, bytearray, np.ndarray)):
            if id(b) in seen:
                raise DataError(f"{source}: image {i} is the same pickled object as image {seen[id(b)]} (a memo "
                                "reference); a pack stores every image itself: refused")
            seen[id(b)] = i
            total += b.nbytes if isinstance(b, np.ndarray) else len(b)
    if max_bytes is not None and total > max_bytes:
        raise DataError(f"{source}: images claim {total:,} bytes but the file holds {max_bytes:,}; refused "
                        "(damaged or hostile pack)")


def parse_pack(obj: object, *, source: str = "pack", max_bytes: int | None = None) -> tuple[list[bytes], np.ndarray]:
    """Check an unpickled ``(bins, issame_list)`` object; returns (2N encoded images, (N,) bool).

    ``max_bytes``: the most the images may hold together (the file's size), checked before copying."""
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{source}: expected a pickled pair (bins, issame_list), got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise DataError(f"{source}: `bins` is a {type(bins).__name__}, expected a list of encoded images")
    if isinstance(issame, np.ndarray):
        issame = issame.tolist()
    if not isinstance(issame, (list, tuple)) or not all(
        isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)) for v in issame
    ):
        raise DataError(f"{source}: `issame_list` must be a list of booleans")
    for i, b in enumerate(bins):
        _check_item(b, i, source)
    _check_image_sizes(bins, source, max_bytes)
    encoded = [_as_bytes(b) for b in bins]
    if len(encoded) != 2 * len(issame):
        raise DataError(f"{source}: {len(encoded)} images for {len(issame)} pairs; a pack has exactly 2 images "
                        "per pair (pair k = images 2k, 2k+1). The file is damaged or not a verification pack")
    return encoded, np.asarray(issame, dtype=bool).reshape(-1)


def read_bin(path: str | os.PathLike) -> VerificationPack:
    """Read an insightface ``.bin`` pack safely (see module docstring). Images are decoded lazily."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{p}: no such pack file") from None
    except IsADirectoryError:
        raise DataError(f"{p}: is a directory, expected an insightface .bin pack") from None
    except PermissionError:
        raise DataError(f"{p}: permission denied; make the pack readable") from None
    if not data:
        raise DataError(f"{p}: empty file; expected an insightface .bin pack")
    obj = safe_loads(data, source=str(p))
    encoded, issame = parse_pack(obj, source=str(p), max_bytes=len(data))
    return VerificationPack(encoded=encoded, issame=issame, source=str(p), sha256=sha256_bytes(data))


def write_bin(
    path: str | os.PathLike,
    images: Sequence[bytes | np.ndarray],
    issame: Sequence[bool] | np.ndarray,
    *,
    as_arrays: bool = False,
    fmt: str = "jpeg",
    protocol: int = 4,
) -> Path:
    """Write a pack in insightface's layout, atomically.

    ``images``: 2N items, each encoded bytes (stored as is) or an RGB uint8 (H, W, 3) array (encoded
    as ``fmt``). ``as_arrays=True`` stores each image as a 1-D uint8 numpy array (like
    ``cv2.imencode``), otherwise as ``bytes`` (like insightface's ``lfw2pack.py``). ``protocol``:
    pickle protocol 2..5 (2 is readable by Python 2).
    """
    issame_list = [bool(v) for v in np.asarray(issame).reshape(-1)]
    if len(images) != 2 * len(issame_list):
        raise ValueError(f"{len(images)} images for {len(issame_list)} pairs; need exactly 2 per pair")
    bins: list[bytes | np.ndarray] = []
    for im in images:
        b = bytes(im) if isinstance(im, (bytes, bytearray)) else encode_image(im, fmt=fmt)
        bins.append(np.frombuffer(b, dtype=np.uint8).copy() if as_arrays else b)
    data = pickle.dumps((bins, issame_list), protocol=protocol)
    return atomic_write_bytes(path, data)
