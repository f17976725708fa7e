"""``megabench synth ...``: generate synthetic data sets in the real formats."""

from __future__ import annotations

import click

from megabench.cli import LazyGroup

SYNTH_COMMANDS = {
    "verification": "megabench.commands.verify:synth_verification",
    "megaface": "megabench.commands.megaface:synth_megaface",
}


@click.group(cls=LazyGroup, lazy=SYNTH_COMMANDS)
def synth() -> None:
    """Generate synthetic benchmark data (real file formats, controllable difficulty)."""
