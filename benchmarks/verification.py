"""Speed of megabench's 10-fold verification against a plain per-threshold loop, same run.

Both compute the same thing from the same distances: per fold, training accuracy at each of the
400 thresholds of ``np.arange(0, 4, 0.01)``, first argmax, held-out accuracy, and held-out TPR/FPR
at every threshold (insightface's ``calculate_roc``). The baseline is the straightforward loop
(one pass over the pairs per threshold per fold). Prints medians and the ratio; asserts that fold
accuracies, thresholds and the mean ROC are identical.

    python benchmarks/verification.py [--pairs 6000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from megabench.metrics.verification import fold_bounds, fuse_flip, pair_distances, ten_fold_accuracy


def _rates_at(threshold: float, dist: np.ndarray, issame: np.ndarray) -> tuple[float, float, float]:
    predict = np.less(dist, threshold)
    tp = np.sum(predict & issame)
    fp = np.sum(predict & ~issame)
    tn = np.sum(~predict & ~issame)
    fn = np.sum(~predict & issame)
    tpr = 0.0 if tp + fn == 0 else float(tp) / float(tp + fn)
    fpr = 0.0 if fp + tn == 0 else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / dist.size


def loop_ten_fold(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray, n_folds: int = 10):
    """The per-threshold loop: the baseline."""
    bounds = fold_bounds(dist.size, n_folds)
    idx = np.arange(dist.size)
    acc = np.zeros(n_folds)
    best_t = np.zeros(n_folds)
    tprs = np.zeros((n_folds, thresholds.size))
    fprs = np.zeros((n_folds, thresholds.size))
    for f in range(n_folds):
        test = idx[bounds[f]: bounds[f + 1]]
        train = np.setdiff1d(idx, test)
        acc_train = np.zeros(thresholds.size)
        for i, t in enumerate(thresholds):
            _, _, acc_train[i] = _rates_at(t, dist[train], issame[train])
        best = int(np.argmax(acc_train))
        for i, t in enumerate(thresholds):
            tprs[f, i], fprs[f, i], _ = _rates_at(t, dist[test], issame[test])
        _, _, acc[f] = _rates_at(thresholds[best], dist[test], issame[test])
        best_t[f] = thresholds[best]
    return acc, best_t, np.mean(tprs, 0), np.mean(fprs, 0)


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=6000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--baseline-repeats", type=int, default=3)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    n = args.pairs
    issame = np.zeros(n, dtype=bool)
    for lo, hi in zip(fold_bounds(n)[:-1], fold_bounds(n)[1:], strict=True):
        issame[lo: lo + (hi - lo) // 2] = True
    feats = rng.standard_normal((2 * n, args.dim)).astype(np.float32)
    feats[1::2][issame] = feats[0::2][issame] + 10.0 * rng.standard_normal((issame.sum(), args.dim)).astype(np.float32)
    emb = fuse_flip(feats, mode="none")
    dist = pair_distances(emb[0::2], emb[1::2])
    thresholds = np.arange(0, 4, 0.01)

    ours = ten_fold_accuracy(dist, issame, thresholds=thresholds)
    ref = loop_ten_fold(dist, issame, thresholds)
    assert np.array_equal(ours.accuracy, ref[0]), (ours.accuracy, ref[0])
    assert np.array_equal(ours.threshold, ref[1])
    assert np.array_equal(np.mean(ours.tpr, 0), ref[2]) and np.array_equal(np.mean(ours.fpr, 0), ref[3])

    t_ours = _median_time(lambda: ten_fold_accuracy(dist, issame, thresholds=thresholds), args.repeats)
    t_loop = _median_time(lambda: loop_ten_fold(dist, issame, thresholds), args.baseline_repeats)
    print(f"10-fold accuracy + ROC, {n} pairs, {thresholds.size} thresholds, numpy {np.__version__}")
    print(f"  per-threshold loop (baseline): median {t_loop * 1e3:9.2f} ms over {args.baseline_repeats} runs")
    print(f"  megabench ten_fold_accuracy:   median {t_ours * 1e3:9.2f} ms over {args.repeats} runs")
    print(f"  speed-up: {t_loop / t_ours:.1f}x  (fold accuracies identical: mean {ours.mean:.5f})")


if __name__ == "__main__":
    main()
