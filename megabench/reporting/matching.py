"""Which paper-table row a result fills, and the value it gives a column. Data-driven: no model names.

A result fills a row of a table when, in this order:

1. ``mapping`` (from ``megabench report --map MODEL=TAG``) maps the result's model label to a tag of
   the row (the row's ``tag`` or one of its ``aliases``); a mapped result fills only mapped rows;
2. the result carries paper tags (a training recipe's ``paper = [...]``), looked up in
   ``recipe.paper``, ``model.recipe.paper``, ``training.paper`` or ``model.paper``, or names a shipped
   recipe (``recipe`` or ``model.recipe`` a string, as ``megabench train`` writes: the tags and head
   are read from ``baselines/<name>.toml``): it fills the rows whose tags it names;
3. otherwise its ``model.name`` equals the row's ``model`` and its head (``recipe.head``,
   ``model.head``, ``training.head``; the reference's ``default_head`` when the result records none)
   equals the row's ``head``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from megabench.reporting.reference import Column, PaperRow, PaperTable

_TAG_PLACES = (("recipe",), ("model", "recipe"), ("training",), ("model",))


def _dig(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _model_section(result: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` section as a dict (older profile results hold just the name)."""
    model = result.get("model")
    if isinstance(model, str):
        return {"name": model}
    return model if isinstance(model, dict) else {}


def result_label(result: dict[str, Any]) -> str:
    """The model's name (with the checkpoint's short sha when known), else the features' file stem."""
    model = _model_section(result)
    name = model.get("name")
    if name:
        sha = model.get("checkpoint_sha256")
        return f"{name}@{sha[:8]}" if isinstance(sha, str) and sha else str(name)
    inputs = result.get("input") or {}
    features = inputs.get("features") or inputs.get("probes")
    if isinstance(features, dict):
        features = features.get("path")
    return Path(features).stem if features else "?"


def model_name(result: dict[str, Any]) -> str | None:
    return _model_section(result).get("name")


def model_config(result: dict[str, Any]) -> dict[str, Any]:
    config = _model_section(result).get("config")
    return config if isinstance(config, dict) else {}


@functools.cache
def shipped_recipe(name: str) -> dict[str, Any]:
    """The shipped recipe ``baselines/<name>.toml`` (its bases merged) as a dict, ``{}`` if none."""
    from megabench.config import find_spec_file, load_toml
    from megabench.errors import MegabenchError

    if not name or "/" in name or "\\" in name:
        return {}
    path = find_spec_file(name, "baselines")
    try:
        return load_toml(path) if path is not None else {}
    except MegabenchError:
        return {}


def _recipe_field(result: dict[str, Any], key: str) -> Any:
    """``key`` of the training recipe the result names: a dict recorded in one of the places (``recipe``,
    ``model.recipe``, ``training``, ``model``), or a recipe *name* there (``"model": {"recipe":
    "casia_iresnet50_softmax"}``, as training runs write), read from the shipped recipe of that name."""
    result = {**result, "model": _model_section(result)}
    for place in _TAG_PLACES:
        value = _dig(result, (*place, key))
        if value:
            return value
    for place in _TAG_PLACES[:2]:
        name = _dig(result, place)
        if isinstance(name, str) and shipped_recipe(name).get(key):
            return shipped_recipe(name)[key]
    return None


def result_tags(result: dict[str, Any]) -> tuple[str, ...]:
    """The paper tags the result records (from its training recipe), first place that has any."""
    tags = _recipe_field(result, "paper")
    return tuple(str(t) for t in tags) if isinstance(tags, (list, tuple)) else ()


def result_head(result: dict[str, Any]) -> str | None:
    """The training head the result records (``arcface``, ``softmax`` ...), or None."""
    head = _recipe_field(result, "head")
    return head if isinstance(head, str) else None


def _mapped_tags(result: dict[str, Any], mapping: Mapping[str, str] | None) -> tuple[str, ...]:
    if not mapping:
        return ()
    keys = {result_label(result), model_name(result) or ""}
    return tuple(tag for key, tag in mapping.items() if key in keys)


def rows_filled(result: dict[str, Any], table: PaperTable, *, default_head: str,
                mapping: Mapping[str, str] | None = None) -> list[PaperRow]:
    """Rows of ``table`` that ``result`` fills (see the module docstring for the rule)."""
    tags = _mapped_tags(result, mapping) or result_tags(result)
    if tags:
        return [row for row in table.rows if set(row.tags) & set(tags)]
    name = model_name(result)
    head = result_head(result) or default_head
    return [row for row in table.rows if row.model is not None and row.model == name and row.head == head]


def _megaface_value(result: dict[str, Any], col: Column, distractors: int | None) -> tuple[float, int] | None:
    data = (result.get("variants") or {}).get(col.variant or "refined")
    if not data or not data.get("sizes"):
        return None
    sizes = data["sizes"]
    key = str(distractors) if distractors is not None and str(distractors) in sizes else max(sizes, key=int)
    entry = sizes[key]
    if col.metric == "tar_at_far":
        tar = entry.get("verification", {}).get("tar_at_far", {}).get(col.far or "1e-06")
        value = tar.get("tar") if tar else None
    else:
        value = _dig(entry, tuple(col.metric.split(".")))
    return None if value is None else (float(value) * col.scale, int(key))


def cell_value(result: dict[str, Any], col: Column, *, distractors: int | None = None
               ) -> tuple[float, int | None] | None:
    """Our value for column ``col`` from ``result`` and, for MegaFace, the distractor count it is at.

    None when the result is of another kind or protocol or lacks the metric. MegaFace uses the size
    ``distractors`` when the result has it, else its largest size.
    """
    if result.get("kind") != col.kind:
        return None
    if col.kind == "megaface":
        return _megaface_value(result, col, distractors)
    if col.kind == "verification":
        if _dig(result, ("protocol", "name")) != col.protocol:
            return None
        value = _dig(result, ("metrics", *col.metric.split(".")))
    else:
        value = _dig(result, tuple(col.metric.split(".")))
    return None if value is None else (float(value) * col.scale, None)
