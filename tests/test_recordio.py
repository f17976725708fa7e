"""insightface / MXNet RecordIO: frames, headers, index, property, against records built by hand."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megabench.data.recordio import (
    MAGIC,
    RecordReader,
    RecordWriter,
    encode_record,
    iter_records,
    pack_payload,
    read_index,
    read_property,
    read_record_at,
    unpack_payload,
    write_insightface_recordio,
)
from megabench.errors import DataError

M = struct.pack("<I", 0xCED7230A)


def frame(cflag: int, data: bytes) -> bytes:
    """One dmlc frame written out by hand: magic, lrec, data, zero padding."""
    pad = (-len(data)) % 4
    return struct.pack("<II", 0xCED7230A, (cflag << 29) | len(data)) + data + b"\0" * pad


def test_magic_constant():
    assert MAGIC == 0xCED7230A
    assert M == b"\x0a\x23\xd7\xce"


@pytest.mark.parametrize(
    "payload, frames",
    [
        (b"", [frame(0, b"")]),
        (b"abc", [frame(0, b"abc")]),
        (b"ABCD", [frame(0, b"ABCD")]),
        # magic at aligned offset 4: split, the magic dropped, last part padded
        (b"ABCD" + M + b"EFGHIJ", [frame(1, b"ABCD"), frame(3, b"EFGHIJ")]),
        # magic at offset 0 and at the very end
        (M + b"xy", [frame(1, b""), frame(3, b"xy")]),
        (b"ABCD" + M, [frame(1, b"ABCD"), frame(3, b"")]),
        # three parts
        (M + M, [frame(1, b""), frame(2, b""), frame(3, b"")]),
        (b"abcd" + M + b"efgh" + M + b"i", [frame(1, b"abcd"), frame(2, b"efgh"), frame(3, b"i")]),
        # unaligned magic is not split
        (b"A" + M + b"BBB", [frame(0, b"A" + M + b"BBB")]),
    ],
)
def test_encode_record_matches_hand_built_frames(payload, frames, tmp_path):
    expected = b"".join(frames)
    assert encode_record(payload) == expected
    # and the reader joins the hand-built frames back, re-inserting the magic
    p = tmp_path / "x.rec"
    p.write_bytes(expected + frame(0, b"next"))
    with open(p, "rb") as fh:
        got, nxt = read_record_at(fh, 0)
        assert got == payload
        assert nxt == len(expected)
        assert read_record_at(fh, nxt)[0] == b"next"


def test_hand_built_insightface_record(tmp_path):
    """A full record (header + 2 labels + image bytes with a magic inside) built with struct."""
    image = b"\xff\xd8JPEG!!" + M + b"tail!"  # magic at offset 8 of the image = offset 40 of the payload
    payload = struct.pack("<IfQQ", 2, 0.0, 7, 9) + struct.pack("<2f", 3.0, 0.5) + image
    assert payload[40:44] == M
    rec = frame(1, payload[:40]) + frame(3, payload[44:])
    (tmp_path / "train.rec").write_bytes(rec)
    (tmp_path / "train.idx").write_text("5\t0\n")
    r = RecordReader(tmp_path / "train.rec")
    header, data = r.read_record(5)
    assert (header.flag, header.id, header.id2) == (2, 7, 9)
    np.testing.assert_array_equal(header.label, np.array([3.0, 0.5], dtype=np.float32))
    assert header.class_label == 3
    assert data == image
    assert r.read_header(5).class_label == 3  # the split record goes the slow way
    assert pack_payload([3.0, 0.5], image, id=7, id2=9) == payload
    assert encode_record(payload) == rec


def test_header_flag_zero():
    payload = pack_payload(12, b"img", id=3)
    assert payload == struct.pack("<IfQQ", 0, 12.0, 3, 0) + b"img"
    header, data = unpack_payload(payload)
    assert (header.flag, header.label, header.class_label, data) == (0, 12.0, 12, b"img")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([b"a", b"bc", M, b"\x00\x00\x00", b"\xce"]), max_size=12)
                .map(b"".join), min_size=1, max_size=8))
def test_writer_reader_roundtrip(tmp_path_factory, payloads):
    d = tmp_path_factory.mktemp("rt")
    with RecordWriter(d / "t.rec") as w:
        offsets = [w.write(k * 3, p) for k, p in enumerate(payloads)]
    keys, offs = read_index(d / "t.idx")
    assert keys.tolist() == [k * 3 for k in range(len(payloads))]
    assert offs.tolist() == offsets
    r = RecordReader(d / "t.rec")
    for k, p in enumerate(payloads):
        assert r.read(k * 3) == p
    assert [p for _, p in iter_records(d / "t.rec")] == payloads
    assert (d / "t.rec").stat().st_size % 4 == 0


def test_writer_is_atomic(tmp_path):
    with pytest.raises(RuntimeError), RecordWriter(tmp_path / "t.rec") as w:
        w.write(0, b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_insightface_layout(tmp_path):
    imgs = [(0, b"a0"), (0, b"a1"), (1, b"b0"), (2, b"c0"), (2, b"c1"), (2, b"c2")]
    rec = write_insightface_recordio(tmp_path, imgs, image_size=(112, 96))
    assert read_property(tmp_path / "property") == (3, 112, 96)
    r = RecordReader(rec)
    h0 = r.read_header(0)
    assert h0.flag == 2 and h0.label.tolist() == [7.0, 10.0]
    for key, (label, data) in enumerate(imgs, start=1):
        h, d = r.read_record(key)
        assert (h.class_label, d) == (label, data)
    ranges = [r.read_header(k).label.tolist() for k in range(7, 10)]
    assert ranges == [[1.0, 3.0], [3.0, 4.0], [4.0, 7.0]]
    assert sorted(r.keys.tolist()) == list(range(10))


def test_reader_reopens_after_pickle(tmp_path):
    import pickle

    with RecordWriter(tmp_path / "t.rec") as w:
        w.write(1, b"hello")
    r = RecordReader(tmp_path / "t.rec")
    assert r.read(1) == b"hello"
    r2 = pickle.loads(pickle.dumps(r))  # what a spawned DataLoader worker gets: no file handle
    assert r2._fh is None and r2.read(1) == b"hello"
    r.close()
    r2.close()


# --- bad input: each a DataError naming the file


def _small_rec(tmp_path: Path) -> Path:
    with RecordWriter(tmp_path / "t.rec") as w:
        w.write(0, pack_payload(0, b"x" * 40))
        w.write(1, pack_payload(1, b"y" * 40))
    return tmp_path / "t.rec"


def test_truncated_rec(tmp_path):
    rec = _small_rec(tmp_path)
    rec.write_bytes(rec.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"t\.rec record 1: file ends inside the record"):
        RecordReader(rec)


def test_idx_offset_past_end(tmp_path):
    rec = _small_rec(tmp_path)
    (tmp_path / "t.idx").write_text("0\t0\n1\t999999\n")
    with pytest.raises(DataError, match=r"t\.idx: key 1 points to byte 999999"):
        RecordReader(rec)


def test_idx_offset_not_a_record(tmp_path):
    rec = _small_rec(tmp_path)
    (tmp_path / "t.idx").write_text("0\t4\n")
    with pytest.raises(DataError, match=r"t\.rec record 0: no RecordIO magic at byte 4"):
        RecordReader(rec).read(0)


@pytest.mark.parametrize("text", ["0 1 2\n", "a\t0\n", "0\t-4\n", ""])
def test_bad_index_lines(tmp_path, text):
    _small_rec(tmp_path)
    (tmp_path / "t.idx").write_text(text)
    with pytest.raises(DataError, match=r"t\.idx"):
        RecordReader(tmp_path / "t.rec")


def test_missing_idx(tmp_path):
    rec = _small_rec(tmp_path)
    (tmp_path / "t.idx").unlink()
    with pytest.raises(DataError, match=r"t\.idx: no such index file"):
        RecordReader(rec)


def test_corrupt_header(tmp_path):
    bad = struct.pack("<IfQQ", 1000, 0.0, 0, 0) + b"short"
    with RecordWriter(tmp_path / "t.rec") as w:
        w.write(0, bad)
        w.write(1, b"tiny")
    r = RecordReader(tmp_path / "t.rec")
    with pytest.raises(DataError, match=r"t\.rec record 0: header says 1000 labels"):
        r.read_record(0)
    with pytest.raises(DataError, match=r"t\.rec record 1: record of 4 bytes is shorter than the 24-byte header"):
        r.read_header(1)


def test_bad_continuation_flag(tmp_path):
    (tmp_path / "t.rec").write_bytes(frame(2, b"abcd"))
    (tmp_path / "t.idx").write_text("0\t0\n")
    with pytest.raises(DataError, match="bad continuation flag 2"):
        RecordReader(tmp_path / "t.rec").read(0)


@pytest.mark.parametrize("text", ["", "10,112", "ten,112,112", "0,112,112", "10,112,112,3"])
def test_bad_property(tmp_path, text):
    (tmp_path / "property").write_text(text)
    with pytest.raises(DataError, match="property: expected 'num_classes,height,width'"):
        read_property(tmp_path / "property")


def test_missing_property(tmp_path):
    with pytest.raises(DataError, match="property: missing"):
        read_property(tmp_path / "property")
