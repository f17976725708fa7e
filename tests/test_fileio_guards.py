"""fileio's guards: outputs never replace inputs, read-only or foreign files; data-file paths stay inside roots;
published files get the user's normal mode; a run deletes only files it created."""

from __future__ import annotations

import os
import stat
import time

import pytest

from megabench.errors import DataError, OutputError
from megabench.fileio import (
    RunFiles,
    atomic_write_bytes,
    check_output,
    check_output_dir,
    default_file_mode,
    resolve_inside,
    same_file,
)


def test_output_equal_to_an_input_is_refused_even_with_force(tmp_path):
    inp = tmp_path / "in.h5"
    inp.write_bytes(b"data")
    link = tmp_path / "link.h5"
    os.link(inp, link)
    sym = tmp_path / "sym.h5"
    sym.symlink_to(inp)
    for out in (inp, tmp_path / "." / "in.h5", link, sym):
        with pytest.raises(OutputError, match="also an input"):
            check_output(out, inputs=[None, inp], force=True)
    assert same_file(link, inp) and not same_file(tmp_path / "other", inp)
    assert inp.read_bytes() == b"data"


def test_existing_file_needs_force_unless_recognised(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("user data")
    with pytest.raises(OutputError, match="--force"):
        check_output(out)
    with pytest.raises(OutputError, match="--force"):
        check_output(out, replaceable=lambda p: False)
    assert check_output(out, replaceable=lambda p: True) == out
    assert check_output(out, force=True) == out
    assert check_output(tmp_path / "new" / "deeper" / "x.json") == tmp_path / "new" / "deeper" / "x.json"
    assert not (tmp_path / "new").exists()  # nothing created by the check


def test_read_only_directory_and_unwritable_outputs(tmp_path):
    ro = tmp_path / "ro.json"
    ro.write_text("{}")
    ro.chmod(0o444)
    with pytest.raises(OutputError, match="read-only"):
        check_output(ro, force=True)
    with pytest.raises(OutputError, match="is a folder"):
        check_output(tmp_path, force=True)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output(afile / "sub" / "out.json")
    rodir = tmp_path / "rodir"
    rodir.mkdir()
    rodir.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="read-only"):
            check_output(rodir / "out.json")
        with pytest.raises(OutputError, match="read-only"):
            check_output(rodir / "sub" / "out.json")
    finally:
        rodir.chmod(0o755)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="dangling"):
        check_output(dangling, force=True)


def test_check_output_dir(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(b"x")
    with pytest.raises(OutputError, match="a.bin"):
        check_output_dir(tmp_path / "d", ["a.bin", "a.h5"])
    assert check_output_dir(tmp_path / "d", ["a.bin"], force=True) == tmp_path / "d"
    assert check_output_dir(tmp_path / "d", ["b.bin"]) == tmp_path / "d"
    with pytest.raises(OutputError, match="must be a folder"):
        check_output_dir(tmp_path / "d" / "a.bin", ["x"])


def test_published_files_get_the_users_mode(tmp_path):
    old = os.umask(0o027)
    try:
        p = atomic_write_bytes(tmp_path / "f.txt", b"x")
        assert stat.S_IMODE(p.stat().st_mode) == 0o640 == default_file_mode()
    finally:
        os.umask(old)
    p = atomic_write_bytes(tmp_path / "g.txt", b"x")
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~old


def test_run_files_deletes_only_its_own(tmp_path):
    mine = tmp_path / "state.npz"
    mine.write_bytes(b"1")
    created = RunFiles()
    created.add(mine)
    other = tmp_path / "other"
    other.write_bytes(b"2")
    assert not created.remove(other) and other.exists()
    # replaced by someone else since: not ours any more
    replacement = tmp_path / "r"
    replacement.write_bytes(b"3")
    os.replace(replacement, mine)
    assert not created.remove(mine) and mine.exists()
    created.add(mine)
    assert created.remove(mine) and not mine.exists()


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "", "a\x00b", "sub/link/escape"])
def test_resolve_inside_refuses_escapes(tmp_path, bad):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "link").symlink_to(tmp_path)
    with pytest.raises(DataError, match="store.h5 paths"):
        resolve_inside(root, bad, source="store.h5 paths[3]")


def test_resolve_inside_accepts_inside_paths(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert resolve_inside(root, "a/b.bin", source="s") == (root / "a" / "b.bin").resolve()
    assert resolve_inside(root, "a/../c.bin", source="s") == (root / "c.bin").resolve()
    assert resolve_inside(root, str(root / "a" / "x"), source="s") == (root / "a" / "x").resolve()


# ----------------------------------------------------------------------------------- background hash
def test_background_sha256_equals_hashlib_over_the_bytes(tmp_path):
    import hashlib

    from megabench.fileio import BackgroundSha256

    data = os.urandom(3 * (1 << 22) + 17)  # several chunks and a partial one
    path = tmp_path / "store.h5"
    path.write_bytes(data)
    assert BackgroundSha256(path).result() == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert BackgroundSha256(empty).result() == hashlib.sha256(b"").hexdigest()


def test_background_sha256_reraises_the_threads_error(tmp_path):
    from megabench.fileio import BackgroundSha256

    with pytest.raises(FileNotFoundError):
        BackgroundSha256(tmp_path / "missing.h5").result()


def test_background_sha256_cancel_never_gives_a_digest(tmp_path, monkeypatch):
    from megabench.fileio import BackgroundSha256

    monkeypatch.setenv("MEGABENCH_CACHE", str(tmp_path / "cache"))

    path = tmp_path / "big"
    path.write_bytes(b"x" * (64 << 20))
    h = BackgroundSha256(path)
    h.cancel()
    with pytest.raises(RuntimeError, match="cancelled"):
        h.result()
    done = BackgroundSha256(path)
    digest = done.result()
    done.cancel()  # after the result: nothing to stop, the digest stays
    assert done.result() == digest


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 5 * 1024 + 17])
def test_sha256_file_equals_hashlib_across_piece_boundaries(tmp_path, size):
    import hashlib

    from megabench.fileio import sha256_file

    data = bytes(range(256)) * (size // 256 + 1)
    path = tmp_path / "f"
    path.write_bytes(data[:size])
    assert sha256_file(path, chunk_bytes=1024) == hashlib.sha256(data[:size]).hexdigest()


# ----------------------------------------------------------------------------- remembered digests
@pytest.fixture
def sha_cache(tmp_path, monkeypatch):
    """A private cache, a 1 KiB threshold and no settle time (the tests wait a tick between writes)."""
    import megabench.fileio as fio

    monkeypatch.setenv("MEGABENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fio, "SHA256_CACHE_MIN_BYTES", 1024)
    monkeypatch.setattr(fio, "SHA256_SETTLE_NS", 0)
    return fio


def _no_reading(monkeypatch):
    import megabench._sha256

    def refuse(*a, **k):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(megabench._sha256, "sha256_of", refuse)


def test_a_large_files_digest_is_remembered_and_not_read_again(tmp_path, monkeypatch, sha_cache):
    import hashlib

    data = os.urandom(5000)
    path = tmp_path / "store.h5"
    path.write_bytes(data)
    time.sleep(0.05)
    assert sha_cache.BackgroundSha256(path).result() == hashlib.sha256(data).hexdigest()
    assert sha_cache.sha256_cache_path().is_file()
    _no_reading(monkeypatch)
    again = sha_cache.BackgroundSha256(path)
    assert again.remembered and again.result() == hashlib.sha256(data).hexdigest()
    assert sha_cache.sha256_file(path) == hashlib.sha256(data).hexdigest()
    link = tmp_path / "link.h5"  # the same file under another name (a hard link would move its ctime)
    link.symlink_to(path)
    assert sha_cache.remembered_sha256(link) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("change", ["rewrite_same_size_same_mtime", "replace_by_rename", "append"])
def test_a_changed_file_is_hashed_again(tmp_path, sha_cache, change):
    import hashlib

    path = tmp_path / "store.h5"
    path.write_bytes(b"a" * 4096)
    time.sleep(0.05)
    old = sha_cache.sha256_file(path)
    assert sha_cache.remembered_sha256(path) == old
    time.sleep(0.05)  # past the coarse file-time tick
    st = os.stat(path)
    if change == "rewrite_same_size_same_mtime":  # the content changes, size and mtime are put back
        with open(path, "r+b") as fh:
            fh.write(b"b")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_size == st.st_size
    elif change == "replace_by_rename":
        other = tmp_path / "other"
        other.write_bytes(b"b" * 4096)
        os.replace(other, path)
    else:
        with open(path, "ab") as fh:
            fh.write(b"b")
    assert sha_cache.remembered_sha256(path) is None
    assert sha_cache.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest() != old


def test_small_and_just_written_files_are_not_remembered(tmp_path, monkeypatch, sha_cache):
    small = tmp_path / "small"
    small.write_bytes(b"x" * 1023)
    sha_cache.sha256_file(small)
    assert sha_cache.remembered_sha256(small) is None
    monkeypatch.setattr(sha_cache, "SHA256_SETTLE_NS", 60 * 10**9)  # written a minute ago at most: racy
    fresh = tmp_path / "fresh"
    fresh.write_bytes(b"x" * 4096)
    sha_cache.BackgroundSha256(fresh).result()
    assert sha_cache.remembered_sha256(fresh) is None


def test_an_unwritable_or_corrupt_cache_only_costs_the_hash(tmp_path, monkeypatch, sha_cache):
    import hashlib

    path = tmp_path / "store.h5"
    path.write_bytes(b"z" * 4096)
    time.sleep(0.05)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MEGABENCH_CACHE", str(blocker / "cache"))
    assert sha_cache.sha256_file(path) == hashlib.sha256(b"z" * 4096).hexdigest()
    monkeypatch.setenv("MEGABENCH_CACHE", str(tmp_path / "cache2"))
    sha_cache.sha256_cache_path().parent.mkdir()
    sha_cache.sha256_cache_path().write_text("{not json")
    assert sha_cache.BackgroundSha256(path).result() == hashlib.sha256(b"z" * 4096).hexdigest()
    assert sha_cache.remembered_sha256(path) == hashlib.sha256(b"z" * 4096).hexdigest()  # rewritten whole
