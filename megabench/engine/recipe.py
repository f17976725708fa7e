"""Training recipes: one frozen dataclass per ``baselines/*.toml`` file (``kind = "recipe"``).

A recipe file is only its difference from a base (``base = "_casia_r50.toml"``); the bases are
complete recipes themselves, so every file validates alone (``megabench validate baselines/*.toml``).
Values follow docs/models.md ("Training recipes") and the paper: SGD momentum 0.9, weight decay 5e-4,
lr 0.1 divided by 10 at ``lr_steps``, total batch 128, horizontal flip p = 0.5, (x - 127.5) / 128, 112 x 112, 512-d.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Literal


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Training set. ``format``: a registered data format (:data:`megabench.data.formats.DATA_FORMATS`;
    built in: ``recordio``, ``folder``, ``list``), describing the data the recipe was written for."""

    name: str
    format: str = "recordio"
    num_images: int = 0
    num_classes: int = 0
    path: str = ""


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """SGD; ``lr`` is for the total batch. ``clip_grad_norm`` > 0 clips the global gradient norm of all
    trained parameters before each step (insightface's ``arcface_torch`` uses 5); 0 = no clipping."""

    name: Literal["sgd"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip_grad_norm: float = 0.0


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """Piecewise-constant lr: multiplied by ``lr_factor`` at each of ``lr_steps`` iterations; stop at ``max_steps``."""

    lr_steps: tuple[int, ...]
    max_steps: int
    lr_factor: float = 0.1
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if list(self.lr_steps) != sorted(self.lr_steps) or any(s <= 0 for s in self.lr_steps):
            raise ValueError(f"lr_steps must be positive and increasing, got {list(self.lr_steps)}")
        if self.lr_steps and self.lr_steps[-1] >= self.max_steps:
            raise ValueError(f"last lr step {self.lr_steps[-1]} is not before max_steps {self.max_steps}")

    def lr_at(self, base_lr: float, step: int) -> float:
        """Learning rate at iteration ``step`` (0-based), warm-up linear from 0."""
        if step < self.warmup_steps:
            return base_lr * (step + 1) / self.warmup_steps
        return base_lr * self.lr_factor ** sum(step >= s for s in self.lr_steps)


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    hflip_p: float = 0.5


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One trained model of the paper: backbone x head x data x optimisation.

    ``model`` is a registered model name (``megabench models``), ``head`` a registered head with
    ``head_args`` (e.g. ``{margin_rad = 0.5}``); ``batch_size`` is the total over all processes;
    ``paper`` names the table cells this model fills. ``model_args`` are extra builder options of the
    model (e.g. ``{dropout = 0.0}``); ``embedding_size`` and ``input_size`` are always passed to it.
    """

    model: str
    head: str
    data: DataSpec
    schedule: ScheduleSpec
    head_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    optimizer: OptimizerSpec = OptimizerSpec()
    augment: AugmentSpec = AugmentSpec()
    batch_size: int = 128
    embedding_size: int = 512
    input_size: tuple[int, int] = (112, 112)
    seed: int = 0
    paper: tuple[str, ...] = ()
    description: str = ""
    version: str = "1"
    source: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        from megabench.data.formats import DATA_FORMATS
        from megabench.models import HEAD_REGISTRY, MODEL_REGISTRY

        for registry, name in ((MODEL_REGISTRY, self.model), (HEAD_REGISTRY, self.head),
                               (DATA_FORMATS, self.data.format)):
            try:
                registry.get(name)
            except KeyError as exc:  # "unknown model 'x'; did you mean ..."
                raise ValueError(exc.args[0]) from None
        if {"embedding_size", "input_size"} & set(self.model_args):
            raise ValueError("model_args must not repeat embedding_size / input_size: set the recipe's own keys")
        try:
            inspect.signature(HEAD_REGISTRY.get(self.head)).bind(self.embedding_size, 2, **self.head_args)
        except TypeError as exc:
            raise ValueError(f"head_args {self.head_args} do not fit head {self.head!r}: {exc}") from None


# ------------------------------------------------------------------------------------------ resolution
def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The complete recipe as plain data (every default explicit), without ``source`` / ``sha256``.

    Two files that resolve to the same training have the same dict, hence the same
    :func:`recipe_sha256`. Tuples become lists, so the dict is JSON / TOML data.
    """
    import json

    data = dataclasses.asdict(recipe)
    data.pop("source", None)
    data.pop("sha256", None)
    return {"kind": "recipe", **json.loads(json.dumps(data))}


def recipe_sha256(recipe: Recipe) -> str:
    """sha256 of :func:`recipe_dict` (JSON, sorted keys): identifies what a run trains."""
    import json

    from megabench.fileio import sha256_bytes

    return sha256_bytes(json.dumps(recipe_dict(recipe), sort_keys=True).encode())


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"schedule.max_steps=200"`` -> ``(["schedule", "max_steps"], 200)``.

    The value is read as a TOML value (``32``, ``0.05``, ``true``, ``[1, 2]``, ``"x"``); anything
    that is not valid TOML is taken as a bare string (``head=cosface``).
    """
    from megabench.config import tomllib
    from megabench.errors import ConfigError

    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. schedule.max_steps=200")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...], *, where: str = "recipe") -> dict:
    """Return a copy of the raw recipe ``data`` with each ``key.sub=value`` set (tables created as needed).

    Keys are checked when the dataclass is built (:func:`megabench.config.from_dict`): unknown keys
    and wrong types are :class:`~megabench.errors.ConfigError` naming the key.
    """
    import copy

    from megabench.errors import ConfigError

    out = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{where}: --set {item!r}: {part!r} is a value, not a table")
            node = child
        node[path[-1]] = value
    return out


def shorten_schedule(data: dict[str, Any], max_steps: int) -> dict[str, Any]:
    """Raw recipe data with ``schedule.max_steps = max_steps`` and ``lr_steps`` (and warm-up) scaled by
    ``max_steps / old max_steps``, so a shortened run keeps the schedule's shape (``--max-steps``).

    Scaled steps are rounded, made distinct, and kept in ``[1, max_steps)``.
    """
    import copy

    out = copy.deepcopy(data)
    sched = out.setdefault("schedule", {})
    old = int(sched.get("max_steps", max_steps)) or max_steps
    ratio = max_steps / old
    steps = sorted({max(1, round(s * ratio)) for s in sched.get("lr_steps", [])})
    sched["lr_steps"] = [s for s in steps if s < max_steps]
    if sched.get("warmup_steps"):
        sched["warmup_steps"] = min(max_steps, max(1, round(sched["warmup_steps"] * ratio)))
    sched["max_steps"] = max_steps
    return out


def load_recipe(name_or_path: str, overrides: tuple[str, ...] | list[str] = (), *,
                max_steps: int | None = None) -> Recipe:
    """A recipe by path or name (``baselines/<name>.toml``), with ``--set`` overrides and an optional
    shortened schedule applied before the dataclass (and its checks) is built."""
    from megabench.config import from_dict, load_toml, resolve_spec_path, spec_sha256
    from megabench.errors import ConfigError

    path = resolve_spec_path(name_or_path, "baselines")
    data = load_toml(path)
    kind = data.pop("kind", None)
    if kind != "recipe":
        raise ConfigError(f"{path}: is a {kind!r} spec, not a training recipe (kind = \"recipe\")")
    data = apply_overrides(data, overrides, where=str(path))
    if max_steps is not None:
        data = shorten_schedule(data, max_steps)
    return from_dict(Recipe, {**data, "source": str(path), "sha256": spec_sha256(path)}, where=str(path))


def recipe_name(recipe: Recipe) -> str:
    """The recipe's file stem (``casia_iresnet50_arcface``), or ``<model>_<head>`` when built in code."""
    from pathlib import Path

    return Path(recipe.source).stem if recipe.source else f"{recipe.model}_{recipe.head}"


def to_toml(data: dict[str, Any]) -> str:
    """Plain data (scalars, lists, nested tables) as TOML: scalars first, then one ``[table]`` per
    top-level table; tables nested deeper are written inline. ``tomllib.loads(to_toml(d)) == d``."""
    import json
    import re

    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")

    lines = [f"{key(k)} = {value(v)}" for k, v in data.items() if not (isinstance(v, dict) and v)]
    for k, v in data.items():
        if isinstance(v, dict) and v:
            lines += ["", f"[{k}]", *(f"{key(kk)} = {value(vv)}" for kk, vv in v.items())]
    return "\n".join(lines) + "\n"
