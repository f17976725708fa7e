"""Shared fixtures. Every file a test needs ships with the repository (tests/fixtures, protocols/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import FIXTURES


@pytest.fixture
def small_lfw_bin() -> Path:
    """The real insightface pack shipped with the tests (see fixtures/insightface/ATTRIBUTION.md)."""
    return FIXTURES / "insightface" / "small_lfw.bin"


@pytest.fixture
def noise_lists() -> Path:
    """The shipped MegaFace / FaceScrub noise lists (protocols/megaface_noises, as packaged)."""
    from megabench.config import spec_folder

    return spec_folder("protocols") / "megaface_noises"
