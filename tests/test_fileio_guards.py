"""fileio's guards: outputs never replace inputs, read-only or foreign files; data-file paths stay inside roots;
published files get the user's normal mode; a run deletes only files it created."""

from __future__ import annotations

import os
import stat

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


def test_background_sha256_cancel_never_gives_a_digest(tmp_path):
    from megabench.fileio import BackgroundSha256

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
