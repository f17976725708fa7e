"""Which model to run and where its weights come from: ``--model`` / ``--checkpoint`` / ``--runs``.

:func:`resolve_model` is the one place the commands (``extract``, ``verify --model``, ``megaface
--model``) turn their options into a ready model plus its provenance (:class:`ModelSource`):

- ``--checkpoint CK`` (with or without ``--model``): the checkpoint's model with its weights; a
  checkpoint of another model than ``--model`` is an error naming both;
- ``--model NAME`` alone: the ``final.pt`` of the newest *finished* ``megabench train`` run of that
  model under ``--runs`` (a folder whose ``run.json`` has ``"status": "finished"`` and ``"model": NAME``);
  none is an error that says how to train one or pass ``--checkpoint``;
- ``--model path.onnx``: the ONNX file, run with onnxruntime (input layout and normalisation as
  options, insightface's by default; see :mod:`megabench.models.onnx_model`);
- ``allow_random=True`` (``megabench extract --random-weights``): a freshly initialised model, for
  pipeline checks only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from megabench.errors import MegabenchError

DEFAULT_RUNS = "runs"


@dataclass
class ModelSource:
    """A model ready to embed (eval mode, CPU) and where it came from.

    ``name``: registered model name; ``checkpoint``: the file (``None`` for random weights);
    ``checkpoint_sha256``: the weights' sha256 ("" for random weights); ``preprocessing``: the
    model's input contract as a dict; ``run``: the training run folder it was resolved from, if any.
    """

    model: nn.Module
    name: str
    checkpoint: Path | None
    checkpoint_sha256: str
    preprocessing: dict[str, Any] = field(default_factory=dict)
    run: Path | None = None

    def provenance(self) -> dict[str, Any]:
        """The ``model`` section of a result file."""
        return {"name": self.name, "checkpoint_sha256": self.checkpoint_sha256 or None,
                "preprocessing": self.preprocessing,
                "checkpoint": None if self.checkpoint is None else str(self.checkpoint)}

    def describe(self) -> str:
        if self.checkpoint is None:
            return f"{self.name} (random weights)"
        return f"{self.name} from {self.checkpoint} (weights sha256 {self.checkpoint_sha256[:12]})"


def finished_runs(root: str | os.PathLike, model: str) -> list[Path]:
    """Run folders under ``root`` (recursive) with ``run.json`` status ``finished``, model ``model`` and a
    ``final.pt``; newest first (by the run's ``finished`` time, then the file's modification time)."""
    found = []
    base = Path(root)
    for rj in base.rglob("run.json") if base.is_dir() else []:
        try:
            run = json.loads(rj.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        final = rj.parent / "final.pt"
        if isinstance(run, dict) and run.get("status") == "finished" and run.get("model") == model and final.is_file():
            found.append((str(run.get("finished", "")), final.stat().st_mtime, rj.parent))
    return [p for *_, p in sorted(found, key=lambda t: (t[0], t[1]), reverse=True)]


def _from_checkpoint(name: str | None, checkpoint: Path, run: Path | None = None) -> ModelSource:
    from megabench.engine.checkpoint import model_from_checkpoint, read_checkpoint

    payload = read_checkpoint(checkpoint)  # safe (weights_only), sha256 verified
    if name and payload["model"] != name:
        raise MegabenchError(f"{checkpoint}: checkpoint is for model {payload['model']!r}, not {name!r}; "
                             f"pass --model {payload['model']} or the checkpoint of a {name} model")
    model, payload = model_from_checkpoint(checkpoint)
    return ModelSource(model.eval(), payload["model"], checkpoint, payload["weights_sha256"],
                       model.preprocessing.to_dict(), run)


def _from_onnx(path: Path, options: dict[str, Any]) -> ModelSource:
    """An ONNX file as a model: its sha256 stands for the weights, its name is the exported model's
    (``megabench export`` metadata) or the file stem."""
    from megabench.fileio import sha256_file
    from megabench.models.onnx_model import OnnxEmbedder

    model = OnnxEmbedder(path, **{k: v for k, v in options.items() if v is not None})
    return ModelSource(model, model.name, path, sha256_file(path), model.preprocessing.to_dict())


def resolve_model(
    name: str | None,
    checkpoint: str | os.PathLike | None = None,
    *,
    runs: str | os.PathLike | None = None,
    allow_random: bool = False,
    echo: Callable[[str], None] | None = None,
    onnx_options: dict[str, Any] | None = None,
) -> ModelSource:
    """Turn ``--model`` / ``--checkpoint`` / ``--runs`` into a :class:`ModelSource` (see module doc).

    ``echo`` receives one line saying which checkpoint a run resolved to. ``--model path.onnx`` runs
    that file with onnxruntime (:class:`~megabench.models.onnx_model.OnnxEmbedder`; ``onnx_options``
    are its keyword options: layout, channel_order, mean, std, flip).
    """
    from megabench.models import create_model

    if name is None and checkpoint is None:
        raise MegabenchError("give --model NAME (a trained run under --runs) or --checkpoint FILE")
    if name is not None and str(name).lower().endswith(".onnx"):
        if checkpoint is not None:
            raise MegabenchError(f"--model {name} is an ONNX file with its own weights; drop --checkpoint {checkpoint}")
        return _from_onnx(Path(name), onnx_options or {})
    if checkpoint is not None:
        return _from_checkpoint(name, Path(checkpoint))
    import torch

    with torch.device("meta"):
        create_model(name)  # an unknown name fails here (with close matches) before any search, allocating nothing
    if allow_random:
        model = create_model(name).eval()
        return ModelSource(model, name, None, "", model.preprocessing.to_dict())
    root = Path(runs or DEFAULT_RUNS)
    found = finished_runs(root, name)
    if not found:
        raise MegabenchError(
            f"no finished training run of model {name} under {root}/ (a folder with run.json status \"finished\" "
            f"and final.pt); train one with `megabench train baselines/<recipe>.toml --data DATA --out "
            f"{root}/{name}`, point --runs at the folder that holds your runs, or pass --checkpoint FILE")
    source = _from_checkpoint(name, found[0] / "final.pt", run=found[0])
    if echo is not None:
        more = f" (newest of {len(found)} finished runs)" if len(found) > 1 else ""
        echo(f"model: {name} from run {found[0]}{more}: {source.checkpoint} "
             f"(weights sha256 {source.checkpoint_sha256[:12]})")
    return source
