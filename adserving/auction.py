"""The auction: how scored candidates become the served list.

Order: by `ecpm` (default) or by `rank_score` (`Order.RANK_SCORE`), ties by ad_id, with at most
`max_per_advertiser` ads of one advertiser in the top k (`select_top`): a capped advertiser's lower ads are
skipped and the list fills from the next candidates of other advertisers (fewer than k results only when the
candidates' advertisers run out).

eCPM, the expected revenue per thousand impressions in the bid's currency unit:
    objective 0 (click-optimised, `bid` = price per click):            ecpm = 1000 x bid x p_ctr
    objective 1 (conversion-optimised, `bid` = price per conversion):  ecpm = 1000 x bid x p_ctr x p_cvr
Datasets without these ad columns (imported logs) count every ad as its own advertiser, bid 1, objective 0
(`AdBook`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import numpy as np

from dermcore.errors import DermError

ECPM_SCALE = 1000.0  # eCPM is per thousand impressions
CONVERSION_OBJECTIVE = 1


class Order(StrEnum):
    """The final order: expected value per impression, or the ranker's CTR alone."""

    ECPM = "ecpm"
    RANK_SCORE = "rank_score"


def ecpm(bid: np.ndarray, p_ctr: np.ndarray, p_cvr: np.ndarray, objective: np.ndarray) -> np.ndarray:
    """float64[n] expected revenue per thousand impressions (see the module docstring for the units)."""
    value = bid.astype(np.float64) * p_ctr.astype(np.float64)
    value *= np.where(objective == CONVERSION_OBJECTIVE, p_cvr.astype(np.float64), 1.0)
    return ECPM_SCALE * value


def select_top(
    key: np.ndarray, ids: np.ndarray, advertiser: np.ndarray, k: int, cap: int | None
) -> np.ndarray:
    """Positions of the top k by `key` (descending, ties by id) with at most `cap` per advertiser, in order.

    Equal to the greedy walk down the sorted list that skips an ad whose advertiser already has `cap` ads:
    an ad is kept iff fewer than `cap` ads of its advertiser rank above it."""
    order = np.lexsort((ids, -key))
    if cap is None or len(order) == 0:
        return order[:k]
    adv = advertiser[order]
    by_adv = np.argsort(adv, kind="stable")  # groups advertisers, keeps the key order inside each group
    sorted_adv = adv[by_adv]
    start = np.flatnonzero(np.r_[True, sorted_adv[1:] != sorted_adv[:-1]])
    size = np.diff(np.r_[start, len(adv)])
    occurrence = np.empty(len(adv), np.int64)
    occurrence[by_adv] = np.arange(len(adv)) - np.repeat(start, size)
    return order[occurrence < cap][:k]


class AdBook:
    """Serving attributes of every ad, by id: advertiser_id int64, bid float32, objective int8."""

    def __init__(self, ads: Any, columns: dict[str, Any]) -> None:
        names = ["ad_id"] + [c for c in ("advertiser_id", "bid", "objective") if c in columns]
        t = ads(names)
        ids = t.column("ad_id").to_numpy().astype(np.int64)
        order = np.argsort(ids)
        self.ids = ids[order]

        def col(name: str, default: np.ndarray, dtype: Any) -> np.ndarray:
            if name not in names:
                return default.astype(dtype)
            return t.column(name).to_numpy(zero_copy_only=False)[order].astype(dtype)

        n = len(self.ids)
        self.advertiser = col("advertiser_id", self.ids, np.int64)
        self.bid = col("bid", np.ones(n), np.float32)
        self.objective = col("objective", np.zeros(n), np.int8)

    def rows(self, ad_ids: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(self.ids, ad_ids), 0, max(len(self.ids) - 1, 0))
        if len(ad_ids) and not (self.ids[pos] == ad_ids).all():
            raise DermError(f"ads missing from the ads table: {ad_ids[self.ids[pos] != ad_ids][:5].tolist()}")
        return pos
