"""The model zoo: IR-ResNet backbones, SRANet attention variants, margin heads.

``create_model(name, **overrides)`` builds a registered model (``list_models()`` names them); every
model is a :class:`FaceModel` carrying ``.name``, ``.config`` (the builder arguments) and
``.preprocessing``. The registry is :mod:`megabench.models.registry`; model families register into it
when this package is imported (``iresnet``). Structure and evidence: ``docs/models.md``.
"""

from __future__ import annotations

from megabench.models import iresnet as _iresnet  # noqa: F401  (registers the IR-ResNet / SRANet family)
from megabench.models.attention import ATTENTION_REGISTRY, create_attention, list_attention
from megabench.models.heads import HEAD_REGISTRY, create_head, list_heads
from megabench.models.iresnet import IResNet
from megabench.models.preprocessing import Preprocessing
from megabench.models.registry import MODEL_REGISTRY, FaceModel, create_model, list_models, register_model
from megabench.models.size import count_params, params_to_mb, size_mb

__all__ = [
    "ATTENTION_REGISTRY",
    "HEAD_REGISTRY",
    "MODEL_REGISTRY",
    "FaceModel",
    "IResNet",
    "Preprocessing",
    "count_params",
    "create_attention",
    "create_head",
    "create_model",
    "list_attention",
    "list_heads",
    "list_models",
    "params_to_mb",
    "register_model",
    "size_mb",
]
