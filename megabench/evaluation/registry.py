"""One registration per evaluation protocol, and one per result kind.

An :class:`Evaluation` entry says everything megabench needs to know about a protocol family:

- ``spec``: the frozen dataclass a ``protocols/*.toml`` file of that ``kind`` is read into;
- ``options``: the dataclass of everything a run takes besides the spec (inputs, variants, device);
- ``run``: the entry point, always ``run(spec, options) -> result dict`` (``megabench.results`` schema);
- ``result``: its :class:`ResultKind` (required keys of the result JSON, the report's table builder);
- ``command``: the ``megabench`` subcommand that runs it.

Spec kinds (:func:`megabench.config.spec_kinds`), result validation (:func:`megabench.results.validate_result`),
the CLI's command list and the report's table builders read these registries. References are
``"module:attribute"`` strings imported on first use, so that reading the registry (``megabench --help``,
loading a spec) imports neither torch nor the protocol code.

Adding a protocol family = one :func:`register_evaluation` call here (see CONTRIBUTING.md) plus its module.

>>> sorted(EVALUATIONS)
['megaface', 'verification']
>>> EVALUATIONS.get("verification").result.required_keys
('model', 'protocol', 'input', 'metrics', 'folds')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from megabench.registry import Registry


def _resolve(target: str) -> Any:
    from megabench.config import import_object

    return import_object(target)


@dataclass(frozen=True)
class ResultKind:
    """A kind of result file.

    ``required_keys``: top-level keys its JSON must hold besides the common ones
    (:data:`megabench.results.COMMON_KEYS`). ``table``: ``"module:function"`` of the report table builder,
    ``builder(results: list[dict], **options) -> pandas.DataFrame`` (one row per model), or None; it takes
    those of the report's options (e.g. ``size``) that its signature names. ``table_title`` heads that table
    in ``megabench report``.
    """

    name: str
    required_keys: tuple[str, ...]
    table: str | None = None
    table_title: str = ""
    description: str = ""

    def table_builder(self) -> Callable[..., Any] | None:
        """The imported table builder (None when the kind has no table)."""
        return None if self.table is None else _resolve(self.table)


@dataclass(frozen=True)
class Evaluation:
    """A registered protocol family; ``name`` is both its spec ``kind`` and its result ``kind``."""

    name: str
    spec: str
    options: str
    run: str
    result: ResultKind
    command: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.result.name != self.name:
            raise ValueError(f"evaluation {self.name!r} must write results of kind {self.name!r}, "
                             f"not {self.result.name!r}")

    def spec_class(self) -> type:
        return _resolve(self.spec)

    def options_class(self) -> type:
        return _resolve(self.options)

    def run_function(self) -> Callable[[Any, Any], dict[str, Any] | None]:
        return _resolve(self.run)

    def __call__(self, spec: Any, options: Any) -> dict[str, Any] | None:
        """Run: ``run(spec, options)``; the result dict (None on non-main ranks of a distributed run)."""
        return self.run_function()(spec, options)


EVALUATIONS: Registry[Evaluation] = Registry("evaluation", listing="megabench ls protocols")
RESULT_KINDS: Registry[ResultKind] = Registry("result kind")


def register_result_kind(kind: ResultKind) -> ResultKind:
    """Register a result kind that is not produced by an evaluation (e.g. ``profile``)."""
    RESULT_KINDS.add(kind.name, kind)
    return kind


def register_evaluation(entry: Evaluation) -> Evaluation:
    """Register a protocol family and its result kind (duplicate names are an error)."""
    EVALUATIONS.add(entry.name, entry)
    register_result_kind(entry.result)
    return entry


def evaluation_commands() -> dict[str, str]:
    """``megabench`` subcommand -> "module:attribute" for every evaluation that declares one.

    The command's name is the attribute's name (``megabench.commands.verify:verify`` -> ``verify``).
    """
    return {e.command.rpartition(":")[2]: e.command for _, e in EVALUATIONS.items() if e.command}


# ------------------------------------------------------------------------------------- registrations
register_evaluation(Evaluation(
    name="verification",
    spec="megabench.evaluation.verification:VerificationSpec",
    options="megabench.evaluation.verification:VerificationOptions",
    run="megabench.evaluation.verification:run_verification",
    result=ResultKind("verification", ("model", "protocol", "input", "metrics", "folds"),
                      table="megabench.reporting.tables:verification_table",
                      table_title="Verification accuracy (%), 10-fold mean and std",
                      description="10-fold pair verification: accuracy, VAL@FAR, ROC, AUC, EER"),
    command="megabench.commands.verify:verify",
    description="insightface-exact 10-fold pair verification (LFW, AgeDB-30, CFP-FP); docs/protocols.md",
))

register_evaluation(Evaluation(
    name="megaface",
    spec="megabench.evaluation.megaface:MegafaceSpec",
    options="megabench.evaluation.megaface:MegafaceOptions",
    run="megabench.evaluation.megaface:run_megaface",
    result=ResultKind("megaface", ("model", "protocol", "input", "variants"),
                      table="megabench.reporting.tables:megaface_table",
                      table_title="MegaFace Challenge 1: Id = rank-1, Ver = TAR at FAR 1e-6 (%)",
                      description="MegaFace Challenge 1 per distractor size: rank-1, CMC, TAR@FAR; raw and refined"),
    command="megabench.commands.megaface:megaface",
    description="MegaFace Challenge 1 (FaceScrub probes), raw and refined, streamed; docs/megaface.md",
))

register_result_kind(ResultKind(
    "profile", ("model", "params", "size_mb", "flops", "latency_ms", "train_peak_mem_mb", "device"),
    table="megabench.reporting.tables:profile_table",
    table_title="Cost: parameters, size, FLOPs, latency and training memory",
    description="a model's cost: parameters, size, FLOPs, latency, training memory (megabench profile)",
))
