"""Code that takes a model reads the :class:`FaceModel` attributes, not ``getattr`` fallbacks: a module
that merely looks like a zoo model (duck-typed ``name``/``config``) is refused with a clear error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from megabench.engine.checkpoint import load_checkpoint, save_checkpoint
from megabench.errors import MegabenchError
from megabench.models import FaceModel, create_model
from megabench.reporting.feature_maps import feature_taps


class LooksLikeAZooModel(nn.Module):
    """Has every attribute the old fallbacks looked for, but is not a FaceModel."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "iresnet_tiny"
        self.config = {"depths": [1]}
        self.stem = nn.Identity()
        self.blocks = nn.Sequential(nn.Identity())


def test_save_checkpoint_refuses_a_module_that_is_not_a_face_model(tmp_path):
    with pytest.raises(MegabenchError, match="not a megabench FaceModel.*create_model"):
        save_checkpoint(tmp_path / "m.pt", LooksLikeAZooModel())
    assert not (tmp_path / "m.pt").exists()


def test_load_checkpoint_refuses_a_module_that_is_not_a_face_model(tmp_path):
    save_checkpoint(tmp_path / "m.pt", create_model("iresnet_tiny"))
    with pytest.raises(MegabenchError, match="not a megabench FaceModel"):
        load_checkpoint(tmp_path / "m.pt", LooksLikeAZooModel())


def test_saved_checkpoint_holds_the_face_model_attributes(tmp_path):
    from megabench.engine.checkpoint import read_checkpoint

    model = create_model("iresnet_tiny")
    assert isinstance(model, FaceModel)
    save_checkpoint(tmp_path / "m.pt", model)
    payload = read_checkpoint(tmp_path / "m.pt")
    assert payload["model"] == model.name
    assert payload["config"] == model.config
    assert payload["preprocessing"] == model.preprocessing.to_dict()


def test_feature_taps_need_a_zoo_iresnet_not_a_look_alike():
    with pytest.raises(MegabenchError, match="ONNX models cannot be hooked"):
        feature_taps(LooksLikeAZooModel())


def test_feature_taps_name_the_pool_mode_of_each_attention_module():
    with torch.device("meta"):
        model = create_model("sranet_tiny")
    names = [name for name, _ in feature_taps(model)]
    assert names[0] == "stem" and any(n.startswith("stage 1 SCA (") for n in names), names
