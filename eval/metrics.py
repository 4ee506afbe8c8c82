"""Metrics. Every function takes numpy arrays and returns plain floats (None where undefined).

recall@K here is the papers' definition (LightGCN, BARS): per user |top K ∩ relevant| / |relevant|, averaged
over users with at least one relevant item.
"""

from __future__ import annotations

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve, tie-aware (Mann-Whitney U with mid-ranks). None if one class is absent."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels) > 0
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # mid-ranks of tied groups
    starts = np.r_[0, np.nonzero(np.diff(s_sorted))[0] + 1]
    ends = np.r_[starts[1:], len(s)]
    mid = (starts + ends + 1) / 2.0  # 1-based average rank of each group
    ranks = np.empty(len(s), np.float64)
    ranks[order] = np.repeat(mid, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pr_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Average precision (the step-wise area under the precision-recall curve, as scikit-learn computes it)."""
    s = np.asarray(scores, np.float64)
    y = (np.asarray(labels) > 0).astype(np.float64)
    n_pos = y.sum()
    if n_pos == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # thresholds at distinct score values: take the last index of each tied group
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s) - 1]
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    prev_recall = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev_recall) * precision))


def recall_at_k(topk: np.ndarray, relevant: list[np.ndarray], k: int) -> float | None:
    """Mean over users with >= 1 relevant item of |topk[u, :k] ∩ relevant[u]| / |relevant[u]|.
    topk: int64[n, >=k] (-1 pads); relevant: n arrays of item ids."""
    vals = [
        len(np.intersect1d(topk[u, :k], rel)) / len(rel) for u, rel in enumerate(relevant) if len(rel) > 0
    ]
    return float(np.mean(vals)) if vals else None


def ndcg_at_k(topk: np.ndarray, relevant: list[np.ndarray], k: int) -> float | None:
    """Binary-relevance NDCG@k with ideal DCG over min(|relevant|, k) positions, mean over users."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    vals = []
    for u, rel in enumerate(relevant):
        if len(rel) == 0:
            continue
        hits = np.isin(topk[u, :k], rel)
        vals.append(float((hits * disc[: len(hits)]).sum() / disc[: min(len(rel), k)].sum()))
    return float(np.mean(vals)) if vals else None


def overlap_at_k(a: np.ndarray, b: np.ndarray, k: int) -> float | None:
    """Mean over rows of |a[u, :k] ∩ b[u, :k]| / k (e.g. ANN vs exact, or ours vs the oracle's top k)."""
    if len(a) == 0:
        return None
    return float(np.mean([len(np.intersect1d(a[u, :k][a[u, :k] >= 0], b[u, :k])) / k for u in range(len(a))]))
