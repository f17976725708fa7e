"""``megabench verify`` (10-fold pair verification) and ``megabench synth verification``."""

from __future__ import annotations

import warnings
from pathlib import Path

import click


def guess_protocol(pairs_path: str) -> str:
    """The protocol named by the pairs file's stem (``agedb_30.bin`` -> ``agedb_30``), else ``lfw``."""
    from megabench.config import find_spec_file

    stem = Path(pairs_path).stem.lower()
    return stem if find_spec_file(stem) is not None else "lfw"


@click.command("verify")
@click.option("--pairs", "pairs_path", required=True, type=click.Path(dir_okay=False),
              help="insightface .bin pack, LFW pairs.txt (with --images) or a `path1 path2 0|1` pair list.")
@click.option("--features", required=True, type=click.Path(dir_okay=False),
              help="HDF5 feature store: one row per pack image (pack order), or rows named by image path.")
@click.option("--images", type=click.Path(file_okay=False), default=None,
              help="Image folder the pair list names its images in (LFW: <ROOT>/<Name>/<Name>_<NNNN>.jpg).")
@click.option("--flip", type=click.Choice(["none", "sum", "concat"]), default=None,
              help="Flip fusion; default from the protocol (concat = SRANet paper, sum = insightface).")
@click.option("--protocol", default=None,
              help="Protocol name in protocols/ or a .toml path; default: the pairs file's stem if it names "
                   "one, else lfw.")
@click.option("--threshold-search", type=click.Choice(["insightface", "exact"]), default=None,
              help="insightface: the arange(0, 4, 0.01) grid (default); exact: every training midpoint.")
@click.option("--allow-partial", is_flag=True, help="Accept a pair count that differs from the protocol's.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Result JSON (default results/<protocol>.json).")
def verify(pairs_path: str, features: str, images: str | None, flip: str | None, protocol: str | None,
           threshold_search: str | None, allow_partial: bool, out: str | None) -> None:
    """10-fold verification accuracy (insightface-exact), VAL@FAR, ROC, AUC and EER."""
    from megabench.config import load_spec
    from megabench.evaluation.verification import evaluate, load_pairs
    from megabench.fileio import check_output
    from megabench.results import is_result_file, write_result

    spec = load_spec(protocol or guess_protocol(pairs_path), kind="verification")
    out_path = check_output(out or Path("results") / f"{spec.name}.json", replaceable=is_result_file,
                            inputs=[pairs_path, features, spec.source or None])
    pairs = load_pairs(pairs_path, images)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(spec, pairs, features, flip=flip, threshold_search=threshold_search,  # type: ignore[arg-type]
                          allow_partial=allow_partial)
    for message in dict.fromkeys(str(w.message) for w in caught):
        click.secho(f"warning: {message}", fg="yellow", err=True)
    path = write_result(out_path, result)
    m = result["metrics"]
    click.echo(f"{spec.name} v{spec.version} ({result['protocol']['variant']}, flip={result['input']['flip']}, "
               f"{result['input']['n_pairs']} pairs, {spec.n_folds} folds)")
    click.echo(f"accuracy      {m['accuracy']:.5f}  std over folds {m['accuracy_std']:.5f}")
    click.echo(f"VAL@FAR={spec.val_far:g}  {m['val']:.5f}  std over folds {m['val_std']:.5f}  (FAR {m['far']:.5f})")
    click.echo(f"AUC {m['auc']:.5f}  EER {m['eer']:.5f}")
    click.echo(f"result: {path}")


@click.command("verification")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--pairs", "n_pairs", default=6000, show_default=True, type=click.IntRange(min=10),
              help="Number of pairs.")
@click.option("--dim", default=512, show_default=True, type=click.IntRange(min=2), help="Embedding dimension.")
@click.option("--difficulty", default=0.1, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="0 = separable, 1 = chance; best possible accuracy is about 1 - difficulty/2.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--name", default="synthetic", show_default=True,
              help="File stem: <out>/<name>.bin and <out>/<name>.h5 (a protocol name makes verify pick it).")
@click.option("--force", is_flag=True, help="Replace <name>.bin / <name>.h5 already in --out.")
def synth_verification(out_dir: str, n_pairs: int, dim: int, difficulty: float, seed: int, name: str,
                       force: bool) -> None:
    """A synthetic insightface .bin pack and its feature store (with flips), for `megabench verify`."""
    from megabench.data.synthetic_verification import make_synthetic_verification
    from megabench.errors import MegabenchError
    from megabench.fileio import check_output_dir

    if not name or Path(name).name != name or name in (".", ".."):
        raise MegabenchError(f"--name {name!r}: give a plain file stem (no folders); files go in --out {out_dir}")
    check_output_dir(out_dir, [f"{name}.bin", f"{name}.h5"], force=force)

    pack, store = make_synthetic_verification(out_dir, n_pairs=n_pairs, dim=dim, difficulty=difficulty,
                                              seed=seed, name=name)
    click.echo(f"pack:     {pack}")
    click.echo(f"features: {store}")
    hint = "" if n_pairs == 6000 else " --allow-partial"
    click.echo(f"next:     megabench verify --pairs {pack} --features {store}{hint}")
