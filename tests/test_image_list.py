"""List files (``relative/path<TAB>label``) and image folders (``root/<identity>/<image>``)."""

from __future__ import annotations

import pytest

from megabench.data.image_list import read_list_file, scan_image_folder
from megabench.errors import DataError
from tests.conftest import FIXTURES

SMALL = FIXTURES / "insightface" / "small_dataset"


def test_real_label_txt():
    lst = read_list_file(SMALL / "label.txt")
    assert lst.root == SMALL
    assert len(lst.paths) == 10
    assert lst.paths[0] == "images/00000001.jpg"
    assert lst.labels.tolist() == list(range(10))
    assert all((SMALL / p).is_file() for p in lst.paths)


def test_list_parsing(tmp_path):
    (tmp_path / "l.txt").write_text("# comment\na/x.jpg\t3\n\n./b/y z.png\t0\nc/../c/w.jpg 7\n")
    lst = read_list_file(tmp_path / "l.txt")
    assert lst.paths == ["a/x.jpg", "b/y z.png", "c/w.jpg"]
    assert lst.labels.tolist() == [3, 0, 7]
    assert lst.labels.dtype.name == "int64"


@pytest.mark.parametrize("line", ["../x.jpg\t0", "a/../../x.jpg\t0", "/etc/passwd\t0", "C:\\x.jpg\t0"])
def test_list_paths_must_stay_inside_root(tmp_path, line):
    (tmp_path / "l.txt").write_text(line + "\n")
    with pytest.raises(DataError, match=r"l\.txt:1: path .* (absolute|resolves outside its root)"):
        read_list_file(tmp_path / "l.txt")


@pytest.mark.parametrize("rel", ["a/x.jpg", "./a/../a/x.jpg", "ABS/a/x.jpg", "../x.jpg", "a/../../x.jpg",
                                 "/etc/passwd", "ABS/../x.jpg"])
def test_list_files_and_pair_lists_share_one_inside_rule(tmp_path, rel):
    """Both read paths through megabench.fileio.resolve_inside: the same entry is accepted (as the same
    file) or refused by both; an absolute path inside the folder is accepted by both."""
    from megabench.data.pairs import read_pair_list

    root = tmp_path / "root"
    root.mkdir()
    rel = rel.replace("ABS", str(root.resolve()))
    (root / "l.txt").write_text(f"{rel}\t0\n")
    (root / "p.txt").write_text(f"{rel} {rel} 1\n")
    outcomes = []
    for read in (lambda: read_list_file(root / "l.txt").paths[0],
                 lambda: read_pair_list(root / "p.txt", check_files=False).keys[0]):
        try:
            outcomes.append(read())
        except DataError as exc:
            assert "outside its root" in str(exc), exc
            outcomes.append("refused")
    assert outcomes[0] == outcomes[1]
    assert (outcomes[0] == "refused") == (".." in rel.replace("a/../a", "") or rel == "/etc/passwd")


@pytest.mark.parametrize("line", ["a.jpg\t-1", "a.jpg\tcat", "a.jpg", "\t3"])
def test_bad_list_lines(tmp_path, line):
    (tmp_path / "l.txt").write_text("ok.jpg\t0\n" + line + "\n")
    with pytest.raises(DataError, match=r"l\.txt:2: expected 'relative/path<TAB>label'"):
        read_list_file(tmp_path / "l.txt")


def test_empty_and_binary_lists(tmp_path):
    (tmp_path / "e.txt").write_text("# nothing\n")
    with pytest.raises(DataError, match="names no images"):
        read_list_file(tmp_path / "e.txt")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x00\x80")
    with pytest.raises(DataError, match="not a text list file"):
        read_list_file(tmp_path / "b.txt")


def test_folder_scan(tmp_path):
    layout = {"bob": ["2.jpg", "1.png"], "alice": ["a.JPG"], "empty": [], "carl": ["x.txt", "y.jpeg"]}
    for ident, files in layout.items():
        (tmp_path / ident).mkdir()
        for f in files:
            (tmp_path / ident / f).write_bytes(b"")
    (tmp_path / "stray.jpg").write_bytes(b"")
    lst = scan_image_folder(tmp_path)
    assert lst.identities == ["alice", "bob", "carl"]  # sorted; the empty folder gets no label
    assert lst.paths == ["alice/a.JPG", "bob/1.png", "bob/2.jpg", "carl/y.jpeg"]
    assert lst.labels.tolist() == [0, 1, 1, 2]


def test_folder_without_images(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no images found"):
        scan_image_folder(tmp_path)
