"""The ``megabench`` command line: thin click commands, each one library call.

Subcommands live in ``megabench/commands/<name>.py`` and are imported only when run, so that
``megabench --help`` stays fast and never imports torch. Add a command by adding a line to
:data:`COMMANDS` (name -> "module:attribute"); an evaluation's command may instead be declared by its
registration (:mod:`megabench.evaluation.registry`), which the group reads as well.

Errors: a :class:`~megabench.errors.MegabenchError` (including
:class:`~megabench.errors.UnknownNameError`, a registry miss) prints ``error: <message>`` and exits 1.
"""

from __future__ import annotations

import importlib
import sys

import click

from megabench import __version__
from megabench.errors import MegabenchError

COMMANDS: dict[str, str] = {
    "verify": "megabench.commands.verify:verify",
    "extract": "megabench.commands.extract:extract",
    "megaface": "megabench.commands.megaface:megaface",
    "convert": "megabench.commands.megaface:convert",
    "synth": "megabench.commands.synth:synth",
    "ls": "megabench.commands.specs:ls",
    "validate": "megabench.commands.specs:validate",
    "models": "megabench.commands.models:models",
    "profile": "megabench.commands.models:profile",
    "export": "megabench.commands.models:export",
    "report": "megabench.commands.report:report",
    "visualize": "megabench.commands.visualize:visualize",
    "import-weights": "megabench.commands.import_weights:import_weights",
    "demo": "megabench.commands.demo:demo",
    "train": "megabench.commands.train:train",
    "train-baselines": "megabench.commands.train:train_baselines",
    "data": "megabench.commands.data:data",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    @classmethod
    def with_evaluations(cls, *args, lazy: dict[str, str], **kwargs) -> LazyGroup:
        """A group of ``lazy`` plus the commands registered evaluations declare (``lazy`` wins on a clash)."""
        from megabench.evaluation.registry import evaluation_commands

        return cls(*args, lazy={**evaluation_commands(), **lazy}, **kwargs)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, _, attr = self.lazy[name].partition(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MegabenchError as exc:  # UnknownNameError (a registry miss) included
            _report_known(ctx, exc, str(exc))


def _report_known(ctx: click.Context, exc: BaseException, message: str) -> None:
    """One ``error:`` line (newlines folded) and exit 1; with ``megabench --debug`` the traceback first.

    Only known error classes come here: anything else keeps its traceback (a bug to fix, not to hide).
    """
    root = ctx.find_root()
    if root.params.get("debug") or (root.obj or {}).get("debug"):
        import traceback

        click.echo("".join(traceback.format_exception(exc)), err=True, nl=False)
    click.secho(f"error: {' '.join(message.split())}", fg="red", err=True)
    ctx.exit(1)


@click.group(cls=LazyGroup.with_evaluations, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="megabench")
@click.option("--debug", is_flag=True, help="Show the traceback of known errors too (for bug reports).")
def cli(debug: bool) -> None:
    """megabench: exact face-recognition benchmarks and the SRANet model zoo."""


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="megabench")
