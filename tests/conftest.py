"""Shared fixtures. Real third-party files live in ../shared/data (absent in a user's clone: skip)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this clone (only the developers' checkout has it)")
    return SHARED_DATA


@pytest.fixture
def small_lfw_bin() -> Path:
    """The real insightface pack shipped with the tests (see fixtures/insightface/ATTRIBUTION.md)."""
    return FIXTURES / "insightface" / "small_lfw.bin"
