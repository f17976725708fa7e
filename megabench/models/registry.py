"""The model registry and the contract every registered model keeps.

A model family module (``iresnet.py``) registers one small builder per variant with
:func:`register_model`; :func:`create_model` builds one by name. Every built model is a
:class:`FaceModel`: an ``nn.Module`` that also declares

- ``name``: its registered name;
- ``config``: the builder arguments it was built with (JSON-able: lists, numbers, strings);
- ``preprocessing``: its input contract (:class:`~megabench.models.preprocessing.Preprocessing`).

Code that takes a model (checkpoints, extraction, export, profiling) reads these three directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from megabench.models.preprocessing import Preprocessing
from megabench.registry import Registry

F = TypeVar("F", bound=Callable[..., "FaceModel"])


class FaceModel(nn.Module):
    """Base class of registered models: an ``nn.Module`` that declares its name, config and preprocessing.

    Subclasses call ``super().__init__()`` first; the builder sets the three attributes (the defaults
    below hold until it does). Input: float ``(B, 3, H, W)`` normalised as ``preprocessing`` says;
    output: ``(B, embedding_size)`` embeddings.
    """

    name: str
    config: dict[str, Any]
    preprocessing: Preprocessing

    def __init__(self) -> None:
        super().__init__()
        self.name = type(self).__name__.lower()
        self.config = {}
        self.preprocessing = Preprocessing()


#: registered name -> builder ``(**overrides) -> FaceModel``.
MODEL_REGISTRY: Registry[Callable[..., FaceModel]] = Registry("model", listing="megabench models")


def register_model(fn: F) -> F:
    """Decorator: register a builder under its function name (timm's ``@register_model``)."""
    MODEL_REGISTRY.add(fn.__name__, fn)
    return fn


def create_model(name: str, **overrides: Any) -> FaceModel:
    """Build the registered model ``name`` (an ``nn.Module``); ``overrides`` replace its config entries.

    Unknown names raise :class:`~megabench.errors.UnknownNameError` with close matches. To count
    parameters without allocating, build under ``with torch.device("meta"):``.
    """
    import megabench.models  # noqa: F401  (the package import registers every model family)

    return MODEL_REGISTRY.get(name)(**overrides)


def list_models() -> list[str]:
    """Every registered model name, sorted."""
    import megabench.models  # noqa: F401

    return MODEL_REGISTRY.names()
