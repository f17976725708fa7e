"""TrainingSet over RecordIO / image folder / list file, checked against Pillow and the real small_dataset."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from megabench.cli import cli
from megabench.data import training
from megabench.data.image_list import read_list_file
from megabench.data.recordio import RecordReader, RecordWriter, pack_payload, write_insightface_recordio
from megabench.data.training import collate_skipping_bad, open_training_set
from megabench.errors import DataError
from tests.conftest import FIXTURES

SMALL = FIXTURES / "insightface" / "small_dataset"


def pil_rgb(path_or_bytes) -> np.ndarray:
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(src) as im:
        return np.asarray(im.convert("RGB"))


def small_as_rec(out: Path) -> Path:
    """RecordIO written by our writer from the real small_dataset images (same order, same labels)."""
    lst = read_list_file(SMALL / "label.txt")
    items = [(int(lab), (SMALL / p).read_bytes()) for p, lab in zip(lst.paths, lst.labels, strict=True)]
    return write_insightface_recordio(out, items, image_size=(112, 112))


def jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_real_list_loads():
    ds = open_training_set(SMALL / "label.txt")
    assert (ds.format, len(ds), ds.num_classes, ds.image_size) == ("list", 10, 10, (112, 112))
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 112, 112)
        assert label == i
        ref = pil_rgb(SMALL / read_list_file(SMALL / "label.txt").paths[i])
        np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), ref)


def test_recordio_from_real_images_reads_back_identical(tmp_path):
    rec = small_as_rec(tmp_path)
    lst = open_training_set(SMALL / "label.txt")
    r = RecordReader(rec)
    for key, (rel, lab) in enumerate(zip(lst.listing.paths, lst.labels(), strict=True), start=1):
        header, data = r.read_record(key)
        assert data == (SMALL / rel).read_bytes()
        assert header.class_label == lab
    for path in (rec, tmp_path):  # the .rec itself or its folder
        ds = open_training_set(path)
        assert (ds.format, len(ds), ds.num_classes, ds.image_size) == ("recordio", 10, 10, (112, 112))
        np.testing.assert_array_equal(ds.labels(), lst.labels())
        for i in range(len(ds)):
            a, b = ds[i], lst[i]
            assert torch.equal(a[0], b[0]) and a[1] == b[1]
    info = open_training_set(tmp_path).info()
    assert info["images"] == 10 and info["identities"] == 10
    assert info["images_per_identity"] == {"min": 1, "median": 1.0, "max": 1}


def test_folder_format(tmp_path):
    rng = np.random.default_rng(0)
    sizes = {"id_b": 3, "id_a": 1, "id_c": 2}
    for name, n in sizes.items():
        (tmp_path / name).mkdir()
        for j in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(tmp_path / name / f"{j}.png")
    ds = open_training_set(tmp_path)
    assert (ds.format, len(ds), ds.num_classes, ds.image_size) == ("folder", 6, 3, (20, 16))
    assert ds.labels().tolist() == [0, 1, 1, 1, 2, 2]
    img, label = ds[3]
    np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), pil_rgb(tmp_path / "id_b" / "2.png"))
    info = ds.info()
    assert info["images_per_identity"] == {"min": 1, "median": 2.0, "max": 3}
    assert info["image_size"] == [20, 16]


def test_labels_decode_no_image(tmp_path, monkeypatch):
    small_as_rec(tmp_path)
    ds = open_training_set(tmp_path)

    def boom(*a, **k):
        raise AssertionError("labels() decoded an image")

    monkeypatch.setattr(training, "decode_rgb", boom)
    assert ds.labels().tolist() == list(range(10))
    assert ds.labels().dtype == np.int64


def test_recordio_without_header_record(tmp_path):
    """A plain RecordIO (no insightface record 0): every key of the index is an image."""
    imgs = [np.full((8, 8, 3), v, dtype=np.uint8) for v in (10, 200, 90)]
    with RecordWriter(tmp_path / "train.rec") as w:
        for k, (im, lab) in enumerate(zip(imgs, [1, 0, 1], strict=True)):
            w.write(k + 5, pack_payload(lab, jpeg(im)))
    (tmp_path / "property").write_text("2,8,8")
    ds = open_training_set(tmp_path / "train.rec")
    assert len(ds) == 3 and ds.labels().tolist() == [1, 0, 1]
    assert abs(int(ds[1][0].float().mean()) - 200) <= 2


def test_fingerprint(tmp_path):
    small_as_rec(tmp_path / "a")
    small_as_rec(tmp_path / "b")
    fa = open_training_set(tmp_path / "a").fingerprint()
    assert fa == open_training_set(tmp_path / "b").fingerprint()
    assert len(fa) == 64
    (tmp_path / "b" / "property").write_text("11,112,112\n")
    assert open_training_set(tmp_path / "b").fingerprint() != fa
    lst = open_training_set(SMALL / "label.txt").fingerprint()
    assert lst != fa and lst == open_training_set(SMALL / "label.txt").fingerprint()


def _with_bad_image(tmp_path: Path) -> Path:
    good = jpeg(np.zeros((8, 8, 3), dtype=np.uint8))
    write_insightface_recordio(tmp_path, [(0, good), (0, b"not a jpeg at all"), (1, good)], image_size=(8, 8))
    return tmp_path


def test_bad_image_is_an_error_naming_the_record(tmp_path):
    ds = open_training_set(_with_bad_image(tmp_path))
    assert ds[0][1] == 0
    with pytest.raises(DataError, match=r"train\.rec record 2: cannot decode image"):
        ds[1]


def test_skip_bad_images_and_collate(tmp_path):
    ds = open_training_set(_with_bad_image(tmp_path), skip_bad_images=True)
    assert ds[1] is None
    batch = collate_skipping_bad([ds[i] for i in range(3)])
    images, labels, skipped = batch
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 1] and labels.dtype == torch.int64
    assert skipped == 1 and batch.skipped == 1
    empty = collate_skipping_bad([None, None])
    assert empty.images.numel() == 0 and empty.skipped == 2


def test_bad_file_in_list_names_the_path(tmp_path):
    shutil.copy(SMALL / "images" / "00000001.jpg", tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "l.txt").write_text("a.jpg\t0\nb.jpg\t1\nmissing.jpg\t1\n")
    ds = open_training_set(tmp_path / "l.txt")
    with pytest.raises(DataError, match=r"b\.jpg: cannot decode image"):
        ds[1]
    with pytest.raises(DataError, match=r"missing\.jpg: cannot read image"):
        ds[2]


def test_image_size_mismatch(tmp_path):
    items = [(0, jpeg(np.zeros((8, 8, 3), np.uint8))), (1, jpeg(np.zeros((8, 6, 3), np.uint8)))]
    write_insightface_recordio(tmp_path, items, image_size=(8, 8))
    with pytest.raises(DataError, match=r"record 2: image is 8x6, the data set's first image is 8x8"):
        open_training_set(tmp_path)[1]


def test_num_classes_mismatch(tmp_path):
    small_as_rec(tmp_path)
    (tmp_path / "property").write_text("5,112,112\n")
    ds = open_training_set(tmp_path)
    with pytest.raises(DataError, match=r"property: labels span 0\.\.9 but the data set declares 5 classes"):
        ds.labels()


def test_dataloader_workers(tmp_path):
    small_as_rec(tmp_path)
    ds = open_training_set(tmp_path)
    ds[0]  # the parent has an open handle before the fork; workers must open their own
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    got = torch.cat([lab for _, lab in loader])
    assert got.tolist() == list(range(10))
    imgs = torch.cat([im for im, _ in loader])
    assert torch.equal(imgs, torch.stack([ds[i][0] for i in range(10)]))


# --- `megabench data info`


def test_cli_info_table_and_json(tmp_path):
    small_as_rec(tmp_path)
    r = CliRunner().invoke(cli, ["data", "info", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "recordio" in r.output and "images:       10" in r.output and "112x112" in r.output
    r = CliRunner().invoke(cli, ["data", "info", str(SMALL / "label.txt"), "--json"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.output)
    assert (obj["format"], obj["images"], obj["identities"], obj["image_size"]) == ("list", 10, 10, [112, 112])


def _truncate(cut: int):
    def f(d: Path) -> None:
        rec = d / "train.rec"
        rec.write_bytes(rec.read_bytes()[:-cut])
    return f


def _idx_past_end(d: Path) -> None:
    (d / "train.idx").write_text((d / "train.idx").read_text() + "99\t123456789\n")


def _corrupt_header(d: Path) -> None:
    r = RecordReader(d / "train.rec")
    off = r.offset(4)
    data = bytearray((d / "train.rec").read_bytes())
    data[off + 8: off + 12] = struct.pack("<I", 50_000)  # flag: 50,000 labels follow
    (d / "train.rec").write_bytes(bytes(data))


CASES = {
    "truncated": (_truncate(2), r"train\.rec record 20: file ends inside the record"),
    "truncated more": (_truncate(100), r"train\.idx: key 19 points to byte \d+ but train\.rec has only \d+ bytes "
                                       r"\(truncated \.rec"),
    "idx past end": (_idx_past_end, r"train\.idx: key 99 points to byte 123456789"),
    "corrupt header": (_corrupt_header, r"train\.rec record 4: header says 50000 labels"),
    "no property": (lambda d: (d / "property").unlink(), r"property: missing"),
    "classes": (lambda d: (d / "property").write_text("3,112,112"), r"property: labels span 0\.\.9 .* 3 classes"),
    "size": (lambda d: (d / "property").write_text("10,96,112"), r"property: says images are 96x112"),
    "no idx": (lambda d: (d / "train.idx").unlink(), r"train\.idx: no such index file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cli_info_bad_input(tmp_path, case):
    break_it, message = CASES[case]
    small_as_rec(tmp_path)
    break_it(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    r = CliRunner().invoke(cli, ["data", "info", str(tmp_path)])
    assert r.exit_code == 1, r.output
    assert r.output.startswith("error: ") and "Traceback" not in r.output
    assert re.search(message, r.output), r.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_cli_info_missing_path(tmp_path):
    r = CliRunner().invoke(cli, ["data", "info", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "no such file or folder" in r.output


# ------------------------------------------------------------------ the data-format registry is the one source
class _ToySet:
    format = "toy"

    def __init__(self, path, skip_bad_images):
        self.source, self.skip_bad_images = path, skip_bad_images

    def info(self) -> dict:
        return {"format": self.format, "source": str(self.source), "images": 0, "identities": 0,
                "num_classes": 0, "images_per_identity": {"min": 0, "median": 0.0, "max": 0},
                "image_size": [0, 0], "fingerprint": "toy"}


def _is_toy(path: Path) -> bool:
    return (path / "toy.marker").is_file()


def _open_toy(path: Path, *, skip_bad_images: bool = False) -> _ToySet:
    return _ToySet(path, skip_bad_images)


@pytest.fixture
def toy_format(monkeypatch):
    """A format registered for this test only (the registry is restored afterwards)."""
    from megabench.data.formats import DATA_FORMATS, DataFormat, register_data_format

    monkeypatch.setattr(DATA_FORMATS, "_items", dict(DATA_FORMATS._items))
    register_data_format(DataFormat("toy", open=f"{__name__}:_open_toy", detect=f"{__name__}:_is_toy",
                                    priority=100, description="a toy layout"))


def test_a_registered_format_is_detected_and_opened_by_open_training_set(tmp_path, toy_format):
    (tmp_path / "toy.marker").write_text("")  # also an (empty) image folder: only the registry knows "toy"
    ds = open_training_set(tmp_path, skip_bad_images=True)
    assert isinstance(ds, _ToySet) and ds.source == tmp_path and ds.skip_bad_images is True


def test_a_named_format_skips_detection(tmp_path, toy_format):
    ds = open_training_set(SMALL, "toy")
    assert isinstance(ds, _ToySet) and ds.source == SMALL


def test_cli_data_info_and_formats_read_the_registry(tmp_path, toy_format):
    (tmp_path / "toy.marker").write_text("")
    r = CliRunner().invoke(cli, ["data", "info", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["format"] == "toy"
    r = CliRunner().invoke(cli, ["data", "formats"])
    assert r.exit_code == 0, r.output
    assert [line.split()[0] for line in r.output.splitlines()] == ["toy", "recordio", "folder", "list"]


def test_unknown_format_name_is_a_clear_error():
    r = CliRunner().invoke(cli, ["data", "info", str(SMALL / "label.txt"), "--format", "lst"])
    assert r.exit_code == 1 and "unknown data format 'lst'" in r.output and "'list'" in r.output, r.output


def test_built_in_formats_are_registered_with_their_readers():
    from megabench.data.formats import DATA_FORMATS

    assert {n: DATA_FORMATS.get(n).opener() for n in ("recordio", "folder", "list")} == {
        "recordio": training.open_recordio, "folder": training.open_image_folder, "list": training.open_list_file}


def test_a_recipe_may_name_a_registered_format(tmp_path, toy_format):
    from megabench.config import load_spec, spec_folder

    recipe = tmp_path / "r.toml"
    recipe.write_text(f'base = "{(spec_folder("baselines") / "_casia_r50.toml").as_posix()}"\n[data]\nformat = "toy"\n')
    assert load_spec(recipe).data.format == "toy"
