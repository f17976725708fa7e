"""Root conftest: the ``>>>`` examples in megabench/ run as doctests (``--doctest-modules``).

Each doctest runs in a fresh temporary folder (its working directory), so an example that writes
``f.h5`` never writes into the checkout; ``np`` and ``Path`` are in its namespace.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

collect_ignore = ["protocols", "baselines", "benchmarks", "build"]


@pytest.fixture(autouse=True)
def _doctest_in_tmp(request, doctest_namespace, tmp_path, monkeypatch):
    if isinstance(request.node, pytest.DoctestItem):
        monkeypatch.chdir(tmp_path)
        doctest_namespace.update(np=np, Path=Path)
    yield
