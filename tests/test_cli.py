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
