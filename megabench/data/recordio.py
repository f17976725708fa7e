"""insightface / MXNet RecordIO (``train.rec`` + ``train.idx`` + ``property``), pure Python, no mxnet.

On disk (dmlc-core ``recordio.cc``), every frame is::

    uint32 magic = 0xced7230a | uint32 lrec | payload part | zero padding to a multiple of 4 bytes

with ``lrec = cflag << 29 | length`` (little endian). ``cflag`` 0 = a whole record, 1 = first part,
2 = middle part, 3 = last part. The writer splits a payload wherever the magic occurs at a 4-byte
aligned offset of the payload: the magic itself is dropped and the reader re-inserts it between the
parts. Parts other than the last always have a length divisible by 4 (they end at aligned offsets).

A record payload (MXNet ``recordio.pack``) starts with the 24-byte header ``struct '<IfQQ'``
``(flag, label, id, id2)``; ``flag > 0`` means ``flag`` float32 labels follow the header (and the
header's own ``label`` field is unused); then the encoded image.

``.idx``: one line per record, ``key<TAB>byte offset of its first frame``. ``property``:
``num_classes,height,width``. insightface's record 0 is a header-only record whose label ``(a, b)``
says that images are records ``1 .. a-1`` and records ``a .. b-1`` hold each identity's
``(start, end)`` image-key range.

:class:`RecordReader` opens the ``.rec`` lazily and re-opens it in a new process (DataLoader workers
fork): a file handle is never shared across ``fork``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megabench.errors import DataError
from megabench.fileio import atomic_path

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
MAX_LENGTH = (1 << 29) - 1
_FRAME = struct.Struct("<II")
HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2: 24 bytes


# ---------------------------------------------------------------------------------------------
# frames: the byte layer


def encode_lrec(cflag: int, length: int) -> int:
    """``cflag << 29 | length`` (cflag 0..3, length < 2**29)."""
    if not 0 <= cflag <= 3 or not 0 <= length <= MAX_LENGTH:
        raise ValueError(f"bad frame: cflag {cflag}, length {length}")
    return (cflag << 29) | length


def _padded(n: int) -> int:
    return (n + 3) & ~3


def encode_record(payload: bytes) -> bytes:
    """The on-disk frames of one record (split at every 4-byte aligned magic, zero padded)."""
    n = len(payload)
    if n > MAX_LENGTH:
        raise ValueError(f"record of {n} bytes exceeds the RecordIO limit of {MAX_LENGTH} bytes")
    out = bytearray()
    start = 0
    for i in range(0, n - n % 4, 4):
        if payload[i: i + 4] == MAGIC_BYTES:
            out += _FRAME.pack(MAGIC, encode_lrec(1 if start == 0 else 2, i - start))
            out += payload[start:i]
            start = i + 4
    out += _FRAME.pack(MAGIC, encode_lrec(3 if start else 0, n - start))
    out += payload[start:]
    out += b"\0" * (_padded(n) - n)
    return bytes(out)


def read_record_at(fh, offset: int, *, source: str = "record") -> tuple[bytes, int]:
    """Read the record whose first frame starts at ``offset`` of the binary file ``fh``.

    Returns ``(payload, offset of the next record)``. A bad magic, a bad continuation flag or a file
    that ends inside the record raises :class:`DataError` naming ``source``.
    """
    fh.seek(offset)
    parts: list[bytes] = []
    pos = offset
    expect_continuation = False
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise DataError(f"{source}: file ends inside the record at byte {pos} (truncated .rec?); "
                            "copy or regenerate the data set")
        magic, lrec = _FRAME.unpack(head)
        if magic != MAGIC:
            raise DataError(f"{source}: no RecordIO magic at byte {pos} (found {magic:#010x}); "
                            "the .rec is damaged or its .idx does not belong to it")
        cflag, length = lrec >> 29, lrec & MAX_LENGTH
        if cflag > 3 or (cflag in (0, 1)) == expect_continuation:
            raise DataError(f"{source}: bad continuation flag {cflag} at byte {pos}; the .rec is damaged")
        body = fh.read(_padded(length))
        if len(body) < _padded(length):
            raise DataError(f"{source}: file ends inside the record at byte {pos} ({length} bytes announced, "
                            f"{len(body)} present; truncated .rec?); copy or regenerate the data set")
        parts.append(body[:length])
        pos += 8 + len(body)
        if cflag in (0, 3):
            return MAGIC_BYTES.join(parts), pos
        expect_continuation = True


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """Every record of a ``.rec`` in file order, as ``(byte offset, payload)`` (no index needed)."""
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as fh:
        pos = 0
        while pos < size:
            payload, nxt = read_record_at(fh, pos, source=str(p))
            yield pos, payload
            pos = nxt


# ---------------------------------------------------------------------------------------------
# the record header (MXNet recordio.pack / unpack)


@dataclass(frozen=True)
class RecordHeader:
    """``flag`` 0: ``label`` is one float; ``flag`` > 0: ``label`` is a (flag,) float32 array."""

    flag: int
    label: float | np.ndarray
    id: int = 0
    id2: int = 0

    @property
    def class_label(self) -> int:
        """insightface's class: ``label`` or ``label[0]``."""
        lab = self.label
        return int(lab[0]) if isinstance(lab, np.ndarray) else int(lab)


def pack_payload(label: float | Iterable[float], data: bytes = b"", *, id: int = 0, id2: int = 0) -> bytes:
    """Header + (labels) + ``data``, as MXNet's ``recordio.pack``: a number gives ``flag`` 0, a
    sequence gives ``flag = len`` and float32 labels after the header."""
    if isinstance(label, (int, float, np.integer, np.floating)):
        return HEADER.pack(0, float(label), id, id2) + data
    arr = np.asarray(list(label), dtype="<f4")
    return HEADER.pack(arr.size, 0.0, id, id2) + arr.tobytes() + data


def unpack_payload(payload: bytes, *, source: str = "record") -> tuple[RecordHeader, bytes]:
    """Split a payload into its :class:`RecordHeader` and the bytes after it (the encoded image)."""
    if len(payload) < HEADER.size:
        raise DataError(f"{source}: record of {len(payload)} bytes is shorter than the 24-byte header; "
                        "the record is damaged")
    flag, label, rid, rid2 = HEADER.unpack_from(payload)
    if flag == 0:
        return RecordHeader(0, float(label), rid, rid2), payload[HEADER.size:]
    end = HEADER.size + 4 * flag
    if end > len(payload):
        raise DataError(f"{source}: header says {flag} labels follow but the record has only "
                        f"{len(payload) - HEADER.size} bytes after the header; the record header is corrupt")
    labels = np.frombuffer(payload, dtype="<f4", count=flag, offset=HEADER.size).astype(np.float32)
    return RecordHeader(flag, labels, rid, rid2), payload[end:]


# ---------------------------------------------------------------------------------------------
# index and property


def read_index(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A ``.idx`` file as ``(keys, offsets)``, two int64 arrays in file order."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{p}: no such index file; a .rec needs its .idx (key<TAB>offset per line) "
                        "beside it for random access") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise DataError(f"{p}: not a text index file (key<TAB>offset per line)") from None
    keys: list[int] = []
    offsets: list[int] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            k, off = int(fields[0]), int(fields[1])
            if off < 0:
                raise ValueError
        except ValueError:
            raise DataError(f"{p}:{n}: expected 'key<TAB>offset', got {line[:60]!r}") from None
        keys.append(k)
        offsets.append(off)
    if not keys:
        raise DataError(f"{p}: the index is empty")
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


def read_property(path: str | os.PathLike) -> tuple[int, int, int]:
    """insightface's ``property`` file: ``(num_classes, height, width)``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise DataError(f"{p}: missing; an insightface RecordIO set needs a 'property' file "
                        "holding 'num_classes,height,width' (e.g. 10572,112,112)") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise DataError(f"{p}: not a text file; expected 'num_classes,height,width'") from None
    try:
        values = tuple(int(v) for v in text.split(","))
        if len(values) != 3 or min(values) <= 0:
            raise ValueError
    except ValueError:
        raise DataError(f"{p}: expected 'num_classes,height,width' (three positive integers), "
                        f"got {text[:60]!r}") from None
    return values  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# random access reader


class RecordReader:
    """Random access to the records of ``rec_path`` through its index ``idx_path``.

    The ``.rec`` is opened on first use in each process and re-opened after a fork, so one reader
    may be handed to DataLoader workers. Offsets past the end of the ``.rec`` and a truncated last
record are refused at open.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise DataError(f"{self.rec_path}: no such RecordIO file")
        keys, offsets = read_index(self.idx_path)
        size = self.rec_path.stat().st_size
        bad = np.flatnonzero(offsets + 8 > size)
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{self.idx_path}: key {keys[i]} points to byte {offsets[i]} but "
                            f"{self.rec_path.name} has only {size} bytes (truncated .rec or a foreign .idx)")
        # a truncated .rec loses its last record: read that one whole now (cheap) so that it shows at open
        last = int(np.argmax(offsets))
        with open(self.rec_path, "rb") as fh:
            read_record_at(fh, int(offsets[last]), source=f"{self.rec_path} record {keys[last]}")
        self.keys = keys
        self._offset = dict(zip(keys.tolist(), offsets.tolist(), strict=True))
        if len(self._offset) != keys.size:
            raise DataError(f"{self.idx_path}: duplicate keys in the index")
        self._fh = None
        self._pid = -1

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fh"], state["_pid"] = None, -1
        return state

    def _file(self):
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.rec_path, "rb")  # noqa: SIM115 - kept open for random access
            self._pid = os.getpid()
        return self._fh

    def close(self) -> None:
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh, self._pid = None, -1

    def __contains__(self, key: int) -> bool:
        return int(key) in self._offset

    def offset(self, key: int) -> int:
        try:
            return self._offset[int(key)]
        except KeyError:
            raise DataError(f"{self.idx_path}: no record with key {key}") from None

    def read(self, key: int) -> bytes:
        """The payload of record ``key``."""
        src = f"{self.rec_path} record {key}"
        return read_record_at(self._file(), self.offset(key), source=src)[0]

    def read_header(self, key: int) -> RecordHeader:
        """Only the header of record ``key`` (reads a few dozen bytes, decodes no image)."""
        fh = self._file()
        off = self.offset(key)
        fh.seek(off)
        head = fh.read(8 + HEADER.size)
        if len(head) == 8 + HEADER.size:
            magic, lrec = _FRAME.unpack_from(head)
            flag = HEADER.unpack_from(head, 8)[0]
            need = HEADER.size + 4 * flag
            # fast path: a whole (unsplit) frame holding the header and its labels
            if magic == MAGIC and lrec >> 29 == 0 and (lrec & MAX_LENGTH) >= need:
                fh.seek(off + 8)
                return unpack_payload(fh.read(need), source=f"{self.rec_path} record {key}")[0]
        return unpack_payload(self.read(key), source=f"{self.rec_path} record {key}")[0]

    def read_record(self, key: int) -> tuple[RecordHeader, bytes]:
        """``(header, encoded image bytes)`` of record ``key``."""
        return unpack_payload(self.read(key), source=f"{self.rec_path} record {key}")


# ---------------------------------------------------------------------------------------------
# writer


class RecordWriter:
    """Write a ``.rec`` and its ``.idx`` atomically (both appear only when the block succeeds).

    >>> with RecordWriter("train.rec") as w:
    ...     _ = w.write(1, pack_payload(0, b"encoded image"))
    >>> RecordReader("train.rec").read(1) == pack_payload(0, b"encoded image")
    True
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self._pos = 0
        self._keys: set[int] = set()

    def __enter__(self) -> RecordWriter:
        self._rec_ctx = atomic_path(self.rec_path)
        self._idx_ctx = atomic_path(self.idx_path)
        self._rec_fh = open(self._rec_ctx.__enter__(), "wb")  # noqa: SIM115
        self._idx_fh = open(self._idx_ctx.__enter__(), "w", encoding="utf-8")  # noqa: SIM115
        return self

    def write(self, key: int, payload: bytes) -> int:
        """Append one record under ``key``; returns its byte offset."""
        key = int(key)
        if key in self._keys:
            raise ValueError(f"duplicate record key {key}")
        self._keys.add(key)
        frames = encode_record(payload)
        offset = self._pos
        self._rec_fh.write(frames)
        self._idx_fh.write(f"{key}\t{offset}\n")
        self._pos += len(frames)
        return offset

    def __exit__(self, exc_type, exc, tb) -> None:
        self._rec_fh.close()
        self._idx_fh.close()
        # the index is renamed first: a crash in between leaves no .rec under its final name
        self._idx_ctx.__exit__(exc_type, exc, tb)
        self._rec_ctx.__exit__(exc_type, exc, tb)


def write_insightface_recordio(
    out_dir: str | os.PathLike,
    images: Iterable[tuple[int, bytes]],
    *,
    image_size: tuple[int, int],
    num_classes: int | None = None,
    prefix: str = "train",
) -> Path:
    """Write ``out_dir/{prefix}.rec``, ``.idx`` and ``property`` in insightface's layout.

    ``images``: ``(class label, encoded image bytes)``, grouped by label (each class's images
    contiguous, labels 0..C-1 in order). Record 0 is the ``(a, b)`` header, records ``1 .. a-1``
    the images (header ``flag`` 0, ``label`` = class), records ``a .. b-1`` each class's
    ``(start, end)`` key range. ``num_classes`` defaults to the number of classes seen.
    Returns the ``.rec`` path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels: list[int] = []
    blobs: list[bytes] = []
    for label, data in images:
        labels.append(int(label))
        blobs.append(bytes(data))
    if not labels:
        raise ValueError("no images to write")
    lab = np.asarray(labels)
    if np.any(np.diff(lab) < 0) or lab[0] != 0 or np.any(np.diff(lab) > 1):
        raise ValueError("images must be grouped by class label, labels 0..C-1 in increasing order")
    n_classes = int(lab[-1]) + 1
    num_classes = n_classes if num_classes is None else int(num_classes)
    a = len(blobs) + 1
    b = a + n_classes
    rec = out / f"{prefix}.rec"
    with RecordWriter(rec) as w:
        w.write(0, pack_payload([float(a), float(b)]))
        for key, (label, data) in enumerate(zip(labels, blobs, strict=True), start=1):
            w.write(key, pack_payload(float(label), data, id=key))
        starts = np.searchsorted(lab, np.arange(n_classes), side="left") + 1
        ends = np.searchsorted(lab, np.arange(n_classes), side="right") + 1
        for c in range(n_classes):
            w.write(a + c, pack_payload([float(starts[c]), float(ends[c])], id=a + c))
    with atomic_path(out / "property") as tmp:
        tmp.write_text(f"{num_classes},{image_size[0]},{image_size[1]}\n", encoding="utf-8")
    return rec
