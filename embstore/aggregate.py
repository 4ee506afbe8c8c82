"""Aggregation of daily embeddings into the pool (the paper's MA / ACC / AP heuristics, Table 1).

For an entity with a daily embedding e_t on day t:
    acc:  E(t) = e_t                                  (keep the latest)
    ma:   E(t) = w E(t-1) + (1 - w) e_t               (moving average; first appearance: E = e_t)
    ap:   E(t) = (e_prev + e_t) / 2                   (mean of the last two daily embeddings, or e_t alone)
Entities absent today carry over unchanged; an entity whose last daily embedding is more than `ttl_days` old
is dropped. The pooled state is kept unnormalised (so the moving average is exactly the formula); the vectors
served and indexed are re-normalised, because a mean of unit vectors is shorter than 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from dermcore.errors import ConfigError


class Heuristic(StrEnum):
    ACC = "acc"
    MA = "ma"
    AP = "ap"


@dataclass(frozen=True)
class AggregationConfig:
    heuristic: Heuristic = Heuristic.MA
    weight: float = 0.8  # w of the moving average
    ttl_days: int = 90

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight < 1.0:
            raise ConfigError("weight must be in [0, 1)")
        if self.ttl_days < 1:
            raise ConfigError("ttl_days must be >= 1")


@dataclass
class Pool:
    """ids int64[n] ascending; state float32[n, dim] (unnormalised E); prev float32[n, dim] (last daily
    embedding, for AP and stability); last_day int32[n] (day of the last daily embedding)."""

    ids: np.ndarray
    state: np.ndarray
    prev: np.ndarray
    last_day: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> Pool:
        z = np.zeros((0, dim), np.float32)
        return cls(np.zeros(0, np.int64), z, z.copy(), np.zeros(0, np.int32))

    def __len__(self) -> int:
        return len(self.ids)

    def vectors(self) -> np.ndarray:
        """Unit-norm pooled vectors float32[n, dim] (what is indexed and served)."""
        n = np.linalg.norm(self.state, axis=1, keepdims=True)
        return (self.state / np.maximum(n, 1e-12)).astype(np.float32)


def dedup_last(ids: np.ndarray, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the last row per id (same-day duplicates: the last embedding of the day wins); ids sorted."""
    ids = np.asarray(ids, np.int64)
    rev = ids[::-1]
    uniq, first_in_rev = np.unique(rev, return_index=True)
    return uniq, np.asarray(vecs, np.float32)[len(ids) - 1 - first_in_rev]


def aggregate(pool: Pool, ids: np.ndarray, vecs: np.ndarray, day: int, cfg: AggregationConfig) -> Pool:
    """The pool after day `day`'s daily embeddings (ids int64[m], vecs float32[m, dim]). Vectorised; the
    input pool is not modified (it may be memory-mapped from yesterday's version). Cost: one copy of each pool
    array (new ids are inserted in place of a full merge sort) plus O(m log n) lookups."""
    ids, vecs = dedup_last(ids, vecs)
    dim = vecs.shape[1] if len(vecs) else pool.state.shape[1]
    pos = np.searchsorted(pool.ids, ids)
    seen_before = np.zeros(len(ids), bool)
    inside = pos < len(pool.ids)
    seen_before[inside] = pool.ids[pos[inside]] == ids[inside]
    new_ids = ids[~seen_before]  # sorted, since ids are
    if len(new_ids):
        at = np.searchsorted(pool.ids, new_ids)
        all_ids = np.insert(pool.ids, at, new_ids)
        state = np.insert(np.asarray(pool.state, np.float32).reshape(-1, dim), at, 0.0, axis=0)
        prev = np.insert(np.asarray(pool.prev, np.float32).reshape(-1, dim), at, 0.0, axis=0)
        last_day = np.insert(np.asarray(pool.last_day, np.int32), at, day)
    else:
        all_ids = np.array(pool.ids, np.int64)
        state = np.array(pool.state, np.float32)
        prev = np.array(pool.prev, np.float32)
        last_day = np.array(pool.last_day, np.int32)
    new_pos = np.searchsorted(all_ids, ids)
    if cfg.heuristic is Heuristic.ACC:
        upd = vecs
    elif cfg.heuristic is Heuristic.MA:
        w = np.float32(cfg.weight)
        upd = np.where(seen_before[:, None], w * state[new_pos] + (1 - w) * vecs, vecs)
    else:  # AP: mean of the previous daily embedding and today's
        upd = np.where(seen_before[:, None], (prev[new_pos] + vecs) / 2, vecs)
    state[new_pos] = upd
    prev[new_pos] = vecs
    last_day[new_pos] = day
    keep = (day - last_day) <= cfg.ttl_days
    if keep.all():
        return Pool(all_ids, state, prev, last_day)
    return Pool(all_ids[keep], state[keep], prev[keep], last_day[keep])


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    """Mean cosine similarity of matching rows (None when there are none)."""
    if len(a) == 0:
        return None
    na = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(na, 1e-12)))


def stability(before: Pool, after: Pool, day: int) -> dict[str, float | None]:
    """Mean cosine between consecutive days' vectors of entities with a daily embedding on day-1 and day:
    `raw` compares the two daily embeddings, `pooled` the pooled vectors before and after today's update."""
    both_ids = after.ids[after.last_day == day]
    if len(before) == 0 or len(both_ids) == 0:
        return {"raw": None, "pooled": None, "n": 0}
    pb, fb = _find(before.ids, both_ids)
    sel = fb & (before.last_day[pb] == day - 1)
    ids = both_ids[sel]
    pa, _ = _find(after.ids, ids)
    pb = pb[sel]
    return {
        "raw": mean_cosine(before.prev[pb], after.prev[pa]),
        "pooled": mean_cosine(before.vectors()[pb], after.vectors()[pa]),
        "n": int(len(ids)),
    }


def _find(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
    return pos, sorted_ids[pos] == ids
