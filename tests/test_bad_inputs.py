"""Every command x every class of bad input (issue 9), as one table.

Each row builds its inputs in a fresh folder, runs the command in-process (or, for the memory bomb,
in a subprocess under a memory limit) and classifies the outcome:

- ``lost``: an input file changed or disappeared (sha256 before / after);
- ``traceback``: an exception other than a clean exit escaped (or "Traceback" on stderr);
- ``silent``: exit 0 (or the wrong result) where the row expects a refusal;
- ``unclear``: refused, but not with exactly one ``error:`` line naming the file (``must_name``);
- ``clear``: what the row expects.

Classes (issue 9): 1 files destroyed, 2 path traversal, 3 memory bomb, 4 silent wrong numbers,
5 tracebacks, 6 messages, 7 permissions. ``python tests/test_bad_inputs.py`` prints the counts
(``PYTHONPATH=<old checkout>`` runs the same table against older code).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SMALL_LFW = FIXTURES / "insightface" / "small_lfw.bin"


# ---------------------------------------------------------------------------------------------- helpers
def sha(p: Path) -> str | None:
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    except OSError:
        return None


def vset(d: Path, name: str = "synthetic") -> tuple[Path, Path]:
    """A 20-pair synthetic pack + store (dim 8) in ``d``."""
    from megabench.data.synthetic_verification import make_synthetic_verification

    return make_synthetic_verification(d, n_pairs=20, dim=8, seed=1, name=name)


def pair_list_set(d: Path, *, lines: list[str] | None = None, store_paths: list[str] | None = None,
                  ) -> tuple[Path, Path, Path]:
    """images/ with 40 files, a 20-pair list over them and a store naming them; returns (list, store, root)."""
    from megabench.data.feature_store import write_features

    root = d / "images"
    root.mkdir(parents=True)
    names = [f"p{i // 2}/img{i}.jpg" for i in range(40)]
    for n in names:
        (root / n).parent.mkdir(exist_ok=True)
        (root / n).write_bytes(b"x")
    if lines is None:
        lines = [f"{names[2 * k]} {names[2 * k + 1]} {int(k % 2 == 0)}" for k in range(20)]
    lst = d / "pairs.txt"
    lst.write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    paths = store_paths if store_paths is not None else names
    feats = rng.standard_normal((len(paths), 8)).astype(np.float32)
    store = write_features(d / "feats.h5", feats, paths, features_flip=feats + 0.01)
    return lst, store, root


_CKPT_CACHE: dict[str, bytes] = {}


def checkpoint(d: Path, name: str = "m.pt", edit: Callable[[dict], None] | None = None) -> Path:
    """A megabench checkpoint of iresnet_tiny, optionally with its payload edited (then re-saved)."""
    import torch

    from megabench.engine.checkpoint import save_checkpoint
    from megabench.models import create_model

    if "tiny" not in _CKPT_CACHE:
        torch.manual_seed(0)
        tmp = Path(tempfile.mkdtemp())
        save_checkpoint(tmp / "m.pt", create_model("iresnet_tiny"))
        _CKPT_CACHE["tiny"] = (tmp / "m.pt").read_bytes()
        shutil.rmtree(tmp)
    p = d / name
    p.write_bytes(_CKPT_CACHE["tiny"])
    if edit is not None:
        payload = torch.load(p, weights_only=True)
        edit(payload)
        torch.save(payload, p)
    return p


class _Evil:
    """Pickles as a call to os.system: a checkpoint that tries to execute code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_checkpoint(d: Path) -> Path:
    import torch

    p = d / "evil.pt"
    torch.save({"format": "megabench.checkpoint", "x": _Evil(d / "PWNED")}, p)
    return p


def bomb_pickle(claim: int, refs: int) -> bytes:
    """A hand-built pack: ``numpy.ndarray((claim,), uint8)`` (uninitialised), memoised, listed ``refs`` times."""
    def unicode(s: str) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s.encode()

    dtype = b"cnumpy\ndtype\n" + unicode("u1") + b"\x85R"
    array = b"cnumpy\nndarray\n" + b"\x8a\x08" + struct.pack("<q", claim) + b"\x85" + dtype + b"\x86R"
    bins = b"]q\x01(" + b"h\x00" * refs + b"e"
    issame = b"](" + b"\x88" * (refs // 2) + b"e"
    return b"\x80\x02" + array + b"q\x000" + bins + issame + b"\x86."


def write_bytes(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def features_h5(p: Path, build: Callable[[h5py.File], None]) -> Path:
    with h5py.File(p, "w") as h5:
        build(h5)
        h5.attrs["schema_version"] = "1"
    return p


def result_json(d: Path, text: str | bytes, name: str = "r.json") -> Path:
    p = d / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def good_result(d: Path, name: str = "good.json") -> Path:
    from megabench.results import new_result, write_result

    res = new_result("verification", model={"name": "m"}, protocol={"name": "lfw"}, input={},
                     metrics={"accuracy": 0.9, "accuracy_std": 0.01}, folds=[])
    return write_result(d / name, res)


def mode_of(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# ---------------------------------------------------------------------------------------------- the table
@dataclass
class Setup:
    args: list[str]
    inputs: list[Path]
    must_name: str
    check: Callable[[], str | None] | None = None  # after the run: None = fine, else what is wrong


@dataclass
class Case:
    id: str
    cls: int
    build: Callable[[Path], Setup]
    code: int = 1  # expected exit code
    subprocess_mem: int | None = None  # run in a subprocess with RLIMIT_AS (bytes)
    expect_lines: list[str] = field(default_factory=list)  # more text the output must hold
    forbid: list[str] = field(default_factory=list)  # text the output must not hold


CASES: list[Case] = []


def case(id: str, cls: int, *, code: int = 1, subprocess_mem: int | None = None, expect: list[str] | None = None,
         forbid: list[str] | None = None):
    def deco(fn: Callable[[Path], Setup]) -> Callable[[Path], Setup]:
        CASES.append(Case(id, cls, fn, code, subprocess_mem, expect or [], forbid or []))
        return fn
    return deco


def verify_args(pack: Path, store: Path, out: Path, *extra: str) -> list[str]:
    return ["verify", "--pairs", str(pack), "--features", str(store), "--allow-partial", "--out", str(out), *extra]


# --- verify: files destroyed ---------------------------------------------------------------------
@case("verify --out = --features", 1)
def _(d):
    pack, store = vset(d)
    return Setup(verify_args(pack, store, store), [pack, store], store.name)


@case("verify --out = --pairs", 1)
def _(d):
    pack, store = vset(d)
    return Setup(verify_args(pack, store, pack), [pack, store], pack.name)


@case("verify --out symlink to --features", 1)
def _(d):
    pack, store = vset(d)
    (d / "out.json").symlink_to(store)
    return Setup(verify_args(pack, store, d / "out.json"), [pack, store], "out.json")


@case("verify --out hard link of --features", 1)
def _(d):
    pack, store = vset(d)
    os.link(store, d / "out.json")
    return Setup(verify_args(pack, store, d / "out.json"), [pack, store, d / "out.json"], "out.json")


@case("verify --out existing non-result file", 1)
def _(d):
    pack, store = vset(d)
    notes = write_bytes(d / "notes.json", b'{"my": "notes"}')
    return Setup(verify_args(pack, store, notes), [pack, store, notes], notes.name)


@case("verify --out existing result is replaced (re-run)", 1, code=0)
def _(d):
    pack, store = vset(d)
    old = good_result(d, "lfw.json")
    return Setup(verify_args(pack, store, old), [pack, store], "lfw.json",
                 check=lambda: None if '"n_pairs": 20' in old.read_text() else "result not replaced")


# --- verify: unwritable outputs (checked before the work) ---------------------------------------------
@case("verify --out read-only file", 5)
def _(d):
    pack, store = vset(d)
    ro = good_result(d, "ro.json")
    ro.chmod(0o444)
    return Setup(verify_args(pack, store, ro), [pack, store, ro], ro.name)


@case("verify --out under a file", 5)
def _(d):
    pack, store = vset(d)
    return Setup(verify_args(pack, store, store.parent / "synthetic.bin" / "r.json"), [pack, store], "r.json")


@case("verify --out is a folder", 5)
def _(d):
    pack, store = vset(d)
    (d / "outdir").mkdir()
    return Setup(verify_args(pack, store, d / "outdir"), [pack, store], "outdir")


@case("verify --out in a read-only folder", 5)
def _(d):
    pack, store = vset(d)
    (d / "ro").mkdir()
    (d / "ro").chmod(0o555)
    return Setup(verify_args(pack, store, d / "ro" / "r.json"), [pack, store], "r.json")


# --- verify: feature store shapes and content ----------------------------------------------------------
@case("verify 1-D features", 5)
def _(d):
    pack, _ = vset(d)
    store = features_h5(d / "f.h5", lambda h5: h5.create_dataset("features", data=np.ones(40, np.float32)))
    return Setup(verify_args(pack, store, d / "r.json"), [pack, store], "f.h5")


@case("verify features is a group", 5)
def _(d):
    pack, _ = vset(d)
    store = features_h5(d / "f.h5", lambda h5: h5.create_group("features"))
    return Setup(verify_args(pack, store, d / "r.json"), [pack, store], "f.h5")


@case("verify features_flip is a group", 5)
def _(d):
    pack, _ = vset(d)

    def build(h5):
        h5.create_dataset("features", data=np.ones((40, 8), np.float32))
        h5.create_group("features_flip")
    store = features_h5(d / "f.h5", build)
    return Setup(verify_args(pack, store, d / "r.json"), [pack, store], "f.h5")


@case("verify store paths not UTF-8", 5)
def _(d):
    lst, _, root = pair_list_set(d)

    def build(h5):
        h5.create_dataset("features", data=np.ones((2, 8), np.float32))
        h5.create_dataset("paths", data=np.array([b"\xff\xfe", b"a"], dtype=h5py.special_dtype(vlen=bytes)))
    store = features_h5(d / "f.h5", build)
    return Setup(verify_args(lst, store, d / "r.json", "--images", str(root)), [lst, store], "f.h5")


@case("verify duplicated path in store (silent first row)", 4)
def _(d):
    names = [f"p{i // 2}/img{i}.jpg" for i in range(40)]
    lst, store, root = pair_list_set(d, store_paths=names + [names[0]])
    return Setup(verify_args(lst, store, d / "r.json", "--images", str(root)), [lst, store], "feats.h5")


# --- verify: pair lists --------------------------------------------------------------------------------
@case("verify pair list ../ escapes --images", 2)
def _(d):
    (d / "outside.jpg").write_bytes(b"x")
    names = [f"p{i // 2}/img{i}.jpg" for i in range(40)]
    lines = [f"{names[2 * k]} {names[2 * k + 1]} {int(k % 2 == 0)}" for k in range(20)]
    lines[0] = f"../outside.jpg {names[1]} 1"
    lst, store, root = pair_list_set(d, lines=lines, store_paths=names + ["../outside.jpg"])
    return Setup(verify_args(lst, store, d / "r.json", "--images", str(root)), [lst, store], "pairs.txt")


@case("verify pair list absolute path outside --images", 2)
def _(d):
    (d / "outside.jpg").write_bytes(b"x")
    names = [f"p{i // 2}/img{i}.jpg" for i in range(40)]
    lines = [f"{names[2 * k]} {names[2 * k + 1]} {int(k % 2 == 0)}" for k in range(20)]
    lines[0] = f"{d / 'outside.jpg'} {names[1]} 1"
    lst, store, root = pair_list_set(d, lines=lines, store_paths=names + [str(d / "outside.jpg")])
    return Setup(verify_args(lst, store, d / "r.json", "--images", str(root)), [lst, store], "pairs.txt")


@case("verify pair list not UTF-8", 5)
def _(d):
    lst, store, root = pair_list_set(d)
    lst.write_bytes("p0/img0.jpg p0/img1.jpg 1\nJos\xe9 x 0\n".encode("latin-1"))
    return Setup(verify_args(lst, store, d / "r.json", "--images", str(root)), [lst, store], "pairs.txt")


@case("verify --protocol TOML not UTF-8", 5)
def _(d):
    pack, store = vset(d)
    toml = write_bytes(d / "p.toml", (Path(__file__).parents[1] / "protocols" / "lfw.toml").read_bytes()
                       + "\n# caf\xe9\n".encode("latin-1"))
    return Setup(verify_args(pack, store, d / "r.json", "--protocol", str(toml)), [pack, store, toml], "p.toml")


# --- verify: packs -------------------------------------------------------------------------------------
@case("verify pack with object dtype names the file", 6)
def _(d):
    _, store = vset(d)
    arr = np.array([b"x", None], dtype=object)
    pack = write_bytes(d / "obj.bin", pickle.dumps(([arr, arr.copy()], [True]), protocol=2))
    return Setup(verify_args(pack, store, d / "r.json"), [pack, store], "obj.bin")


@case("verify pack reusing one image through the memo", 3)
def _(d):
    _, store = vset(d)
    img = bytes(range(256)) * 4
    pack = write_bytes(d / "memo.bin", pickle.dumps(([img] * 40, [True] * 20), protocol=4))
    return Setup(verify_args(pack, store, d / "r.json"), [pack, store], "memo.bin")


@case("verify pack claiming a 1 TiB array", 3)
def _(d):
    _, store = vset(d)
    pack = write_bytes(d / "big.bin", bomb_pickle(1 << 40, 2))
    return Setup(verify_args(pack, store, d / "r.json"), [pack, store], "big.bin")


@case("verify 147-byte pack: 1 GiB array x 16 memo refs, 1.5 GiB limit", 3, subprocess_mem=3 << 29)
def _(d):
    _, store = vset(d)
    pack = write_bytes(d / "bomb.bin", bomb_pickle(1 << 30, 16))
    return Setup(verify_args(pack, store, d / "r.json"), [pack, store], "bomb.bin")


# --- verify / results: permissions ---------------------------------------------------------------------
@case("verify result gets the user's mode (0666 & ~umask)", 7, code=0)
def _(d):
    pack, store = vset(d)
    out = d / "r.json"
    return Setup(verify_args(pack, store, out), [pack, store], "r.json",
                 check=lambda: None if mode_of(out) == 0o666 & ~_umask() else f"mode {oct(mode_of(out))}")


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


# --- extract ---------------------------------------------------------------------------------------------
def extract_args(out: Path, *extra: str, pack: Path | None = None) -> list[str]:
    return ["extract", "--pairs", str(pack or SMALL_LFW), "--out", str(out), "--quiet", *extra]


def lfw_copy(d: Path) -> Path:
    p = d / "lfw.bin"
    shutil.copy(SMALL_LFW, p)
    return p


NO_ADVICE = ["weights_only=False", "likely succeed"]


@case("extract --out = --pairs", 1)
def _(d):
    pack = lfw_copy(d)
    return Setup(extract_args(pack, "--model", "iresnet_tiny", "--random-weights", pack=pack), [pack], "lfw.bin")


@case("extract --out = --checkpoint", 1)
def _(d):
    pack, ck = lfw_copy(d), checkpoint(d)
    return Setup(extract_args(ck, "--checkpoint", str(ck), pack=pack), [pack, ck], "m.pt")


@case("extract --out existing non-store file", 1)
def _(d):
    pack = lfw_copy(d)
    other = good_result(d, "lfw.h5")
    return Setup(extract_args(other, "--model", "iresnet_tiny", "--random-weights", pack=pack), [pack, other], "lfw.h5")


@case("extract --out read-only file", 5)
def _(d):
    pack = lfw_copy(d)
    ro = d / "ro.h5"
    vset(d / "v")
    shutil.copy(d / "v" / "synthetic.h5", ro)
    ro.chmod(0o444)
    return Setup(extract_args(ro, "--model", "iresnet_tiny", "--random-weights", pack=pack), [pack, ro], "ro.h5")


@case("extract --out under a file", 5)
def _(d):
    pack = lfw_copy(d)
    return Setup(extract_args(pack / "f.h5", "--model", "iresnet_tiny", "--random-weights", pack=pack), [pack], "f.h5")


@case("extract --device typo", 5)
def _(d):
    pack = lfw_copy(d)
    args = extract_args(d / "f.h5", "--model", "iresnet_tiny", "--random-weights", "--device", "cdua", pack=pack)
    return Setup(args, [pack], "cdua")


@case("extract --device cuda without CUDA", 5)
def _(d):
    pack = lfw_copy(d)
    args = extract_args(d / "f.h5", "--model", "iresnet_tiny", "--random-weights", "--device", "cuda", pack=pack)
    return Setup(args, [pack], "cuda")


@case("extract hostile checkpoint: no weights_only=False advice", 6, forbid=NO_ADVICE)
def _(d):
    pack, ck = lfw_copy(d), hostile_checkpoint(d)

    def check():
        if (d / "PWNED").exists():
            return "code executed"
        return None
    return Setup(extract_args(d / "f.h5", "--checkpoint", str(ck), pack=pack), [pack, ck], "evil.pt", check)


@case("extract checkpoint without state_dict", 5)
def _(d):
    pack, ck = lfw_copy(d), checkpoint(d, edit=lambda p: p.pop("state_dict"))
    return Setup(extract_args(d / "f.h5", "--checkpoint", str(ck), pack=pack), [pack, ck], "m.pt")


@case("extract checkpoint with unknown config key", 5)
def _(d):
    pack, ck = lfw_copy(d), checkpoint(d, edit=lambda p: p["config"].update(colour="blue"))
    return Setup(extract_args(d / "f.h5", "--checkpoint", str(ck), pack=pack), [pack, ck], "m.pt")


@case("extract checkpoint with a string config", 5)
def _(d):
    pack, ck = lfw_copy(d), checkpoint(d, edit=lambda p: p.update(config="depths=1"))
    return Setup(extract_args(d / "f.h5", "--checkpoint", str(ck), pack=pack), [pack, ck], "m.pt")


@case("extract checkpoint `model` changed to sranet_tiny (silent relabel)", 4)
def _(d):
    pack, ck = lfw_copy(d), checkpoint(d, edit=lambda p: p.update(model="sranet_tiny"))
    return Setup(extract_args(d / "f.h5", "--checkpoint", str(ck), pack=pack), [pack, ck], "m.pt")


@case("extract checkpoint `model` changed to iresnet50 (silent relabel)", 4)
def _(d):
    pack, ck = lfw_copy(d), checkpoint(d, edit=lambda p: p.update(model="iresnet50"))
    return Setup(extract_args(d / "f.h5", "--checkpoint", str(ck), pack=pack), [pack, ck], "m.pt")


@case("extract checkpoint `model` unknown name", 5)
def _(d):
    pack, ck = lfw_copy(d), checkpoint(d, edit=lambda p: p.update(model="resnet9000"))
    return Setup(extract_args(d / "f.h5", "--checkpoint", str(ck), pack=pack), [pack, ck], "m.pt")


@case("extract checkpoint of random bytes", 5)
def _(d):
    pack = lfw_copy(d)
    ck = write_bytes(d / "junk.pt", np.random.default_rng(509).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    return Setup(extract_args(d / "f.h5", "--checkpoint", str(ck), pack=pack), [pack, ck], "junk.pt")


@case("extract pack claiming a 1 TiB array", 3)
def _(d):
    pack = write_bytes(d / "big.bin", bomb_pickle(1 << 40, 2))
    return Setup(extract_args(d / "f.h5", "--model", "iresnet_tiny", "--random-weights", pack=pack), [pack], "big.bin")


@case("extract store gets the user's mode", 7, code=0)
def _(d):
    pack = lfw_copy(d)
    out = d / "f.h5"
    return Setup(extract_args(out, "--model", "iresnet_tiny", "--random-weights", pack=pack), [pack], "f.h5",
                 check=lambda: None if mode_of(out) == 0o666 & ~_umask() else f"mode {oct(mode_of(out))}")


# --- synth verification ----------------------------------------------------------------------------------
def synth_args(out: Path, *extra: str) -> list[str]:
    return ["synth", "verification", "--out", str(out), "--pairs", "20", "--dim", "8", *extra]


@case("synth verification over an existing pack", 1)
def _(d):
    pack = write_bytes(d / "synthetic.bin", SMALL_LFW.read_bytes())
    return Setup(synth_args(d), [pack], "synthetic.bin")


@case("synth verification over an existing store", 1)
def _(d):
    pack, store = vset(d / "v", name="mine")
    return Setup(synth_args(d / "v", "--name", "mine"), [pack, store], "mine.")


@case("synth verification --out is a file", 5)
def _(d):
    f = write_bytes(d / "afile", b"x")
    return Setup(synth_args(f), [f], "afile")


@case("synth verification --out in a read-only folder", 5)
def _(d):
    (d / "ro").mkdir()
    (d / "ro").chmod(0o555)
    return Setup(synth_args(d / "ro" / "new"), [], "new")


@case("synth verification --name ../ escapes --out", 2)
def _(d):
    (d / "out").mkdir()
    victim = write_bytes(d / "victim.bin", b"precious")
    return Setup(synth_args(d / "out", "--name", "../victim"), [victim], "victim")


@case("synth verification files get the user's mode", 7, code=0)
def _(d):
    return Setup(synth_args(d / "s"), [], "s",
                 check=lambda: None if mode_of(d / "s" / "synthetic.bin") == 0o666 & ~_umask()
                 else f"mode {oct(mode_of(d / 's' / 'synthetic.bin'))}")


# --- validate ----------------------------------------------------------------------------------------------
LFW_TOML = Path(__file__).parents[1] / "protocols" / "lfw.toml"


@case("validate kind typo names the file", 6)
def _(d):
    f = write_bytes(d / "typo.toml", LFW_TOML.read_bytes().replace(b'kind = "verification"', b'kind = "verifcation"'))
    return Setup(["validate", str(f)], [f], "typo.toml")


@case("validate non-UTF-8 TOML, then a good one: both reported", 5, expect=["ok "])
def _(d):
    bad = write_bytes(d / "bad.toml", b'kind = "verification"\n# caf\xe9\n')
    good = write_bytes(d / "good.toml", LFW_TOML.read_bytes())
    return Setup(["validate", str(bad), str(good)], [bad, good], "bad.toml")


@case("validate missing file, then a good one: both reported", 5, expect=["ok "])
def _(d):
    good = write_bytes(d / "good.toml", LFW_TOML.read_bytes())
    return Setup(["validate", str(d / "missing.toml"), str(good)], [good], "missing.toml")


@case("validate a folder, then a good one: both reported", 5, expect=["ok "])
def _(d):
    (d / "folder.toml").mkdir()
    good = write_bytes(d / "good.toml", LFW_TOML.read_bytes())
    return Setup(["validate", str(d / "folder.toml"), str(good)], [good], "folder.toml")


@case("validate base chain to a non-UTF-8 file", 5)
def _(d):
    write_bytes(d / "base.toml", b"# \xff\n")
    f = write_bytes(d / "child.toml", b'base = "base.toml"\n')
    return Setup(["validate", str(f)], [f], "base.toml")


# --- profile -----------------------------------------------------------------------------------------------
def profile_args(*extra: str) -> list[str]:
    return ["profile", "--model", "iresnet_tiny", "--batch", "2", "--repeats", "1", "--warmup", "0", "--no-memory",
            *extra]


@case("profile --device typo", 5)
def _(d):
    return Setup(profile_args("--device", "cdua"), [], "cdua")


@case("profile --out existing non-result file", 1)
def _(d):
    notes = write_bytes(d / "notes.json", b'{"mine": 1}')
    return Setup(profile_args("--out", str(notes)), [notes], "notes.json")


@case("profile --out read-only", 5)
def _(d):
    ro = good_result(d, "ro.json")
    ro.chmod(0o444)
    return Setup(profile_args("--out", str(ro)), [ro], "ro.json")


@case("profile --out under a file", 5)
def _(d):
    f = write_bytes(d / "afile", b"x")
    return Setup(profile_args("--out", str(f / "p.json")), [f], "p.json")


# --- export ------------------------------------------------------------------------------------------------
@case("export --opset 99", 5)
def _(d):
    return Setup(["export", "--model", "iresnet_tiny", "--out", str(d / "m.onnx"), "--opset", "99", "--no-check"],
                 [], "opset")


@case("export --out = --checkpoint", 1)
def _(d):
    ck = checkpoint(d)
    return Setup(["export", "--checkpoint", str(ck), "--out", str(ck), "--no-check"], [ck], "m.pt")


@case("export --out existing non-onnx file", 1)
def _(d):
    notes = write_bytes(d / "m.onnx", b"my notes")
    return Setup(["export", "--model", "iresnet_tiny", "--out", str(notes), "--no-check"], [notes], "m.onnx")


@case("export --out read-only", 5)
def _(d):
    ro = write_bytes(d / "ro.onnx", b"x")
    ro.chmod(0o444)
    return Setup(["export", "--model", "iresnet_tiny", "--out", str(ro), "--no-check"], [ro], "ro.onnx")


@case("export --out under a file", 5)
def _(d):
    f = write_bytes(d / "afile", b"x")
    return Setup(["export", "--model", "iresnet_tiny", "--out", str(f / "m.onnx"), "--no-check"], [f], "m.onnx")


@case("export hostile checkpoint: no weights_only=False advice", 6, forbid=NO_ADVICE)
def _(d):
    ck = hostile_checkpoint(d)
    return Setup(["export", "--checkpoint", str(ck), "--out", str(d / "m.onnx"), "--no-check"], [ck], "evil.pt",
                 check=lambda: "code executed" if (d / "PWNED").exists() else None)


@case("export checkpoint without state_dict", 5)
def _(d):
    ck = checkpoint(d, edit=lambda p: p.pop("state_dict"))
    return Setup(["export", "--checkpoint", str(ck), "--out", str(d / "m.onnx"), "--no-check"], [ck], "m.pt")


@case("export --model with checkpoint lacking sha", 5)
def _(d):
    ck = checkpoint(d, edit=lambda p: p.pop("weights_sha256"))
    return Setup(["export", "--model", "iresnet_tiny", "--checkpoint", str(ck), "--out", str(d / "m.onnx"),
                  "--no-check"], [ck], "m.pt")


# --- report ------------------------------------------------------------------------------------------------
def report_args(d: Path, *files: Path) -> list[str]:
    return ["report", *map(str, files), "--out", str(d / "rep")]


@case("report JSON null", 5)
def _(d):
    f = result_json(d, "null")
    return Setup(report_args(d, f), [f], "r.json")


@case("report JSON number", 5)
def _(d):
    f = result_json(d, "42")
    return Setup(report_args(d, f), [f], "r.json")


@case("report JSON list", 5)
def _(d):
    f = result_json(d, "[1, 2]")
    return Setup(report_args(d, f), [f], "r.json")


@case("report JSON missing keys", 5)
def _(d):
    f = result_json(d, '{"schema_version": "1.0", "kind": "verification"}')
    return Setup(report_args(d, f), [f], "r.json")


@case("report verification result without metrics.accuracy", 5)
def _(d):
    import json

    data = json.loads(good_result(d).read_text())
    del data["metrics"]["accuracy"]
    f = result_json(d, json.dumps(data))
    return Setup(report_args(d, f), [f], "r.json")


@case("report result with null sections", 5)
def _(d):
    import json

    data = json.loads(good_result(d).read_text())
    data["protocol"] = None
    f = result_json(d, json.dumps(data))
    return Setup(report_args(d, f), [f], "r.json")


@case("report schema_version null", 5)
def _(d):
    import json

    data = json.loads(good_result(d).read_text())
    data["schema_version"] = None
    f = result_json(d, json.dumps(data))
    return Setup(report_args(d, f), [f], "r.json")


@case("report JSON not UTF-8", 5)
def _(d):
    f = result_json(d, b'{"schema_version": "1.0", "kind": "caf\xe9"}')
    return Setup(report_args(d, f), [f], "r.json")


@case("report folder holding a null JSON: skipped, rest reported", 5, code=0, expect=["skipped"])
def _(d):
    (d / "res").mkdir()
    good = good_result(d / "res")
    bad = result_json(d / "res", "null", name="null.json")
    return Setup(["report", str(d / "res"), "--out", str(d / "rep")], [good, bad], "null.json")


@case("report --out is a file", 5)
def _(d):
    good = good_result(d)
    f = write_bytes(d / "afile", b"x")
    return Setup(["report", str(good), "--out", str(f)], [good, f], "afile")


@case("report --out in a read-only folder", 5)
def _(d):
    good = good_result(d)
    (d / "ro").mkdir()
    (d / "ro").chmod(0o555)
    return Setup(["report", str(good), "--out", str(d / "ro" / "rep")], [good], "rep")


@case("report tables get the user's mode", 7, code=0)
def _(d):
    good = good_result(d)
    md = d / "rep" / "verification.md"
    return Setup(["report", str(good), "--out", str(d / "rep")], [good], "rep",
                 check=lambda: None if mode_of(md) == 0o666 & ~_umask() else f"mode {oct(mode_of(md))}")


# ---------------------------------------------------------------------------------------------- running
@dataclass
class Outcome:
    verdict: str  # clear | traceback | silent | lost | unclear
    detail: str
    output: str


def _invoke_in_process(args: list[str]) -> tuple[int, str, str, bool]:
    from click.testing import CliRunner

    from megabench.cli import cli

    res = CliRunner().invoke(cli, args, catch_exceptions=True)
    tb = res.exception is not None and not isinstance(res.exception, SystemExit)
    stderr = res.stderr if hasattr(res, "stderr") else ""
    if tb:
        import traceback

        stderr += "".join(traceback.format_exception(res.exception))
    return res.exit_code, res.stdout, stderr, tb


def _invoke_subprocess(args: list[str], mem: int) -> tuple[int, str, str, bool]:
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem})); "
            "from megabench.cli import main; main(sys.argv[1:])")
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tempfile.gettempdir())
    return proc.returncode, proc.stdout, proc.stderr, "Traceback" in proc.stderr


def run_case(c: Case, d: Path) -> Outcome:
    d.mkdir(parents=True, exist_ok=True)
    old_cwd = os.getcwd()
    os.chdir(d)
    try:
        setup = c.build(d)
        before = {p: sha(p) for p in setup.inputs}
        if c.subprocess_mem:
            code, out, err, tb = _invoke_subprocess(setup.args, c.subprocess_mem)
        else:
            code, out, err, tb = _invoke_in_process(setup.args)
        changed = [p.name for p, h in before.items() if sha(p) != h]
        extra = setup.check() if setup.check and not tb else None
    finally:
        os.chdir(old_cwd)
        for p in d.rglob("*"):  # read-only folders made by a case
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
    return classify(c, setup, code, out, err, tb=tb, changed=changed, extra=extra)


def classify(c: Case, setup: Setup, code: int, out: str, err: str, *, tb: bool, changed: list[str],
             extra: str | None) -> Outcome:
    """The verdict of one run (see the module docstring), most severe first."""
    text = out + err
    if changed:
        return Outcome("lost", f"changed: {changed}", text)
    if tb:
        return Outcome("traceback", (err.strip().splitlines() or ["?"])[-1], text)
    if code == 0 and c.code != 0:
        return Outcome("silent", "exit 0", text)
    if extra:
        return Outcome("silent" if code == 0 else "unclear", extra, text)
    if code != c.code and not (c.code == 1 and code == 2):  # 2: click's usage error, also one line
        return Outcome("unclear", f"exit {code}, expected {c.code}", text)
    missing = [e for e in c.expect_lines if e not in text]
    bad = [e for e in c.forbid if e in text]
    if missing or bad:
        return Outcome("unclear", f"output lacks {missing} / holds {bad}", text)
    if c.code != 0:
        return _message_verdict(setup.must_name, err, text)
    return Outcome("clear", "", text)


def _message_verdict(must_name: str, err: str, text: str) -> Outcome:
    """A refusal must be one ``error:`` line (or ``FAIL`` lines of validate) naming the file."""
    lines = err.splitlines()
    errs = [ln for ln in lines if ln.lower().startswith("error") or ln.startswith("FAIL")]
    if not errs:
        return Outcome("unclear", "no error line", text)
    if not any(must_name in ln for ln in errs):
        return Outcome("unclear", f"error does not name {must_name!r}", text)
    if len([ln for ln in lines if ln.lower().startswith("error")]) > 1 or "Traceback" in err:
        return Outcome("unclear", "more than one error line", text)
    return Outcome("clear", "", text)


@pytest.mark.parametrize("c", CASES, ids=[f"{c.cls}:{c.id}" for c in CASES])
def test_bad_input(c: Case, tmp_path: Path) -> None:
    outcome = run_case(c, tmp_path / "case")
    assert outcome.verdict == "clear", f"{outcome.verdict}: {outcome.detail}\n{outcome.output[-2000:]}"


def main() -> None:
    counts: Counter[str] = Counter()
    by_class: dict[int, Counter[str]] = {}
    for i, c in enumerate(CASES):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                outcome = run_case(c, Path(tmp) / f"case{i}")
            except Exception as exc:  # a setup that the old code cannot build
                outcome = Outcome("traceback", f"setup: {exc!r}", "")
        counts[outcome.verdict] += 1
        by_class.setdefault(c.cls, Counter())[outcome.verdict] += 1
        print(f"{outcome.verdict:<9} {c.cls} {c.id}  {outcome.detail[:110]}", flush=True)
    print(f"\ntried {len(CASES)}: " + ", ".join(f"{k} {counts[k]}" for k in
                                                 ("clear", "traceback", "silent", "lost", "unclear")))
    for cls in sorted(by_class):
        print(f"  class {cls}: " + ", ".join(f"{k} {v}" for k, v in sorted(by_class[cls].items())))


if __name__ == "__main__":
    main()
