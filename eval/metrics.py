"""Metrics. Every function takes numpy arrays and returns plain floats (None where undefined).

recall@K here is the papers' definition (LightGCN, BARS): per user |top K ∩ relevant| / |relevant|, averaged
over users with at least one relevant item.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


# --- per-user values (what the paired bootstrap resamples) ---------------------------------------------------


def recall_per_user(topk: np.ndarray, relevant: list[np.ndarray], k: int) -> np.ndarray:
    """float64[n_users with >= 1 relevant item]: each user's |topk[u, :k] ∩ relevant[u]| / |relevant[u]|, in
    user order. `recall_at_k` is its mean; the paired bootstrap resamples these values over users."""
    return np.array(
        [len(np.intersect1d(topk[u, :k], rel)) / len(rel) for u, rel in enumerate(relevant) if len(rel) > 0],
        np.float64,
    )


def hit_rate_at_k(topk: np.ndarray, relevant: list[np.ndarray], k: int) -> float | None:
    """Share of users (with >= 1 relevant item) with at least one relevant item in topk[u, :k]."""
    vals = [bool(np.isin(topk[u, :k], rel).any()) for u, rel in enumerate(relevant) if len(rel) > 0]
    return float(np.mean(vals)) if vals else None


# --- random-retrieval baselines, exact expectations (no draw, so no seed) ------------------------------------


def _live_share(relevant: list[np.ndarray], live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per user with >= 1 relevant item: (number of relevant items that are live, number relevant). One
    membership test over every user's items at once (a per-user `isin` sorted `live` again for every user:
    users x live ads, the stage that made eval's cost grow faster than the log, issue 16)."""
    rels = [np.asarray(rel) for rel in relevant if len(rel) > 0]
    n_rel = np.array([len(r) for r in rels], np.float64)
    if not rels:
        return np.zeros(0), n_rel
    owner = np.repeat(np.arange(len(rels)), n_rel.astype(np.int64))
    is_live = np.isin(np.concatenate(rels), live)
    return np.bincount(owner, weights=is_live.astype(np.float64), minlength=len(rels)), n_rel


def random_recall_at_k(relevant: list[np.ndarray], live: np.ndarray, k: int) -> float | None:
    """Expected recall@k of a uniformly random top k of the `live` ads: per user |rel ∩ live| / |rel| *
    min(k, n_live) / n_live (every live ad is in the random top k with probability min(k, n_live) / n_live),
    mean over users with >= 1 relevant item."""
    hit, n_rel = _live_share(relevant, live)
    if len(n_rel) == 0 or len(live) == 0:
        return None if len(n_rel) == 0 else 0.0
    return float(np.mean(hit / n_rel) * min(k, len(live)) / len(live))


def random_hit_rate_at_k(relevant: list[np.ndarray], live: np.ndarray, k: int) -> float | None:
    """Expected hit rate@k of a uniformly random top k of `live`: per user 1 - C(n - r, k) / C(n, k) with
    r = |rel ∩ live|, n = n_live (the chance that none of the r relevant ads is drawn), mean over users."""
    hit, n_rel = _live_share(relevant, live)
    if len(n_rel) == 0:
        return None
    n, kk = len(live), min(k, len(live))
    # C(n - r, k) / C(n, k) = prod_{i<k} (n - r - i) / (n - i), zero once n - r - i hits 0
    i = np.arange(kk, dtype=np.float64)
    miss = [float(np.prod(np.clip((n - r - i) / (n - i), 0.0, None))) for r in hit]
    return float(np.mean(1.0 - np.array(miss)))


def random_ndcg_at_k(relevant: list[np.ndarray], live: np.ndarray, k: int) -> float | None:
    """Expected NDCG@k of a uniformly random top k of `live`: each slot holds a relevant ad with probability
    r / n_live, so E[DCG] = r / n_live * sum of the first min(k, n_live) discounts; divided by the ideal DCG
    over min(|rel|, k) positions, mean over users with >= 1 relevant item."""
    hit, n_rel = _live_share(relevant, live)
    if len(n_rel) == 0:
        return None
    if len(live) == 0:
        return 0.0
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hit / len(live) * disc[: min(k, len(live))].sum()
    idcg = np.array([disc[: min(int(r), k)].sum() for r in n_rel])
    return float(np.mean(dcg / idcg))


# --- impression-level ranking metrics ------------------------------------------------------------------------


def log_loss(pred: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float | None:
    """Mean binary cross-entropy (natural log) of probabilities `pred` against 0/1 `labels`; predictions are
    clipped to [eps, 1 - eps] so one confident mistake is large but finite. None when empty."""
    p = np.clip(np.asarray(pred, np.float64), eps, 1.0 - eps)
    y = (np.asarray(labels) > 0).astype(np.float64)
    if len(p) == 0:
        return None
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def gauc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, float | int | None]:
    """Group (per-user) AUC: the mean of each group's ROC-AUC over the groups with both a click and a non-click,
    weighted by the group's number of impressions (the usual CTR-literature gAUC; groups with one class have no
    AUC and are left out). Tie-aware like `roc_auc`.

    Returns {"gauc", "gauc_unweighted" (plain mean over groups), "n_groups" (groups with both classes),
    "n_impressions" (their impressions)}; the AUCs are None when no group has both classes.
    """
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels) > 0
    g = np.asarray(groups)
    if len(s) == 0:
        return {"gauc": None, "gauc_unweighted": None, "n_groups": 0, "n_impressions": 0}
    order = np.lexsort((s, g))
    gs, ss, ys = g[order], s[order], y[order]
    new_group = np.r_[True, gs[1:] != gs[:-1]]
    gstart = np.nonzero(new_group)[0]
    gid = np.cumsum(new_group) - 1
    # tied runs of equal (group, score): mid-rank within the group, 1-based
    new_run = new_group | np.r_[True, ss[1:] != ss[:-1]]
    rstart = np.nonzero(new_run)[0]
    rend = np.r_[rstart[1:], len(ss)]
    mid = (rstart + rend + 1) / 2.0
    ranks = np.repeat(mid, rend - rstart) - gstart[gid]
    n = np.bincount(gid).astype(np.float64)
    n_pos = np.bincount(gid, weights=ys.astype(np.float64))
    n_neg = n - n_pos
    rank_pos = np.bincount(gid, weights=np.where(ys, ranks, 0.0))
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return {"gauc": None, "gauc_unweighted": None, "n_groups": 0, "n_impressions": 0}
    auc = (rank_pos[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    return {
        "gauc": float(np.average(auc, weights=n[ok])),
        "gauc_unweighted": float(auc.mean()),
        "n_groups": int(ok.sum()),
        "n_impressions": int(n[ok].sum()),
    }


def calibration(pred: np.ndarray, labels: np.ndarray, buckets: int = 10) -> dict[str, Any]:
    """Predicted vs observed rate overall and by bucket of predicted probability (equal-count buckets at the
    prediction quantiles; tied predictions never straddle a bucket edge, so buckets may be fewer than asked).

    Returns {"predicted", "observed" (means), "n", "ece" (expected calibration error: the impression-weighted
    mean of |predicted - observed| over buckets), "buckets": [{"lo", "hi", "predicted", "observed", "n"}]}.
    """
    p = np.asarray(pred, np.float64)
    y = (np.asarray(labels) > 0).astype(np.float64)
    if len(p) == 0:
        return {"predicted": None, "observed": None, "n": 0, "ece": None, "buckets": []}
    edges = np.quantile(p, np.linspace(0, 1, buckets + 1))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, buckets - 1)
    rows = []
    ece = 0.0
    for b in np.unique(which):
        sel = which == b
        pb, yb = float(p[sel].mean()), float(y[sel].mean())
        rows.append(
            {
                "lo": float(p[sel].min()),
                "hi": float(p[sel].max()),
                "predicted": pb,
                "observed": yb,
                "n": int(sel.sum()),
            }
        )
        ece += sel.sum() * abs(pb - yb)
    return {
        "predicted": float(p.mean()),
        "observed": float(y.mean()),
        "n": int(len(p)),
        "ece": float(ece / len(p)),
        "buckets": rows,
    }


# --- per-group breakdowns ----------------------------------------------------------------------------------


def by_group(
    metric_fn: Callable[..., Any],
    groups: np.ndarray,
    *arrays: np.ndarray,
    names: dict[Any, str] | None = None,
) -> dict[str, Any]:
    """{group name: metric_fn(*(a[groups == g] for a in arrays))} for every group value present, ascending.
    `names` maps group codes to names (e.g. surface 0 -> "home_feed"); otherwise the code as a string."""
    g = np.asarray(groups)
    out: dict[str, Any] = {}
    for v in np.unique(g):
        sel = g == v
        key = (names or {}).get(v.item(), str(v.item()))
        out[key] = metric_fn(*(np.asarray(a)[sel] for a in arrays))
    return out
