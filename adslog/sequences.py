"""Point-in-time user activity sequences.

A user's activity is a time-ordered list of events: onsite clicks and conversions (tokens of an ad) and
offsite conversions (tokens of an advertiser). The sequence an impression at time `ts` sees holds only events
with time strictly before `ts`: a click happens at its impression's `ts`, a conversion at its `conversion_ts`,
an offsite conversion at its own `ts`. So an impression never sees its own click, and a conversion that lands
later than an impression is invisible to it, whatever day it was logged on.

Lookups are vectorised: events are sorted by (user, time) and each query is one `searchsorted` on a packed
int64 key `user_rank << 32 | time`, so building sequences for a million impressions takes well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from adslog.dataset import Dataset

# Event kinds (0 pads a sequence).
PAD, CLICK, CONVERSION, OFFSITE = 0, 1, 2, 3


@dataclass(frozen=True)
class Sequences:
    """Sequences for m queries, most recent event first; padded slots have kind PAD and ids -1.

    ad_id: int64[m, L]; advertiser_id: int64[m, L]; kind: int8[m, L]; length: int32[m].
    """

    ad_id: np.ndarray
    advertiser_id: np.ndarray
    kind: np.ndarray
    length: np.ndarray


class ActivityLog:
    """Every event of every user, sorted by (user, time). Build once per cycle, query many times."""

    def __init__(
        self,
        user_id: np.ndarray,
        ts: np.ndarray,
        kind: np.ndarray,
        ad_id: np.ndarray,
        advertiser_id: np.ndarray,
    ) -> None:
        order = np.lexsort((ts, user_id))
        self.user_id = np.ascontiguousarray(user_id[order], dtype=np.int64)
        self.ts = np.ascontiguousarray(ts[order], dtype=np.int64)
        self.kind = np.ascontiguousarray(kind[order], dtype=np.int8)
        self.ad_id = np.ascontiguousarray(ad_id[order], dtype=np.int64)
        self.advertiser_id = np.ascontiguousarray(advertiser_id[order], dtype=np.int64)
        self.users, self._start = np.unique(self.user_id, return_index=True)
        rank = np.searchsorted(self.users, self.user_id)
        if len(self.ts) and (self.ts.min() < 0 or self.ts.max() >= 2**32):
            raise ValueError("event times must be unix seconds in [0, 2**32)")
        self._key = (rank.astype(np.int64) << 32) | self.ts

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_dataset(cls, ds: Dataset, last_day: int, first_day: int | None = None) -> ActivityLog:
        """Events of impressions logged on days first_day..last_day, plus offsite conversions before the end
        of last_day. Conversions of those impressions are included at their own `conversion_ts`; queries filter
        by time, so including a conversion that lands after `last_day` can never leak into an earlier query."""
        lo = ds.first_day if first_day is None else first_day
        days = range(lo, last_day + 1)
        imp_cols = ds.columns["impressions"]
        cols = ["ts", "user_id", "ad_id", "click"]
        has_conv = "conversion" in imp_cols and "conversion_ts" in imp_cols
        if has_conv:
            cols += ["conversion", "conversion_ts"]
        t = ds.impressions(days, cols)
        adv_of = AdvertiserMap.from_dataset(ds)
        parts_u, parts_t, parts_k, parts_a = [], [], [], []
        clicked = t.filter(pc.equal(t.column("click"), 1))
        parts_u.append(clicked.column("user_id").to_numpy())
        parts_t.append(clicked.column("ts").to_numpy())
        parts_k.append(np.full(clicked.num_rows, CLICK, np.int8))
        parts_a.append(clicked.column("ad_id").to_numpy())
        if has_conv:
            conv = t.filter(pc.equal(t.column("conversion"), 1))
            parts_u.append(conv.column("user_id").to_numpy())
            parts_t.append(conv.column("conversion_ts").to_numpy())
            parts_k.append(np.full(conv.num_rows, CONVERSION, np.int8))
            parts_a.append(conv.column("ad_id").to_numpy())
        ad_ids = np.concatenate(parts_a) if parts_a else np.zeros(0, np.int64)
        advs = [adv_of(ad_ids)]
        if ds.has_table("offsite_conversions"):
            off = ds.table("offsite_conversions", ["user_id", "advertiser_id", "ts"])
            end = (last_day + 1) * 86400
            ots = off.column("ts").to_numpy()
            keep = ots < end
            parts_u.append(off.column("user_id").to_numpy()[keep])
            parts_t.append(ots[keep])
            parts_k.append(np.full(int(keep.sum()), OFFSITE, np.int8))
            ad_ids = np.concatenate([ad_ids, np.full(int(keep.sum()), -1, np.int64)])
            advs.append(off.column("advertiser_id").to_numpy()[keep])
        return cls(
            np.concatenate(parts_u).astype(np.int64),
            np.concatenate(parts_t).astype(np.int64),
            np.concatenate(parts_k),
            ad_ids.astype(np.int64),
            np.concatenate(advs).astype(np.int64),
        )

    def sequences(self, user_ids: np.ndarray, ts: np.ndarray, length: int) -> Sequences:
        """The `length` most recent events strictly before `ts[i]` of user `user_ids[i]`, for each i."""
        user_ids = np.asarray(user_ids, np.int64)
        ts = np.asarray(ts, np.int64)
        m = len(user_ids)
        out_ad = np.full((m, length), -1, np.int64)
        out_adv = np.full((m, length), -1, np.int64)
        out_kind = np.zeros((m, length), np.int8)
        if m == 0 or len(self.ts) == 0 or length == 0:
            return Sequences(out_ad, out_adv, out_kind, np.zeros(m, np.int32))
        rank = np.searchsorted(self.users, user_ids)
        rank_c = np.minimum(rank, len(self.users) - 1)
        known = self.users[rank_c] == user_ids
        key = (rank_c.astype(np.int64) << 32) | np.clip(ts, 0, 2**32 - 1)
        end = np.searchsorted(self._key, key, side="left")  # first event at or after ts
        start = self._start[rank_c]
        n_before = np.where(known, end - start, 0)
        lengths = np.minimum(n_before, length).astype(np.int32)
        offs = np.arange(1, length + 1)
        idx = end[:, None] - offs[None, :]  # most recent first
        valid = offs[None, :] <= lengths[:, None]
        idx = np.where(valid, idx, 0)
        out_ad = np.where(valid, self.ad_id[idx], -1)
        out_adv = np.where(valid, self.advertiser_id[idx], -1)
        out_kind = np.where(valid, self.kind[idx], PAD).astype(np.int8)
        return Sequences(out_ad, out_adv, out_kind, lengths)


class AdvertiserMap:
    """Vectorised ad_id -> advertiser_id (and category) lookup; unknown ads map to -1."""

    def __init__(self, ad_ids: np.ndarray, values: np.ndarray) -> None:
        order = np.argsort(ad_ids)
        self.ad_ids = ad_ids[order].astype(np.int64)
        self.values = values[order].astype(np.int64)

    @classmethod
    def from_dataset(cls, ds: Dataset, column: str = "advertiser_id") -> AdvertiserMap:
        if column in ds.columns["ads"]:
            t = ds.ads(["ad_id", column])
            return cls(t.column("ad_id").to_numpy(), t.column(column).to_numpy())
        ids = ds.ads(["ad_id"]).column("ad_id").to_numpy()
        return cls(ids, ids)  # documented stand-in: advertiser_id = ad_id

    def __call__(self, ad_ids: np.ndarray) -> np.ndarray:
        ad_ids = np.asarray(ad_ids, np.int64)
        if len(self.ad_ids) == 0:
            return np.full(ad_ids.shape, -1, np.int64)
        pos = np.clip(np.searchsorted(self.ad_ids, ad_ids), 0, len(self.ad_ids) - 1)
        return np.where(self.ad_ids[pos] == ad_ids, self.values[pos], -1)
