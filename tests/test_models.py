"""The model registry: every model and attention variant builds, runs (tiny sizes), counts as the
architecture says; recipes under baselines/ validate."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from megabench.config import list_specs, load_spec, spec_folder
from megabench.errors import ConfigError, UnknownNameError
from megabench.models import (
    ATTENTION_REGISTRY,
    MODEL_REGISTRY,
    Preprocessing,
    count_params,
    create_model,
    list_models,
    size_mb,
)
from megabench.models.ssa import SelfSpatialAttention

TINY = [n for n in list_models() if n.endswith("_tiny")]
FULL = [n for n in list_models() if not n.endswith("_tiny")]


def test_registry_has_the_paper_zoo() -> None:
    names = set(list_models())
    want = {"iresnet50", "iresnet100", "scanet_r50", "ssanet_r50", "sranet_r50", "sranet_r100",
            "iresnet_tiny", "sranet_tiny"}
    want |= {f"iresnet50_{a}_{p}" for a in ("sca", "ssa") for p in ("naive", "avg", "max", "light")}
    assert want <= names
    assert TINY and FULL


def _ir_params(depths, widths=(64, 128, 256, 512), stem=64, emb=512, hw=7, attn=()) -> int:
    """Parameter count from the architecture text of docs/models.md, block by block."""
    n = 3 * stem * 9 + 2 * stem + stem  # stem conv, BN, PReLU
    c_in = stem
    for depth, c in zip(depths, widths, strict=True):
        for i in range(depth):
            n += 2 * c_in + c_in * c * 9 + 2 * c + c + c * c * 9 + 2 * c  # BN conv BN PReLU conv BN
            if i == 0:
                n += c_in * c + 2 * c  # conv1x1 shortcut + BN
            for a in attn:
                if a == "sca_naive":
                    n += 3 * c * c
                elif a.startswith("sca"):
                    n += c * c + 2 * c * (c // 2)
                else:  # ssa: theta, phi C -> C/16; rho, W C -> C; BN
                    n += 2 * c * max(1, c // 16) + 2 * c * c + 2 * c
            c_in = c
    return n + 2 * c_in + c_in * hw * hw * emb + emb + 2 * emb  # BN2d, Linear, BN1d


@pytest.mark.parametrize("name", FULL)
def test_full_model_parameter_count(name: str) -> None:
    with torch.device("meta"):  # no allocation, no forward
        model = create_model(name)
    cfg = model.config
    assert count_params(model) == _ir_params(cfg["depths"], attn=cfg["attn_layers"])
    assert model.name == name
    assert model.preprocessing == Preprocessing()


def test_baseline_size_as_models_md() -> None:
    with torch.device("meta"):
        assert size_mb(create_model("iresnet50")) == pytest.approx(174.36, abs=0.005)


def _tiny_cases() -> list[tuple[str, tuple[str, ...] | None]]:
    cases: list[tuple[str, tuple[str, ...] | None]] = [(n, None) for n in TINY]
    cases += [("iresnet_tiny", (a,)) for a in ATTENTION_REGISTRY.names()]  # run at 56 x 56 to stay fast
    return cases


TINY_CASES = _tiny_cases()
TINY_IDS = ["+".join(a) if a else n for n, a in TINY_CASES]


def _tiny(name: str, attn: tuple[str, ...] | None, seed: int = 0):
    torch.manual_seed(seed)
    overrides = {} if attn is None else {"attn_layers": attn, "input_size": (56, 56)}
    return create_model(name, **overrides), overrides


def _open_ssa_gates(model) -> None:
    """SSA's output BN starts at zero weight (identity block); open it so every parameter matters."""
    for m in model.modules():
        if isinstance(m, SelfSpatialAttention):
            torch.nn.init.ones_(m.bn.weight)


@pytest.mark.parametrize(("name", "attn"), TINY_CASES, ids=TINY_IDS)
def test_tiny_parameter_count_matches_closed_form(name: str, attn: tuple[str, ...] | None) -> None:
    model, _ = _tiny(name, attn)
    cfg = model.config
    hw = -(-cfg["input_size"][0] // 16)  # ceil: 56 -> 28 -> 14 -> 7 -> 4
    assert count_params(model) == _ir_params(cfg["depths"], cfg["widths"], cfg["stem_width"],
                                             cfg["embedding_size"], hw, cfg["attn_layers"])


@pytest.mark.parametrize(("name", "attn"), TINY_CASES, ids=TINY_IDS)
def test_tiny_backward_reaches_every_parameter(name: str, attn: tuple[str, ...] | None) -> None:
    model, _ = _tiny(name, attn)
    _open_ssa_gates(model)
    h, w = model.preprocessing.input_size
    out = model(torch.randn(2, 3, h, w))
    assert out.shape == (2, model.config["embedding_size"]) and torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize(("name", "attn"), TINY_CASES, ids=TINY_IDS)
def test_tiny_eval_is_deterministic_and_per_sample(name: str, attn: tuple[str, ...] | None) -> None:
    model, _ = _tiny(name, attn)
    _open_ssa_gates(model)
    h, w = model.preprocessing.input_size
    x = torch.randn(2, 3, h, w)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        # no coupling across the batch. In fp64, since SCA's unscaled logits (the paper has no
        # 1/sqrt(d)) make its softmax nearly one-hot and amplify fp32 rounding between batch sizes.
        model.double()
        torch.testing.assert_close(model(x.double())[:1], model(x[:1].double()), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize(("name", "attn"), TINY_CASES, ids=TINY_IDS)
def test_tiny_construction_is_seeded(name: str, attn: tuple[str, ...] | None) -> None:
    a, _ = _tiny(name, attn, seed=3)
    b, _ = _tiny(name, attn, seed=3)
    for (k, v), (_, v2) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(v, v2), k


def test_overrides_replace_config_and_preprocessing() -> None:
    m = create_model("iresnet_tiny", embedding_size=32, input_size=(56, 56))
    assert m(torch.randn(2, 3, 56, 56)).shape == (2, 32)
    assert m.preprocessing.input_size == (56, 56) and m.config["embedding_size"] == 32


def test_unknown_model_name_suggests_close_match() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'iresnet50'"):
        create_model("iresnet5O")


def test_unknown_model_option_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown option"):
        create_model("iresnet_tiny", width=3)


def test_preprocessing_normalize() -> None:
    p = Preprocessing()
    img = torch.tensor([[[[0, 127, 255]]]], dtype=torch.uint8).expand(1, 1, 1, 3)
    out = p.normalize(img.clone())
    assert out.shape == (1, 3, 1, 1)
    torch.testing.assert_close(out.flatten(), (torch.tensor([0.0, 127.0, 255.0]) - 127.5) / 128)
    with pytest.raises(ValueError, match="flip"):
        Preprocessing(flip="mean")


def test_models_command_lists_zoo() -> None:
    from megabench.cli import cli

    res = CliRunner().invoke(cli, ["models", "--attention"])
    assert res.exit_code == 0, res.output
    assert "sranet_r100" in res.output and "174.36" in res.output and "ssa_naive" in res.output


# ----------------------------------------------------------------------------------------- recipes
# the paper's recipes; demo_tiny (docs/training.md) and demo_tiny_sranet (`megabench demo`) are the tiny demo /
# test recipes
RECIPES = [p for p in list_specs("baselines") if not p.stem.startswith("demo_tiny")]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(path) -> None:
    r = load_spec(path, folder="baselines", kind="recipe")
    assert r.model in MODEL_REGISTRY
    assert r.optimizer.momentum == 0.9 and r.optimizer.weight_decay == 5e-4 and r.optimizer.lr == 0.1
    assert r.batch_size == 128 and r.augment.hflip_p == 0.5 and r.input_size == (112, 112)
    if r.data.name == "casia_webface":
        assert (r.schedule.lr_steps, r.schedule.max_steps) == ((30000, 50000, 65000), 80000)
        assert (r.data.num_images, r.data.num_classes) == (494414, 10575)
    else:
        assert (r.schedule.lr_steps, r.schedule.max_steps) == ((100000, 180000, 240000), 280000)
        assert (r.data.num_images, r.data.num_classes) == (3923399, 86876)
    assert r.sha256 and r.paper


def test_recipes_cover_the_paper_grids() -> None:
    cells = {c for p in RECIPES if not p.stem.startswith("_") for c in load_spec(p, "baselines").paper}
    for t in ("Table 1", "Table 2"):
        assert sum(c.startswith(t) for c in cells) == 5
    assert sum(c.startswith("Table 3") for c in cells) == 8
    assert sum(c.startswith("Table 5") for c in cells) == 8


def test_recipe_schedule_divides_lr_at_steps() -> None:
    r = load_spec(spec_folder("baselines") / "_casia_r50.toml", "baselines")
    assert r.schedule.lr_at(0.1, 0) == 0.1
    assert r.schedule.lr_at(0.1, 29999) == 0.1
    assert r.schedule.lr_at(0.1, 30000) == pytest.approx(0.01)
    assert r.schedule.lr_at(0.1, 79999) == pytest.approx(1e-4)


@pytest.mark.parametrize(("delta", "message"), [
    ('head = "cosface"\nhead_args = { margin_rad = 0.5 }\n', "head_args"),
    ('model = "sranet_r5O"\n', "did you mean"),
    ('[schedule]\nlr_steps = [50000, 30000]\n', "increasing"),
    ('[data]\nformat = "recordoi"\n', "unknown data format 'recordoi'; did you mean 'recordio'"),
], ids=["head_args", "model_name", "lr_steps", "data_format"])
def test_bad_recipe_is_a_config_error(tmp_path, delta: str, message: str) -> None:
    bad = tmp_path / "bad.toml"
    base = (spec_folder("baselines") / "_casia_r50.toml").as_posix()
    bad.write_text(f'base = "{base}"\n{delta}')
    with pytest.raises(ConfigError, match=message):
        load_spec(bad)


def test_bf16_autocast_forward_backward() -> None:
    torch.manual_seed(0)
    model = create_model("sranet_tiny", input_size=(32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
