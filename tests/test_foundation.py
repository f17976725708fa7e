"""Registry, config loading, atomic writes, the feature store and the result schema."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from megabench.config import from_dict, load_toml
from megabench.data.feature_store import (
    FeatureStoreWriter,
    StoreMeta,
    check_embeddings,
    open_features,
    write_features,
)
from megabench.errors import ConfigError, DataError
from megabench.fileio import atomic_path, atomic_write_json
from megabench.results import new_result, read_result, write_result


@dataclasses.dataclass(frozen=True)
class _Inner:
    a: int
    b: float = 1.0


@dataclasses.dataclass(frozen=True)
class _Outer:
    name: str
    inner: _Inner
    grid: tuple[float, ...] = ()


def test_config_child_inherits_base_and_wins(tmp_path):
    (tmp_path / "base.toml").write_text('name = "x"\n[inner]\na = 1\nb = 2\n')
    (tmp_path / "child.toml").write_text('base = "base.toml"\n[inner]\nb = 3\n')
    data = load_toml(tmp_path / "child.toml")
    assert data == {"name": "x", "inner": {"a": 1, "b": 3}}
    obj = from_dict(_Outer, data)
    assert obj.inner == _Inner(1, 3.0) and isinstance(obj.inner.b, float)


def test_config_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['nmae'\]"):
        from_dict(_Outer, {"name": "x", "inner": {"a": 1}, "nmae": 1})


def test_config_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="inner.a: expected int"):
        from_dict(_Outer, {"name": "x", "inner": {"a": "1"}})


def test_config_missing_required_key_is_an_error():
    with pytest.raises(ConfigError, match="required key 'inner' is missing"):
        from_dict(_Outer, {"name": "x"})


def test_config_base_loop_is_an_error(tmp_path):
    (tmp_path / "loop.toml").write_text('base = "loop.toml"\n')
    with pytest.raises(ConfigError, match="loops"):
        load_toml(tmp_path / "loop.toml")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_feature_store_roundtrip_float16(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 8)).astype(np.float32)
    meta = StoreMeta(model="m", checkpoint_sha256="abc", preprocessing={"mean": 127.5}, source_sha256="s")
    p = write_features(tmp_path / "f.h5", x, [f"img{i}.jpg" for i in range(37)], ids=np.arange(37) % 5,
                       features_flip=-x, meta=meta, dtype="float16")
    with open_features(p) as fs:
        assert (fs.n, fs.dim, fs.has_flip, fs.has_ids) == (37, 8, True, True)
        got = fs.read()
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, x, atol=2e-3)
        assert fs.paths()[3] == "img3.jpg" and fs.ids()[7] == 2
        assert fs.meta == meta
        blocks = list(fs.iter_blocks(10))
        assert [b[0] for b in blocks] == [0, 10, 20, 30]
        np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), got)


@pytest.mark.parametrize("layout", ["writer", "contiguous", "chunked by part rows", "compressed", "unwritten chunks",
                                    "chunks out of file order"])
def test_feature_store_row_slices_equal_h5py(tmp_path, layout):
    """Row slices come straight from the file where the layout allows it (uncompressed float32, whole-row
    chunks or contiguous) and through h5py elsewhere; either way they equal h5py's own read."""
    import h5py

    from megabench.data.feature_store import RawRows

    rng = np.random.default_rng(1)
    x = rng.normal(size=(1037, 16)).astype(np.float32)
    p = write_features(tmp_path / "f.h5", x, [f"i{i}" for i in range(1037)])  # chunks of whole rows
    if layout != "writer":
        with h5py.File(p, "a") as h5:
            del h5["features"]
            kw = {"contiguous": {}, "chunked by part rows": {"chunks": (100, 8)},
                  "compressed": {"chunks": (64, 16), "compression": "gzip"},
                  "unwritten chunks": {"chunks": (64, 16)}, "chunks out of file order": {"chunks": (64, 16)}}[layout]
            d = h5.create_dataset("features", shape=x.shape, dtype=np.float32, **kw)
            if layout == "chunks out of file order":  # the last rows' chunks first: runs of neighbours and jumps
                for lo in [1024, 960, 896, 0, 64, 512, 576, 128, 192, 256, 320, 384, 448, 640, 704, 768, 832]:
                    d[lo:lo + 64] = x[lo:lo + 64]
            elif layout == "unwritten chunks":
                d[:500] = x[:500]  # rows 512.. never written: h5py returns the fill value (0)
                x[500:] = 0
            else:
                d[...] = x
    with open_features(p) as fs, h5py.File(p, "r") as h5:
        raw = fs._raw_rows("features", h5["features"])
        assert (raw is not None) == (layout in ("writer", "contiguous", "unwritten chunks", "chunks out of file order"))
        assert RawRows.usable(h5["features"]) == (raw is not None)
        for lo, hi in [(0, 1037), (0, 1), (5, 700), (511, 513), (1000, 1037), (1036, 1037), (600, 600), (520, 530)]:
            got = fs.read(rows=slice(lo, hi))
            assert got.dtype == np.float32 and got.shape == (hi - lo, 16)
            np.testing.assert_array_equal(got, x[lo:hi], err_msg=f"{layout} {lo}:{hi}")
        np.testing.assert_array_equal(fs.read(rows=np.array([3, 700, 1036])), x[[3, 700, 1036]])


def test_feature_store_writer_incomplete_is_not_published(tmp_path):
    target = tmp_path / "f.h5"
    w = FeatureStoreWriter(target, n=4, dim=2)
    w.write(0, np.ones((2, 2)), paths=["a", "b"])
    with pytest.raises(DataError, match="never written"):
        w.close()
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_feature_store_rejects_mismatched_flip(tmp_path):
    import h5py

    p = tmp_path / "bad.h5"
    with h5py.File(p, "w") as h:
        h["features"] = np.ones((3, 4), np.float32)
        h["features_flip"] = np.ones((3, 5), np.float32)
    with pytest.raises(DataError, match="features_flip"):
        open_features(p)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not an HDF5"):
        open_features(tmp_path / "junk.h5")


def test_check_embeddings_names_first_bad_rows():
    x = np.ones((6, 3), np.float32)
    x[4, 1] = np.nan
    with pytest.raises(DataError, match=r"NaN or inf \(first rows \[4\]\)"):
        check_embeddings(x, source="f.h5")
    x[4] = 1
    x[2] = 0
    with pytest.raises(DataError, match=r"zero norm \(first rows \[2\]\)"):
        check_embeddings(x, source="f.h5")


def test_result_schema_roundtrip(tmp_path):
    r = new_result("verification", model={}, protocol={"name": "lfw"}, input={}, metrics={"accuracy": float("nan")},
                   folds=[])
    p = write_result(tmp_path / "r.json", r)
    back = read_result(p)
    assert back["metrics"]["accuracy"] is None  # strict JSON: NaN -> null
    assert back["schema_version"] == "1.0" and "environment" in back
    with pytest.raises(DataError, match="lacks required keys"):
        write_result(tmp_path / "bad.json", new_result("verification"))
