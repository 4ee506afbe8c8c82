"""A popularity prior for retrieval (issue 13): the ANN score plus beta x the log of each ad's recent click share,
with beta chosen on data.

Why: the in-batch softmax's logQ correction (`towers.losses`) takes each ad's popularity out of the learned
score u . p, so the cosine ranks ads by affinity beyond popularity, while tomorrow's clicks still follow
popularity (MovieLens weekly, recall@100: towers 0.40, popularity 0.47). The prior puts it back at serving time:

    final(user, ad) = u . p + beta * log((clicks(ad) + alpha) / (total + alpha * n_live))

`clicks`: the ad's clicks in the `window` days before the query day (point-in-time), `total` their sum over the
live ads. The share is the posterior mean of a symmetric Dirichlet(alpha) over the live ads, so an ad without
clicks gets a finite penalty, and the normaliser is one constant per day (it changes no order, and keeps beta's
scale comparable across days). beta = 0 is the towers' order; a large beta is popularity's (ties by cosine). The
towers were trained on u . p / tau - log Q; the softmax without the correction ranks by u . p / tau + log share,
i.e. beta = tau: beta is in cosine units and its natural scale is the learned temperature (0.03 - 0.1).

beta (and the window) is chosen by `fit_beta` on a validation period strictly before the period served: the
grid point with the best recall@k (the first, smallest beta on ties; 0 is always on the grid, so the fit can
keep today's order). `PriorFit.to_json()` is the record for a manifest.

Serving (`retrieval.retrieve.Retriever(prior=...)`) re-ranks; it does not add the prior inside the index. The
prior is not an inner product: putting it in the index (an extra coordinate per ad vector) would need a rebuild
whenever the counts or beta change and would break the index's unit-norm checks. The retriever fetches the ANN
top `overfetch * k`, adds the `popular_pool * k` most clicked live ads (scored with the user's vector against the
store's ad vectors), re-ranks the union by `final` and checks a bound: an ad outside the union has u . p <= the
lowest ANN score fetched (`floor`) and log share <= the best one left out of the pool (`outside`), so where the
k-th final score is >= floor + beta * outside the top k is exact over every eligible ad (as exact as the ANN);
other rows are fetched again 4x deeper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from dermcore.errors import ConfigError, DataError

#: days of clicks behind the popularity list and the cold-start fallback (re-exported by retrieval.retrieve)
POPULARITY_DAYS = 7
#: beta grid for `fit_beta`, cosine units: 0 (no prior) up to values where popularity decides the order
DEFAULT_BETAS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 3.0)


@dataclass(frozen=True)
class PriorConfig:
    """The popularity prior of one retrieval stage.

    beta: weight of the log click share, in cosine units (>= 0; 0 keeps the ANN order).
    window: days of clicks counted, ending the day before the query day.
    alpha: pseudo-clicks per live ad (the Dirichlet smoothing), > 0.
    overfetch: the ANN fetches overfetch * k candidates before re-ranking (>= 1).
    popular_pool: the popular_pool * k most clicked live ads join every user's candidates (>= 0).
    """

    beta: float = 0.0
    window: int = POPULARITY_DAYS
    alpha: float = 1.0
    overfetch: int = 4
    popular_pool: int = 2

    def __post_init__(self) -> None:
        for name in ("beta", "alpha"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ConfigError(f"PriorConfig.{name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.beta < 0:
            raise ConfigError(f"PriorConfig.beta must be >= 0, got {self.beta}")
        if self.alpha <= 0:
            raise ConfigError(f"PriorConfig.alpha must be > 0, got {self.alpha}")
        for name, low in (("window", 1), ("overfetch", 1), ("popular_pool", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"PriorConfig.{name} must be an integer >= {low}, got {v!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PriorConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown prior config keys {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class LogPrior:
    """log((clicks + alpha) / (total + alpha * n)) of the live ads: ids int64[n] sorted, values float32[n],
    clicks float64[n] (the counts behind them)."""

    ids: np.ndarray
    values: np.ndarray
    clicks: np.ndarray

    @classmethod
    def from_clicks(cls, live: np.ndarray, clicked_ads: np.ndarray, alpha: float) -> LogPrior:
        """`live`: int64 ids of the live ads; `clicked_ads`: the ad id of every click of the window (repeats
        count; clicks of ads not live are ignored)."""
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        ids = np.unique(np.asarray(live, np.int64))
        clicks = np.zeros(len(ids), np.float64)
        clicked = np.asarray(clicked_ads, np.int64)
        if len(clicked) and len(ids):
            u, counts = np.unique(clicked, return_counts=True)
            pos = np.clip(np.searchsorted(ids, u), 0, len(ids) - 1)
            hit = ids[pos] == u
            clicks[pos[hit]] = counts[hit]
        denom = clicks.sum() + alpha * len(ids)
        values = np.log((clicks + alpha) / denom).astype(np.float32) if len(ids) else np.zeros(0, np.float32)
        return cls(ids, values, clicks)

    def at(self, ids: np.ndarray) -> np.ndarray:
        """float32 of `ids`' shape: the log share of each id; -inf for -1 pads and ads not live."""
        q = np.asarray(ids, np.int64)
        out = np.full(q.shape, -np.inf, np.float32)
        if len(self.ids) == 0:
            return out
        pos = np.clip(np.searchsorted(self.ids, q), 0, len(self.ids) - 1)
        hit = self.ids[pos] == q
        out[hit] = self.values[pos[hit]]
        return out

    def order(self, excluded_ids: np.ndarray | None = None) -> np.ndarray:
        """int64 live ids, most clicked first (ties by id), without `excluded_ids`: popularity's order."""
        keep = np.ones(len(self.ids), bool)
        if excluded_ids is not None and len(excluded_ids):
            keep = ~np.isin(self.ids, np.asarray(excluded_ids, np.int64))
        ids, values = self.ids[keep], self.values[keep]
        return ids[np.lexsort((ids, -values))]


def prior_scores(ids: np.ndarray, scores: np.ndarray, log_prior: np.ndarray, beta: float) -> np.ndarray:
    """float32[n, m]: scores + beta * log_prior, -inf where ids is -1 or the log prior is -inf (not live)."""
    valid = (np.asarray(ids) >= 0) & np.isfinite(log_prior) & np.isfinite(scores)
    bonus = np.float32(beta) * np.where(valid, log_prior, 0.0) if beta else 0.0
    return np.where(valid, scores + bonus, -np.inf).astype(np.float32)


def top_k(ids: np.ndarray, final: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64[n, k], final float32[n, k]) best first; ties keep their column order (stable), so a row already
    sorted by `final` keeps its order. Entries at -inf become (-1, -inf) pads."""
    n, m = final.shape
    out_ids = np.full((n, k), -1, np.int64)
    out_final = np.full((n, k), -np.inf, np.float32)
    kk = min(k, m)
    if kk == 0:
        return out_ids, out_final
    order = np.argsort(-final, axis=1, kind="stable")[:, :kk]
    f = np.take_along_axis(final, order, axis=1)
    i = np.take_along_axis(np.asarray(ids, np.int64), order, axis=1)
    out_ids[:, :kk] = np.where(np.isfinite(f), i, -1)
    out_final[:, :kk] = f
    return out_ids, out_final


def apply_prior(
    ids: np.ndarray, scores: np.ndarray, prior: LogPrior, beta: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidates (ids int64[n, m], -1 pads; scores float32[n, m]) by score + beta * log share; returns
    the top k (ids int64[n, k], final scores float32[n, k]). Ads that are not live in `prior` are dropped."""
    return top_k(ids, prior_scores(ids, scores, prior.at(ids), beta), k)


@dataclass(frozen=True)
class PriorFit:
    """The outcome of `fit_beta`: the chosen config and the validation table behind it."""

    config: PriorConfig
    k: int
    #: window -> beta -> validation recall@k
    recall_at_k: dict[int, dict[float, float]]
    n_users: int
    validation_days: tuple[int, ...] = ()

    @property
    def recall_chosen(self) -> float:
        return self.recall_at_k[self.config.window][self.config.beta]

    @property
    def recall_without_prior(self) -> float:
        """Validation recall@k at beta = 0 (the same for every window)."""
        return next(iter(self.recall_at_k.values()))[0.0]

    def to_json(self) -> dict[str, Any]:
        """The record for a serving or index manifest: the config and how it was chosen."""
        return {
            "config": self.config.to_json(),
            "chosen_by": f"validation recall@{self.k}",
            "k": self.k,
            "validation_days": list(self.validation_days),
            "n_users": self.n_users,
            "recall_at_k_chosen": self.recall_chosen,
            "recall_at_k_without_prior": self.recall_without_prior,
            "recall_at_k_by_window_and_beta": {
                str(w): {repr(b): r for b, r in by_beta.items()} for w, by_beta in self.recall_at_k.items()
            },
        }


def prior_from_record(record: Any, source: Path) -> PriorConfig | None:
    """The PriorConfig of a `PriorFit.to_json()` record in a manifest (`source` names it in errors); None for
    no record."""
    if record is None:
        return None
    try:
        return PriorConfig.from_json(record["config"])
    except (KeyError, TypeError, ConfigError) as e:
        raise DataError(source, f"invalid retrieval_prior record ({e})") from None


def _hits(ids: np.ndarray, relevant: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(bool[n, m] is ids[u, j] relevant to u, float64[n] |relevant[u]|)."""
    hit = np.zeros(ids.shape, bool)
    for u, rel in enumerate(relevant):
        if len(rel):
            hit[u] = np.isin(ids[u], rel) & (ids[u] >= 0)
    return hit, np.array([len(r) for r in relevant], np.float64)


def recall_by_weight(
    ids: np.ndarray,
    scores: np.ndarray,
    extra: np.ndarray,
    relevant: Sequence[np.ndarray],
    k: int,
    weights: Sequence[float],
) -> dict[float, float]:
    """weight -> recall@k of the candidates `ids` int64[n, c] (-1 pads) re-ranked by scores + weight * extra
    (float32[n, c]; -inf in either drops the candidate, at every weight), users without relevant ads skipped.
    The order is the stable one serving uses (`top_k`), so ties at the cut fall as they will in serving."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ids = np.asarray(ids, np.int64)
    if (
        ids.shape != np.shape(scores)
        or ids.shape != np.shape(extra)
        or ids.ndim != 2
        or len(relevant) != len(ids)
    ):
        raise ValueError(
            f"ids {ids.shape}, scores {np.shape(scores)}, extra {np.shape(extra)} and {len(relevant)} relevant "
            "lists disagree"
        )
    keep = np.array([len(r) > 0 for r in relevant], bool)
    ids = ids[keep]
    scores, extra = np.asarray(scores, np.float32)[keep], np.asarray(extra, np.float32)[keep]
    rel = [np.asarray(r, np.int64) for r, kp in zip(relevant, keep, strict=True) if kp]
    hit, n_rel = _hits(ids, rel)
    out: dict[float, float] = {}
    for w in sorted(float(x) for x in weights):
        final = prior_scores(ids, scores, extra, w)
        top = np.argsort(-final, axis=1, kind="stable")[:, :k]
        got = np.take_along_axis(hit & np.isfinite(final), top, 1)
        out[w] = float((got.sum(1) / n_rel).mean()) if len(rel) else 0.0
    return out


def fit_beta(
    ids: np.ndarray,
    scores: np.ndarray,
    log_prior: Mapping[int, np.ndarray],
    relevant: Sequence[np.ndarray],
    k: int,
    betas: Sequence[float] = DEFAULT_BETAS,
    base: PriorConfig | None = None,
    validation_days: Sequence[int] = (),
) -> PriorFit:
    """Choose beta and the window by recall@k on a validation period.

    Args:
        ids: int64[n, m] each validation user's candidates (-1 pads), drawn as serving draws them (ANN top
            overfetch * k plus the popular pool), or every eligible ad. Items a protocol masks (seen before)
            must already be -1.
        scores: float32[n, m] their inner products with the user's vector.
        log_prior: window -> float32[n, m], the log click share of each candidate as known before its row's
            validation day (`LogPrior.at`; -inf: not live). Rows of several days may be stacked.
        relevant: n arrays of the ads each user clicked in the validation period; users without any are
            skipped.
        k: the recall cut-off; betas: the grid, which must hold 0; base: the other fields of the result's config.

    Returns the `PriorFit` with the best recall@k (the first window given, then the smallest beta, on ties).
    """
    if not betas or any(b < 0 or not math.isfinite(b) for b in betas) or 0.0 not in betas:
        raise ValueError(f"betas must be finite, >= 0 and hold 0, got {list(betas)}")
    if not log_prior:
        raise ValueError("log_prior needs at least one window")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ids = np.asarray(ids, np.int64)
    scores = np.asarray(scores, np.float32)
    if ids.shape != scores.shape or ids.ndim != 2 or len(relevant) != len(ids):
        raise ValueError(
            f"ids {ids.shape}, scores {scores.shape} and {len(relevant)} relevant lists disagree"
        )
    base = base or PriorConfig()
    table: dict[int, dict[float, float]] = {}
    best: tuple[float, int, float] | None = None
    for w, lp in log_prior.items():
        lp = np.asarray(lp, np.float32)
        if lp.shape != ids.shape:
            raise ValueError(f"log_prior[{w}] has shape {lp.shape}, candidates {ids.shape}")
        table[int(w)] = recall_by_weight(ids, scores, lp, relevant, k, betas)
        for beta, recall in table[int(w)].items():
            if best is None or recall > best[0] + 1e-12:
                best = (recall, int(w), beta)
    assert best is not None
    cfg = PriorConfig(
        beta=best[2],
        window=best[1],
        alpha=base.alpha,
        overfetch=base.overfetch,
        popular_pool=base.popular_pool,
    )
    n_users = sum(1 for r in relevant if len(r))
    return PriorFit(cfg, int(k), table, n_users, tuple(int(d) for d in validation_days))
