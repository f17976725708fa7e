"""MegaFace streaming engine vs its physical floor (one bare blocked GEMM) and vs a dense evaluator.

Usage: ``python benchmarks/megaface.py [--distractors 1000000] [--dim 512] [--dense-at 100000] [--kernel auto]``

1. Generates (or reuses, in megabench.config.cache_dir()) a synthetic MegaFace set: 3530 probes x N distractors.
2. Floor: the same distractor blocks, already in memory and normalised, through ``block @ probes.T``
   and nothing else (median of ``--repeats`` passes), with the engine's GEMM library (``--backend``:
   ``auto`` = numpy's OpenBLAS on the CPU, as the engine) and with the other one; the best of the two is
   printed as a second floor.
3. megabench, after one untimed warm-up run on 1,000 distractors (numba compiles its kernels into its disk
   cache once per install): the full protocol (raw + refined, every size, ROC, ranks; reading the HDF5 store,
   warm in the page cache) in a child process, so its peak RSS is its own, ``--engine-runs`` times interleaved with
   the floor's passes -> each run's ratio, then the ratio of the two medians, peak memory. Each run line says
   whether the store's sha256 was remembered (megabench's cache: no hashing process) or computed;
   ``--hash-store`` gives every run an empty cache, so that each one hashes the store. Then a per-block
   breakdown (GEMM vs the accumulator update of each kernel) on in-memory blocks.
4. At ``--dense-at`` distractors: a dense evaluator (full probe x distractor score matrix, per-probe sort +
   searchsorted for ranks, argpartition for the TAR@FAR threshold) vs megabench on the same size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time
from megabench.config import load_spec
import megabench.evaluation.megaface as mfe
import megabench.metrics.streaming as streaming
args = json.loads(sys.argv[1])
real = streaming.resolve_kernel  # --kernel: forced here so that either run_megaface signature works
streaming.resolve_kernel = lambda kernel="auto", device="cpu": real(args["kernel"], device)
spec = load_spec("megaface_c1", kind="megaface")
kw = dict(probe_list=args["probe_list"], distractor_lists=args["lists"], sizes=args["sizes"],
          facescrub_noises=args["fs"], megaface_noises=args["mf"], block_rows=args["block_rows"],
          refine=args["refine"], progress=False)
if "prefetch" in getattr(mfe.MegafaceOptions, "__dataclass_fields__", {}):  # --prefetch off: the serial reads
    kw["prefetch"] = args["prefetch"]
if args["backend"] != "default":
    kw["backend"] = args["backend"]
if args["device"] != "cpu":
    kw["device"] = args["device"]
try:  # whether the store's sha256 is remembered (the run then starts no hashing process)
    from megabench.fileio import remembered_sha256
    remembered = remembered_sha256(args["distractors"]) is not None
except ImportError:
    remembered = None
t = time.perf_counter()
if hasattr(mfe, "MegafaceOptions"):  # run_megaface(spec, options)
    opts = mfe.MegafaceOptions(probes=args["probes"], distractors=args["distractors"], **kw)
    res = mfe.run_megaface(spec, opts, echo=lambda *a: None)
else:  # the older keyword form
    res = mfe.run_megaface(spec, args["probes"], args["distractors"], echo=lambda *a: None, **kw)
wall = time.perf_counter() - t
# VmHWM restarts at exec (ru_maxrss would include the parent's pages from before the exec)
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
v = res["variants"]
sizes = {k: {name: v[name]["sizes"][k]["rank1"] for name in v} for k in v["raw"]["sizes"]}
backend = res.get("input", {}).get("backend") or res.get("run", {}).get("backend") or "torch"
print(json.dumps({"wall": wall, "timings": res["timings"], "peak_rss_mb": peak, "sizes": sizes, "backend": backend,
                  "sha256_remembered": remembered}))
"""


def steal_seconds() -> float | None:
    """CPU time the hypervisor gave to other guests so far (Linux ``/proc/stat`` steal column), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def warm_page_cache(*paths: Path) -> None:
    """Read the files once so that the engine's run finds them in the page cache, as the floor finds its
    features in memory. (The machines this runs on page out files unread for a minute: the floors run
    ~50 s between the first read of the store and the engine, and a store read back from disk made the
    load phase 13-19 s instead of 2; the devkit lists (~50 MB of JSON at 1M) read back from disk made it 8 s.)"""
    buf = bytearray(1 << 24)
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def run_engine(folder: Path, sizes: list[int], block_rows: int, refine: str = "insightface",
               kernel: str = "auto", prefetch: bool = True, backend: str = "default", device: str = "cpu",
               hash_store: bool = False) -> dict:
    args = {"kernel": kernel, "prefetch": prefetch, "backend": backend, "device": device,
            "probes": str(folder / "facescrub.h5"),
            "distractors": str(folder / "megaface.h5"),
            "probe_list": str(folder / "facescrub_features_list.json"), "lists": str(folder / "lists"),
            "sizes": sizes, "fs": str(folder / "facescrub_noises.txt"), "mf": str(folder / "megaface_noises.txt"),
            "block_rows": block_rows, "refine": refine}
    warm_page_cache(*sorted(p for p in folder.rglob("*") if p.is_file()))  # stores, lists, noise lists
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as empty:
        if hash_store:  # an empty megabench cache: no remembered sha256, the run hashes the store
            env["MEGABENCH_CACHE"] = empty
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True,
                             check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_normalised(store: Path, n: int | None = None) -> np.ndarray:
    from megabench.data.feature_store import open_features

    with open_features(store) as fs:
        x = fs.read(rows=slice(0, n or fs.n))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def bare_gemm(probes, x: np.ndarray, block_rows: int, device: str = "cpu") -> float:
    """torch.matmul alone over the same blocks, features in (host) memory and normalised, into one reused
    output block; on a GPU each block is copied to the device first, as the engine does."""
    import torch

    p = torch.from_numpy(probes).to(device)
    out = torch.empty((block_rows, probes.shape[0]), dtype=torch.float32, device=device)
    t = time.perf_counter()
    for lo in range(0, x.shape[0], block_rows):
        xb = torch.from_numpy(x[lo:lo + block_rows]).to(device)
        torch.matmul(xb, p.T, out=out[:xb.shape[0]])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def bare_gemm_numpy(probes, x: np.ndarray, block_rows: int) -> float:
    """The same blocked GEMM through numpy's BLAS (OpenBLAS in the wheels), into one reused output block as the
    engine's numpy backend does (a fresh 116 MB result per block would add ~10 ms of page faults to the floor)."""
    pt = np.ascontiguousarray(probes.T)
    out = np.empty((block_rows, probes.shape[0]), np.float32)
    t = time.perf_counter()
    for lo in range(0, x.shape[0], block_rows):
        xb = x[lo:lo + block_rows]
        np.matmul(xb, pt, out=out[:xb.shape[0]])
    return time.perf_counter() - t


def block_breakdown(folder: Path, x: np.ndarray, block_rows: int, n_blocks: int, kernels: list[str]) -> None:
    """Per-block seconds (median over ``n_blocks`` blocks after a warm-up block), features in memory: GEMM,
    then each kernel's accumulator update (raw + refined over the synthetic noise lists; one class)."""
    import torch

    from megabench.data.megaface_io import match_facescrub_noise, read_noise_list
    from megabench.evaluation.megaface import build_stack, load_probes
    from megabench.metrics.streaming import MegafaceAccumulator

    pr = load_probes(folder / "facescrub.h5", folder / "facescrub_features_list.json")
    noisy, _ = match_facescrub_noise(pr.paths, read_noise_list(folder / "facescrub_noises.txt"))
    sample = x[:2048] @ pr.features.T
    stack = build_stack(pr, noisy, "insightface", sample_scores=sample)
    p = torch.from_numpy(stack.vectors)
    k = max(100_000, int(np.ceil(1e-6 * pr.features.shape[0] * x.shape[0])))
    print(f"-- per block ({block_rows} x {stack.vectors.shape[0]} scores), median of {n_blocks} blocks --")
    for kernel in kernels:
        acc = MegafaceAccumulator(stack.plans, 1, k, kernel=kernel)
        gemm, upd = [], []
        for b in range(n_blocks + 1):
            xb = torch.from_numpy(x[b * block_rows:(b + 1) * block_rows])
            t0 = time.perf_counter()
            S = xb @ p.T
            t1 = time.perf_counter()
            acc.update(S, np.zeros(xb.shape[0], np.int64), np.zeros(xb.shape[0], bool))
            t2 = time.perf_counter()
            if b:  # block 0 fills the top-K buffers (and compiles the fused kernel)
                gemm.append(t1 - t0)
                upd.append(t2 - t1)
        g, u = statistics.median(gemm), statistics.median(upd)
        parts = getattr(acc._kernel, "timings", {})
        steps = ", ".join(f"{name} {v / (n_blocks + 1):.3f}s" for name, v in parts.items() if name != "candidates")
        print(f"{acc.kernel_name:>6} kernel: GEMM {g:.3f}s  update {u:.3f}s  (update / GEMM {u / g:.2f}x)"
              + (f"  [mean per block incl. warm-up: {steps}]" if steps else ""))


def dense_evaluator(probes: np.ndarray, labels: np.ndarray, x: np.ndarray) -> float:
    """The common approach: the whole score matrix, sorted per probe, plus argpartition for TAR@1e-6."""
    import torch

    t = time.perf_counter()
    s = (torch.from_numpy(probes) @ torch.from_numpy(x).T).numpy()  # (P, N) dense
    gram = probes @ probes.T
    ranks = []
    for j in range(probes.shape[0]):
        row = np.sort(s[j])
        mates = np.flatnonzero((labels == labels[j]) & (np.arange(labels.size) != j))
        ranks.append(row.size - np.searchsorted(row, gram[j, mates], side="left"))
    ranks = np.concatenate(ranks)
    _ = (ranks < 1).mean()
    k = int(np.ceil(1e-6 * s.size))
    flat = s.reshape(-1)
    tau = flat[np.argpartition(flat, flat.size - k)[flat.size - k]]
    iu = np.triu_indices(labels.size, 1)
    same = labels[iu[0]] == labels[iu[1]]
    _ = (gram[iu][same] > tau).mean()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distractors", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dense-at", type=int, default=100_000)
    ap.add_argument("--block-rows", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3, help="bare-GEMM passes (median reported)")
    ap.add_argument("--engine-runs", type=int, default=5,
                    help="megabench runs at --distractors, interleaved with the GEMM passes (median reported; one "
                         "run on these shared machines drifts by +-1.5 s, the median of 5 holds against 2 such)")
    ap.add_argument("--hash-store", action="store_true",
                    help="every engine run hashes the store (an empty megabench cache: no remembered sha256)")
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--only-dense", action="store_true", help="only the dense-evaluator comparison")
    ap.add_argument("--kernel", default="auto", choices=["auto", "fused", "torch"], help="the engine's block kernel")
    ap.add_argument("--prefetch", default="on", choices=["on", "off"],
                    help="the engine reads the next block in a worker thread (off: serial, as before issue 11)")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "numpy"],
                    help="the engine's GEMM library (auto: numpy on the CPU); the floor uses the same")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]: the engine's device (the torch floor runs there)")
    ap.add_argument("--breakdown-blocks", type=int, default=6, help="blocks timed in the per-block breakdown")
    a = ap.parse_args()

    from megabench.config import synthetic_megaface_folder
    from megabench.data.synthetic_megaface import STANDARD_SIZES, generate
    from megabench.evaluation.megaface import load_probes

    def dataset(n: int) -> Path:
        folder = synthetic_megaface_folder(n, a.dim)
        if not (folder / "meta.json").exists():
            t = time.perf_counter()
            generate(folder, n, a.dim, 0, progress=False)
            print(f"generated {n:,} x {a.dim} in {time.perf_counter() - t:.1f}s ({folder})")
        return folder

    if not a.only_dense:
        warm_up(a, dataset(WARM_UP_DISTRACTORS))
        bench_floor(a, dataset(a.distractors))
    if not a.skip_dense:
        folder = dataset(a.dense_at)
        pr = load_probes(folder / "facescrub.h5", folder / "facescrub_features_list.json")
        xd = load_normalised(folder / "megaface.h5")
        td = [dense_evaluator(pr.features, pr.labels, xd) for _ in range(a.repeats)]
        del xd
        sizes = [s for s in STANDARD_SIZES if s <= a.dense_at]
        e2 = [run_engine(folder, sizes, a.block_rows) for _ in range(a.repeats)]
        e1 = [run_engine(folder, [a.dense_at], a.block_rows, refine="none") for _ in range(a.repeats)]
        tm, em = statistics.median(td), statistics.median(e["wall"] for e in e2)
        sm = statistics.median(e["timings"]["stream"] for e in e2)
        rm = statistics.median(e["wall"] for e in e1)
        print(f"== at {a.dense_at:,} distractors (own {a.dense_at:,}-row store) ==")
        print(f"dense matrix + sort/argpartition (features preloaded, raw only, rank + TAR@1e-6): median {tm:.1f}s")
        print(f"megabench (reads + hashes the store; raw+refined; all sizes; full CMC/ROC): median {em:.1f}s "
              f"(stream {sm:.1f}s)")
        print(f"megabench like for like (raw only, one size {a.dense_at:,}): median {rm:.1f}s")
        print(f"ratio dense / megabench: {tm / em:.2f}x (full protocol), {tm / rm:.2f}x (like for like)")
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this driver's own peak RSS, holding the features for the baselines: {peak_self:.0f} MB)")


#: distractors of the untimed warm-up run
WARM_UP_DISTRACTORS = 1000


def warm_up(a, folder: Path) -> None:
    """One untimed engine run on a small set, with the timed runs' options: on a fresh install it compiles the
    fused kernel into numba's on-disk cache (~8 s, once per install and per kernel source), which every later
    run only loads. Without it the first timed run of a fresh clone would include the compilation."""
    t = time.perf_counter()
    run_engine(folder, [WARM_UP_DISTRACTORS], a.block_rows, kernel=a.kernel, prefetch=a.prefetch == "on",
               backend=a.backend, device=a.device)
    print(f"warm-up run (untimed)  : {time.perf_counter() - t:.1f}s on {WARM_UP_DISTRACTORS:,} distractors "
          "(compiles the numba kernels on a fresh install, cached on disk after)")


def bench_floor(a, folder: Path) -> None:
    from megabench.data.synthetic_megaface import STANDARD_SIZES
    from megabench.evaluation.megaface import load_probes

    sizes = [s for s in STANDARD_SIZES if s <= a.distractors] or [a.distractors]
    pr = load_probes(folder / "facescrub.h5", folder / "facescrub_features_list.json")
    x = load_normalised(folder / "megaface.h5")
    # floors and engine runs interleaved: this machine drifts by +-1.5 s between runs, so each side is a median;
    # with fewer floor passes than engine runs, the passes are spread over the rounds (3 of 5: rounds 1, 3, 5)
    rounds = max(a.repeats, a.engine_runs)
    floor_rounds = {round(j * (rounds - 1) / max(a.repeats - 1, 1)) for j in range(a.repeats)}
    gemm_t, gemm_np, engines, steals = [], [], [], []
    for i in range(rounds):
        if i in floor_rounds:
            gemm_t.append(bare_gemm(pr.features, x, a.block_rows, a.device))
            gemm_np.append(bare_gemm_numpy(pr.features, x, a.block_rows))
        if i < a.engine_runs:
            steal0 = steal_seconds()
            engines.append(run_engine(folder, sizes, a.block_rows, kernel=a.kernel, prefetch=a.prefetch == "on",
                                      backend=a.backend, device=a.device, hash_store=a.hash_store))
            steal1 = steal_seconds()
            steals.append(None if steal0 is None or steal1 is None else steal1 - steal0)
    used = engines[0].get("backend", "torch")
    lib = {"torch": ("torch", gemm_t), "numpy": ("numpy", gemm_np)}
    (name, gemm), (other, gemm_o) = lib[used], lib["torch" if used == "numpy" else "numpy"]
    floor, floor_o = statistics.median(gemm), statistics.median(gemm_o)
    best = min(floor, floor_o)

    def med(key: str) -> float:
        return statistics.median(e["timings"][key] for e in engines)

    wall = statistics.median(e["wall"] for e in engines)
    load = os.getloadavg()
    print(f"== {len(pr.paths)} probes x {a.distractors:,} distractors x {a.dim} (block {a.block_rows}, "
          f"kernel {a.kernel}, prefetch {a.prefetch}, GEMM {used} on {a.device}) ==")
    print(f"machine load average (1, 5, 15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs")
    print(f"bare blocked GEMM      : median {floor:.1f}s of {[round(g, 1) for g in gemm]} ({name}, as the engine)")
    print(f"{other:>5} blocked GEMM    : median {floor_o:.1f}s of {[round(g, 1) for g in gemm_o]}")
    for i, (e, st) in enumerate(zip(engines, steals, strict=True)):
        t = e["timings"]
        steal = f", host steal {st:.1f} CPU-s" if st is not None else ""  # 0 on a quiet host
        sha = {True: ", sha256 remembered", False: ", sha256 computed"}.get(e.get("sha256_remembered"), "")
        print(f"megabench run {i + 1}        : {e['wall']:.1f}s  (stream {t['stream']:.1f}s, load+hash "
              f"{t['load']:.1f}s, compute {t['compute']:.1f}s{steal}{sha}) -> {e['wall'] / floor:.2f}x")
    print(f"megabench (all sizes)  : median {wall:.1f}s of {len(engines)}  (stream {med('stream'):.1f}s, "
          f"load+hash {med('load'):.1f}s, compute {med('compute'):.1f}s)")
    print(f"ratio total / GEMM     : {wall / floor:.2f}x   stream / GEMM: {med('stream') / floor:.2f}x")
    print(f"ratio total / best GEMM: {wall / best:.2f}x   (best of torch / numpy GEMM: {best:.1f}s)")
    print(f"beyond the GEMM        : {wall - floor:.1f}s (load+hash, accumulator, compute)")
    feat_mb = a.distractors * a.dim * 4 / 2**20
    peak = max(e["peak_rss_mb"] for e in engines)
    print(f"megabench peak RSS     : {peak:.0f} MB (features on disk: {feat_mb:.0f} MB, streamed)")
    answers = {json.dumps(e["sizes"][str(sizes[-1])]) for e in engines}
    same = "" if len(answers) == 1 else f"  (RUNS DIFFER: {sorted(answers)})"
    print(f"rank-1 raw/refined at largest size: {json.dumps(engines[0]['sizes'][str(sizes[-1])])}{same}")
    if a.breakdown_blocks > 0:
        n = min(a.breakdown_blocks, x.shape[0] // a.block_rows - 1)
        if n > 0 and a.device == "cpu":
            block_breakdown(folder, x, a.block_rows, n, ["torch", "fused"] if a.kernel != "torch" else ["torch"])
    del x


if __name__ == "__main__":
    main()
