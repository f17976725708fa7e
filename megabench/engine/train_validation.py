"""Validation during training: the existing 10-fold verification protocol on ``.bin`` packs.

Each pack is embedded (with its flips) through :func:`megabench.engine.extract.extract_features` into
a feature store and scored by :func:`megabench.evaluation.verification.evaluate`: the very numbers
``megabench extract`` + ``megabench verify`` would give for the same weights. Packs whose pair count
is not the protocol's (e.g. a synthetic held-out pack) are evaluated as partial sets.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn


@dataclass
class ValPack:
    name: str
    spec: Any
    pack: Any
    path: str


def open_val_packs(paths: list[str] | tuple[str, ...]) -> list[ValPack]:
    """Read each ``.bin`` pack (safely) and pick its protocol by file stem (else ``lfw``), as ``verify`` does."""
    from megabench.config import find_spec_file, load_spec
    from megabench.data.bin_format import read_bin

    packs = []
    for p in paths:
        stem = Path(p).stem.lower()
        proto = stem if find_spec_file(stem, "protocols") is not None else "lfw"
        packs.append(ValPack(name=Path(p).stem, spec=load_spec(proto, kind="verification"), pack=read_bin(p),
                             path=str(p)))
    names = [v.name for v in packs]
    if len(set(names)) != len(names):
        from megabench.errors import ConfigError

        raise ConfigError(f"--val packs must have distinct file names, got {names}")
    return packs


def validate(model: nn.Module, packs: list[ValPack], *, device: str, store_dir: Path | None = None,
             batch_size: int = 128, extra_model_info: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Result dicts (``verification`` schema) per pack name for ``model`` as it is now.

    The model is switched to eval mode and back to its previous mode. Feature stores go to
    ``store_dir/<name>.h5`` when given (kept), else to a temporary folder (removed).
    """
    from megabench.data.feature_store import StoreMeta
    from megabench.data.image_source import PackImages
    from megabench.engine.checkpoint import weights_sha256
    from megabench.engine.extract import extract_features
    from megabench.evaluation.verification import evaluate

    was_training = model.training
    digest = weights_sha256({k: v for k, v in model.state_dict().items()})
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="megabench-val-") as tmp:
        folder = store_dir or Path(tmp)
        for v in packs:
            meta = StoreMeta(model=model.name, checkpoint_sha256=digest,
                             preprocessing=model.preprocessing.to_dict(), source_sha256=v.pack.sha256)
            images = PackImages(v.pack, model.preprocessing.input_size, model=model.name)
            store = extract_features(model, images, folder / f"{v.name}.h5", batch_size=batch_size, device=device,
                                     meta=meta, progress=False, echo=lambda *_: None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # chance-level / partial warnings are expected early on
                result = evaluate(v.spec, v.pack, store, allow_partial=True)
            result["model"].update(extra_model_info or {})
            results[v.name] = result
    model.train(was_training)
    return results


def summary(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{pack: {"accuracy", "accuracy_std", "val"}}`` for the log."""
    return {name: {k: float(r["metrics"][k]) for k in ("accuracy", "accuracy_std", "val")}
            for name, r in results.items()}
