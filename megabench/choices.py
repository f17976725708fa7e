"""Choices and constants shared by specs, library code and the CLI: each defined once, here.

This module imports nothing heavy, so command modules can use it in their option declarations.
"""

from __future__ import annotations

import typing
from typing import Literal

#: How test-time embeddings of an image and of its horizontal flip combine (docs/protocols.md §1.2):
#: ``none`` (the image only), ``sum`` (insightface: add raw, normalise), ``concat`` (the SRANet paper:
#: concatenate the normalised halves, normalise).
FlipMode = Literal["none", "sum", "concat"]
FLIP_MODES: tuple[str, ...] = typing.get_args(FlipMode)

#: How the 10-fold protocol picks a fold's threshold (docs/protocols.md §1.3): insightface's
#: ``arange(0, 4, 0.01)`` grid, or ``exact`` (every midpoint of the sorted training distances).
ThresholdSearch = Literal["insightface", "exact"]
THRESHOLD_SEARCHES: tuple[str, ...] = typing.get_args(ThresholdSearch)
