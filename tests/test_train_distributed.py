"""torchrun-style DDP on CPU: 2 gloo ranks train like one process with the same total batch, and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import run_gloo_ranks
from torch import nn
from train_fixtures import PatternFaces, tiny_recipe

from megabench.models import MODEL_REGISTRY, FaceModel, Preprocessing


class LinearFace(FaceModel):
    """A model without batch-dependent layers (no BN, no dropout): flatten -> linear -> tanh -> linear.

    A :class:`FaceModel` like every registered model (checkpoints refuse anything else)."""

    def __init__(self, embedding_size: int = 16, input_size: tuple[int, int] = (16, 16)) -> None:
        super().__init__()
        h, w = input_size
        self.net = nn.Sequential(nn.Flatten(1), nn.Linear(3 * h * w, 64), nn.Tanh(), nn.Linear(64, embedding_size))
        self.name = "test_linear_face"
        self.config = {"embedding_size": embedding_size, "input_size": list(input_size)}
        self.preprocessing = Preprocessing(input_size=tuple(input_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


if "test_linear_face" not in MODEL_REGISTRY.names():
    MODEL_REGISTRY.add("test_linear_face", LinearFace)


def recipe():
    return tiny_recipe(model="test_linear_face", size=16, batch=8, steps=6, lr_steps=(4,), lr=0.05)


def _worker(info, folder: Path) -> None:
    from megabench.engine.train import TrainOptions, train

    opts = dict(workers=0, log_every=1, progress=False, echo=lambda *_: None, save_every=0)
    out = folder / "ddp"
    first = train(recipe(), PatternFaces(size=16), out, TrainOptions(stop_at=3, **opts), info)
    assert first.status == "stopped" and first.step == 3
    done = train(recipe(), PatternFaces(size=16), out, TrainOptions(resume=True, **opts), info)
    torch.save(done.weights, folder / f"rank{info.rank}.pt")


def test_two_gloo_ranks_equal_one_process_and_resume(tmp_path):
    from megabench.engine.train import TrainOptions, train
    from megabench.engine.train_state import read_run
    from megabench.errors import MegabenchError

    torch.set_num_threads(1)
    opts = TrainOptions(workers=0, log_every=1, progress=False, echo=lambda *_: None, save_every=0)
    single = train(recipe(), PatternFaces(size=16), tmp_path / "single", opts).weights
    run_gloo_ranks(_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys() == single.keys()
    for k in single:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        torch.testing.assert_close(ranks[0][k], single[k], rtol=0, atol=1e-5)
    from megabench.engine.train import build_net

    init = build_net(recipe(), 8).state_dict()
    assert all(not torch.equal(single[k], init[k]) for k in single)  # every tensor trained
    run = read_run(tmp_path / "ddp")
    assert run["status"] == "finished" and run["world_size"] == 2
    with pytest.raises(MegabenchError, match=r"world size 2 \(stored\) != 1 \(now\)"):
        train(recipe(), PatternFaces(size=16), tmp_path / "ddp", TrainOptions(resume=True, workers=0, progress=False))


def test_batch_not_divisible_by_world_is_an_error(tmp_path):
    from megabench.engine.distributed import DistInfo
    from megabench.engine.train import TrainOptions, train
    from megabench.errors import MegabenchError

    with pytest.raises(MegabenchError, match="batch_size 8 is not divisible by the world size 3"):
        train(recipe(), PatternFaces(size=16), tmp_path / "x", TrainOptions(progress=False), DistInfo(0, 3, "gloo"))
