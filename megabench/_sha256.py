"""sha256 of a file's bytes: :func:`megabench.fileio.sha256_file`, and the child process of
:class:`megabench.fileio.BackgroundSha256` (``python -I -S _sha256.py FILE`` prints ``ok <hex>`` or
``error <errno> <message>``). Standard library only, so the child starts without megabench's imports."""

import hashlib
import sys


def sha256_of(path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of the file's bytes, read in ``chunk_bytes`` pieces into one reused buffer."""
    h = hashlib.sha256()
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


if __name__ == "__main__":
    try:
        digest = sha256_of(sys.argv[1], 1 << 24)
    except OSError as exc:
        print("error", exc.errno or 0, exc.strerror or exc)
        sys.exit(1)
    print("ok", digest)
