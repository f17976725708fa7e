"""The ``megabench demo`` folder: its layout, the options marker, the untrained baselines and the summary.

``megabench demo`` (``megabench/commands/demo.py``) runs the real commands one after another; this
module holds what is specific to the demo itself. Layout of the demo folder (``--out``)::

    demo.json                          marker: format "megabench.demo", the options, status, stage times, summary
    data/faces/                        `synth faces`: train.rec/.idx/property, heldout.bin, meta.json
    data/megaface/                     `synth megaface --images`: image tree, devkit lists, noise lists
    runs/<model>/                      `train` run folders (final.pt, run.json, log.jsonl, ...)
    untrained/<model>.pt               the same model with the run's initial weights (step 0)
    untrained/verification_<model>.json  its held-out verification (the "before" of the summary)
    results/                           every result file the report reads (verification, megaface, profile)
    cache/                             feature stores of `verify --model` / `megaface --model`
    report/                            `report`: tables (md, csv, tex), figures (png, pdf), report.html

A folder is a demo folder when it holds ``demo.json``; any other non-empty folder is refused.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megabench.errors import OutputError

MARKER = "demo.json"
FORMAT = "megabench.demo"
#: (model, recipe) of the demo, baseline first: the tiny IR network and the tiny SRANet, both ArcFace
MODELS: tuple[tuple[str, str], ...] = (("iresnet_tiny", "demo_tiny"), ("sranet_tiny", "demo_tiny_sranet"))
#: the folder entries a demo writes (what --force removes; nothing else is touched)
ENTRIES = ("data", "runs", "untrained", "results", "cache", "report", MARKER)


@dataclass(frozen=True)
class DemoLayout:
    """Paths inside the demo folder ``root`` (see the module docstring)."""

    root: Path

    @property
    def faces(self) -> Path:
        return self.root / "data" / "faces"

    @property
    def heldout_pack(self) -> Path:
        return self.faces / "heldout.bin"

    @property
    def megaface_data(self) -> Path:
        return self.root / "data" / "megaface"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def run(self, model: str) -> Path:
        return self.runs / model

    def verification(self, model: str) -> Path:
        return self.results / f"verification_{model}.json"

    def untrained_checkpoint(self, model: str) -> Path:
        return self.root / "untrained" / f"{model}.pt"

    def untrained_verification(self, model: str) -> Path:
        return self.root / "untrained" / f"verification_{model}.json"

    def megaface(self, model: str) -> Path:
        return self.results / f"megaface_{model}.json"

    def profile(self, model: str) -> Path:
        return self.results / f"profile_{model}.json"


def read_marker(root: Path) -> dict[str, Any] | None:
    """``demo.json`` of ``root`` as a dict, or None when there is none (or it is not a demo marker)."""
    path = root / MARKER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def write_marker(root: Path, data: dict[str, Any]) -> None:
    from megabench.fileio import atomic_write_json

    atomic_write_json(root / MARKER, {"format": FORMAT, **data})


def prepare_folder(root: str | Path, options: dict[str, Any], *, force: bool) -> DemoLayout:
    """Check ``root`` and mark it as this demo's folder; returns its layout.

    - missing or empty: a new demo;
    - a demo folder made with the same ``options``: reused (finished stages are not redone);
    - a demo folder made with other options: :class:`OutputError` naming them, unless ``force``, which
      removes the demo's own entries (:data:`ENTRIES`) and starts again;
    - anything else (a file, a folder with other files): :class:`OutputError`, nothing touched.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise OutputError(f"{root}: exists and is not a folder; choose another --out")
    marker = read_marker(root) if root.is_dir() else None
    if marker is None and root.is_dir() and any(root.iterdir()):
        raise OutputError(f"{root}: holds files but no {MARKER} (not a megabench demo folder); nothing was "
                          "touched; choose an empty or new --out")
    if marker is not None:
        diffs = [f"{k} {marker.get('options', {}).get(k)!r} -> {v!r}" for k, v in options.items()
                 if marker.get("options", {}).get(k) != v]
        if force:
            for name in ENTRIES:
                _remove(root / name)
        elif diffs:
            raise OutputError(f"{root}: holds a demo made with other options ({'; '.join(diffs)}); rerun with "
                              "--force to start it again, or choose another --out")
    root.mkdir(parents=True, exist_ok=True)
    write_marker(root, {"options": options, "status": "running"})
    return DemoLayout(root)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_untrained_checkpoint(run_dir: Path, out: Path) -> Path:
    """The model of the training run in ``run_dir`` with its initial weights (what step 0 of that run
    started from: the run's resolved ``recipe.toml``, seeded by its seed), written as a megabench
    checkpoint to ``out``. The "before" of the demo's learning comparison."""
    from megabench.engine.checkpoint import save_checkpoint
    from megabench.engine.recipe import load_recipe
    from megabench.engine.train import build_net
    from megabench.errors import DataError

    try:
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{run_dir / 'run.json'}: cannot read the training run ({exc})") from exc
    recipe = load_recipe(str(run_dir / "recipe.toml"))
    net = build_net(recipe, int(run["data"]["num_classes"]))
    save_checkpoint(out, net.model, extra={"untrained": {"run": str(run_dir), "recipe": run.get("recipe"),
                                                         "seed": recipe.seed}})
    return out


def _metric(path: Path, key: str) -> float | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["metrics"][key]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if value is not None else None


def learning_summary(layout: DemoLayout, models: list[str]) -> dict[str, dict[str, float | None]]:
    """Per model: held-out 10-fold ``accuracy`` and ``accuracy_std`` trained, ``untrained`` accuracy (the
    same network with its initial weights), and MegaFace rank-1 (refined) at the largest distractor size
    (``megaface_rank1``, with ``megaface_distractors``)."""
    out = {}
    for m in models:
        out[m] = {"accuracy": _metric(layout.verification(m), "accuracy"),
                  "accuracy_std": _metric(layout.verification(m), "accuracy_std"),
                  "untrained": _metric(layout.untrained_verification(m), "accuracy")}
        out[m].update(_megaface_rank1(layout.megaface(m)))
    return out


def _megaface_rank1(path: Path) -> dict[str, float | None]:
    try:
        sizes = json.loads(path.read_text(encoding="utf-8"))["variants"]["refined"]["sizes"]
        largest = max(sizes, key=int)
        return {"megaface_rank1": float(sizes[largest]["rank1"]), "megaface_distractors": int(largest)}
    except (OSError, ValueError, KeyError, TypeError):
        return {"megaface_rank1": None, "megaface_distractors": None}


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def summary_lines(layout: DemoLayout, learning: dict[str, dict[str, float | None]], *, pairs: int | None,
                  seconds: float) -> list[str]:
    """The closing lines of the demo: learning (held-out accuracy trained vs untrained, one line per
    model, then MegaFace rank-1) and where the report is."""
    lines = [f"demo finished in {seconds / 60:.1f} min ({seconds:.0f} s); everything is under {layout.root}",
             "held-out verification: 10-fold accuracy on " + (f"{pairs} pairs of " if pairs else "")
             + "identities never seen in training (chance 0.5)"]
    width = max(map(len, learning), default=0)
    for m, v in learning.items():
        lines.append(f"  {m:<{width}}  trained {_fmt(v['accuracy'])} +- {_fmt(v['accuracy_std'], '.3f')}   "
                     f"untrained {_fmt(v['untrained'])}")
    ranks = [(m, v) for m, v in learning.items() if v.get("megaface_rank1") is not None]
    if ranks:
        lines.append(f"MegaFace rank-1 (refined, {ranks[0][1]['megaface_distractors']:,} distractors of unseen "
                     "identities): " + ", ".join(f"{m} {100 * v['megaface_rank1']:.1f}%" for m, v in ranks))
    report = layout.report / "report.html"
    lines.append(f"report: {report} (tables *.md / *.csv / *.tex and figures *.png / *.pdf beside it)")
    return lines
