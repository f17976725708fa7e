"""One place per concept: the evaluation, result-kind, model and data-format registries hold together.

Each registered entry resolves (its spec class, options class, run function, report table and CLI
command import), and the places that used to keep their own lists read the registries instead.
"""

from __future__ import annotations

import dataclasses
import inspect

import pandas as pd
import pytest
import torch
from helpers import run_cli

from megabench.config import list_specs, load_toml, spec_class, spec_kinds
from megabench.errors import ConfigError, MegabenchError, UnknownNameError
from megabench.evaluation.registry import EVALUATIONS, RESULT_KINDS, Evaluation, ResultKind, evaluation_commands
from megabench.models import MODEL_REGISTRY, FaceModel, Preprocessing, create_model
from megabench.registry import Registry
from megabench.results import COMMON_KEYS, new_result, required_keys, validate_result

ENTRIES = EVALUATIONS.names()


# --------------------------------------------------------------------------------- the Registry type
def test_registry_refuses_a_duplicate_name() -> None:
    reg: Registry[int] = Registry("thing")
    reg.add("arcface", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("arcface", 2)
    assert reg.get("arcface") == 1


def test_registry_miss_is_an_unknown_name_error_with_close_matches() -> None:
    reg: Registry[int] = Registry("thing", listing="megabench things")
    reg.add("arcface", 1)
    with pytest.raises(UnknownNameError, match=r"did you mean 'arcface'.*`megabench things`") as info:
        reg.get("arcfase")
    assert isinstance(info.value, KeyError) and isinstance(info.value, MegabenchError)
    assert str(info.value).startswith("unknown thing 'arcfase'")  # no KeyError quoting


def test_unknown_name_is_one_error_line_in_the_cli() -> None:
    res = run_cli("profile", "--model", "sranet_r5O", "--no-memory", "--repeats", "1")
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1].startswith("error: unknown model 'sranet_r5O'; did you mean")
    assert "Traceback" not in res.output


# ------------------------------------------------------------------------------------ evaluations
@pytest.mark.parametrize("name", ENTRIES)
def test_evaluation_entry_resolves(name: str) -> None:
    e = EVALUATIONS.get(name)
    assert dataclasses.is_dataclass(e.spec_class()) and dataclasses.is_dataclass(e.options_class())
    assert list(inspect.signature(e.run_function()).parameters)[:2] == ["spec", "options"]
    assert callable(e.result.table_builder())
    assert RESULT_KINDS.get(name) is e.result


@pytest.mark.parametrize("name", ENTRIES)
def test_evaluation_kind_is_a_spec_kind(name: str) -> None:
    assert spec_kinds()[name] == EVALUATIONS.get(name).spec
    assert spec_class(name) is EVALUATIONS.get(name).spec_class()


@pytest.mark.parametrize("name", ENTRIES)
def test_evaluation_command_is_a_cli_command(name: str) -> None:
    e = EVALUATIONS.get(name)
    command = e.command.rpartition(":")[2]
    assert evaluation_commands()[command] == e.command
    assert run_cli(command, "--help").exit_code == 0


def test_every_shipped_protocol_has_a_registered_kind() -> None:
    kinds = {load_toml(p)["kind"] for p in list_specs("protocols")}
    assert kinds == set(ENTRIES)


def test_unknown_spec_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown spec kind 'ijbc'"):
        spec_class("ijbc")


def test_evaluation_must_write_its_own_result_kind() -> None:
    with pytest.raises(ValueError, match="must write results of kind 'x'"):
        Evaluation("x", "m:S", "m:O", "m:run", ResultKind("y", ()))


# ----------------------------------------------------------------------------------- result kinds
@pytest.mark.parametrize("kind", RESULT_KINDS.names())
def test_result_validation_reads_the_registered_keys(kind: str) -> None:
    need = RESULT_KINDS.get(kind).required_keys
    assert required_keys(kind) == need and need and not set(need) & set(COMMON_KEYS)
    full = {**new_result(kind), **{k: {} for k in need}}
    assert validate_result(full) is full
    partial = {k: v for k, v in full.items() if k != need[0]}
    with pytest.raises(MegabenchError, match=f"lacks required keys \\['{need[0]}'\\]"):
        validate_result(partial)


def test_unregistered_result_kind_needs_only_the_common_keys() -> None:
    assert required_keys("training") == ()
    validate_result(new_result("training"))


def toy_table(results: list[dict], *, size: str | None = None) -> pd.DataFrame:
    """A report table builder for the registration test below (``size`` is one of the report's options)."""
    return pd.DataFrame({"n": [len(results)], "size": [size]}, index=["toy"])


def test_a_registered_result_kind_gets_its_table_in_the_report(monkeypatch) -> None:
    from megabench.reporting.build import _summary_tables

    kind = ResultKind("toy", ("model",), table="test_registries:toy_table", table_title="Toy results")
    monkeypatch.setitem(RESULT_KINDS._items, "toy", kind)
    tables = _summary_tables({"toy": [{"model": "a"}, {"model": "b"}], "profile": []}, size="1000")
    assert [t.name for t in tables] == ["toy"]  # kinds with no results get no table
    assert tables[0].title == "Toy results"
    assert tables[0].df.to_dict("list") == {"n": [2], "size": ["1000"]}


def test_every_registered_table_has_a_title() -> None:
    assert all(k.table_title for _, k in RESULT_KINDS.items() if k.table)


# ------------------------------------------------------------------------------------------ models
@pytest.mark.parametrize("name", MODEL_REGISTRY.names())
def test_registered_model_declares_name_config_preprocessing(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name)
    assert isinstance(model, FaceModel) and isinstance(model, torch.nn.Module)
    assert model.name == name
    assert isinstance(model.config, dict) and model.config
    assert isinstance(model.preprocessing, Preprocessing)


def test_model_registry_lives_outside_the_family_module() -> None:
    import megabench.models.iresnet as iresnet
    import megabench.models.registry as registry

    assert MODEL_REGISTRY is registry.MODEL_REGISTRY
    assert not hasattr(iresnet, "MODEL_REGISTRY")
