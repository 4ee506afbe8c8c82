"""Paired bootstrap confidence intervals for "A beats B" claims.

Both systems are scored on the same resampled units in every replicate (paired), so the variation that both
share (which users happened to click that day) cancels out of the difference. The unit is what the claim
generalises over: users for per-user recall (pass the per-user values), impressions or users for AUC (pass the
impression scores and labels, and `groups` = user ids to resample whole users).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

MetricFn = Callable[..., float | None]


def paired_bootstrap(
    metric_fn: MetricFn,
    a_scores: np.ndarray,
    b_scores: np.ndarray,
    labels: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Percentile bootstrap of metric(A) - metric(B) over paired resamples.

    Args:
        metric_fn: `metric_fn(scores)` when `labels` is None (e.g. `np.mean` over per-user recall values),
            else `metric_fn(scores, labels)` (e.g. `roc_auc`). A replicate where it returns None (say one class
            only) is dropped and counted in `n_dropped`.
        a_scores, b_scores: float[n_rows], row i of both describes the same unit (user or impression).
        labels: optional [n_rows] labels shared by both systems.
        groups: optional [n_rows] cluster ids (e.g. user ids): whole clusters are resampled, so impressions of
            one user stay together. Without it, rows are resampled.
        n: bootstrap replicates; seed: the generator's seed (same seed, same interval).
        alpha: 1 - confidence level (0.05: a 95 % interval).

    Returns {"a", "b", "diff" (metric(A) - metric(B) on the full data), "lo", "hi" (the alpha/2 and 1 - alpha/2
    percentiles of the replicate differences), "se" (their standard deviation), "p_value" (two-sided: twice the
    smaller share of replicates on either side of 0, capped at 1; 1.0 when all replicates are 0),
    "n_boot" (replicates kept), "n_dropped", "n_units" (rows or clusters resampled), "unit", "confidence"}.
    """
    a = np.asarray(a_scores)
    b = np.asarray(b_scores)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a_scores and b_scores must be 1-D of one length, got {a.shape} and {b.shape}")
    y = None if labels is None else np.asarray(labels)
    if y is not None and y.shape != a.shape:
        raise ValueError(f"labels must match the scores' shape {a.shape}, got {y.shape}")
    if n < 1 or not 0 < alpha < 1:
        raise ValueError("n must be >= 1 and alpha in (0, 1)")

    def metric(s: np.ndarray, idx: np.ndarray | None) -> float | None:
        s = s if idx is None else s[idx]
        if y is None:
            return metric_fn(s)
        return metric_fn(s, y if idx is None else y[idx])

    ma, mb = metric(a, None), metric(b, None)
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != a.shape:
            raise ValueError(f"groups must match the scores' shape {a.shape}, got {g.shape}")
        order = np.argsort(g, kind="stable")
        _, start = np.unique(g[order], return_index=True)
        members = np.split(order, start[1:])
        n_units, unit = len(members), "group"
    else:
        members, n_units, unit = [], len(a), "row"
    rng = np.random.default_rng(seed)
    diffs, dropped = [], 0
    for _ in range(n):
        pick = rng.integers(0, n_units, n_units)
        idx = np.concatenate([members[i] for i in pick]) if groups is not None else pick
        da, db = metric(a, idx), metric(b, idx)
        if da is None or db is None:
            dropped += 1
            continue
        diffs.append(da - db)
    d = np.array(diffs, np.float64)
    out: dict[str, Any] = {
        "a": ma,
        "b": mb,
        "diff": None if ma is None or mb is None else float(ma - mb),
        "lo": None,
        "hi": None,
        "se": None,
        "p_value": None,
        "n_boot": int(len(d)),
        "n_dropped": dropped,
        "n_units": int(n_units),
        "unit": unit,
        "confidence": 1.0 - alpha,
    }
    if len(d):
        out["lo"] = float(np.quantile(d, alpha / 2))
        out["hi"] = float(np.quantile(d, 1 - alpha / 2))
        out["se"] = float(d.std())
        out["p_value"] = min(1.0, 2.0 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
    return out
