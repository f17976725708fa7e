"""Inference time and training memory of every Table 1-2 attention variant over the IR-50 baseline.

Measured in one run on one machine (R50, batch 16 on CPU, 128 on CUDA), printed beside the paper's
ratios (its GPU, batch 128). Time: median ms per image of a batch-N eval forward, timed round robin
over the models so that load from other processes hits every model alike; the process CPU time per
forward is shown too. On a machine whose cores other processes share, use ``--threads 1``: with more
threads, OpenMP workers spin-wait for descheduled siblings and small ops (the attention's pooling,
padding, 1x1 projections) slow down many-fold, in wall and CPU time alike. Memory: peak
of one training step (forward + ArcFace head + backward + SGD), as ``megabench.profiling`` defines it
per device (CPU: live tensor bytes, deterministic).

    python benchmarks/attention_cost.py [--batch 16] [--device cpu] [--repeats 5] [--threads 1] \
        [--kernels] [--out x.json]

``--kernels`` also times, at IR-50's first-stage shape, the attention product alone (SDPA path vs the
softmax(bmm) reference) and the 1x1 projections (one GEMM vs ``nn.Conv2d``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from megabench.fileio import atomic_write_json
from megabench.models import count_params, create_model, params_to_mb
from megabench.profiling import default_batch, train_peak_mem_mb
from megabench.reporting.paper_tables import paper_rows


def time_forward(model, x: torch.Tensor, device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds over all threads) of one eval forward."""
    with torch.inference_mode():
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        w0, c0 = time.perf_counter(), time.process_time()
        model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        return time.perf_counter() - w0, time.process_time() - c0


def kernel_times(batch: int, repeats: int) -> list[tuple[str, float, float]]:
    """(shape, ms of attend, ms of attend_reference) for the SSA products of IR-50's first stage."""
    from megabench.models.layers import attend, attend_reference

    out = []
    for label, n_keys in (("light SSA 3136x784", 784), ("naive SSA 3136x3136", 3136)):
        q, k, v = torch.randn(batch, 3136, 4), torch.randn(batch, n_keys, 4), torch.randn(batch, n_keys, 64)
        times = {}
        for f in (attend, attend_reference):
            f(q, k, v)
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                f(q, k, v)
                ts.append(time.perf_counter() - t0)
            times[f.__name__] = statistics.median(ts) * 1000
        out.append((label, times["attend"], times["attend_reference"]))
    return out


def pointwise_times(batch: int, repeats: int) -> tuple[float, float]:
    """(ms of pointwise GEMM, ms of nn.Conv2d) for the theta+phi+rho 1x1 projections of SCA at 64 x 56 x 56."""
    from megabench.models.layers import conv1x1, pointwise

    x = torch.randn(batch, 64, 56, 56)
    convs = [conv1x1(64, 64), conv1x1(64, 32), conv1x1(64, 32)]
    fused = torch.nn.Conv2d(64, 128, 1, bias=False)
    res = []
    with torch.no_grad():
        for f in (lambda: pointwise(x, *convs), lambda: fused(x)):
            f()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
            res.append(statistics.median(ts) * 1000)
    return res[0], res[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--classes", type=int, default=10575)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--kernels", action="store_true")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier when the cores are shared)")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or default_batch(args.device)

    rows = paper_rows(1) + paper_rows(2)[1:]
    names = [row["model"] for row in rows]
    models, inputs = {}, torch.randn(batch, 3, 112, 112, device=args.device)
    for name in names:
        torch.manual_seed(0)
        models[name] = create_model(name).to(args.device).eval()
        for _ in range(args.warmup):
            time_forward(models[name], inputs, args.device)
    # round robin: every round times each model once, so a burst of load on a shared machine hits all alike
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            runs[name].append(time_forward(models[name], inputs, args.device))
    measured = {}
    for name in names:
        params = count_params(models[name])
        mem = None if args.no_memory else train_peak_mem_mb(name, batch, args.device, num_classes=args.classes)[0]
        wall = statistics.median(w for w, _ in runs[name]) * 1000 / batch
        cpu = statistics.median(c for _, c in runs[name]) * 1000 / batch
        measured[name] = {"ms": wall, "cpu_ms": cpu, "mem_mb": mem, "params": params}
        print(f"  {name:<22} {wall:9.2f} ms/img wall {cpu:9.2f} ms/img cpu  mem "
              f"{'-' if mem is None else f'{mem:8.0f}'} MB", flush=True)
    del models

    base, pbase = measured[rows[0]["model"]], rows[0]
    print(f"\nattention cost over IR-50 on {args.device}, batch {batch}, {torch.get_num_threads()} thread(s) "
          "(paper: GPU, batch 128)")
    head = (f"{'variant':<24} {'time x':>7} {'cpu x':>6} {'paper':>6} | {'mem x':>6} {'paper':>6} | "
            f"{'+MB':>6} {'paper':>6}")
    print(head + "\n" + "-" * len(head))
    table = []
    for row in rows:
        m = measured[row["model"]]
        t_ratio = m["ms"] / base["ms"]
        c_ratio = m["cpu_ms"] / base["cpu_ms"]
        m_ratio = m["mem_mb"] / base["mem_mb"] if m["mem_mb"] is not None else None
        delta = params_to_mb(m["params"] - base["params"])
        pt, pm = row["time_ms"] / pbase["time_ms"], row["memory_mb"] / pbase["memory_mb"]
        pd = row["size_mb"] - pbase["size_mb"]
        table.append({"model": row["model"], "method": row["method"], "time_ratio": t_ratio, "cpu_time_ratio": c_ratio,
                      "paper_time_ratio": pt,
                      "mem_ratio": m_ratio, "paper_mem_ratio": pm, "size_delta_mb": delta, "paper_size_delta_mb": pd,
                      **m})
        mr = "-" if m_ratio is None else f"{m_ratio:6.2f}"
        print(f"{row['method'].replace('ResNet50', 'R50'):<24} {t_ratio:7.2f} {c_ratio:6.2f} {pt:6.2f} | {mr:>6} "
              f"{pm:6.2f} | "
              f"{delta:6.2f} {pd:6.2f}")
    print(f"baseline: {base['ms']:.2f} ms/img wall, {base['cpu_ms']:.2f} ms/img CPU time, "
          f"{base['mem_mb'] or float('nan'):.0f} MB train peak. 'time x': wall clock; 'cpu x': process "
          "CPU time (all threads).")
    kernels = []
    if args.kernels:
        print("\nattention product alone (CPU, batch 16): SDPA path vs softmax(bmm)")
        for label, fused, ref in kernel_times(16, args.repeats):
            kernels.append({"shape": label, "attend_ms": fused, "reference_ms": ref})
            print(f"  {label:<22} {fused:8.1f} ms  vs {ref:8.1f} ms  ({ref / fused:.2f}x faster)")
        gemm, conv = pointwise_times(16, args.repeats)
        kernels.append({"shape": "1x1 projections 64->128 at 56x56", "gemm_ms": gemm, "conv2d_ms": conv})
        print(f"  1x1 projections 64->128 at 56x56: GEMM {gemm:.1f} ms vs Conv2d {conv:.1f} ms "
              f"({conv / gemm:.2f}x faster)")
    if args.out:
        atomic_write_json(args.out, {"device": args.device, "batch": batch, "rows": table, "kernels": kernels,
                                     "torch": torch.__version__, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
