"""insightface .bin packs: the real sample, writer round trips, and the restricted unpickler."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools

import numpy as np
import pytest
from helpers import UPSTREAM_SHA256

from megabench.data.bin_format import decode_image, encode_image, read_bin, safe_loads, write_bin
from megabench.errors import DataError, UnsafePickleError


def _images(n, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size + 3, 3), dtype=np.uint8) for _ in range(n)]


def _globals(data: bytes) -> set[str]:
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.add(".".join(strings[-2:]))
        if isinstance(arg, str):
            strings.append(arg)
    return found


def test_real_small_lfw(small_lfw_bin):
    pack = read_bin(small_lfw_bin)
    assert pack.n_pairs == 10 and pack.n_images == 20
    assert pack.issame.dtype == bool and pack.issame.all()
    ims = list(pack.images())
    assert all(im.shape == (112, 112, 3) and im.dtype == np.uint8 for im in ims)
    assert all(b[:2] == b"\xff\xd8" for b in pack.encoded)  # cv2.imencode JPEGs
    assert all(im.std() > 10 for im in ims)  # real pictures, not blank decodes
    assert pack.sha256 == hashlib.sha256(small_lfw_bin.read_bytes()).hexdigest()
    assert pack.sha256.startswith("1ca73282")
    r1, r2 = pack.pair_rows()
    assert r1.tolist() == list(range(0, 20, 2)) and r2.tolist() == list(range(1, 20, 2))


def test_shipped_pack_is_the_upstream_original(small_lfw_bin):
    digest = hashlib.sha256(small_lfw_bin.read_bytes()).hexdigest()
    assert digest == UPSTREAM_SHA256["small_lfw.bin"]
    assert digest in (small_lfw_bin.parent / "ATTRIBUTION.md").read_text()


def test_real_pack_rewritten_by_our_writer(small_lfw_bin, tmp_path):
    pack = read_bin(small_lfw_bin)
    out = write_bin(tmp_path / "copy.bin", pack.encoded, pack.issame, as_arrays=True, protocol=3)
    again = read_bin(out)
    assert again.encoded == pack.encoded and np.array_equal(again.issame, pack.issame)
    assert np.array_equal(again.image(7), pack.image(7))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("as_arrays", [False, True])
def test_writer_round_trip_png_is_lossless(tmp_path, protocol, as_arrays):
    ims = _images(6)
    issame = [True, False, True]
    path = write_bin(tmp_path / "p.bin", ims, issame, as_arrays=as_arrays, fmt="png", protocol=protocol)
    data = path.read_bytes()
    # the layout insightface uses: (bins, issame_list)
    obj = safe_loads(data)
    assert isinstance(obj, tuple) and len(obj) == 2 and obj[1] == issame
    assert all(isinstance(b, np.ndarray) if as_arrays else isinstance(b, bytes) for b in obj[0])
    pack = read_bin(path)
    assert pack.issame.tolist() == issame
    for i, im in enumerate(ims):
        assert np.array_equal(pack.image(i), im)
    if protocol == 2 and not as_arrays:
        assert "_codecs.encode" in _globals(data)  # how protocol 2 stores bytes
    if protocol == 5 and as_arrays:
        assert any(g.endswith("_frombuffer") for g in _globals(data))


def test_jpeg_encode_decode_is_rgb():
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    out = decode_image(encode_image(red))
    assert out.shape == (16, 16, 3) and out[..., 0].min() > 240 and out[..., 1:].max() < 15


def test_truncated_empty_and_non_pickle(tmp_path):
    good = write_bin(tmp_path / "g.bin", _images(4), [True, False]).read_bytes()
    (tmp_path / "t.bin").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="t.bin.*(truncated|unreadable)"):
        read_bin(tmp_path / "t.bin")
    (tmp_path / "e.bin").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_bin(tmp_path / "e.bin")
    (tmp_path / "j.bin").write_bytes(encode_image(_images(1)[0]))
    with pytest.raises(DataError, match="not a pickle"):
        read_bin(tmp_path / "j.bin")
    with pytest.raises(DataError, match="no such"):
        read_bin(tmp_path / "missing.bin")


def test_wrong_counts_and_types(tmp_path):
    enc = [encode_image(im) for im in _images(3)]
    (tmp_path / "odd.bin").write_bytes(pickle.dumps((enc, [True, False])))
    with pytest.raises(DataError, match="3 images for 2 pairs"):
        read_bin(tmp_path / "odd.bin")
    (tmp_path / "ints.bin").write_bytes(pickle.dumps(([1, 2], [True])))
    with pytest.raises(DataError, match="image 0 is a int"):
        read_bin(tmp_path / "ints.bin")
    (tmp_path / "f32.bin").write_bytes(pickle.dumps(([np.zeros(4, np.float32)] * 2, [True])))
    with pytest.raises(DataError, match="float32"):
        read_bin(tmp_path / "f32.bin")
    (tmp_path / "dict.bin").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DataError, match="expected a pickled pair"):
        read_bin(tmp_path / "dict.bin")
    (tmp_path / "bad.bin").write_bytes(pickle.dumps((enc[:2], ["yes"])))
    with pytest.raises(DataError, match="booleans"):
        read_bin(tmp_path / "bad.bin")
    (tmp_path / "noimg.bin").write_bytes(pickle.dumps(([b"not an image", enc[0]], [True])))
    with pytest.raises(DataError, match="image 0: cannot decode"):
        read_bin(tmp_path / "noimg.bin").image(0)


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Open:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_executes_nothing(tmp_path, protocol):
    marker_sys = tmp_path / "pwned_system"
    marker_open = tmp_path / "pwned_open"
    payloads = {
        "system": ([_System(f"touch {marker_sys}"), b"x"], [True]),
        "open": ([_Open(str(marker_open)), b"x"], [True]),
    }
    for name, obj in payloads.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        with pytest.raises(UnsafePickleError, match=r"refused and nothing was executed") as info:
            read_bin(path)
        assert str(path) in str(info.value)
    assert not marker_sys.exists() and not marker_open.exists()
    # sanity: the payload really would have created the file with plain pickle
    pickle.loads(pickle.dumps(_Open(str(tmp_path / "control")), protocol=protocol)).close()
    assert (tmp_path / "control").exists()


def test_object_arrays_refused():
    data = pickle.dumps(([np.array([1, "a"], dtype=object), b"x"], [True]), protocol=2)
    with pytest.raises(UnsafePickleError, match="object dtype"):
        safe_loads(data)


def test_numpy_bool_issame_accepted(tmp_path):
    enc = [encode_image(im) for im in _images(2)]
    buf = io.BytesIO()
    pickle.dump((enc, np.array([True])), buf, protocol=2)
    (tmp_path / "nb.bin").write_bytes(buf.getvalue())
    assert read_bin(tmp_path / "nb.bin").issame.tolist() == [True]


# ---------------------------------------------------------------------------------------------- memory bounds
def _bomb(claim: int, refs: int, *, via: str = "ndarray") -> bytes:
    """Hand-built pickle: one uninitialised array of ``claim`` bytes, referenced ``refs`` times via the memo."""
    import struct

    def text(s: str) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s.encode()

    dtype = b"cnumpy\ndtype\n" + text("u1") + b"\x85R"
    shape = b"\x8a\x08" + struct.pack("<q", claim) + b"\x85"
    if via == "ndarray":  # numpy.ndarray((claim,), uint8)
        array = b"cnumpy\nndarray\n" + shape + dtype + b"\x86R"
    else:  # numpy.core.multiarray._reconstruct(ndarray, (claim,), b'b')
        array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + shape + b"C\x01b" + b"\x87R")
    bins = b"](" + b"h\x00" * refs + b"e"
    issame = b"](" + b"\x88" * (refs // 2) + b"e"
    return b"\x80\x02" + array + b"q\x000" + bins + issame + b"\x86."


@pytest.mark.parametrize("via", ["ndarray", "reconstruct"])
def test_array_claims_beyond_the_file_are_refused_before_allocating(via):
    data = _bomb(1 << 40, 2, via=via)  # 1 TiB: allocating it would fail or swap
    with pytest.raises(UnsafePickleError, match=r"b.bin: the pickle asks for 1,099,511,627,776 bytes.*refused"):
        safe_loads(data, source="b.bin")
    # the same pickle with a small, honest claim passes the budget (then fails as a pack: memo reuse)
    obj = safe_loads(_bomb(64, 2, via=via), source="b.bin")
    assert obj[0][0] is obj[0][1] and obj[0][0].nbytes == 64


def test_memo_reference_reused_as_an_image_is_refused(tmp_path):
    img = encode_image(_images(1)[0])
    (tmp_path / "memo.bin").write_bytes(pickle.dumps(([img, img], [True]), protocol=4))
    with pytest.raises(DataError, match=r"memo.bin: image 1 is the same pickled object as image 0"):
        read_bin(tmp_path / "memo.bin")
    # equal content in distinct objects is a legitimate pack (two identical photos)
    (tmp_path / "equal.bin").write_bytes(pickle.dumps(([img, bytes(bytearray(img))], [True]), protocol=4))
    assert read_bin(tmp_path / "equal.bin").n_pairs == 1


def test_object_dtype_refusal_names_the_file(tmp_path):
    arr = np.array([b"x", None], dtype=object)
    (tmp_path / "obj.bin").write_bytes(pickle.dumps(([arr, arr.copy()], [True]), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"obj.bin: pickle asks for an object dtype"):
        read_bin(tmp_path / "obj.bin")


def test_147_byte_bomb_stays_bounded_in_memory(tmp_path):
    """issue 9: a ~100-byte pack whose allow-listed ndarray claims 1 GiB, referenced 16 times (16 GiB if
    copied). Under a 1 GiB address-space limit the reader refuses it with a one-line DataError; before the
    fix it died with MemoryError (and without a limit drove RSS past 6 GB)."""
    import subprocess
    import sys

    pack = tmp_path / "bomb.bin"
    pack.write_bytes(_bomb(1 << 30, 16))
    assert pack.stat().st_size < 150
    code = ("import resource, sys; lim = 1 << 30; resource.setrlimit(resource.RLIMIT_AS, (lim, lim)); "
            "from megabench.data.bin_format import read_bin; from megabench.errors import DataError\n"
            "try:\n    read_bin(sys.argv[1])\nexcept DataError as exc:\n    print('refused:', exc)\n"
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0].split()[1]\n"
            "print('maxrss_kb', hwm)")  # VmHWM: peak RSS of this process image (ru_maxrss survives fork)
    proc = subprocess.run([sys.executable, "-c", code, str(pack)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused:" in proc.stdout and "bomb.bin" in proc.stdout and "Traceback" not in proc.stderr
    rss_kb = int(proc.stdout.split("maxrss_kb")[1])
    assert rss_kb < 300_000, rss_kb  # nothing near 1 GiB was touched
