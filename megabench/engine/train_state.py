"""A training run's folder and state: ``run.json``, checkpoints, RNG states, the resume checks.

Folder layout (only rank 0 writes)::

    recipe.toml, recipe.sha256    the resolved recipe (every default explicit) and its sha256
    run.json                      model, head, recipe, data fingerprint, world size, step, status
                                  ("running" | "finished" | "diverged"), metrics of the final validation
    log.jsonl                     one JSON object per logged step / validation
    checkpoints/step_<N>.pt       full training state after N steps (the last ``keep`` are kept)
    final.pt                      model (+ head) after ``max_steps``: what ``megabench extract`` reads
    verification_<pack>.json      the final validation results (``megabench verify`` schema)

A checkpoint is a :mod:`megabench.engine.checkpoint` file (read with ``weights_only=True``) whose
``extra`` holds ``train_state``: step, recipe sha256, data fingerprint, world size, the head's
state, the optimizer's state, the lr, and every RNG state (python, numpy, torch, CUDA; one set per
rank) — the sampler's position is the step (see :mod:`megabench.engine.train_data`).
"""

from __future__ import annotations

import datetime as _dt
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megabench.errors import DataError, MegabenchError

RUN_FORMAT = "megabench.run"
STATE_KIND = "megabench.train_state"
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


class RunFolderError(MegabenchError):
    """``--out`` holds something this run must not overwrite or cannot continue."""


class TrainingDiverged(MegabenchError):
    """The loss became NaN or infinite."""


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# ----------------------------------------------------------------------------------------------- RNG
def rng_arrays() -> dict[str, np.ndarray]:
    """This process's RNG states as int64 / float64 arrays (so ranks can be gathered without pickles)."""
    version, mt, gauss = random.getstate()
    npst = np.random.get_state()  # noqa: NPY002 (the legacy global state is what we save)
    out = {
        "python_mt": np.asarray(mt, dtype=np.int64),
        "python_meta": np.asarray([version, np.nan if gauss is None else gauss], dtype=np.float64),
        "numpy_key": np.asarray(npst[1], dtype=np.int64),
        "numpy_meta": np.asarray([npst[2], npst[3], npst[4]], dtype=np.float64),
        "torch": torch.get_rng_state().numpy().astype(np.int64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state().numpy().astype(np.int64)
    return out


def set_rng_arrays(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_arrays` captured (arrays or tensors)."""
    a = {k: np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    version, gauss = a["python_meta"]
    random.setstate((int(version), tuple(int(x) for x in a["python_mt"]), None if np.isnan(gauss) else float(gauss)))
    pos, has_gauss, cached = a["numpy_meta"]
    np.random.set_state((  # noqa: NPY002
        "MT19937", a["numpy_key"].astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(torch.from_numpy(a["torch"].astype(np.uint8)))
    if "cuda" in a and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.from_numpy(a["cuda"].astype(np.uint8)))


def rng_to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


# ------------------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class RunIdentity:
    """What must match to continue a run."""

    recipe_sha256: str
    data_fingerprint: str
    world_size: int


def checkpoint_files(out: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of ``out/checkpoints/step_<N>.pt``, by step."""
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.match(p.name))]
    return sorted(found)


def read_run(out: Path) -> dict[str, Any] | None:
    path = out / "run.json"
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{path}: unreadable run record ({exc}); move the folder away or choose "
                             "another --out") from None
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT:
        raise RunFolderError(f"{path}: not a megabench run record; choose another --out")
    return run


def mismatches(run: dict[str, Any], ident: RunIdentity) -> list[str]:
    """Human-readable differences between a stored run and this one."""
    diffs = []
    if run.get("recipe_sha256") != ident.recipe_sha256:
        diffs.append(f"recipe sha256 {str(run.get('recipe_sha256'))[:12]} (stored) != {ident.recipe_sha256[:12]} "
                     "(given; compare with its recipe.toml)")
    stored_fp = (run.get("data") or {}).get("fingerprint")
    if stored_fp != ident.data_fingerprint:
        diffs.append(f"data fingerprint {stored_fp} (stored) != {ident.data_fingerprint} (given)")
    if run.get("world_size") != ident.world_size:
        diffs.append(f"world size {run.get('world_size')} (stored) != {ident.world_size} (now)")
    return diffs


def check_out_folder(out: Path, ident: RunIdentity, *, resume: bool, force: bool) -> str:
    """Decide what to do with ``out``: ``"new"``, ``"resume"`` or ``"finished"`` (nothing to do).

    Raises :class:`RunFolderError` (nothing touched) for a folder holding other files, another run,
    or this run without ``--resume``; with ``--resume``, differences in recipe / data / world size are
    refused unless ``force``.
    """
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise RunFolderError(f"{out}: exists and is not a folder; choose another --out")
    run = read_run(out)
    if run is None:
        if any(out.iterdir()):
            raise RunFolderError(f"{out}: holds files but no run.json (not a megabench training run); nothing was "
                                 "overwritten; choose an empty or new --out")
        return "new"
    desc = f"model {run.get('model')}, recipe {run.get('recipe')}, step {run.get('step')}, {run.get('status')}"
    diffs = mismatches(run, ident)
    if not resume:
        raise RunFolderError(f"{out}: holds a run ({desc}); nothing was overwritten; continue it with --resume "
                             "or choose another --out")
    if diffs and not force:
        raise RunFolderError(f"{out}: cannot resume: {'; '.join(diffs)}. Use the run's own recipe.toml and data, "
                             "or --force to continue anyway, or another --out")
    if run.get("status") == "finished" and not diffs:
        return "finished"
    return "resume"


def latest_checkpoint(out: Path, warn: Any = None) -> tuple[int, dict[str, Any]] | None:
    """The newest readable checkpoint's ``(step, payload)``; unreadable newer ones are skipped (with
    ``warn(message)``), so a checkpoint cut short by a crash falls back to the previous one."""
    from megabench.engine.checkpoint import read_checkpoint

    for step, path in reversed(checkpoint_files(out)):
        try:
            payload = read_checkpoint(path)
        except DataError as exc:
            if warn is not None:
                warn(f"skipping unreadable checkpoint: {exc}")
            continue
        state = payload.get("extra", {}).get("train_state")
        if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
            if warn is not None:
                warn(f"skipping {path}: not a training checkpoint")
            continue
        return step, payload
    return None


def prune_checkpoints(out: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints."""
    files = checkpoint_files(out)
    for _, path in files[: max(0, len(files) - keep)]:
        path.unlink(missing_ok=True)


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines of steps after ``step`` (they will be redone by the resumed run)."""
    if not path.is_file():
        return
    from megabench.fileio import atomic_write_bytes

    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    atomic_write_bytes(path, ("\n".join(kept) + "\n" if kept else "").encode())


def append_log(path: Path, record: dict[str, Any]) -> None:
    from megabench.fileio import _jsonable

    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(_jsonable(record), allow_nan=True) + "\n")


def write_run(out: Path, run: dict[str, Any]) -> None:
    from megabench.fileio import atomic_write_json

    atomic_write_json(out / "run.json", {**run, "format": RUN_FORMAT, "updated": now_iso()})

