"""The figures plot exactly the result numbers: lines and bars are read back from the matplotlib figure."""

from __future__ import annotations

import pytest
from matplotlib.container import BarContainer
from report_results import megaface, profile, verification

from megabench.reporting import plots


@pytest.fixture
def captured(monkeypatch, tmp_path):
    figs = []

    def keep(fig, out):
        figs.append(fig)
        return out

    monkeypatch.setattr(plots, "_save", keep)
    return figs


def _lines(fig):
    return {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def test_cmc_roc_raw_dashed_refined_solid_at_largest_size(captured, tmp_path):
    a, b = megaface("iresnet50", 0.86, 0.88), megaface("sranet_r50", 0.875, 0.90)
    plots.megaface_cmc_roc([a, b], tmp_path / "f.png")
    fig = captured[0]
    ax_cmc, ax_roc = fig.axes
    cmc = {ln.get_label(): ln for ln in ax_cmc.get_lines()}
    top = a["variants"]["raw"]["sizes"]["1000000"]
    raw = cmc["iresnet50 raw (1,000,000)"]
    assert list(raw.get_xdata()) == top["cmc"]["ranks"]
    assert list(raw.get_ydata()) == pytest.approx([100 * x for x in top["cmc"]["rates"]])
    assert raw.get_linestyle() == "--" and cmc["iresnet50 refined (1,000,000)"].get_linestyle() == "-"
    assert raw.get_color() == cmc["iresnet50 refined (1,000,000)"].get_color() != cmc["sranet_r50 raw (1,000,000)"
                                                                                        ].get_color()
    assert ax_cmc.get_xscale() == "log" and ax_cmc.get_xlim() == (1, 1e6)
    assert ax_roc.get_xlim() == pytest.approx((1e-6, 1)) and "rate" in ax_roc.get_xlabel()
    roc = {ln.get_label(): ln for ln in ax_roc.get_lines()}["sranet_r50 refined (1,000,000)"]
    want = b["variants"]["refined"]["sizes"]["1000000"]["verification"]["roc"]
    assert list(roc.get_xdata()) == want["fpr"] and list(roc.get_ydata()) == pytest.approx(
        [100 * t for t in want["tpr"]])


@pytest.mark.parametrize("metric", ["rank1", "tar"])
def test_vs_distractors_points(captured, tmp_path, metric):
    r = megaface("sranet_r50", 0.80, 0.85)
    plots.megaface_vs_distractors([r], tmp_path / "f.png", metric=metric)
    line = _lines(captured[0])["sranet_r50 refined"]
    sizes = r["variants"]["refined"]["sizes"]
    assert list(line.get_xdata()) == [10, 100, 1000, 10_000, 100_000, 1_000_000]
    want = [sizes[str(s)]["rank1"] if metric == "rank1" else sizes[str(s)]["verification"]["tar_at_far"]["1e-06"]["tar"]
            for s in line.get_xdata()]
    assert list(line.get_ydata()) == pytest.approx([100 * w for w in want])
    assert "distractors" in captured[0].axes[0].get_xlabel()


def test_verification_bars_heights_and_fold_std(captured, tmp_path):
    rs = [verification("a", "lfw", 0.99, 0.004), verification("a", "cfp_fp", 0.95, 0.01),
          verification("b", "lfw", 0.98, 0.002)]
    plots.verification_bars(rs, tmp_path / "f.png")
    ax = captured[0].axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    heights = {c.get_label(): [p.get_height() for p in c] for c in bars}
    assert heights["a"] == pytest.approx([99.0, 95.0]) and heights["b"] == pytest.approx([98.0])
    errs = [c.errorbar for c in bars if c.get_label() == "a"][0]
    segs = errs.lines[2][0].get_segments()
    assert [s[1][1] - s[0][1] for s in segs] == pytest.approx([2 * 0.4, 2 * 1.0])  # +- std in percent


def test_cost_chart_is_relative_to_the_baseline(captured, tmp_path):
    rs = [profile("iresnet50", attn=(), ms=10.0, size_mb=174.36, mem_mb=1000.0),
          profile("iresnet50_ssa_light", attn=("ssa_light",), ms=15.0, size_mb=189.5, mem_mb=2500.0)]
    plots.cost_chart(rs, tmp_path / "f.png")
    t_ax, _, m_ax = captured[0].axes
    ours, paper = [c for c in t_ax.containers if isinstance(c, BarContainer)][:2]
    assert ours[0].get_height() == pytest.approx(1.5)
    assert paper[0].get_height() == pytest.approx(19.71 / 14.31)  # Table 1 Light SSA over its baseline
    assert m_ax.containers[0][0].get_height() == pytest.approx(2.5)
    assert any(ln.get_ydata()[0] == 1.0 for ln in t_ax.get_lines())  # the baseline reference line


def test_verification_roc_one_panel_per_dataset(captured, tmp_path):
    rs = [verification("a", "lfw", 0.99), verification("a", "agedb_30", 0.95)]
    plots.verification_roc(rs, tmp_path / "f.png")
    fig = captured[0]
    assert [ax.get_title() for ax in fig.axes] == ["lfw", "agedb_30"]
    line = fig.axes[1].get_lines()[0]
    assert list(line.get_xdata()) == rs[1]["roc"]["fpr"]
