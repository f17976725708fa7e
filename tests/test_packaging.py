"""A plain (non-editable) install ships the spec files and finds them from any folder.

The wheel is built from a copy of the sources (nothing is written into the checkout), checked for
every shipped data file and every Python module, then installed into a private folder and run from a
folder that is not the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "megabench", "protocols", "baselines")


def _shipped(folder: str) -> list[str]:
    """Relative paths of the data files of a top-level spec folder (what the wheel must carry)."""
    root = REPO / folder
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix in (".toml", ".txt", ".md"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        s = REPO / name
        if s.is_dir():
            shutil.copytree(s, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(s, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out)], check=True, capture_output=True, timeout=300)
    (whl,) = out.glob("megabench-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return target


def test_wheel_ships_every_spec_file(wheel) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("protocols", "baselines"):
        expected = {f"megabench/_specs/{folder}/{rel}" for rel in _shipped(folder)}
        assert expected, folder
        assert expected <= names, sorted(expected - names)
    assert "megabench/_specs/protocols/megaface_noises/megaface_noises.txt" in names


def test_wheel_ships_every_module(wheel) -> None:
    """pyproject lists packages by hand (data packages are mapped): a forgotten sub-package fails here."""
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "megabench").rglob("*.py")}
    assert modules <= names, sorted(modules - names)


def _run_installed(target: Path, cwd: Path, code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_plain_install_lists_and_loads_specs_from_any_folder(installed, tmp_path) -> None:
    code = (
        "import megabench, sys\n"
        "from click.testing import CliRunner\n"
        "from megabench.cli import cli\n"
        "from megabench.config import load_spec\n"
        "print(megabench.__file__)\n"
        "for what in ('protocols', 'recipes'):\n"
        "    res = CliRunner().invoke(cli, ['ls', what])\n"
        "    assert res.exit_code == 0, res.output\n"
        "    print(res.output)\n"
        "print(load_spec('lfw', kind='verification').n_pairs)\n"
        "mf = load_spec('megaface_c1', kind='megaface')\n"
        "print(all(mf.noise_path(w).is_file() for w in ('facescrub', 'megaface')))\n"
        "import dataclasses\n"
        "bare = dataclasses.replace(mf, source='')  # a spec built without a file: the shipped folder\n"
        "print(all(bare.noise_path(w).is_file() for w in ('facescrub', 'megaface')))\n"
        "print(load_spec('casia_sranet_r50_arcface', 'baselines', kind='recipe').model)\n"
    )
    out = _run_installed(installed, tmp_path, code)
    lines = out.splitlines()
    assert Path(lines[0]).is_relative_to(installed)  # the installed copy ran, not the checkout
    for name in ("lfw", "agedb_30", "cfp_fp", "megaface_c1", "casia_sranet_r50_arcface", "_casia_r50"):
        assert any(line.startswith(name + " ") for line in lines), name
    assert lines[-4:] == ["6000", "True", "True", "sranet_r50"]


def test_own_file_overrides_the_shipped_name(installed, tmp_path) -> None:
    own = tmp_path / "lfw.toml"
    text = (REPO / "protocols" / "lfw.toml").read_text().replace("n_pairs = 6000", "n_pairs = 600")
    own.write_text(text)
    out = _run_installed(installed, tmp_path, "from megabench.config import load_spec\n"
                                              f"print(load_spec({str(own)!r}).n_pairs, load_spec('lfw').n_pairs)")
    assert out.split() == ["600", "6000"]


# ----------------------------------------------------------------- one place for the shipped folders and the cache
def _modules_mentioning(text: str) -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for p in (REPO / "megabench").rglob("*.py")
                  if p.name != "config.py" and text in p.read_text(encoding="utf-8"))


def test_only_config_knows_the_checkout_root() -> None:
    """Shipped files are found through megabench.config (spec_folder / find_spec_file), which works in
    a plain install; a REPO_ROOT path anywhere else breaks there."""
    assert _modules_mentioning("REPO_ROOT") == []


def test_only_config_knows_the_cache_root() -> None:
    """The cache folder ($MEGABENCH_CACHE, ~/.cache/megabench) comes from megabench.config.cache_dir
    (and synthetic_megaface_folder) only, so that feature caches and synthetic sets share one root."""
    assert _modules_mentioning('environ.get("MEGABENCH_CACHE"') == []
    assert _modules_mentioning('".cache"') == []
    assert _modules_mentioning("synth_megaface_n") == []
