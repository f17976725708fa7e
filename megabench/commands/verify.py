"""``megabench verify`` (10-fold pair verification) and ``megabench synth verification``."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from megabench.choices import FLIP_MODES, THRESHOLD_SEARCHES
from megabench.commands.model_options import model_options, pop_model_options


def guess_protocol(pairs_path: str) -> str:
    """The protocol named by the pairs file's stem (``agedb_30.bin`` -> ``agedb_30``), else ``lfw``."""
    from megabench.config import find_spec_file

    stem = Path(pairs_path).stem.lower()
    return stem if find_spec_file(stem) is not None else "lfw"


@click.command("verify")
@click.option("--pairs", "pairs_path", required=True, multiple=True, type=click.Path(dir_okay=False),
              help="insightface .bin pack, LFW pairs.txt (with --images) or a `path1 path2 0|1` pair list; repeat "
                   "for several sets (lfw.bin agedb_30.bin cfp_fp.bin: one result each, one summary table).")
@click.option("--features", multiple=True, type=click.Path(dir_okay=False),
              help="HDF5 feature store: one row per pack image (pack order), or rows named by image path; one per "
                   "--pairs. Or give --model / --checkpoint to extract them.")
@click.option("--images", type=click.Path(file_okay=False), default=None,
              help="Image folder the pair list names its images in (LFW: <ROOT>/<Name>/<Name>_<NNNN>.jpg).")
@click.option("--flip", type=click.Choice(FLIP_MODES), default=None,
              help="Flip fusion; default from the protocol (concat = SRANet paper, sum = insightface).")
@click.option("--protocol", default=None,
              help="Protocol name in protocols/ or a .toml path; default: the pairs file's stem if it names "
                   "one, else lfw.")
@click.option("--threshold-search", type=click.Choice(THRESHOLD_SEARCHES), default=None,
              help="insightface: the arange(0, 4, 0.01) grid (default); exact: every training midpoint.")
@click.option("--allow-partial", is_flag=True, help="Accept a pair count that differs from the protocol's.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Result JSON of a single --pairs (default results/<protocol>.json, with --model "
                   "results/<model>_<protocol>.json).")
@click.option("--out-dir", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Folder of the result files when --out is not given.")
@model_options(device=True)
@click.option("--quiet", is_flag=True, help="No progress bar while extracting.")
def verify(pairs_path, features, images, flip, protocol, threshold_search, allow_partial, out, out_dir, quiet,
           device="cpu", **model_kw) -> None:
    """10-fold verification accuracy (insightface-exact), VAL@FAR, ROC, AUC and EER.

    With --model / --checkpoint the features are extracted first (flips as --flip needs; cached and
    reused, see `--cache`), so one command goes from a model to the results."""
    from megabench.errors import MegabenchError

    pairs_list = (pairs_path,) if isinstance(pairs_path, str) else tuple(pairs_path)
    features = (features,) if isinstance(features, str) else tuple(features or ())
    mo = pop_model_options(model_kw)
    from_model = bool(mo.get("model_name") or mo.get("checkpoint"))
    if from_model == bool(features):
        raise MegabenchError("verify needs either --features (one store per --pairs) or --model / --checkpoint")
    if features and len(features) != len(pairs_list):
        raise MegabenchError(f"{len(pairs_list)} --pairs but {len(features)} --features; give one store per pairs file")
    if out and len(pairs_list) > 1:
        raise MegabenchError("--out names one result file; with several --pairs use --out-dir")
    source = _model_source(mo, device) if from_model else None
    rows = []
    for k, pairs_file in enumerate(pairs_list):
        rows.append(_verify_one(pairs_file, None if source else features[k], source, mo, images=images, flip=flip,
                                protocol=protocol, threshold_search=threshold_search, allow_partial=allow_partial,
                                out=out, out_dir=out_dir, device=device, quiet=quiet))
    if len(rows) > 1:
        click.echo("")
        click.echo(summary_table(rows))


def _model_source(mo: dict, device: str):
    from megabench.engine.extract import check_amp
    from megabench.engine.model_source import resolve_model

    check_amp(mo["amp"], device)
    from megabench.commands.model_options import onnx_options

    return resolve_model(mo["model_name"], mo["checkpoint"], runs=mo["runs"], echo=click.echo,
                         onnx_options=onnx_options(mo))


def _verify_one(pairs_file: str, features: str | None, source, mo: dict, *, images, flip, protocol, threshold_search,
                allow_partial, out, out_dir, device, quiet) -> dict:
    """Evaluate one pairs file (extracting its features first when ``source`` is a model); print and write."""
    from megabench.config import load_spec
    from megabench.evaluation.verification import VerificationOptions, load_pairs, run_verification
    from megabench.fileio import check_output
    from megabench.results import is_result_file, write_result

    spec = load_spec(protocol or guess_protocol(pairs_file), kind="verification")
    default_name = f"{source.name}_{spec.name}.json" if source is not None else f"{spec.name}.json"
    out_path = check_output(out or Path(out_dir) / default_name, replaceable=is_result_file,
                            inputs=[pairs_file, features, spec.source or None, getattr(source, "checkpoint", None)])
    pairs = None
    if source is not None:
        from megabench.commands.model_options import extract_options
        from megabench.engine.extract_images import pair_features

        pairs = load_pairs(pairs_file, images)
        features = str(pair_features(pairs, source, flip=(flip or spec.flip) != "none", cache=mo["cache"],
                                     opts=extract_options(mo, device, quiet), echo=click.echo))
    options = VerificationOptions(pairs=pairs_file, features=features, images=images, flip=flip,
                                  threshold_search=threshold_search, allow_partial=allow_partial)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_verification(spec, options, pairs=pairs)
    for message in dict.fromkeys(str(w.message) for w in caught):
        click.secho(f"warning: {message}", fg="yellow", err=True)
    if source is not None:
        result["model"]["checkpoint"] = None if source.checkpoint is None else str(source.checkpoint)
    path = write_result(out_path, result)
    m = result["metrics"]
    who = f"{source.name}: " if source is not None else ""
    click.echo(f"{who}{spec.name} v{spec.version} ({result['protocol']['variant']}, flip={result['input']['flip']}, "
               f"{result['input']['n_pairs']} pairs, {spec.n_folds} folds)")
    click.echo(f"accuracy      {m['accuracy']:.5f}  std over folds {m['accuracy_std']:.5f}")
    click.echo(f"VAL@FAR={spec.val_far:g}  {m['val']:.5f}  std over folds {m['val_std']:.5f}  (FAR {m['far']:.5f})")
    click.echo(f"AUC {m['auc']:.5f}  EER {m['eer']:.5f}")
    click.echo(f"result: {path}")
    return {"protocol": spec.name, "pairs": result["input"]["n_pairs"], "flip": result["input"]["flip"],
            **{k: m[k] for k in ("accuracy", "accuracy_std", "val", "auc", "eer")}, "result": str(path)}


def summary_table(rows: list[dict]) -> str:
    """One line per evaluated set: protocol, pairs, flip, accuracy +- fold std, VAL, AUC, EER, result file."""
    head = f"{'protocol':<12} {'pairs':>6} {'flip':<6} {'accuracy':>17} {'VAL':>8} {'AUC':>8} {'EER':>8}  result"
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = f"{r['accuracy']:.5f}+-{r['accuracy_std']:.5f}"
        lines.append(f"{r['protocol']:<12} {r['pairs']:>6} {r['flip']:<6} {acc:>17} {r['val']:>8.5f} "
                     f"{r['auc']:>8.5f} {r['eer']:>8.5f}  {r['result']}")
    return "\n".join(lines)


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
