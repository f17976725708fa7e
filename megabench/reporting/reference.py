"""The paper's published numbers as data: ``paper_reference.toml`` (shipped inside the package).

The file holds Tables 1-5 of the SRANet paper, each row with the tag that recipes and results carry
(``"Table 5 small SRANet"``), the registered model and training head it corresponds to (absent for
literature rows that have no model of ours), and its printed values. :data:`Column` says where our
number for each column comes from in a result file. Read once, with ``importlib.resources``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import sys
from typing import Any

from megabench.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RESOURCE = "paper_reference.toml"


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column: ``key`` (e.g. ``"lfw"``), printed ``header`` and the source of our value.

    ``kind``: the result kind that holds it; ``metric``: a dotted path (verification: under
    ``metrics``; profile: from the top; megaface: under ``variants.<variant>.sizes.<size>``, with
    ``tar_at_far`` read at ``far``, that entry's ``tar``); ``protocol`` / ``variant`` select the result;
    ``scale``: our value times this (fractions -> percent); ``decimals``: digits printed.
    """

    key: str
    header: str
    kind: str
    metric: str
    scale: float = 1.0
    protocol: str | None = None
    variant: str | None = None
    far: str | None = None
    decimals: int = 2


@dataclasses.dataclass(frozen=True)
class PaperRow:
    """One printed row. ``values`` maps column keys to the printed numbers (a "-" cell is absent)."""

    tag: str
    method: str
    values: dict[str, float | int]
    model: str | None = None
    head: str | None = None
    aliases: tuple[str, ...] = ()
    text: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def tags(self) -> tuple[str, ...]:
        return (self.tag, *self.aliases)


@dataclasses.dataclass(frozen=True)
class PaperTable:
    number: int
    title: str
    columns: tuple[Column, ...]
    rows: tuple[PaperRow, ...]
    text_columns: tuple[str, ...] = ()
    distractors: int | None = None


@dataclasses.dataclass(frozen=True)
class PaperReference:
    source: str
    default_head: str
    tables: dict[int, PaperTable]

    def table(self, number: int) -> PaperTable:
        try:
            return self.tables[int(number)]
        except (KeyError, ValueError):
            raise ConfigError(f"unknown paper table {number!r}; known: {sorted(self.tables)}") from None


def _column(key: str, spec: dict[str, Any]) -> Column:
    src = dict(spec["from"])
    return Column(key=key, header=spec["header"], kind=src.pop("kind"), metric=src.pop("metric"),
                  scale=float(src.pop("scale", 1.0)), protocol=src.pop("protocol", None),
                  variant=src.pop("variant", None), far=src.pop("far", None),
                  decimals=int(spec.get("decimals", 2)))


def _row(spec: dict[str, Any], text_columns: tuple[str, ...], where: str) -> PaperRow:
    known = {"tag", "method", "values", "model", "head", "aliases", *text_columns}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} in row {spec.get('tag')!r}")
    return PaperRow(tag=spec["tag"], method=spec["method"], values=dict(spec["values"]),
                    model=spec.get("model"), head=spec.get("head"), aliases=tuple(spec.get("aliases", ())),
                    text={c: str(spec[c]) for c in text_columns if c in spec})


def parse_reference(data: dict[str, Any], where: str = RESOURCE) -> PaperReference:
    """Build a :class:`PaperReference` from the TOML's dict; unknown columns are an error."""
    columns = {k: _column(k, v) for k, v in data["columns"].items()}
    tables = {}
    for num, t in data["tables"].items():
        missing = [c for c in t["columns"] if c not in columns]
        if missing:
            raise ConfigError(f"{where}: table {num} names unknown column(s) {missing}")
        text_columns = tuple(t.get("text_columns", ()))
        rows = tuple(_row(r, text_columns, where) for r in t["rows"])
        for r in rows:
            bad = sorted(set(r.values) - set(t["columns"]))
            if bad:
                raise ConfigError(f"{where}: row {r.tag!r} has values for column(s) {bad} not in table {num}")
        tables[int(num)] = PaperTable(number=int(num), title=t["title"],
                                      columns=tuple(columns[c] for c in t["columns"]), rows=rows,
                                      text_columns=text_columns, distractors=t.get("distractors"))
    return PaperReference(source=data["source"], default_head=data.get("default_head", "arcface"), tables=tables)


@functools.cache
def paper_reference() -> PaperReference:
    """The packaged reference (read once)."""
    text = importlib.resources.files("megabench.reporting").joinpath(RESOURCE).read_text(encoding="utf-8")
    return parse_reference(tomllib.loads(text))
