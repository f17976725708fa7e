"""Helpers shared by several test files (import with ``from helpers import ...``; tests/ is on the path).

Only things more than one test file needs live here; a helper used by one file stays in that file.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"

#: sha256 of the third-party files shipped verbatim, as published upstream (see each ATTRIBUTION.md).
#: Pinned here, in the tests, so that an edited copy fails instead of silently redefining the original.
UPSTREAM_SHA256 = {
    "small_lfw.bin": "1ca73282b165bae35fe85d1c1009bfff3a931969b591e36390de4ef7cbf4c6be",
    "facescrub_noises.txt": "36cf3633aaffde2c14eaeec9e29d54e623700d824acd4f1889a0c1a7f2610dd7",
    "megaface_noises.txt": "91b57df18d4d48bade1e1af170ebd0aa2f2b4f5ee9aedac6a5163d13db49ef09",
}


#: `megabench demo` at a reduced scale (seconds, not minutes): what tests/test_demo.py and
#: tests/test_report_demo.py check. The full scale is `make demo` (README).
DEMO_SMALL = ("--steps", "10", "--batch", "8", "--identities", "8", "--images-per-identity", "4",
              "--pack-identities", "20", "--distractors", "30", "--megaface-identities", "3", "--quiet")


def run_cli(*args: str, catch_exceptions: bool = True) -> Result:
    """``megabench ARGS...`` in-process through click's CliRunner (stderr kept apart in ``.stderr``)."""
    from megabench.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=catch_exceptions)


def write_verification_spec(path: Path, n_pairs: int, *, name: str = "tiny", flip: str = "concat") -> Path:
    """A small verification protocol file (insightface grids, 10 folds) for ``n_pairs`` pairs."""
    path.write_text(f"""kind = "verification"
name = "{name}"
version = "0.1"
n_pairs = {n_pairs}
flip = "{flip}"
[thresholds]
start = 0.0
stop = 4.0
step = 0.01
[val_thresholds]
start = 0.0
stop = 4.0
step = 0.001
""")
    return path


# ------------------------------------------------------------------------------------- 2 gloo ranks on CPU
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_rank(rank: int, world: int, port: int, worker: Callable[..., None], folder: str,
               args: tuple[Any, ...]) -> None:
    """One spawned rank: torchrun's environment, one thread, the gloo group around ``worker``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch

    torch.set_num_threads(1)
    from megabench.engine.distributed import destroy, init_from_env

    info = init_from_env("cpu")
    try:
        worker(info, Path(folder), *args)
    finally:
        destroy(info)


def run_gloo_ranks(worker: Callable[..., None], folder: Path, *args: Any, world: int = 2) -> None:
    """Run ``worker(info, folder, *args)`` in ``world`` spawned processes joined in one gloo group, as
    ``torchrun --nproc-per-node world`` would on CPU (``info``: that rank's ``DistInfo``). ``worker`` must
    be a module-level function (spawn pickles it); ranks pass results back through files in ``folder``.
    An exception in any rank fails the call."""
    import torch.multiprocessing as mp

    mp.start_processes(_gloo_rank, args=(world, _free_port(), worker, str(folder), args), nprocs=world,
                       join=True, start_method="spawn")
