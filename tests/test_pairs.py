"""LFW pairs.txt and plain pair lists over an image folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from megabench.data.pairs import looks_like_lfw_pairs, read_lfw_pairs, read_pair_list, rows_for_keys
from megabench.errors import DataError

PEOPLE = {"Ann_A": 3, "Bob_B": 2, "Cid_C": 1}


def _folder(root: Path) -> Path:
    for name, count in PEOPLE.items():
        (root / name).mkdir(parents=True)
        for i in range(1, count + 1):
            (root / name / f"{name}_{i:04d}.jpg").write_bytes(b"jpeg")
    return root


LFW_TXT = """2\t2
Ann_A\t1\t2
Bob_B\t1\t2
Ann_A\t1\tCid_C\t1
Bob_B\t2\tAnn_A\t3
Ann_A\t2\t3
Ann_A\t1\t3
Cid_C\t1\tBob_B\t1
Ann_A\t2\tBob_B\t1
"""


def test_lfw_pairs(tmp_path):
    root = _folder(tmp_path / "lfw")
    (tmp_path / "pairs.txt").write_text(LFW_TXT)
    assert looks_like_lfw_pairs(tmp_path / "pairs.txt")
    pl = read_lfw_pairs(tmp_path / "pairs.txt", root)
    assert pl.n_pairs == 8 and pl.n_images == 16
    assert pl.issame.tolist() == [True, True, False, False] * 2
    assert pl.keys[:4] == ("Ann_A/Ann_A_0001.jpg", "Ann_A/Ann_A_0002.jpg", "Bob_B/Bob_B_0001.jpg",
                           "Bob_B/Bob_B_0002.jpg")
    assert pl.keys[6:8] == ("Bob_B/Bob_B_0002.jpg", "Ann_A/Ann_A_0003.jpg")
    assert all(p.is_file() for p in pl.paths)
    assert len(pl.sha256) == 64


def test_lfw_pairs_errors(tmp_path):
    root = _folder(tmp_path / "lfw")
    p = tmp_path / "pairs.txt"
    p.write_text(LFW_TXT.replace("Cid_C\t1\tBob_B\t1", "Cid_C\t1\tBob_B\t7"))
    with pytest.raises(DataError, match=r"1 image\(s\).*Bob_B_0007.jpg"):
        read_lfw_pairs(p, root)
    p.write_text("2 2\nAnn_A 1 2\n")
    with pytest.raises(DataError, match="promises 2 x 2 x 2 = 8 pairs, file has 1"):
        read_lfw_pairs(p, root)
    p.write_text("hello\nAnn_A 1 2\n")
    with pytest.raises(DataError, match="header"):
        read_lfw_pairs(p, root)
    p.write_text("1 1\nAnn_A 1\nAnn_A 1 Bob_B 1\n")
    with pytest.raises(DataError, match=r"pairs.txt:2: expected"):
        read_lfw_pairs(p, root)


def test_plain_pair_list_relative_absolute_comments(tmp_path):
    root = _folder(tmp_path / "imgs")
    lst = tmp_path / "list.txt"
    absolute = root / "Cid_C" / "Cid_C_0001.jpg"
    lst.write_text(f"# a comment\nAnn_A/Ann_A_0001.jpg Ann_A/Ann_A_0002.jpg 1\n\n"
                   f"Bob_B/Bob_B_0001.jpg {absolute} 0\n")
    pl = read_pair_list(lst, root)
    assert pl.issame.tolist() == [True, False]
    assert pl.keys == ("Ann_A/Ann_A_0001.jpg", "Ann_A/Ann_A_0002.jpg", "Bob_B/Bob_B_0001.jpg", "Cid_C/Cid_C_0001.jpg")
    assert not looks_like_lfw_pairs(lst)
    # default root: the list's folder
    (root / "l2.txt").write_text("Ann_A/Ann_A_0001.jpg Bob_B/Bob_B_0002.jpg 0\n")
    assert read_pair_list(root / "l2.txt").keys == ("Ann_A/Ann_A_0001.jpg", "Bob_B/Bob_B_0002.jpg")


def test_plain_pair_list_errors(tmp_path):
    root = _folder(tmp_path / "imgs")
    lst = tmp_path / "list.txt"
    lst.write_text("Ann_A/Ann_A_0001.jpg Ann_A/Ann_A_0009.jpg 1\n")
    with pytest.raises(DataError, match="Ann_A_0009.jpg"):
        read_pair_list(lst, root)
    lst.write_text("Ann_A/Ann_A_0001.jpg Ann_A/Ann_A_0002.jpg yes\n")
    with pytest.raises(DataError, match=r"list.txt:1: expected `path1 path2 0\|1`"):
        read_pair_list(lst, root)
    lst.write_text("# nothing\n")
    with pytest.raises(DataError, match="no pairs"):
        read_pair_list(lst, root)
    with pytest.raises(DataError, match="no such pair list"):
        read_pair_list(tmp_path / "absent.txt", root)


def test_rows_for_keys(tmp_path):
    root = _folder(tmp_path / "imgs")
    lst = tmp_path / "list.txt"
    lst.write_text("Ann_A/Ann_A_0001.jpg Bob_B/Bob_B_0001.jpg 0\nAnn_A/Ann_A_0001.jpg Ann_A/Ann_A_0003.jpg 1\n")
    pl = read_pair_list(lst, root)
    store = ["Bob_B/Bob_B_0001.jpg", "./Ann_A/Ann_A_0001.jpg", str(root / "Ann_A" / "Ann_A_0003.jpg")]
    assert rows_for_keys(pl, store, source="s.h5").tolist() == [1, 0, 1, 2]
    with pytest.raises(DataError, match=r"s.h5: no features for 1 image\(s\).*Ann_A_0003"):
        rows_for_keys(pl, store[:2], source="s.h5")
    with pytest.raises(DataError, match=r"s.h5: `paths` names 3 image\(s\).*more than once.*rows \[1, 4\]"):
        rows_for_keys(pl, store + store, source="s.h5")  # never "first row wins": ambiguous
    # a repeated path that the pair list does not use is harmless
    assert rows_for_keys(pl, store + ["Cid_C/Cid_C_0001.jpg"] * 2, source="s.h5").tolist() == [1, 0, 1, 2]
