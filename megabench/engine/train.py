"""The training engine: one :func:`train` for every recipe (backbone x margin head x data x SGD).

Per step ``s`` (0-based; ``step`` = completed optimizer steps):

1. this rank's slice of the total batch (:class:`~megabench.engine.train_data.StreamBatchSampler`),
   flipped per item (:class:`~megabench.engine.train_data.FlipAugment`), normalised by the model's
   own ``preprocessing``;
2. ``lr = recipe.schedule.lr_at(recipe.optimizer.lr, s)`` (warm-up, then piecewise constant by
   iteration); a head with a ``step`` buffer (SphereFace's lambda annealing) gets ``step = s``;
3. embedding -> head logits -> cross-entropy (the margin maths in fp32; the backbone under bf16
   autocast on CUDA when ``amp``) -> backward -> SGD (momentum, weight decay on *every* parameter,
   as insightface's ``arcface_torch`` does; the head's class centres are trained with the backbone).

DDP (torchrun): the backbone and head are one module wrapped in ``DistributedDataParallel``;
gradients are averaged over ranks, so W ranks with batch B/W each equal one process with batch B
(for layers that do not mix samples). Only rank 0 writes; see :mod:`megabench.engine.train_state`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from megabench.engine import train_state as ts
from megabench.engine.distributed import DistInfo, all_gather_arrays, barrier
from megabench.engine.recipe import Recipe, recipe_dict, recipe_name, recipe_sha256, to_toml
from megabench.errors import DataError, MegabenchError


@dataclass
class TrainOptions:
    """How (not what) to train. ``save_every``/``val_every``/``log_every`` are in steps (0: only at the
    end); ``stop_at``: stop (with a checkpoint) once the run has done this many steps, to resume later."""

    device: str = "cpu"
    amp: bool | None = None
    workers: int = 2
    save_every: int = 1000
    keep_checkpoints: int = 3
    val_packs: tuple[str, ...] = ()
    val_every: int = 0
    log_every: int = 10
    resume: bool = False
    force: bool = False
    stop_at: int | None = None
    progress: bool = True
    echo: Callable[[str], None] = field(default=print)


@dataclass
class TrainOutcome:
    out: Path
    status: str  # "finished" | "stopped" | "already finished"
    step: int
    metrics: dict[str, Any]
    #: the trained tensors (``model.*`` and ``head.*``) on this rank, when this call trained
    weights: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)


class TrainNet(nn.Module):
    """Backbone + margin head as one module (one DDP wrapper, one optimizer).

    ``forward(x (B, 3, H, W) float, labels (B,) int64) -> (loss (), logits (B, K) fp32)``.
    The head is any :class:`~megabench.models.heads.MarginHead`: its ``logits`` hook is the only
    place the class centres are used, so a partial-FC head (centres sharded over ranks, logits
    gathered) can replace it without touching the margin code (docs/training.md).
    """

    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head.logits(self.model(x), labels)
        return F.cross_entropy(logits, labels), logits


def data_fingerprint(data: Any) -> str:
    """The training set's own fingerprint when it has one, else its type and length."""
    fp = getattr(data, "fingerprint", None)
    return str(fp()) if callable(fp) else f"{type(data).__name__}:{len(data)}"


def check_data(recipe: Recipe, data: Any) -> None:
    """The data must have the recipe's classes and image size; clear :class:`DataError` otherwise."""
    source = getattr(data, "source", type(data).__name__)
    n_classes = int(data.num_classes)
    if recipe.data.num_classes != n_classes:
        raise DataError(f"{source}: has {n_classes} identities but recipe {recipe_name(recipe)} says "
                        f"data.num_classes = {recipe.data.num_classes}; pass --set data.num_classes={n_classes} "
                        "(or 0 to take the data's count) or use the recipe's own training set")
    size = getattr(data, "image_size", None)
    if size is not None and tuple(size)[-2:] != tuple(recipe.input_size):
        raise DataError(f"{source}: images are {tuple(size)[-2:]} (H, W) but recipe {recipe_name(recipe)} "
                        f"trains at input_size {tuple(recipe.input_size)}; align/crop the data or "
                        f"--set input_size=[{size[-2]}, {size[-1]}]")
    if len(data) == 0:
        raise DataError(f"{source}: the training set is empty")


def build_net(recipe: Recipe, num_classes: int) -> TrainNet:
    """The recipe's model (registry; recipe embedding and input size) and head, seeded by ``recipe.seed``."""
    from megabench.models import create_head, create_model

    torch.manual_seed(recipe.seed)
    model = create_model(recipe.model, embedding_size=recipe.embedding_size,
                         input_size=tuple(recipe.input_size), **recipe.model_args)
    head = create_head(recipe.head, recipe.embedding_size, num_classes, **recipe.head_args)
    return TrainNet(model, head)


def make_optimizer(recipe: Recipe, net: nn.Module) -> torch.optim.SGD:
    o = recipe.optimizer
    return torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def set_step(net: TrainNet, opt: torch.optim.Optimizer, recipe: Recipe, step: int) -> float:
    """lr of iteration ``step`` into the optimizer and the step into a head that anneals (SphereFace)."""
    lr = recipe.schedule.lr_at(recipe.optimizer.lr, step)
    for group in opt.param_groups:
        group["lr"] = lr
    if isinstance(getattr(net.head, "step", None), torch.Tensor):
        net.head.step.fill_(step)
    return lr


# ------------------------------------------------------------------------------------- checkpoints
def _train_state(net: TrainNet, opt: torch.optim.Optimizer, recipe: Recipe, ident: ts.RunIdentity, step: int,
                 rng_per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": ts.STATE_KIND, "step": step, "recipe_sha256": ident.recipe_sha256,
        "data_fingerprint": ident.data_fingerprint, "world_size": ident.world_size,
        "lr": recipe.schedule.lr_at(recipe.optimizer.lr, max(step - 1, 0)),
        "head": {"name": recipe.head, "args": dict(recipe.head_args), "num_classes": net.head.num_classes,
                 "state_dict": {k: v.detach().cpu() for k, v in net.head.state_dict().items()}},
        "optimizer": opt.state_dict(),
        "rng": [ts.rng_to_tensors(r) for r in rng_per_rank],
        "sampler": {"position_step": step, "batch_size": recipe.batch_size, "seed": recipe.seed},
    }


def save_training_checkpoint(out: Path, net: TrainNet, opt: torch.optim.Optimizer, recipe: Recipe,
                             ident: ts.RunIdentity, step: int, info: DistInfo, keep: int) -> Path | None:
    """Every rank contributes its RNG state; rank 0 writes ``checkpoints/step_<step>.pt`` atomically."""
    from megabench.engine.checkpoint import save_checkpoint

    rng = all_gather_arrays(ts.rng_arrays(), info)
    if not info.is_main:
        return None
    path = out / "checkpoints" / f"step_{step}.pt"
    state = _train_state(net, opt, recipe, ident, step, rng)
    save_checkpoint(path, net.model, extra={"train_state": state, "recipe": recipe_dict(recipe)})
    ts.prune_checkpoints(out, keep)
    return path


def restore(net: TrainNet, opt: torch.optim.Optimizer, payload: dict[str, Any], info: DistInfo) -> int:
    """Load model, head, optimizer and this rank's RNG state; returns the step."""
    state = payload["extra"]["train_state"]
    net.model.load_state_dict(payload["state_dict"], strict=True)
    net.head.load_state_dict(state["head"]["state_dict"], strict=True)
    opt.load_state_dict(state["optimizer"])
    rngs = state["rng"]
    ts.set_rng_arrays(rngs[info.rank] if info.rank < len(rngs) else rngs[0])
    return int(state["step"])


def save_final(out: Path, net: TrainNet, recipe: Recipe, ident: ts.RunIdentity, step: int) -> str:
    """``final.pt``: the model (what ``megabench extract --checkpoint`` reads) plus the head's weights."""
    from megabench.engine.checkpoint import save_checkpoint

    head = {"name": recipe.head, "args": dict(recipe.head_args), "num_classes": net.head.num_classes,
            "state_dict": {k: v.detach().cpu() for k, v in net.head.state_dict().items()}}
    return save_checkpoint(out / "final.pt", net.model, extra={
        "final": {"step": step, "recipe_sha256": ident.recipe_sha256, "data_fingerprint": ident.data_fingerprint},
        "head": head, "recipe": recipe_dict(recipe)})


# ------------------------------------------------------------------------------------------ the loop
@dataclass
class _Meter:
    """Loss / accuracy / throughput since the last log line."""

    loss: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    steps: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def add(self, loss_sum: float, correct: float, n: float) -> None:
        self.loss += loss_sum
        self.correct += correct
        self.seen += n
        self.steps += 1

    def record(self, step: int, lr: float, skipped: int) -> dict[str, Any]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        seen = max(self.seen, 1)
        rec = {"step": step, "lr": lr, "loss": self.loss / seen, "accuracy": self.correct / seen,
               "images_per_s": self.seen / dt, "skipped_images": skipped}
        self.__init__()
        return rec


def _batch_stats(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, info: DistInfo) -> tuple[float, ...]:
    """(sum of losses, correct, count) over all ranks (one small all-reduce when distributed)."""
    with torch.no_grad():
        n = labels.numel()
        t = torch.stack([loss.detach().float() * n, (logits.argmax(1) == labels).sum().float(),
                         torch.tensor(float(n), device=loss.device)]).cpu().double()
    if info.world > 1:
        import torch.distributed as dist

        dev = torch.device("cuda", torch.cuda.current_device()) if info.backend == "nccl" else torch.device("cpu")
        t = t.to(dev)
        dist.all_reduce(t)
        t = t.cpu()
    return tuple(float(v) for v in t)


class _Run:
    """State of one call of :func:`train` (keeps the loop short)."""

    def __init__(self, recipe: Recipe, data: Any, out: Path, opts: TrainOptions, info: DistInfo) -> None:
        self.recipe, self.data, self.out, self.opts, self.info = recipe, data, out, opts, info
        self.device = torch.device(opts.device)
        self.amp = opts.amp if opts.amp is not None else self.device.type == "cuda"
        self.ident = ts.RunIdentity(recipe_sha256(recipe), data_fingerprint(data), info.world)
        self.last_ckpt: Path | None = None
        self.metrics: dict[str, Any] = {}
        self.val_packs: list = []
        self.skipped = 0

    def say(self, msg: str) -> None:
        if self.info.is_main:
            self.opts.echo(msg)

    # ---- folder
    def base_record(self, step: int, status: str) -> dict[str, Any]:
        r = self.recipe
        return {"model": r.model, "head": r.head, "recipe": recipe_name(r), "recipe_source": r.source,
                "recipe_sha256": self.ident.recipe_sha256, "world_size": self.info.world, "step": step,
                "max_steps": r.schedule.max_steps, "status": status, "batch_size": r.batch_size,
                "data": {"source": str(getattr(self.data, "source", "")), "fingerprint": self.ident.data_fingerprint,
                         "num_classes": int(self.data.num_classes), "images": len(self.data)},
                "device": str(self.device), "amp": self.amp}

    def start_folder(self, mode: str) -> None:
        from megabench.fileio import atomic_write_bytes

        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        if mode == "new":
            atomic_write_bytes(out / "recipe.toml", to_toml(recipe_dict(self.recipe)).encode())
            atomic_write_bytes(out / "recipe.sha256", (self.ident.recipe_sha256 + "\n").encode())
            ts.write_run(out, {**self.base_record(0, "running"), "created": ts.now_iso()})

    def update_run(self, step: int, status: str, **more: Any) -> None:
        if self.info.is_main:
            old = ts.read_run(self.out) or {}
            ts.write_run(self.out, {**old, **self.base_record(step, status), **more})

    # ---- validation
    def run_validation(self, step: int, final: bool) -> None:
        from megabench.engine.train_validation import summary, validate

        if not (self.val_packs and self.info.is_main):
            return
        results = validate(self.net.model, self.val_packs, device=str(self.device),
                           store_dir=self.out / "val" if final else None,
                           extra_model_info={"recipe": recipe_name(self.recipe), "run": str(self.out), "step": step})
        summ = summary(results)
        ts.append_log(self.out / "log.jsonl", {"step": step, "validation": summ})
        self.say("  ".join(f"{k}: {v['accuracy']:.4f}" for k, v in summ.items()) + f"  (step {step})")
        if final:
            from megabench.results import write_result

            for name, res in results.items():
                write_result(self.out / f"verification_{name}.json", res)
            self.metrics = summ


def train(recipe: Recipe, data: Any, out: str | Path, options: TrainOptions | None = None,
          dist_info: DistInfo | None = None) -> TrainOutcome:
    """Train ``recipe`` on ``data`` into the run folder ``out`` (see :mod:`megabench.engine.train_state`).

    ``data``: a map-style training set: ``len``, ``num_classes``, ``data[i] -> (uint8 (3, H, W) RGB,
    int label)`` (or ``None`` for a skipped bad image), optionally ``image_size``, ``source``,
    ``fingerprint()``. Raises :class:`MegabenchError` subclasses for bad input, a folder that holds
    another run, a refused resume, and :class:`~megabench.engine.train_state.TrainingDiverged` when the
    loss becomes NaN/Inf (the last good checkpoint is kept).
    """
    opts = options or TrainOptions()
    info = dist_info or DistInfo()
    out = Path(out)
    if recipe.batch_size % info.world:
        raise MegabenchError(f"recipe {recipe_name(recipe)}: batch_size {recipe.batch_size} is not divisible by "
                             f"the world size {info.world}; --set batch_size=... to a multiple of it")
    check_data(recipe, data)
    run = _Run(recipe, data, out, opts, info)
    mode = ts.check_out_folder(out, run.ident, resume=opts.resume, force=opts.force) if info.is_main else ""
    mode = _broadcast_mode(mode, info)
    if mode == "finished":
        run.say(f"{out}: already finished (final.pt); nothing to do")
        old = ts.read_run(out) or {}
        return TrainOutcome(out, "already finished", int(old.get("step", 0)), old.get("metrics", {}))
    if opts.val_packs:
        from megabench.engine.train_validation import open_val_packs

        run.val_packs = open_val_packs(opts.val_packs)
    if info.is_main:
        run.start_folder(mode)
    barrier(info)
    return _loop(run, resume=(mode == "resume"))


def _broadcast_mode(mode: str, info: DistInfo) -> str:
    """Rank 0 decides; every rank learns the decision (or that rank 0 refused)."""
    if info.world <= 1:
        return mode
    import numpy as np

    codes = ["", "new", "resume", "finished"]
    got = all_gather_arrays({"m": np.asarray([codes.index(mode)], dtype=np.int64)}, info)[0]["m"]
    return codes[int(got[0])]


def _setup(run: _Run, resume: bool) -> tuple[TrainNet, nn.Module, torch.optim.Optimizer, int]:
    recipe, info = run.recipe, run.info
    net = build_net(recipe, int(run.data.num_classes))
    opt = make_optimizer(recipe, net)
    torch.manual_seed(recipe.seed * 1000 + 1 + info.rank)  # dropout etc.: distinct per rank, fixed per run
    step = 0
    if resume:
        found = ts.latest_checkpoint(run.out, warn=run.say)
        if found is not None:
            step = restore(net, opt, found[1], info)
            run.last_ckpt = ts.checkpoint_files(run.out)[-1][1] if ts.checkpoint_files(run.out) else None
            run.say(f"resuming {run.out} at step {step}")
        else:
            run.say(f"{run.out}: no checkpoint yet; starting at step 0")
    if info.is_main:
        ts.truncate_log(run.out / "log.jsonl", step)
    net.to(run.device)
    for st in opt.state.values():  # optimizer buffers follow the parameters' device
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                st[k] = v.to(run.device)
    wrapped: nn.Module = net
    if info.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(net, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    run.net = net
    return net, wrapped, opt, step


def _loader(run: _Run, start: int, stop: int) -> torch.utils.data.DataLoader:
    from megabench.data.training import collate_skipping_bad
    from megabench.engine.train_data import FlipAugment, StreamBatchSampler

    r = run.recipe
    sampler = StreamBatchSampler(len(run.data), r.batch_size, seed=r.seed, start=start, stop=stop,
                                 rank=run.info.rank, world=run.info.world)
    return torch.utils.data.DataLoader(
        FlipAugment(run.data, r.augment.hflip_p, r.seed), batch_sampler=sampler, collate_fn=collate_skipping_bad,
        num_workers=run.opts.workers, pin_memory=run.device.type == "cuda",
        generator=torch.Generator().manual_seed(r.seed),  # never draw from the global RNG
        persistent_workers=False, prefetch_factor=4 if run.opts.workers > 0 else None)


def _stop_step(run: _Run, start: int) -> int:
    stop = run.recipe.schedule.max_steps
    if run.opts.stop_at is not None:
        stop = max(start, min(stop, run.opts.stop_at))
    return stop


def _loop(run: _Run, resume: bool) -> TrainOutcome:
    from tqdm import tqdm

    from megabench.engine.train_data import to_model_input

    recipe, info, opts = run.recipe, run.info, run.opts
    net, wrapped, opt, step = _setup(run, resume)
    stop = _stop_step(run, step)
    max_steps = recipe.schedule.max_steps
    run.say(f"training {recipe_name(recipe)}: {recipe.model} + {recipe.head}, {len(run.data)} images, "
            f"{int(run.data.num_classes)} classes, steps {step} -> {stop} of {max_steps}, batch {recipe.batch_size}"
            f" ({recipe.batch_size // info.world} per process x {info.world}), device {run.device}"
            + (", bf16 autocast" if run.amp else ""))
    net.train()
    meter = _Meter()
    bar = tqdm(total=max_steps, initial=step, unit="step", desc="train", disable=not (opts.progress and info.is_main),
               dynamic_ncols=True)
    autocast = (torch.autocast(run.device.type, dtype=torch.bfloat16) if run.amp else nullcontext())
    lr = recipe.schedule.lr_at(recipe.optimizer.lr, step)
    try:
        for images, labels, skipped in _batches(_loader(run, step, stop)):
            run.skipped += skipped
            if labels.numel() == 0:
                raise DataError(f"{getattr(run.data, 'source', 'data')}: every image of step {step + 1} failed to "
                                "decode; the training set is damaged (see `megabench data info`)")
            lr = set_step(net, opt, recipe, step)
            labels = labels.to(run.device, non_blocking=True)
            with autocast:
                loss, logits = wrapped(to_model_input(images, net.model.preprocessing, run.device), labels)
            stats = _batch_stats(loss, logits, labels, info)
            if not math.isfinite(stats[0]):
                _diverged(run, step + 1, stats[0] / max(stats[2], 1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.optimizer.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.optimizer.clip_grad_norm)
            opt.step()
            step += 1
            meter.add(*stats)
            bar.update(1)
            _after_step(run, opt, step, stop, lr, meter, bar)
    except MegabenchError as exc:
        if not isinstance(exc, ts.TrainingDiverged):
            run.update_run(step, "failed", error=str(exc))
        raise
    finally:
        bar.close()
    return _finish(run, step, stop)


def _batches(loader: torch.utils.data.DataLoader):
    """The loader's batches; a data error raised in a worker process comes out as the original one-line
    error (DataLoader wraps it with the worker's traceback text)."""
    import re

    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except MegabenchError as exc:
            text = str(exc)
            if "Original Traceback" not in text:
                raise
            last = text.strip().splitlines()[-1]
            m = re.match(r"^[\w.]+: (.*)$", last)
            raise type(exc)(m.group(1) if m else last) from None
        yield batch


def _after_step(run: _Run, opt: torch.optim.Optimizer, step: int, stop: int, lr: float, meter: _Meter, bar) -> None:
    opts = run.opts
    last = step == stop
    if meter.steps and (last or (opts.log_every and step % opts.log_every == 0)):
        rec = meter.record(step, lr, run.skipped)
        bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.3g}", img_s=f"{rec['images_per_s']:.0f}", refresh=False)
        if run.info.is_main:
            ts.append_log(run.out / "log.jsonl", rec)
    final = step == run.recipe.schedule.max_steps
    if not final and ((opts.save_every and step % opts.save_every == 0) or last):
        path = save_training_checkpoint(run.out, run.net, opt, run.recipe, run.ident, step, run.info,
                                        opts.keep_checkpoints)
        run.last_ckpt = path or run.last_ckpt
        run.update_run(step, "running")
    if opts.val_every and step % opts.val_every == 0 and not final:
        run.run_validation(step, final=False)
    barrier(run.info)


def _diverged(run: _Run, step: int, loss: float) -> None:
    keep = f"the last good checkpoint is {run.last_ckpt}" if run.last_ckpt else "no checkpoint was written yet"
    msg = (f"{run.out}: training diverged: loss is {loss} at step {step}; {keep}. Lower the lr "
           "(--set optimizer.lr=...), add warm-up (--set schedule.warmup_steps=...) or check the data, then "
           "--resume (with --force after changing the recipe)")
    run.update_run(step - 1, "diverged", error=msg)
    raise ts.TrainingDiverged(msg)


def _finish(run: _Run, step: int, stop: int) -> TrainOutcome:
    if step < run.recipe.schedule.max_steps:
        run.say(f"stopped at step {step} of {run.recipe.schedule.max_steps}; continue with --resume")
        return TrainOutcome(run.out, "stopped", step, {}, _weights(run.net))
    run.run_validation(step, final=True)
    if run.info.is_main:
        digest = save_final(run.out, run.net, run.recipe, run.ident, step)
        run.update_run(step, "finished", finished=ts.now_iso(), metrics=run.metrics, final="final.pt",
                       weights_sha256=digest, skipped_images=run.skipped,
                       results=sorted(p.name for p in run.out.glob("verification_*.json")))
        run.say(f"finished: {run.out / 'final.pt'}")
    barrier(run.info)
    return TrainOutcome(run.out, "finished", step, run.metrics, _weights(run.net))


def _weights(net: TrainNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
