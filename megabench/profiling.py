"""What the paper's Tables 1-2 report about cost: latency, parameters, model size, FLOPs, training memory.

- Latency (ms per image): eval mode, ``torch.inference_mode``, random input; ``warmup`` untimed runs,
  then the median of ``repeats`` timed runs, the device synchronised before each clock read. Batch 1
  and batch N (time of one batch-N forward divided by N).
- Size: parameters x 4 bytes, 1 MB = 10^6 bytes (fp32, as the paper's Model-Size column).
- FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` over one batch-1 forward (a multiply-add is
  2 FLOPs; convolutions, matmuls and attention products are counted, elementwise ops are not).
- Training peak memory of one step (forward + ArcFace head + backward + SGD-momentum step) at batch N,
  counting weights, inputs, gradients, momentum and activations:
  CUDA: ``torch.cuda.max_memory_allocated`` minus what was allocated before the model was built.
  CPU, ``cpu_method="tensors"`` (default): the same quantity counted by hand: the bytes of every tensor
  storage alive before the step (weights, buffers, inputs) plus the peak over the step of the bytes of
  live storages created by any aten op (a ``TorchDispatchMode`` sees every op, backward included, and a
  weak reference tells when each storage is freed; kernel-internal scratch is not seen). Deterministic.
  CPU, ``cpu_method="rss"``: in a fresh subprocess, the peak resident set size during the step (Linux
  ``VmHWM``, reset through ``/proc/self/clear_refs`` just before the step; elsewhere ``ru_maxrss``) minus
  the resident size after ``import torch``: what the OS gave, allocator caching and library set-up
  included; noisier. MB = 10^6 bytes.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

METHOD_CUDA = "cuda: torch.cuda.max_memory_allocated during one training step, minus allocation before the model"
METHOD_TENSORS = ("cpu: bytes of live tensor storages (weights, buffers, inputs, then every aten op's outputs "
                  "until freed), peak over one training step")
METHOD_CPU = ("cpu: peak RSS (VmHWM reset via /proc/self/clear_refs) of a fresh subprocess during one training "
              "step, minus its RSS after `import torch`")
METHOD_CPU_RUSAGE = "cpu: ru_maxrss of a fresh subprocess, minus its RSS after `import torch`"


def default_batch(device: str) -> int:
    """128 on CUDA (the paper's training batch), 16 on CPU (keeps an R50 run to seconds per step)."""
    return 128 if device.startswith("cuda") else 16


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def measure_latency_ms(model, batch: int, device: str, *, warmup: int = 2, repeats: int = 5) -> float:
    """Median wall time of one forward of a ``(batch, 3, H, W)`` input, in ms per image."""
    import torch

    h, w = model.preprocessing.input_size
    x = torch.randn(batch, 3, h, w, device=device)
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            _sync(device)
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0 / batch


def count_flops(model, device: str = "cpu") -> int:
    """FLOPs of one batch-1 forward (eval mode), counted by ``FlopCounterMode``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    h, w = model.preprocessing.input_size
    x = torch.randn(1, 3, h, w, device=device)
    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def _train_step(model, head, batch: int, device: str):
    """Generator: set up (yields the input and labels), then on resumption run one SGD training step."""
    import torch

    h, w = model.preprocessing.input_size
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, h, w, device=device)
    y = torch.randint(0, head.num_classes, (batch,), device=device)
    model.train()
    head.train()
    yield x, y  # measurement starts here: weights and inputs exist, nothing of the step yet
    loss = head(model(x), y)
    loss.backward()
    opt.step()
    _sync(device)


def _live_bytes_mode():
    """A TorchDispatchMode that tracks the bytes of live storages created by aten ops (``.peak``)."""
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveBytes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live: dict[int, tuple[Any, int]] = {}
            self.bytes = 0
            self.peak = 0

        def sweep(self) -> None:
            for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
                self.bytes -= self.live.pop(key)[1]

        def __exit__(self, *exc):
            self.sweep()
            return super().__exit__(*exc)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.sweep()
            for t in tree_flatten(out)[0]:
                if type(t).__name__ in ("Tensor", "Parameter") and not t.is_meta:
                    st = t.untyped_storage()
                    key, n = st.data_ptr(), st.nbytes()
                    if n and key not in self.live:  # views and in-place results share a live storage
                        self.live[key] = (StorageWeakRef(st), n)
                        self.bytes += n
            self.peak = max(self.peak, self.bytes)
            return out

    return LiveBytes()


def _tensor_peak_bytes(model_name: str, batch: int, num_classes: int, overrides: dict[str, Any]) -> int:
    import torch

    from megabench.models import create_head, create_model

    torch.manual_seed(0)
    model = create_model(model_name, **overrides)
    head = create_head("arcface", model.embedding_size, num_classes)
    step = _train_step(model, head, batch, "cpu")
    x, y = next(step)
    before = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
              for t in (*model.parameters(), *model.buffers(), *head.parameters(), *head.buffers(), x, y)}
    with _live_bytes_mode() as mode:
        next(step, None)
    return sum(before.values()) + mode.peak


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _child_main(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh interpreter: build, reset the peak, one training step, report the peak."""
    linux = os.path.exists("/proc/self/clear_refs")
    import torch

    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    base = _rss_bytes() if linux else None
    from megabench.models import create_head, create_model

    torch.manual_seed(0)
    model = create_model(args["model"], **args.get("overrides", {}))
    head = create_head("arcface", model.embedding_size, int(args["num_classes"]))
    step = _train_step(model, head, int(args["batch"]), "cpu")
    next(step)
    if linux:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        next(step, None)
        peak = _hwm_bytes() - base
        method = METHOD_CPU
    else:  # pragma: no cover - non-Linux
        import resource

        next(step, None)
        scale = 1 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        method = METHOD_CPU_RUSAGE
    return {"peak_bytes": int(peak), "method": method}


def train_peak_mem_mb(model_name: str, batch: int, device: str = "cpu", *, num_classes: int = 10575,
                      overrides: dict[str, Any] | None = None, cpu_method: str = "tensors") -> tuple[float, str]:
    """Peak memory (MB, 10^6 bytes) of one training step at ``batch``; returns ``(mb, method)``.

    ``cpu_method``: ``"tensors"`` (live tensor bytes, in process) or ``"rss"`` (subprocess RSS); see module doc.
    """
    overrides = dict(overrides or {})
    if cpu_method not in ("tensors", "rss"):
        raise ValueError(f"cpu_method must be 'tensors' or 'rss', got {cpu_method!r}")
    if device.startswith("cuda"):
        import torch

        from megabench.models import create_head, create_model

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        model = create_model(model_name, **overrides).to(device)
        head = create_head("arcface", model.embedding_size, num_classes).to(device)
        for _ in _train_step(model, head, batch, device):
            pass
        peak = torch.cuda.max_memory_allocated(device) - before
        del model, head
        torch.cuda.empty_cache()
        return peak / 1e6, METHOD_CUDA
    if cpu_method == "tensors":
        return _tensor_peak_bytes(model_name, batch, num_classes, overrides) / 1e6, METHOD_TENSORS
    import torch

    payload = json.dumps({"model": model_name, "batch": batch, "num_classes": num_classes,
                          "overrides": overrides, "threads": torch.get_num_threads()})
    proc = subprocess.run([sys.executable, "-m", "megabench.profiling", payload],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        from megabench.errors import MegabenchError

        raise MegabenchError(f"memory probe for model {model_name!r} at batch {batch} failed: "
                             f"{proc.stderr.strip().splitlines()[-1:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["peak_bytes"] / 1e6, out["method"]


def profile_model(
    name: str,
    *,
    batch: int | None = None,
    device: str = "cpu",
    warmup: int = 2,
    repeats: int = 5,
    memory: bool = True,
    num_classes: int = 10575,
    overrides: dict[str, Any] | None = None,
    cpu_method: str = "tensors",
) -> dict[str, Any]:
    """Profile registered model ``name``; returns a ``kind: "profile"`` result dict (see module doc).

    ``memory=False`` skips the training step (``train_peak_mem_mb`` is then None).
    """
    import torch

    from megabench.models import count_params, create_model, params_to_mb
    from megabench.results import new_result

    batch = batch or default_batch(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        from megabench.errors import MegabenchError

        raise MegabenchError(f"--device {device}: CUDA is not available here; use --device cpu")
    overrides = dict(overrides or {})
    torch.manual_seed(0)
    model = create_model(name, **overrides).to(device)
    params = count_params(model)
    flops = count_flops(model, device)
    lat1 = measure_latency_ms(model, 1, device, warmup=warmup, repeats=repeats)
    latn = measure_latency_ms(model, batch, device, warmup=warmup, repeats=repeats)
    info = {"name": name, "config": model.config, "preprocessing": model.preprocessing.to_dict(),
            "checkpoint_sha256": None}
    del model
    mem, method = (None, None)
    if memory:
        mem, method = train_peak_mem_mb(name, batch, device, num_classes=num_classes, overrides=overrides,
                                        cpu_method=cpu_method)
    result = new_result(
        "profile",
        device=device,
        model=info,
        params=params,
        size_mb=params_to_mb(params),
        flops=flops,
        latency_ms={"batch1": lat1, "batchN": latn, "batch": batch, "warmup": warmup, "repeats": repeats,
                    "statistic": "median, ms per image"},
        train_peak_mem_mb=mem,
        train_memory={"batch": batch, "method": method, "head": "arcface", "num_classes": num_classes,
                      "optimizer": "sgd momentum 0.9"},
    )
    result["device"] = device
    return result


def compare_with_paper(table: int, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of paper Table ``table`` beside our profile ``results`` (model name -> result), with ratios
    over each side's baseline (the first row): time, size delta and memory."""
    from megabench.reporting.paper_tables import paper_rows

    rows = paper_rows(table)
    base_paper = rows[0]
    base_ours = results.get(base_paper["model"])
    out = []
    for row in rows:
        r = results.get(row["model"])

        def ratio(ours, base):
            return ours / base if ours is not None and base else None

        ours_t = r["latency_ms"]["batchN"] if r else None
        ours_m = r["train_peak_mem_mb"] if r else None
        out.append({
            "method": row["method"], "model": row["model"],
            "time_ms": ours_t, "paper_time_ms": row["time_ms"],
            "time_ratio": ratio(ours_t, base_ours["latency_ms"]["batchN"] if base_ours else None),
            "paper_time_ratio": row["time_ms"] / base_paper["time_ms"],
            "size_mb": r["size_mb"] if r else None, "paper_size_mb": row["size_mb"],
            "size_delta_mb": (r["size_mb"] - base_ours["size_mb"]) if r and base_ours else None,
            "paper_size_delta_mb": row["size_mb"] - base_paper["size_mb"],
            "mem_mb": ours_m, "paper_mem_mb": row["memory_mb"],
            "mem_ratio": ratio(ours_m, base_ours["train_peak_mem_mb"] if base_ours else None),
            "paper_mem_ratio": row["memory_mb"] / base_paper["memory_mb"],
        })
    return out


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`compare_with_paper` rows."""

    def f(v, spec):
        return format(v, spec) if v is not None else "-".rjust(int(spec.split(".")[0]))

    head = (f"{'method':<24} {'ms':>8} {'paper':>7} {'x':>6} {'paper x':>7} | {'MB':>7} {'paper':>7} "
            f"{'+MB':>6} {'paper':>6} | {'mem MB':>8} {'paper':>6} {'x':>6} {'paper x':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['method']:<24} {f(r['time_ms'], '8.2f')} {r['paper_time_ms']:7.2f} {f(r['time_ratio'], '6.2f')} "
            f"{r['paper_time_ratio']:7.2f} | {f(r['size_mb'], '7.2f')} {r['paper_size_mb']:7.2f} "
            f"{f(r['size_delta_mb'], '6.2f')} {r['paper_size_delta_mb']:6.2f} | {f(r['mem_mb'], '8.0f')} "
            f"{r['paper_mem_mb']:6d} {f(r['mem_ratio'], '6.2f')} {r['paper_mem_ratio']:7.2f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # the memory probe's child process
    print(json.dumps(_child_main(json.loads(sys.argv[1]))))
