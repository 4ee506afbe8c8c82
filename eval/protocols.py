"""Evaluation protocols besides `derm eval`'s daily time split.

`full_ranking_eval` is the LightGCN / BARS protocol used on Gowalla: every user's scores over all items, the
user's training items masked out, recall@k and NDCG@k against the test items, mean over every user with at
least one test item.
"""

from __future__ import annotations

import numpy as np

from eval.metrics import ndcg_at_k, recall_at_k


def full_ranking_topk(
    user_vecs: np.ndarray, item_vecs: np.ndarray, train_items: list[np.ndarray], k: int, chunk: int = 1024
) -> np.ndarray:
    """int64[n_users, k]: item indices (rows of `item_vecs`) by descending inner product, each user's
    `train_items` excluded; ties go to the lower index; -1 pads when fewer than k items remain.

    Args: user_vecs float[n_users, dim]; item_vecs float[n_items, dim]; train_items: n_users arrays of item
    indices. Scores are computed `chunk` users at a time to bound memory at chunk x n_items floats.
    """
    u = np.asarray(user_vecs, np.float32)
    v = np.asarray(item_vecs, np.float32)
    if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[1]:
        raise ValueError(f"user_vecs and item_vecs must be [n, dim] of one dim, got {u.shape} and {v.shape}")
    if len(train_items) != len(u):
        raise ValueError(f"got {len(train_items)} train item lists for {len(u)} users")
    n_items = len(v)
    kk = min(k, n_items)
    out = np.full((len(u), k), -1, np.int64)
    for s in range(0, len(u), chunk):
        scores = u[s : s + chunk] @ v.T  # (B, n_items)
        for r, items in enumerate(train_items[s : s + chunk]):
            scores[r, np.asarray(items, np.int64)] = -np.inf
        if kk == 0:
            continue
        part = (
            np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            if kk < n_items
            else np.tile(np.arange(n_items), (len(scores), 1))
        )
        ps = np.take_along_axis(scores, part, axis=1)
        order = np.lexsort((part, -ps), axis=1)
        top = np.take_along_axis(part, order, axis=1)
        top = np.where(np.isfinite(np.take_along_axis(ps, order, axis=1)), top, -1)
        out[s : s + chunk, :kk] = top
    return out


def full_ranking_eval(
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
    train_items: list[np.ndarray],
    test_items: list[np.ndarray],
    k: int = 20,
) -> dict[str, float | int | None]:
    """The Gowalla full-ranking protocol: rank all items for every user, mask the user's training items,
    recall@k = |top k ∩ test| / |test| and NDCG@k with the ideal DCG over min(|test|, k) positions, both
    averaged over all users with >= 1 test item. Items are rows of `item_vecs` (contiguous ids, as in the
    LightGCN split).

    Returns {"recall", "ndcg", "n_users" (users with test items), "k"}.
    """
    if len(test_items) != len(user_vecs):
        raise ValueError(f"got {len(test_items)} test item lists for {len(user_vecs)} users")
    topk = full_ranking_topk(user_vecs, item_vecs, train_items, k)
    test = [np.asarray(t, np.int64) for t in test_items]
    return {
        "recall": recall_at_k(topk, test, k),
        "ndcg": ndcg_at_k(topk, test, k),
        "n_users": int(sum(len(t) > 0 for t in test)),
        "k": int(k),
    }
