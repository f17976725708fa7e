"""``megabench demo``: the main job end to end on data megabench generates itself.

It runs the same commands a user types (through click, so options and checks are the real ones):
a synthetic LFW-sized verification pack -> ``verify``; a synthetic MegaFace set -> ``megaface``
(raw and refined side by side); ``profile`` of a tiny SRANet; ``report`` (tables and figures made
from those result files). Every step writes under ``--out``.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--out", "out_dir", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for generated data and result files.")
@click.option("--distractors", default=100_000, show_default=True, type=click.IntRange(min=10),
              help="Synthetic MegaFace distractors (1000000 = the full protocol; a few minutes on 2 cores).")
@click.option("--model", default="sranet_tiny", show_default=True, help="Model to profile.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def demo(ctx: click.Context, out_dir: str, distractors: int, model: str, quiet: bool) -> None:
    """Run verification, MegaFace and profiling on generated data; results under --out."""
    from megabench.commands.megaface import megaface
    from megabench.commands.models import profile
    from megabench.commands.report import report
    from megabench.commands.verify import synth_verification, verify

    out = Path(out_dir)
    results = out / "results"

    click.secho("== 1/4 verification: synthetic LFW-sized pack (6000 pairs), 10-fold ==", bold=True)
    ctx.invoke(synth_verification, out_dir=str(out / "verification"), name="lfw")
    ctx.invoke(verify, pairs_path=str(out / "verification" / "lfw.bin"),
               features=str(out / "verification" / "lfw.h5"), out=str(results / "verification_lfw.json"))

    click.secho(f"\n== 2/4 MegaFace Challenge 1: synthetic, {distractors:,} distractors, raw + refined ==",
                bold=True)
    ctx.invoke(megaface, synthetic=distractors, out=str(results / "megaface.json"), quiet=quiet)

    click.secho(f"\n== 3/4 profile: {model} ==", bold=True)
    ctx.invoke(profile, model_name=model, out=str(results / f"profile_{model}.json"))

    click.secho("\n== 4/4 report: tables and figures from the result files ==", bold=True)
    ctx.invoke(report, results=(str(results),), out_dir=str(out / "report"))

    click.secho(f"\ndone: results in {results}, tables and figures in {out / 'report'}", fg="green")
