"""Runs from files: a recipe + a data path -> :func:`~megabench.engine.train.train`, and the paper's grids.

The grids of ``megabench train-baselines`` come from the recipes' own ``paper`` tags (no second
list): ``table1`` is every recipe tagged ``"Table 1 ..."``, ``table5-small`` every ``"Table 5 small ..."``
and so on. Files whose name starts with ``_`` are bases (complete, but duplicates of a named recipe)
and are not part of any grid.

Data roots follow insightface's layout: ``<root>/faces_webface_112x112/`` (CASIA-WebFace),
``<root>/faces_glint/`` (DeepGlint-MS1M), or the recipe's ``data.path`` (relative to the root);
verification packs ``lfw.bin``, ``agedb_30.bin``, ``cfp_fp.bin`` from ``--val-root`` or, as
insightface ships them, beside the training set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megabench.engine.recipe import Recipe, load_recipe
from megabench.errors import ConfigError, DataError

GRIDS: dict[str, tuple[str, ...]] = {
    "table1": ("Table 1 ",),
    "table2": ("Table 2 ",),
    "table3": ("Table 3 ",),
    "table5-small": ("Table 5 small ",),
    "table5-large": ("Table 5 large ",),
    "all": ("Table ",),
}

#: recipe ``data.name`` -> the folder name insightface's downloads use
DATA_FOLDERS: dict[str, str] = {"casia_webface": "faces_webface_112x112", "deepglint_ms1m": "faces_glint"}
VAL_PACKS: tuple[str, ...] = ("lfw.bin", "agedb_30.bin", "cfp_fp.bin")
#: assumed sustained training throughput for the cost estimate (one modern GPU, bf16)
ASSUMED_TFLOPS = 100.0


def fit_recipe_to_data(recipe: Recipe, data: Any) -> Recipe:
    """``data.num_classes = 0`` in the recipe means "the data's own count"; anything else must agree
    (checked by :func:`megabench.engine.train.check_data`)."""
    if recipe.data.num_classes == 0:
        return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, num_classes=int(data.num_classes)))
    return recipe


def train_from_files(recipe_path: str, data_path: str | Path, out: str | Path, *, overrides: tuple[str, ...] = (),
                     max_steps: int | None = None, skip_bad_images: bool = False, options: Any = None,
                     dist_info: Any = None) -> Any:
    """Load the recipe (with ``--set`` overrides), open the training set, train. Returns the outcome."""
    from megabench.data.training import open_training_set
    from megabench.engine.train import train

    recipe = load_recipe(recipe_path, overrides, max_steps=max_steps)
    data = open_training_set(data_path, skip_bad_images=skip_bad_images)
    return train(fit_recipe_to_data(recipe, data), data, out, options, dist_info)


# ------------------------------------------------------------------------------------------- grids
def grid_recipes(grid: str, only: tuple[str, ...] = ()) -> list[Path]:
    """Recipe files of a grid, by file name; ``only`` restricts to those names (unknown ones are an error)."""
    from megabench.config import list_specs, load_toml

    if grid not in GRIDS:
        raise ConfigError(f"unknown grid {grid!r}; known: {sorted(GRIDS)}")
    prefixes = GRIDS[grid]
    chosen = []
    for path in list_specs("baselines"):
        if path.stem.startswith("_"):
            continue
        tags = load_toml(path).get("paper", [])
        if any(str(t).startswith(pfx) for t in tags for pfx in prefixes):
            chosen.append(path)
    if only:
        names = {p.stem for p in chosen}
        unknown = sorted(set(only) - names)
        if unknown:
            raise ConfigError(f"--only {unknown}: not in grid {grid} (its recipes: {sorted(names)})")
        chosen = [p for p in chosen if p.stem in only]
    return chosen


@dataclass
class PlannedRun:
    name: str
    recipe_path: Path
    recipe: Recipe
    data: Path
    val: list[Path]
    out: Path
    status: str  # "new" | "resume" | "finished"

    def describe(self, flops_per_image: float | None = None) -> str:
        r = self.recipe
        images = r.schedule.max_steps * r.batch_size
        epochs = images / r.data.num_images if r.data.num_images else float("nan")
        line = (f"{self.name:<36} {self.status:<8} {r.model} + {r.head}  data {self.data}  "
                f"{r.schedule.max_steps} steps x {r.batch_size} = {images:,} images ({epochs:.1f} epochs)")
        if flops_per_image:
            total = 3.0 * flops_per_image * images  # forward + backward ~ 3 x forward
            line += (f"  ~{total:.2e} FLOPs (~{total / (ASSUMED_TFLOPS * 1e12) / 3600:.1f} GPU-hours at an "
                     f"assumed {ASSUMED_TFLOPS:g} TFLOP/s)")
        return line


def data_dir_for(recipe: Recipe, data_root: Path) -> Path:
    if recipe.data.path:
        p = Path(recipe.data.path)
        return p if p.is_absolute() else data_root / p
    folder = DATA_FOLDERS.get(recipe.data.name)
    if folder is None:
        raise ConfigError(f"recipe data.name {recipe.data.name!r} has no known insightface folder "
                          f"({DATA_FOLDERS}); set data.path in the recipe or with --set data.path=...")
    return data_root / folder


def _val_packs(data_dir: Path, val_root: Path | None) -> tuple[list[Path], list[str]]:
    found, missing = [], []
    for name in VAL_PACKS:
        places = [val_root / name] if val_root else [data_dir / name]
        hit = next((p for p in places if p.is_file()), None)
        if hit is None:
            missing.append(str(places[0]))
        else:
            found.append(hit)
    return found, missing


def _has_training_set(folder: Path) -> bool:
    return (folder / "train.rec").is_file() or (folder.is_dir() and any(folder.iterdir()))


def plan_runs(grid: str, data_root: str | Path, out: str | Path, *, val_root: str | Path | None = None,
              only: tuple[str, ...] = (), overrides: tuple[str, ...] = (), check_data: bool = True) -> list[PlannedRun]:
    """Every run of the grid with its recipe, data folder, val packs, output folder and status.

    With ``check_data`` a :class:`DataError` lists every missing training set / verification pack.
    """
    from megabench.engine.train_state import read_run

    root, out = Path(data_root), Path(out)
    vroot = Path(val_root) if val_root else None
    runs: list[PlannedRun] = []
    missing: dict[str, list[str]] = {}
    for path in grid_recipes(grid, only):
        recipe = load_recipe(str(path), overrides)
        data_dir = data_dir_for(recipe, root)
        val, miss = _val_packs(data_dir, vroot)
        for m in ([] if _has_training_set(data_dir) else [f"{data_dir}/train.rec"]) + miss:
            missing.setdefault(m, []).append(path.stem)
        run_dir = out / path.stem
        record = read_run(run_dir) if run_dir.is_dir() else None
        status = "new" if record is None else ("finished" if record.get("status") == "finished" else "resume")
        runs.append(PlannedRun(path.stem, path, recipe, data_dir, val, run_dir, status))
    if check_data and missing:
        lines = [f"{m} (for {', '.join(names)})" for m, names in missing.items()]
        raise DataError(f"train-baselines --grid {grid}: missing {len(lines)} input(s) under {root}"
                        f"{' / ' + str(vroot) if vroot else ''}:\n  " + "\n  ".join(lines) +
                        "\n(insightface layout: faces_webface_112x112/, faces_glint/ with train.rec/.idx/property and "
                        "lfw.bin, agedb_30.bin, cfp_fp.bin; or --val-root DIR for the packs)")
    return runs


def forward_flops(model_name: str, input_size: tuple[int, int]) -> float:
    """FLOPs of one batch-1 forward, counted on the meta device (no memory, no compute)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from megabench.models import create_model

    with torch.device("meta"):
        model = create_model(model_name, input_size=tuple(input_size))
        x = torch.empty(1, 3, *input_size)
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def copy_results(run_dir: Path, results_root: Path) -> list[Path]:
    """Copy a finished run's ``verification_*.json`` to ``results_root/<run name>/`` (atomically)."""
    from megabench.fileio import atomic_write_bytes

    copied = []
    for f in sorted(run_dir.glob("verification_*.json")):
        dest = results_root / run_dir.name / f.name
        atomic_write_bytes(dest, f.read_bytes())
        copied.append(dest)
    return copied
