"""The command line stays light: ``megabench --help`` lists every command without importing torch."""

from __future__ import annotations

import subprocess
import sys

from megabench.cli import COMMANDS


def test_help_imports_no_torch() -> None:
    code = ("import sys\n"
            "from megabench.cli import main\n"
            "try:\n"
            "    main(['--help'])\n"
            "except SystemExit as exc:\n"
            "    assert exc.code == 0, exc.code\n"
            "heavy = sorted(m for m in ('torch', 'h5py', 'pandas', 'scipy', 'sklearn') if m in sys.modules)\n"
            "print('HEAVY', ' '.join(heavy))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "HEAVY", res.stdout
    for name in COMMANDS:
        assert f"  {name} " in res.stdout, name


def _openblas_timeout_after_import(env_value: str | None) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if env_value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = env_value
    code = "import os, megabench; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_import_sets_a_short_openblas_spin_unless_the_user_chose_one() -> None:
    """numpy's OpenBLAS threads spin after each GEMM and steal the cores from the MegaFace kernel that follows
    (megabench/__init__.py); megabench shortens the spin, but a user's own setting wins."""
    assert _openblas_timeout_after_import(None) == "4"
    assert _openblas_timeout_after_import("30") == "30"
