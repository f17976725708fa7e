"""``megabench synth ...``: generate synthetic data sets in the real formats."""

from __future__ import annotations

import click

from megabench.cli import LazyGroup

SYNTH_COMMANDS = {
    "verification": "megabench.commands.verify:synth_verification",
    "megaface": "megabench.commands.megaface:synth_megaface",
    "faces": "megabench.commands.data:synth_faces",
}


@click.group(cls=LazyGroup, lazy=SYNTH_COMMANDS)
def synth() -> None:
    """Generate synthetic benchmark data (real file formats, controllable difficulty)."""
