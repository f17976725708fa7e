"""``megabench models``, ``megabench profile``, ``megabench export``: the model zoo from the command line."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("models")
@click.option("--attention", "show_attention", is_flag=True, help="Also list attention modules and heads.")
def models(show_attention: bool) -> None:
    """List registered models with parameters and size (MB = 10^6 bytes, fp32)."""
    import torch

    from megabench.models import count_params, create_model, list_attention, list_heads, list_models, params_to_mb

    click.echo(f"{'model':<22} {'params':>12} {'size MB':>9}  {'depths':<14} attention")
    with torch.device("meta"):  # count without allocating or initialising
        for name in list_models():
            model = create_model(name)
            n = count_params(model)
            cfg = model.config
            attn = "+".join(cfg.get("attn_layers", ())) or "-"
            depths = ",".join(map(str, cfg.get("depths", ())))
            click.echo(f"{name:<22} {n:>12,d} {params_to_mb(n):>9.2f}  {depths:<14} {attn}")
    if show_attention:
        click.echo(f"\nattention: {', '.join(list_attention())}")
        click.echo(f"heads:     {', '.join(list_heads())}")


@click.command("profile")
@click.option("--model", "model_name", help="Registered model name (see `megabench models`).")
@click.option("--table", type=click.Choice(["1", "2"]), help="Profile every row of the paper's Table 1 or 2.")
@click.option("--batch", type=click.IntRange(min=1), help="Batch N for latency and training memory "
              "[default: 128 on cuda, 16 on cpu].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:K.")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1), help="Timed runs (median).")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0), help="Untimed runs first.")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Measure peak memory of one training step (slow on CPU for full models).")
@click.option("--threads", type=click.IntRange(min=1),
              help="torch CPU threads [default: torch's]. 1 is steadier on a shared machine (no OpenMP spinning).")
@click.option("--cpu-mem", type=click.Choice(["tensors", "rss"]), default="tensors", show_default=True,
              help="CPU memory measure: live tensor bytes (like CUDA max allocated) or subprocess peak RSS.")
@click.option("--classes", default=10575, show_default=True, type=click.IntRange(min=2),
              help="Classes of the ArcFace head in the training step (CASIA-WebFace: 10575).")
@click.option("--out", type=click.Path(path_type=Path),
              help="Result JSON (with --model) or a folder of <model>.json (with --table).")
@click.option("--force", is_flag=True, help="Replace existing --out files that are not megabench results.")
def profile(model_name: str | None, table: str | None, batch: int | None, device: str, repeats: int, warmup: int,
            memory: bool, threads: int | None, cpu_mem: str, classes: int, out: Path | None, force: bool) -> None:
    """Latency, parameters, size, FLOPs and training memory of a model, or of a whole paper table."""
    import torch

    from megabench.engine.device import check_device
    from megabench.errors import MegabenchError
    from megabench.fileio import check_output, check_output_dir
    from megabench.profiling import compare_with_paper, format_comparison, profile_model
    from megabench.reporting.paper_tables import paper_rows
    from megabench.results import is_result_file, write_result

    if (model_name is None) == (table is None):
        raise MegabenchError("profile: give exactly one of --model NAME or --table 1|2")
    check_device(device)
    if out is not None and model_name is not None:
        check_output(out, force=force, replaceable=is_result_file)
    elif out is not None:
        check_output_dir(out, [f"{row['model']}.json" for row in paper_rows(int(table))], force=force,
                         replaceable=is_result_file)
    if threads:
        torch.set_num_threads(threads)
    kwargs = dict(batch=batch, device=device, repeats=repeats, warmup=warmup, memory=memory, num_classes=classes,
                  cpu_method=cpu_mem)
    if model_name is not None:
        result = profile_model(model_name, **kwargs)
        lat = result["latency_ms"]
        mem = result["train_peak_mem_mb"]
        click.echo(f"{model_name}: params {result['params']:,d}  size {result['size_mb']:.2f} MB  "
                   f"GFLOPs {result['flops'] / 1e9:.3f}  latency batch1 {lat['batch1']:.2f} ms  "
                   f"batch{lat['batch']} {lat['batchN']:.2f} ms/img  train mem "
                   f"{'-' if mem is None else f'{mem:.0f} MB'} ({device})")
        if out is not None:
            write_result(out, result)
            click.echo(f"wrote {out}")
        return
    results = {}
    for row in paper_rows(int(table)):
        click.echo(f"profiling {row['model']} ...", err=True)
        results[row["model"]] = profile_model(row["model"], **kwargs)
        if out is not None:
            write_result(Path(out) / f"{row['model']}.json", results[row["model"]])
    first = next(iter(results.values()))
    click.echo(f"Table {table}: ours on {device}, batch {first['latency_ms']['batch']} "
               f"(ms per image at batch N; memory: one training step) beside the paper's (GPU, batch 128)")
    click.echo(format_comparison(compare_with_paper(int(table), results)))
    if memory:
        click.echo(f"memory: {first['train_memory']['method']}")


@click.command("export")
@click.option("--model", "model_name", help="Registered model name; default: the one the checkpoint names.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A megabench checkpoint; without it the weights are random (for testing a pipeline).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The .onnx file.")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(min=14))
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run the exported file with onnxruntime and compare with torch.")
@click.option("--force", is_flag=True, help="Replace an existing --out that megabench did not export.")
def export(model_name: str | None, checkpoint: Path | None, out: Path, opset: int, check: bool, force: bool) -> None:
    """Export a model to ONNX (input `images` float32 (B, 3, H, W) normalised; output `embeddings` (B, D))."""
    from megabench.errors import MegabenchError
    from megabench.export import check_onnx, check_opset, export_onnx, is_megabench_onnx
    from megabench.fileio import check_output

    if model_name is None and checkpoint is None:
        raise MegabenchError("export: give --model NAME, --checkpoint FILE, or both")
    check_opset(opset)
    check_output(out, inputs=[checkpoint], force=force, replaceable=is_megabench_onnx)
    model, info, sha = _load_model(model_name, checkpoint)
    export_onnx(model, out, opset=opset, weights_sha256=sha)
    click.echo(f"wrote {out} ({info})")
    if check:
        err = check_onnx(model, out)
        click.echo(f"onnxruntime vs torch: max |diff| / max |torch| = {err:.2e}")


def _load_model(model_name: str | None, checkpoint: Path | None):
    from megabench.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from megabench.models import create_model

    if checkpoint is None:
        return create_model(model_name), f"{model_name}, random weights", None
    if model_name is None:
        model, payload = model_from_checkpoint(checkpoint)
    else:
        model = create_model(model_name)
        payload = load_checkpoint(checkpoint, model)
    sha = payload["weights_sha256"]
    return model, f"{payload['model']}, weights sha256 {sha[:12]}", sha
