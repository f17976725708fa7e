"""The training engine on a small in-memory set: resume is bit-identical, schedules, heads, run folders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from train_fixtures import PatternFaces, one_thread, tiny_recipe

from megabench.engine import train_state as ts
from megabench.engine.checkpoint import read_checkpoint
from megabench.engine.train import TrainOptions, TrainOutcome, build_net, set_step, train
from megabench.engine.train_data import FlipAugment, StreamBatchSampler, unit_hash
from megabench.models.heads import sphereface_lambda

_threads = pytest.fixture(autouse=True)(one_thread)


def opts(**kw) -> TrainOptions:
    base = dict(workers=0, save_every=0, log_every=1, progress=False, echo=lambda *_: None)
    return TrainOptions(**{**base, **kw})


def log(out) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def weights(out) -> dict[str, torch.Tensor]:
    payload = read_checkpoint(out / "final.pt")
    return {**payload["state_dict"], **{f"head.{k}": v for k, v in payload["extra"]["head"]["state_dict"].items()}}


# --------------------------------------------------------------------------------------- sampler / flips
def test_stream_sampler_shards_are_the_single_process_batch_and_cover_each_epoch():
    n, batch = 10, 4
    one = StreamBatchSampler(n, batch, seed=3, start=0, stop=5)
    two = [StreamBatchSampler(n, batch, seed=3, start=0, stop=5, rank=r, world=2) for r in range(2)]
    for s, full in enumerate(one):
        assert two[0].items(s) + two[1].items(s) == full
    stream = [it for b in StreamBatchSampler(n, batch, seed=3, start=0, stop=5) for it in b]
    for epoch in (0, 1):  # 20 positions = exactly 2 epochs, each a permutation of 0..9
        assert sorted(i for e, i in stream if e == epoch) == list(range(n))
    # resuming at step 3 yields exactly the tail of the uninterrupted stream
    assert list(StreamBatchSampler(n, batch, seed=3, start=3, stop=5)) == list(one)[3:]
    with pytest.raises(ValueError, match="divisible"):
        StreamBatchSampler(n, 5, seed=0, start=0, stop=1, world=2)


def test_flip_is_a_pure_function_of_seed_epoch_index_with_rate_p():
    data = PatternFaces(num_classes=2, per_class=2, size=8)
    aug = FlipAugment(data, 0.5, seed=7)
    img, _ = data[1]
    flipped = [aug.flipped(e, 1) for e in range(8)]
    for e, f in enumerate(flipped):
        out, _ = aug[(e, 1)]
        assert torch.equal(out, torch.flip(img, dims=[-1]) if f else img)
    draws = np.array([unit_hash(7, e, i) for e in range(20) for i in range(100)])
    assert abs((draws < 0.5).mean() - 0.5) < 0.03 and draws.min() >= 0 and draws.max() < 1
    assert not any(FlipAugment(data, 0.0, 7).flipped(e, i) for e in range(5) for i in range(4))
    assert all(FlipAugment(data, 1.0, 7).flipped(e, i) for e in range(5) for i in range(4))


# -------------------------------------------------------------------------------------------- resume
def test_resume_is_bit_identical_and_independent_of_workers(tmp_path):
    data = PatternFaces()
    recipe = tiny_recipe(steps=12, lr_steps=(6,), warmup=2)
    full = train(recipe, data, tmp_path / "full", opts())
    assert full.status == "finished"
    part = train(recipe, data, tmp_path / "part", opts(stop_at=5))
    assert part == TrainOutcome(tmp_path / "part", "stopped", 5, {})
    assert not (tmp_path / "part" / "final.pt").exists() and ts.read_run(tmp_path / "part")["step"] == 5
    rest = train(recipe, data, tmp_path / "part", opts(resume=True, workers=2))
    assert rest.status == "finished" and rest.step == 12
    a, b = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # the log of the resumed run is the uninterrupted log (timings aside)
    strip = [{k: v for k, v in r.items() if k != "images_per_s"} for r in log(tmp_path / "full")]
    assert strip == [{k: v for k, v in r.items() if k != "images_per_s"} for r in log(tmp_path / "part")]
    # a finished run resumed again does nothing
    again = train(recipe, data, tmp_path / "part", opts(resume=True))
    assert again.status == "already finished"


def test_checkpoint_holds_full_state_and_loads_weights_only(tmp_path):
    recipe = tiny_recipe(steps=6)
    train(recipe, PatternFaces(), tmp_path / "r", opts(save_every=2, keep_checkpoints=2))
    files = ts.checkpoint_files(tmp_path / "r")
    assert [s for s, _ in files] == [2, 4]  # keep the last 2; no step file at max_steps (final.pt is)
    payload = torch.load(files[-1][1], weights_only=True)
    state = payload["extra"]["train_state"]
    assert state["step"] == 4 and state["world_size"] == 1 and state["sampler"]["position_step"] == 4
    assert state["recipe_sha256"] == (tmp_path / "r" / "recipe.sha256").read_text().strip()
    assert set(state["rng"][0]) >= {"python_mt", "numpy_key", "torch"}
    assert state["optimizer"]["state"] and state["head"]["state_dict"]["weight"].shape == (8, 32)


def test_rng_state_round_trip():
    import random

    before = ts.rng_arrays()
    x = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    ts.set_rng_arrays(ts.rng_to_tensors(before))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == x  # noqa: NPY002


# --------------------------------------------------------------------------------------- schedules
def test_lr_steps_happen_at_the_recipe_iterations(tmp_path):
    recipe = tiny_recipe(steps=10, lr_steps=(4, 7), lr=0.05, warmup=2)
    train(recipe, PatternFaces(), tmp_path / "r", opts())
    lrs = [r["lr"] for r in log(tmp_path / "r") if "lr" in r]  # row k (step k+1) used the lr of iteration k
    expected = [0.025, 0.05, 0.05, 0.05, 0.005, 0.005, 0.005, 0.0005, 0.0005, 0.0005]
    assert np.allclose(lrs, expected, rtol=1e-12)


def test_sphereface_lambda_follows_its_schedule_by_global_step(tmp_path, monkeypatch):
    from megabench.models.heads import SphereFaceHead

    seen: list[float] = []
    original = SphereFaceHead.target

    def spy(self, cos):
        seen.append(self.lam)
        return original(self, cos)

    monkeypatch.setattr(SphereFaceHead, "target", spy)
    recipe = tiny_recipe(head="sphereface", head_args={"margin": 4}, steps=8, lr=0.01)
    train(recipe, PatternFaces(), tmp_path / "a", opts(stop_at=3))
    train(recipe, PatternFaces(), tmp_path / "a", opts(resume=True))
    assert seen == [sphereface_lambda(s) for s in range(8)]
    assert seen[0] == 1000.0 and seen[1] == pytest.approx(1000 / 1.12)
    net = build_net(recipe, 8)
    opt = torch.optim.SGD(net.parameters(), lr=1)
    set_step(net, opt, recipe, 20000)
    assert net.head.lam == 5.0  # the floor


# ----------------------------------------------------------------------------------------- heads
@pytest.mark.parametrize("head, args", [("softmax", {}), ("sphereface", {"margin": 4}), ("cosface", {}),
                                        ("am_softmax", {}), ("arcface", {}), ("combined", {})])
def test_every_head_trains_loss_goes_down_over_50_steps(tmp_path, head, args):
    lr = {"softmax": 0.1, "sphereface": 0.01}.get(head, 0.05)
    recipe = tiny_recipe(head=head, head_args=args, steps=50, lr=lr, batch=16)
    train(recipe, PatternFaces(num_classes=8, per_class=16), tmp_path / head, opts())
    losses = [r["loss"] for r in log(tmp_path / head)]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert all(math.isfinite(x) for x in losses)
    assert last < 0.7 * first, (head, first, last)


# --------------------------------------------------------------------------------------- run folder
def test_out_holding_another_run_is_refused_and_untouched(tmp_path):
    from megabench.errors import MegabenchError

    data = PatternFaces()
    out = tmp_path / "r"
    train(tiny_recipe(steps=3), data, out, opts())
    snapshot = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(MegabenchError, match=r"holds a run .*--resume"):
        train(tiny_recipe(steps=3), data, out, opts())
    with pytest.raises(MegabenchError, match="cannot resume: recipe sha256"):
        train(tiny_recipe(steps=3, lr=0.2), data, out, opts(resume=True))
    with pytest.raises(MegabenchError, match="cannot resume: data fingerprint"):
        train(tiny_recipe(steps=3), PatternFaces(seed=1), out, opts(resume=True))
    assert snapshot == {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(MegabenchError, match="no run.json"):
        train(tiny_recipe(steps=3), data, other, opts())
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_force_resumes_with_another_recipe(tmp_path):
    data = PatternFaces()
    train(tiny_recipe(steps=6), data, tmp_path / "r", opts(stop_at=3))
    out = train(tiny_recipe(steps=6, lr=0.05), data, tmp_path / "r", opts(resume=True, force=True))
    assert out.status == "finished"


def test_classes_or_size_disagreeing_with_data_are_clear_errors(tmp_path):
    from megabench.errors import DataError

    with pytest.raises(DataError, match=r"has 8 identities but recipe .* data.num_classes = 9; pass --set"):
        train(tiny_recipe(num_classes=9), PatternFaces(), tmp_path / "a", opts())
    with pytest.raises(DataError, match=r"images are \(32, 32\).*input_size \(16, 16\)"):
        train(tiny_recipe(size=16), PatternFaces(), tmp_path / "b", opts())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from megabench.engine import train as engine

    calls = {"n": 0}
    original = engine.TrainNet.forward

    def poisoned(self, x, labels):
        calls["n"] += 1
        loss, logits = original(self, x, labels)
        return (loss * float("nan"), logits) if calls["n"] == 5 else (loss, logits)

    monkeypatch.setattr(engine.TrainNet, "forward", poisoned)
    out = tmp_path / "r"
    with pytest.raises(ts.TrainingDiverged, match=r"loss is nan at step 5; the last good checkpoint is .*step_4\.pt"):
        train(tiny_recipe(steps=10), PatternFaces(), out, opts(save_every=2))
    assert [s for s, _ in ts.checkpoint_files(out)] == [2, 4]
    read_checkpoint(ts.checkpoint_files(out)[-1][1])  # intact
    run = ts.read_run(out)
    assert run["status"] == "diverged" and "step 5" in run["error"] and not (out / "final.pt").exists()


def test_truncated_latest_checkpoint_falls_back_to_the_previous(tmp_path):
    data = PatternFaces()
    recipe = tiny_recipe(steps=8)
    train(recipe, data, tmp_path / "full", opts())
    train(recipe, data, tmp_path / "r", opts(stop_at=4, save_every=2))
    last = ts.checkpoint_files(tmp_path / "r")[-1][1]
    last.write_bytes(last.read_bytes()[:100])
    warnings: list[str] = []
    train(recipe, data, tmp_path / "r", opts(resume=True, echo=warnings.append))
    assert any("skipping unreadable checkpoint" in w and "step_4.pt" in w for w in warnings)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "r")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finished_runs_are_what_model_resolution_finds(tmp_path):
    """`verify --model NAME` (engine/model_source.py) resolves to the newest finished run of NAME."""
    from megabench.engine.model_source import finished_runs

    data = PatternFaces()
    train(tiny_recipe(steps=2), data, tmp_path / "runs" / "a", opts())
    train(tiny_recipe(steps=2, model="sranet_tiny"), data, tmp_path / "runs" / "b", opts())
    train(tiny_recipe(steps=4), data, tmp_path / "runs" / "c", opts(stop_at=2))  # unfinished
    train(tiny_recipe(steps=3), data, tmp_path / "runs" / "d", opts())
    assert finished_runs(tmp_path / "runs", "iresnet_tiny") == [tmp_path / "runs" / "d", tmp_path / "runs" / "a"]
    assert finished_runs(tmp_path / "runs", "sranet_tiny") == [tmp_path / "runs" / "b"]



def test_clip_grad_norm_bounds_the_first_update(tmp_path):
    """With momentum 0, weight decay 0 and lr 1, the first SGD update is the clipped gradient: norm = clip."""
    import dataclasses

    from megabench.engine.recipe import OptimizerSpec

    recipe = dataclasses.replace(tiny_recipe(steps=1, lr=1.0),
                                 optimizer=OptimizerSpec(lr=1.0, momentum=0.0, weight_decay=0.0, clip_grad_norm=1e-3))
    net = build_net(recipe, 8)
    before = {k: p.detach().clone() for k, p in net.named_parameters()}
    after = train(recipe, PatternFaces(), tmp_path / "r", opts()).weights
    delta = torch.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in before))
    assert float(delta) == pytest.approx(1e-3, rel=1e-3)
