"""The distractor tables of a MegaFace run computed in a child process, while the parent does other work.

:func:`~megabench.evaluation.megaface.distractor_tables` (membership per size from the devkit lists, the lists'
sha256, the probe-path overlap refusal, the noise flags) is Python over every path of the distractor store:
~1.4 s for 1M paths (HDF5 strings decoded, the lists read and checked, lookups, noise matching), all of it
holding the GIL. :class:`BackgroundTables` runs it in a child interpreter, so that the parent meanwhile loads
the fused kernel's compiled code (:func:`~megabench.evaluation.megaface.warm_kernels`) and the store's hash runs
in a third process: the load of a 1M run then takes about the child's time instead of the sum.

The child gets the spec and the options as JSON on stdin and answers on stdout with one JSON line and then
the arrays in ``.npy`` format (read with ``allow_pickle=False``: no pickle crosses). A :class:`DataError` in
the child is raised in the parent with the same message; its warnings are issued again in the parent. Any
other failure of the child (it could not start, it crashed) makes the parent compute the tables itself, so
the outcome, errors included, is that of the in-process computation.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from megabench.errors import DataError

#: stores with fewer rows compute their tables in-process (starting a child costs ~0.3 s of CPU)
TABLES_CHILD_MIN_ROWS = 200_000
#: the child's program: without ``-c``'s current-folder entry on sys.path (a ``megabench`` folder there must not
#: shadow the package this process runs, which PYTHONPATH names first)
_CHILD = ("import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n"
          "from megabench.evaluation.megaface_tables import child_main; child_main()")


def wants_child(store_path) -> bool:
    """True when the store holds at least TABLES_CHILD_MIN_ROWS rows (False when it cannot be read: the
    in-process computation then reports why, in its usual order)."""
    from megabench.data.megaface_io import open_store

    try:
        with open_store(store_path, "--distractors") as store:
            return store.n >= TABLES_CHILD_MIN_ROWS
    except DataError:
        return False


def _line(obj: Any) -> bytes:
    return json.dumps(obj, default=str).encode("utf-8") + b"\n"


def _tuples(d: dict[str, Any], cls) -> dict[str, Any]:
    """JSON lists back to the tuples of ``cls``'s tuple-typed fields (sizes, far_targets)."""
    names = {f.name for f in dataclasses.fields(cls) if "tuple" in str(f.type)}
    return {k: tuple(v) if k in names and isinstance(v, list) else v for k, v in d.items()}


def child_main() -> None:
    """The child (see module docstring): stdin line 1 = spec + options, line 2 = the probe paths (sent when the
    parent has them: the store's paths and the lists are read meanwhile); stdout = one JSON line + arrays."""
    from megabench.evaluation.megaface import MegafaceOptions, MegafaceSpec, distractor_tables

    job = json.loads(sys.stdin.buffer.readline())
    spec = MegafaceSpec(**_tuples(job["spec"], MegafaceSpec))
    opts = MegafaceOptions(**_tuples(job["opts"], MegafaceOptions))
    out = sys.stdout.buffer

    def probe_paths() -> list[str]:
        line = sys.stdin.buffer.readline()
        if not line:  # the parent gave up
            sys.exit(0)
        return json.loads(line)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            membership, lists_sha, noise = distractor_tables(spec, opts, probe_paths)
        except DataError as exc:
            out.write(_line({"ok": False, "message": str(exc)}))
            out.flush()
            return
    out.write(_line({"ok": True, "sizes": membership.sizes, "source": membership.source, "lists_sha": lists_sha,
                     "report": noise.report,
                     "warnings": [[type(w.message).__name__, str(w.message)] for w in caught]}))
    for a in (membership.row_class, membership.class_masks, noise.noisy_probe, noise.noisy_dist):
        np.lib.format.write_array(out, np.ascontiguousarray(a), allow_pickle=False)
    out.flush()


def _warning_class(name: str, ours: type[Warning]) -> type[Warning]:
    """The child's warning category by name: ``ours`` (NoiseMatchWarning), a built-in one, else UserWarning."""
    if name == ours.__name__:
        return ours
    found = getattr(builtins, name, None)
    return found if isinstance(found, type) and issubclass(found, Warning) else UserWarning


class BackgroundTables:
    """:func:`~megabench.evaluation.megaface.distractor_tables` of ``(spec, opts)`` in a child process from
    construction on; :meth:`send_probe_paths` gives it the probe paths (needed only after the store's paths and
    the lists), :meth:`result` waits for it, :meth:`cancel` stops it."""

    def __init__(self, spec, opts) -> None:
        self._spec, self._opts = spec, opts
        self._probe_paths: list[str] | None = None
        self._have_paths = threading.Event()
        self._out: bytes | None = None
        self._proc: subprocess.Popen | None = None
        env = dict(os.environ)  # the child imports megabench from where this process did
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        except OSError:
            return  # result() computes the tables here
        # threads write stdin and read stdout: the probe paths may exceed a pipe's buffer
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._writer.start()
        self._reader.start()

    def _write(self) -> None:
        try:
            self._proc.stdin.write(_line({"spec": dataclasses.asdict(self._spec),
                                          "opts": dataclasses.asdict(self._opts)}))
            self._proc.stdin.flush()
            self._have_paths.wait()
            if self._probe_paths is not None:
                self._proc.stdin.write(_line(self._probe_paths))
        except (OSError, ValueError):  # the child ended early (its answer says why) or was stopped
            pass
        finally:
            with contextlib.suppress(OSError, ValueError):
                self._proc.stdin.close()

    def _read(self) -> None:
        try:
            self._out = self._proc.stdout.read()
        except (OSError, ValueError):
            self._out = None
        self._proc.wait()

    def send_probe_paths(self, probe_paths: list[str]) -> None:
        self._probe_paths = list(probe_paths)
        self._have_paths.set()

    def result(self):
        """``(membership, lists_sha, noise)`` as :func:`~megabench.evaluation.megaface.distractor_tables`
        returns them; its :class:`DataError` raised, its warnings issued here. Needs :meth:`send_probe_paths`."""
        from megabench.evaluation.megaface import Membership, NoiseMatch, NoiseMatchWarning, distractor_tables

        if self._probe_paths is None:
            raise RuntimeError("send_probe_paths() before result()")
        if self._proc is not None:
            self._reader.join()
            self._writer.join()
        parsed = self._parse(self._out) if self._proc is not None and self._proc.returncode == 0 else None
        if parsed is None:  # no child, or it failed: the same computation here (its errors are the real ones)
            return distractor_tables(self._spec, self._opts, self._probe_paths)
        head, (row_class, class_masks, noisy_probe, noisy_dist) = parsed
        if not head["ok"]:
            raise DataError(head["message"])
        for kind, message in head["warnings"]:
            warnings.warn(message, _warning_class(kind, NoiseMatchWarning), stacklevel=3)
        membership = Membership([int(s) for s in head["sizes"]], row_class, class_masks, head["source"])
        return membership, head["lists_sha"], NoiseMatch(noisy_probe, noisy_dist, head["report"])

    @staticmethod
    def _parse(out: bytes | None):
        if not out:
            return None
        try:
            buf = io.BytesIO(out)
            head = json.loads(buf.readline().decode("utf-8"))
            arrays = [np.lib.format.read_array(buf, allow_pickle=False) for _ in range(4)] if head["ok"] else [None] * 4
        except (ValueError, KeyError, EOFError, UnicodeDecodeError):
            return None
        return head, arrays

    def cancel(self) -> None:
        """Stop the child (the caller gave up: its own error wins)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._have_paths.set()
        self._reader.join()
        self._writer.join()
