"""Hand-built result dicts (valid megabench results) for the report tests: every number is chosen here,
so a test can check that a table cell or a plotted point is exactly that number."""

from __future__ import annotations

import math
from typing import Any

from megabench.results import new_result, validate_result

SIZES = (10, 100, 1000, 10_000, 100_000, 1_000_000)


def verification(model: str, protocol: str, accuracy: float, std: float = 0.005, *, created: str | None = None,
                 **model_extra: Any) -> dict[str, Any]:
    """A verification result with a smooth ROC (TPR = FAR ** (1 - accuracy))."""
    fpr = [10 ** (-4 + 4 * i / 40) for i in range(41)]
    tpr = [min(1.0, f ** ((1 - accuracy) * 2)) for f in fpr]
    r = new_result("verification", model={"name": model, "checkpoint_sha256": None, "preprocessing": None,
                                          **model_extra},
                   protocol={"name": protocol, "version": "1.0"}, input={},
                   metrics={"accuracy": accuracy, "accuracy_std": std}, folds=[],
                   roc={"fpr": fpr, "tpr": tpr, "thresholds": [0.0] * len(fpr)})
    if created:
        r["created"] = created
    return validate_result(r)


def _size_entry(rank1: float, tar: float, size: int) -> dict[str, Any]:
    ranks = [k for k in (1, 2, 5, 10, 100, 1000, 10_000, 100_000, 1_000_000) if k <= size + 1]
    rates = [min(1.0, rank1 + (1 - rank1) * math.log10(k) / 6) for k in ranks]
    fars = [10 ** (-6 + i / 4) for i in range(25)]
    return {"rank1": rank1, "cmc": {"ranks": ranks, "rates": rates},
            "verification": {"tar_at_far": {"1e-06": {"tar": tar}, "1e-05": {"tar": min(1.0, tar + 0.01)}},
                             "roc": {"fpr": fars, "tpr": [min(1.0, tar + (1 - tar) * (6 + math.log10(f)) / 6)
                                                          for f in fars]}}}


def megaface(model: str, rank1_1m: float, tar_1m: float, *, refined_gain: float = 0.03,
             sizes: tuple[int, ...] = SIZES, **model_extra: Any) -> dict[str, Any]:
    """A MegaFace result: rank-1 and TAR fall with log10(size) to the given values at the largest size;
    refined = raw + ``refined_gain`` (capped at 1)."""
    top = math.log10(max(sizes))
    variants = {}
    for variant, gain in (("raw", 0.0), ("refined", refined_gain)):
        entries = {}
        for s in sizes:
            drop = (top - math.log10(s)) * 0.01
            entries[str(s)] = _size_entry(min(1.0, rank1_1m + gain + drop), min(1.0, tar_1m + gain + drop), s)
        variants[variant] = {"sizes": entries}
    return validate_result(new_result("megaface", model={"name": model, "checkpoint_sha256": None,
                                                         "preprocessing": None, **model_extra},
                                      protocol={"name": "megaface_c1"}, input={}, variants=variants))


def profile(model: str, *, attn: tuple[str, ...], ms: float, size_mb: float, mem_mb: float) -> dict[str, Any]:
    r = new_result("profile", model={"name": model, "config": {"attn_layers": list(attn)}},
                   params=int(size_mb * 1e6 / 4), size_mb=size_mb, flops=10**9,
                   latency_ms={"batch1": ms, "batchN": ms / 2, "batch": 16}, train_peak_mem_mb=mem_mb)
    r["device"] = "cpu"
    return validate_result(r)
