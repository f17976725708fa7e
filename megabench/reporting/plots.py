"""Figures from result files only, each written as PNG (200 dpi) and PDF at paper sizes.

- :func:`megaface_cmc_roc`: the paper's Fig. 7: CMC (rank 1..10^6, log x) and ROC (FAR 1e-6..1,
  log x) at each file's largest distractor size; one colour per model, raw dashed, refined solid.
- :func:`megaface_vs_distractors`: rank-1 identification or TAR@FAR against the number of
  distractors (10..1M, log x), raw dashed, refined solid.
- :func:`cost_chart`: the paper's Fig. 5: inference time, model size and training memory of each
  attention variant (bars), relative to the baseline (reference line); ours beside the paper's.
- :func:`verification_bars`: accuracy per model and dataset, 10-fold std as error bars.
- :func:`verification_roc`: TPR against FAR per dataset from each result's ``roc``.

Sizes: a double-column IEEE figure is 7.16 in wide; fonts 8 pt. Each function returns the PNG path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from megabench.fileio import atomic_path
from megabench.reporting.matching import model_config, result_label, rows_filled
from megabench.reporting.reference import paper_reference

WIDTH_IN = 7.16
_STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
          "ytick.labelsize": 7, "axes.grid": True, "grid.alpha": 0.3}
VARIANT_STYLE = {"raw": "--", "refined": "-"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(_STYLE)
    return plt


def _save(fig: Any, out: str | os.PathLike) -> Path:
    """Write ``out`` with suffix .png and .pdf (atomically); returns the PNG path."""
    stem = Path(out).with_suffix("")
    for ext in ("png", "pdf"):
        with atomic_path(stem.with_suffix(f".{ext}"), suffix=f".{ext}") as tmp:
            fig.savefig(tmp, dpi=200, bbox_inches="tight", format=ext)
    _plt().close(fig)
    return stem.with_suffix(".png")


def _colors(labels: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {label: cmap(i % 10) for i, label in enumerate(dict.fromkeys(labels))}


def _largest(data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    size = max(data["sizes"], key=int)
    return int(size), data["sizes"][size]


def megaface_cmc_roc(results: list[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Fig. 7: CMC and ROC, one colour per model, raw dashed and refined solid, at the largest size."""
    plt = _plt()
    fig, (ax_cmc, ax_roc) = plt.subplots(1, 2, figsize=(WIDTH_IN, 2.8), layout="constrained")
    colors = _colors([result_label(r) for r in results])
    for r in results:
        label = result_label(r)
        for variant, data in r["variants"].items():
            size, s = _largest(data)
            kw = dict(color=colors[label], linestyle=VARIANT_STYLE.get(variant, ":"), linewidth=1.2,
                      label=f"{label} {variant} ({size:,})")
            ax_cmc.plot(s["cmc"]["ranks"], [100 * x for x in s["cmc"]["rates"]], **kw)
            roc = s["verification"].get("roc") or {}
            pts = [(f, t) for f, t in zip(roc.get("fpr", []), roc.get("tpr", []), strict=True) if f > 0]
            if pts:
                ax_roc.plot([p[0] for p in pts], [100 * p[1] for p in pts], **kw)
    ax_cmc.set(xscale="log", xlim=(1, 1e6), xlabel="rank", ylabel="identification rate (%)",
               title="(a) CMC, MegaFace Challenge 1")
    ax_roc.set(xscale="log", xlim=(1e-6, 1), xlabel="false accept rate", ylabel="true accept rate (%)",
               title="(b) ROC, MegaFace Challenge 1")
    ax_roc.legend(loc="best")
    return _save(fig, out)


def megaface_vs_distractors(results: list[dict[str, Any]], out: str | os.PathLike, *, metric: str = "rank1",
                            far: str = "1e-06") -> Path:
    """Rank-1 (``metric="rank1"``) or TAR at ``far`` (``metric="tar"``) against the distractor count."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH_IN / 2, 2.6), layout="constrained")
    colors = _colors([result_label(r) for r in results])
    for r in results:
        label = result_label(r)
        for variant, data in r["variants"].items():
            xs, ys = [], []
            for size, s in sorted(data["sizes"].items(), key=lambda kv: int(kv[0])):
                if metric == "rank1":
                    y = s["rank1"]
                else:
                    tar = s["verification"]["tar_at_far"].get(far)
                    y = tar["tar"] if tar else None
                if y is not None:
                    xs.append(int(size))
                    ys.append(100 * y)
            ax.plot(xs, ys, marker="o", markersize=3, color=colors[label],
                    linestyle=VARIANT_STYLE.get(variant, ":"), label=f"{label} {variant}")
    ylabel = "rank-1 identification (%)" if metric == "rank1" else f"TAR at FAR={float(far):g} (%)"
    ax.set(xscale="log", xlim=(8, 1.25e6), xlabel="number of distractors", ylabel=ylabel,
           title=("identification" if metric == "rank1" else "verification") + " vs distractors")
    ax.legend(loc="best")
    return _save(fig, out)


_COST = (("latency_ms.batch1", "time_ms", "inference time (ms / image)"),
         ("size_mb", "size_mb", "model size (MB)"),
         ("train_peak_mem_mb", "memory_mb", "training memory (MB)"))


def _profile_value(result: dict[str, Any], path: str) -> float | None:
    value: Any = result
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return None if value is None else float(value)


def _is_baseline(result: dict[str, Any]) -> bool:
    config = model_config(result)
    return "attn_layers" in config and not config["attn_layers"]


def _paper_cost(result: dict[str, Any] | None) -> dict[str, float] | None:
    """The paper's Table 1/2 cost cells of the row this profile fills, if any."""
    if result is None:
        return None
    ref = paper_reference()
    for number in (1, 2):
        rows = rows_filled(result, ref.table(number), default_head=ref.default_head)
        if rows:
            return rows[0].values
    return None


def _cost_panel(ax: Any, variants: list[dict[str, Any]], base: dict[str, Any] | None, spec: tuple[str, str, str],
                paper_base: dict[str, float] | None) -> None:
    path, paper_key, title = spec
    ours = [_profile_value(r, path) for r in variants]
    papers = [(_paper_cost(r) or {}).get(paper_key) for r in variants]
    b = _profile_value(base, path) if base is not None else None
    pb = (paper_base or {}).get(paper_key)
    rel = bool(b)
    xs = range(len(variants))
    with_paper = any(p is not None for p in papers) and bool(pb or not rel)
    shift, width = (0.2, 0.4) if with_paper else (0.0, 0.6)
    ax.bar([x - shift for x in xs], [(v / b if rel else v) if v is not None else 0 for v in ours], width=width,
           label="ours", color="tab:blue")
    if with_paper:
        ax.bar([x + shift for x in xs], [(p / pb if rel else p) if p is not None else 0 for p in papers],
               width=width, label="paper", color="tab:orange", hatch="//", alpha=0.8)
    if rel:
        ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label="baseline")
        ax.set_ylabel("relative to baseline (x)")
        ax.set_title(f"{title}\nbaseline: ours {b:.4g}" + (f", paper {pb:g}" if pb else ""))
    else:
        ax.set_ylabel(title)
        ax.set_title(title)
    ax.set_xticks(list(xs), [result_label(r) for r in variants], rotation=35, ha="right")


def cost_chart(results: list[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Fig. 5: time, size and memory per attention variant, each relative to the baseline (reference
    line at 1) when a baseline profile (no attention) is among ``results``; the paper's values beside
    ours (hatched) for models that fill a Table 1-2 row."""
    plt = _plt()
    base = next((r for r in results if _is_baseline(r)), None)
    variants = [r for r in results if r is not base] or results
    fig, axes = plt.subplots(1, 3, figsize=(WIDTH_IN, 2.6), layout="constrained")
    paper_base = _paper_cost(base)
    for ax, spec in zip(axes, _COST, strict=True):
        _cost_panel(ax, variants, base, spec, paper_base)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside upper center", ncols=len(names))
    return _save(fig, out)


def verification_bars(results: list[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Accuracy (%) per dataset, one bar per model, error bars = std over the 10 folds."""
    plt = _plt()
    datasets = list(dict.fromkeys(r["protocol"]["name"] for r in results))
    models = list(dict.fromkeys(result_label(r) for r in results))
    cells = {(result_label(r), r["protocol"]["name"]): r["metrics"] for r in sorted(
        results, key=lambda r: str(r.get("created", ""))) if r["metrics"].get("accuracy") is not None}
    colors = _colors(models)
    fig, ax = plt.subplots(figsize=(max(WIDTH_IN / 2, 1.2 * len(datasets) + 1.5), 2.6), layout="constrained")
    width = 0.8 / max(len(models), 1)
    lows = []
    for i, m in enumerate(models):
        xs, ys, es = [], [], []
        for j, d in enumerate(datasets):
            if (m, d) in cells:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(100 * cells[(m, d)]["accuracy"])
                es.append(100 * (cells[(m, d)].get("accuracy_std") or 0.0))
        lows += [y - e for y, e in zip(ys, es, strict=True)]
        ax.bar(xs, ys, width=width, yerr=es, capsize=2, color=colors[m], label=m)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set(ylabel="verification accuracy (%)", title="10-fold accuracy (error bars: fold std)",
           ylim=(max(0.0, min(lows, default=50) - 5), 100.5))
    ax.legend(loc="best")
    return _save(fig, out)


def verification_roc(results: list[dict[str, Any]], out: str | os.PathLike) -> Path:
    """One panel per dataset: TPR (%) against FAR (log x) from each result's ``roc``."""
    plt = _plt()
    datasets = list(dict.fromkeys(r["protocol"]["name"] for r in results))
    fig, axes = plt.subplots(1, len(datasets), figsize=(min(WIDTH_IN, 2.6 * len(datasets) + 0.5), 2.6),
                             squeeze=False, layout="constrained")
    colors = _colors([result_label(r) for r in results])
    for ax, d in zip(axes[0], datasets, strict=True):
        for r in results:
            roc = r.get("roc") or {}
            if r["protocol"]["name"] != d or not roc.get("fpr"):
                continue
            pts = [(f, t) for f, t in zip(roc["fpr"], roc["tpr"], strict=True) if f > 0]
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], color=colors[result_label(r)],
                    label=result_label(r), linewidth=1.2)
        ax.set(xscale="log", xlabel="false accept rate", ylabel="true accept rate (%)", title=d)
        ax.legend(loc="best")
    return _save(fig, out)
