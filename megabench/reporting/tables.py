"""Paper-style tables built from result files only (pandas DataFrames; rates shown in %).

Each ``*_table`` takes a list of result dicts (``megabench.results.read_result``) of one kind and
returns a DataFrame with one row per model (or feature store when the model is unnamed).
Accuracies in the files are fractions in [0, 1]; the tables print percent, as the paper does.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from megabench.reporting.matching import result_label

model_label = result_label  # one labelling rule for tables and figures


def _pct(x: Any) -> float:
    return float("nan") if x is None else 100.0 * float(x)


def verification_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows: model; columns ``<protocol> (%)`` and ``<protocol> std``: mean 10-fold accuracy and the
    std over folds, in percent. Later files win when a (model, protocol) pair repeats."""
    rows: dict[str, dict[str, float]] = {}
    for r in results:
        proto = r["protocol"]["name"]
        row = rows.setdefault(model_label(r), {})
        row[f"{proto} (%)"] = _pct(r["metrics"]["accuracy"])
        row[f"{proto} std"] = _pct(r["metrics"]["accuracy_std"])
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def megaface_table(results: list[dict[str, Any]], *, size: str | None = None, far: str = "1e-06") -> pd.DataFrame:
    """Rows: model; columns Id (rank-1) and Ver (TAR@FAR=``far``) for each variant (raw, refined), in
    percent, at distractor ``size`` (default: the largest size in each file) -- Table 5's layout."""
    rows: dict[str, dict[str, Any]] = {}
    for r in results:
        row = rows.setdefault(model_label(r), {})
        for variant, data in r["variants"].items():
            sizes = data["sizes"]
            key = size or max(sizes, key=int)
            if key not in sizes:
                continue
            s = sizes[key]
            row["distractors"] = int(key)
            row[f"Id {variant} (%)"] = _pct(s["rank1"])
            tar = s["verification"]["tar_at_far"].get(far)
            row[f"Ver {variant} (%)"] = _pct(tar["tar"] if tar else None)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def profile_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows: model; the paper's cost columns plus ratios over the first baseline (``iresnet*``) row."""
    rows = {}
    for r in results:
        lat = r["latency_ms"]
        rows[model_label(r)] = {
            "params (M)": r["params"] / 1e6,
            "size (MB)": r["size_mb"],
            "GFLOPs": (r["flops"] or 0) / 1e9,
            "ms/img batch1": lat.get("batch1"),
            f"ms/img batch{lat.get('batch')}": lat.get("batchN"),
            "train peak mem (MB)": r["train_peak_mem_mb"],
            "device": r["device"],
        }
    df = pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")
    base = [m for m in df.index if str(m).startswith("iresnet")]
    if base:
        b = df.loc[base[0]]
        for col in ("ms/img batch1", "train peak mem (MB)"):
            if b[col]:
                df[f"{col} / baseline"] = df[col] / b[col]
    return df
