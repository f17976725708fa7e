"""``megabench megaface``, ``megabench convert`` and ``megabench synth megaface``.

Thin click commands: parse options, call :mod:`megabench.evaluation.megaface` /
:mod:`megabench.data.megaface_io` / :mod:`megabench.data.synthetic_megaface`. Heavy imports inside.
"""

from __future__ import annotations

import click

from megabench.commands.megaface_model import megaface_model_options, synthetic_images_options
from megabench.evaluation.megaface import BACKENDS, KERNELS, REFINES, TIES


def _sizes(value: str | None) -> tuple[float, ...] | None:
    """``--sizes 10,100 1000`` -> numbers (checked to be positive whole numbers by MegafaceOptions)."""
    if not value:
        return None
    try:
        return tuple(float(v) for v in value.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"sizes must be numbers, e.g. 10,100,1000: {value!r}") from None


def _synthetic_inputs(n: int, dim: int, info, quiet: bool) -> dict[str, str]:
    """Generate (once, cached) a synthetic set; returns the option values that point at it."""
    from megabench.config import synthetic_megaface_folder
    from megabench.data.synthetic_megaface import generate
    from megabench.engine.distributed import barrier
    from megabench.errors import MegabenchError

    if n < 1 or dim < 1:
        raise MegabenchError(f"--synthetic {n} --dim {dim}: both must be positive (e.g. --synthetic 100000)")
    folder = synthetic_megaface_folder(n, dim, 0, "float32")
    if info.is_main and not (folder / "meta.json").exists():
        click.echo(f"generating synthetic MegaFace ({n:,} distractors x {dim}) in {folder}")
        generate(folder, n, dim, 0, progress=not quiet, force=True)
    barrier(info)
    return {"probes": str(folder / "facescrub.h5"), "distractors": str(folder / "megaface.h5"),
            "probe_list": str(folder / "facescrub_features_list.json"), "distractor_lists": str(folder / "lists"),
            "facescrub_noises": str(folder / "facescrub_noises.txt"),
            "megaface_noises": str(folder / "megaface_noises.txt")}


def _write_outputs(result: dict, out: str | None, devkit_json: str | None, alg: str) -> None:
    from megabench.evaluation.megaface import format_table, write_devkit_json
    from megabench.results import write_result

    click.echo(format_table(result))
    t = result["timings"]
    click.echo(f"time: total {t['total']:.1f}s (stream {t['stream']:.1f}s)")
    if out:
        write_result(out, result)
        click.echo(f"result: {out}")
    if devkit_json:
        files = write_devkit_json(result, devkit_json, alg)
        click.echo(f"devkit json: {len(files)} files in {devkit_json}")


@click.command("megaface")
@megaface_model_options
@click.option("--probes", type=click.Path(dir_okay=False), help="FaceScrub probe feature store (HDF5).")
@click.option("--distractors", type=click.Path(dir_okay=False), help="MegaFace distractor feature store (HDF5).")
@click.option("--probe-list", type=click.Path(dir_okay=False), help="facescrub_features_list.json (path, id).")
@click.option("--distractor-lists", type=click.Path(file_okay=False),
              help="Folder with megaface_features_list.json_<size>_<set> files.")
@click.option("--list-set", type=int, default=None, help="Which <set> of the distractor lists (default 1).")
@click.option("--sizes", default=None, help="Distractor sizes, e.g. 10,100,1000 (default: the spec's).")
@click.option("--seed", type=int, default=None, help="Seed of the nested random subsets (no lists).")
@click.option("--refine", type=click.Choice(REFINES), default=None)
@click.option("--ties", type=click.Choice(TIES), default=None)
@click.option("--facescrub-noises", type=click.Path(dir_okay=False), default=None)
@click.option("--megaface-noises", type=click.Path(dir_okay=False), default=None)
@click.option("--jitter-seed", type=int, default=None,
              help="Mimic insightface: add uniform +-0.001 to the identity's feature sum before normalising.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="GEMM library of the score blocks (auto: numpy's BLAS on the CPU, torch on a GPU).")
@click.option("--kernel", type=click.Choice(KERNELS), default="auto", show_default=True,
              help="Block kernel of the streaming accumulator (every kernel gives the same numbers).")
@click.option("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
@click.option("--block-rows", type=int, default=None, help="Distractors per GEMM block (memory ~ probes x block).")
@click.option("--spec", default="megaface_c1", help="Protocol spec name or TOML path.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Result JSON.")
@click.option("--devkit-json", type=click.Path(), default=None,
              help="Also write devkit cmc_facescrub_megaface_<alg>_<size>_1.json files here.")
@click.option("--alg", default="megabench", help="Algorithm name in the devkit file names.")
@click.option("--state", type=click.Path(dir_okay=False), default=None,
              help="Resume state file (default <out>.state.npz), removed after a successful run.")
@click.option("--checkpoint-seconds", type=float, default=30.0, show_default=True,
              help="Write the resume state after a block when this long has passed since the last write.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last finished block.")
@click.option("--allow-singletons", is_flag=True, help="Skip (and count) probe identities with one image.")
@click.option("--synthetic", type=int, default=None, metavar="N",
              help="Generate (cached) a synthetic set with N distractors and run the whole protocol on it.")
@click.option("--dim", type=int, default=512, help="Feature dimension for --synthetic.")
@click.option("--force", is_flag=True, help="Replace an existing --out that is not a megabench result.")
@click.option("--max-blocks", type=int, default=None, hidden=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def megaface(spec, out, devkit_json, alg, synthetic, dim, force, quiet, **kw) -> None:
    """MegaFace Challenge 1: exact CMC / rank-1 and TAR@FAR, raw and refined side by side.

    Run under `torchrun --nproc-per-node K megabench megaface ...` to shard the distractors over K ranks.
    """
    from megabench.config import load_spec
    from megabench.engine.distributed import destroy, init_from_env
    from megabench.evaluation.megaface import MegafaceOptions, check_outputs, remove_states, run_megaface

    spec_obj = load_spec(spec, kind="megaface")
    kw["sizes"] = _sizes(kw["sizes"])
    kw["state"] = kw["state"] or (f"{out}.state.npz" if out else None)
    options = MegafaceOptions(**kw, progress=not quiet)  # validated before the synthetic set or any work
    info = init_from_env(kw["device"])
    try:
        if synthetic is not None:
            synth = _synthetic_inputs(synthetic, dim, info, quiet)
            options = MegafaceOptions(**{**kw, **{k: kw[k] or v for k, v in synth.items()}}, progress=not quiet)
        check_outputs(spec_obj, options, out=out, devkit_json=devkit_json, force=force)
        result = run_megaface(spec_obj, options, dist_info=info, echo=click.echo)
    finally:
        destroy(info)
    if result is None:
        return
    _write_outputs(result, out, devkit_json, alg)
    if options.state and out:
        remove_states(options.state, result["input"]["fingerprint"], info.world)


@click.command("convert")
@click.option("--root", type=click.Path(), required=True, help="matio tree root (input or output).")
@click.option("--list", "list_file", type=click.Path(dir_okay=False),
              help="Template list (facescrub_features_list.json or megaface_features_list.json_<n>_<set>).")
@click.option("--store", type=click.Path(dir_okay=False), required=True, help="HDF5 feature store.")
@click.option("--file-ending", default="_r100.bin", show_default=True)
@click.option("--to", type=click.Choice(["store", "matio"]), default="store", show_default=True)
@click.option("--float16", is_flag=True, help="Store features as float16 (computed in float32).")
@click.option("--allow-missing", is_flag=True, help="Skip (and count) listed paths without a feature file.")
@click.option("--force", is_flag=True, help="Replace an existing --store that is not a feature store.")
@click.option("--quiet", is_flag=True)
def convert(root, list_file, store, file_ending, to, float16, allow_missing, force, quiet) -> None:
    """Move devkit matio features into an HDF5 feature store (--to store) or back (--to matio)."""
    from megabench.data import megaface_io as io
    from megabench.data.feature_store import is_feature_store
    from megabench.errors import MegabenchError
    from megabench.fileio import check_output

    if to == "matio":
        n = io.store_to_matio(store, root, file_ending=file_ending, progress=not quiet)
        click.echo(f"wrote {n} matio files under {root}")
        return
    if not list_file:
        raise MegabenchError("convert --to store needs --list (the devkit template list naming the images)")
    check_output(store, inputs=[list_file, root], force=force, replaceable=is_feature_store, option="--store")
    paths, ids = io.read_template_list(list_file)
    rep = io.matio_to_store(root, paths, store, file_ending=file_ending, ids=ids,
                            dtype="float16" if float16 else "float32", allow_missing=allow_missing,
                            progress=not quiet, source=str(list_file))
    click.echo(f"wrote {rep.written} features to {store}; missing {rep.missing}"
               + (f" (first: {list(rep.first_missing)})" if rep.missing else ""))


@click.command("megaface")
@synthetic_images_options
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--distractors", type=int, default=1_000_000, show_default=True)
@click.option("--dim", type=int, default=512, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--float16", is_flag=True, help="Write float16 feature stores.")
@click.option("--force", is_flag=True, help="Replace a synthetic set already in --out.")
@click.option("--quiet", is_flag=True)
def synth_megaface(out, distractors, dim, seed, float16, force, quiet) -> None:
    """Synthetic MegaFace Challenge 1 set: stores, devkit lists, planted noise and its noise lists."""
    from megabench.data.synthetic_megaface import generate
    from megabench.errors import MegabenchError

    if distractors < 1 or dim < 1:
        raise MegabenchError(f"--distractors {distractors} --dim {dim}: both must be positive")
    meta = generate(out, distractors, dim, seed, dtype="float16" if float16 else "float32", progress=not quiet,
                    force=force)
    click.echo(f"wrote {meta['n_probes']} probes and {meta['n_distractors']:,} distractors to {out} "
               f"(sizes {meta['sizes']}, {meta['n_near_duplicates']} near-duplicates, "
               f"{meta['n_mislabelled_probes']} mislabelled probes)")
