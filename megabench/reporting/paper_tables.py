"""The SRANet paper's Tables 1-2 as data (CASIA-WebFace, ResNet-50, ArcFace loss).

Columns: verification accuracy (%) on LFW / AgeDB-30 / CFP-FP, inference time (ms, per image, GPU
not stated beyond the 4 x TITAN Xp used for training), model size (MB, fp32), GPU memory (MB) of
training at batch 128. ``model`` is our registered name for the row.
"""

from __future__ import annotations

from typing import Any

_BASELINE = {"method": "ResNet50 (Baseline)", "model": "iresnet50", "lfw": 99.42, "agedb_30": 94.45,
             "cfp_fp": 95.24, "time_ms": 14.31, "size_mb": 170.51, "memory_mb": 3583}

PAPER_TABLES: dict[int, dict[str, Any]] = {
    1: {
        "title": "Table 1. Self residual spatial attention variants (CASIA-WebFace, ResNet50, ArcFace)",
        "rows": [
            _BASELINE,
            {"method": "ResNet50 + Naive SSA", "model": "iresnet50_ssa_naive", "lfw": 99.55, "agedb_30": 94.91,
             "cfp_fp": 95.74, "time_ms": 24.69, "size_mb": 185.66, "memory_mb": 15422},
            {"method": "ResNet50 + AvgPool SSA", "model": "iresnet50_ssa_avg", "lfw": 99.52, "agedb_30": 94.88,
             "cfp_fp": 95.62, "time_ms": 19.53, "size_mb": 185.66, "memory_mb": 7521},
            {"method": "ResNet50 + MaxPool SSA", "model": "iresnet50_ssa_max", "lfw": 99.53, "agedb_30": 95.03,
             "cfp_fp": 95.66, "time_ms": 19.70, "size_mb": 185.66, "memory_mb": 7647},
            {"method": "ResNet50 + Light SSA", "model": "iresnet50_ssa_light", "lfw": 99.55, "agedb_30": 94.95,
             "cfp_fp": 95.75, "time_ms": 19.71, "size_mb": 185.67, "memory_mb": 7683},
        ],
    },
    2: {
        "title": "Table 2. Self residual channel attention variants (CASIA-WebFace, ResNet50, ArcFace)",
        "rows": [
            _BASELINE,
            {"method": "ResNet50 + Naive SCA", "model": "iresnet50_sca_naive", "lfw": 99.50, "agedb_30": 94.72,
             "cfp_fp": 95.63, "time_ms": 23.13, "size_mb": 191.85, "memory_mb": 7335},
            {"method": "ResNet50 + AvgPool SCA", "model": "iresnet50_sca_avg", "lfw": 99.48, "agedb_30": 94.69,
             "cfp_fp": 95.58, "time_ms": 18.21, "size_mb": 184.77, "memory_mb": 5937},
            {"method": "ResNet50 + MaxPool SCA", "model": "iresnet50_sca_max", "lfw": 99.49, "agedb_30": 94.71,
             "cfp_fp": 95.60, "time_ms": 18.13, "size_mb": 184.77, "memory_mb": 6105},
            {"method": "ResNet50 + Light SCA", "model": "iresnet50_sca_light", "lfw": 99.49, "agedb_30": 94.72,
             "cfp_fp": 95.62, "time_ms": 18.34, "size_mb": 184.78, "memory_mb": 6119},
        ],
    },
}


def paper_rows(table: int) -> list[dict[str, Any]]:
    """Rows of Table ``table`` (1 or 2), baseline first."""
    try:
        return [dict(r) for r in PAPER_TABLES[table]["rows"]]
    except KeyError:
        raise KeyError(f"unknown paper table {table!r}; known: {sorted(PAPER_TABLES)}") from None
