"""Figures from result files only: MegaFace CMC and ROC (Fig. 7 style) and cost bars (Fig. 5 style)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from megabench.fileio import atomic_path
from megabench.reporting.tables import model_label


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def megaface_curves(results: list[dict[str, Any]], out: str | os.PathLike, *, variant: str = "refined") -> Path:
    """CMC (rank 1..10^4, log x) and ROC (FPR log x) at each file's largest size, one line per model.

    Falls back to the ``raw`` variant for files without ``variant``. Writes a PNG to ``out``.
    """
    plt = _figure()
    fig, (ax_cmc, ax_roc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        data = r["variants"].get(variant) or r["variants"]["raw"]
        size = max(data["sizes"], key=int)
        s = data["sizes"][size]
        label = f"{model_label(r)} ({int(size):,})"
        ranks, rates = s["cmc"]["ranks"], s["cmc"]["rates"]
        ax_cmc.plot(ranks, [100 * x for x in rates], label=label)
        roc = s["verification"].get("roc") or {}
        fpr, tpr = roc.get("fpr"), roc.get("tpr")
        if fpr and tpr:
            pts = [(f, t) for f, t in zip(fpr, tpr, strict=True) if f and f > 0]
            if pts:
                ax_roc.plot([p[0] for p in pts], [100 * p[1] for p in pts], label=label)
    ax_cmc.set(xscale="log", xlabel="rank", ylabel="identification rate (%)", title=f"CMC ({variant})")
    ax_roc.set(xscale="log", xlabel="false accept rate", ylabel="true accept rate (%)", title=f"ROC ({variant})")
    for ax in (ax_cmc, ax_roc):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    path = _save(fig, out)
    plt.close(fig)
    return path


def cost_bars(results: list[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Inference ms/img (batch 1) and training peak memory per model, as bars. Writes a PNG."""
    plt = _figure()
    labels = [model_label(r) for r in results]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_t.bar(labels, [r["latency_ms"]["batch1"] for r in results])
    ax_t.set(ylabel="ms / image (batch 1)", title="inference time")
    ax_m.bar(labels, [r["train_peak_mem_mb"] for r in results])
    ax_m.set(ylabel="MB", title="training peak memory")
    for ax in (ax_t, ax_m):
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    path = _save(fig, out)
    plt.close(fig)
    return path
