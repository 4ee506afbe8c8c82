"""Candidates for a user with no embedding: popular live ads of the categories the user is likely to want.

The fallback tries three sources in order and the first that has something answers (its name is the `path`):

1. `cold_start_user_categories`: the categories of the ads in the user's own point-in-time activity (clicks
   and conversions strictly before the query day, from the `ActivityLog`; the `history` most recent events).
   A user who was active but got no embedding yet (e.g. the store dropped them) lands here.
2. `cold_start_peer_categories`: the categories clicked, over the popularity window, by users who share the
   user's values of `peer_features` (the synthetic log's `region` by default); only when those peers logged
   at least `peer_min_clicks` clicks, so a handful of clicks does not decide.
3. `cold_start_popular`: the most-clicked live ads overall (the Retriever's popularity list).

For 1 and 2, the `n_categories` categories with the most events (ties by category code) are chosen, and the
candidates are the live ads of those categories ordered by clicks in the popularity window (ties by ad_id),
then, to reach the number asked for, the other live ads in popularity order. Scores are those click counts.
Datasets without an ad `category` column go straight to 3.
"""

from __future__ import annotations

import numpy as np

from adslog.dataset import Dataset
from adslog.sequences import CLICK, CONVERSION, ActivityLog

USER_CATEGORIES = "cold_start_user_categories"
PEER_CATEGORIES = "cold_start_peer_categories"
POPULAR = "cold_start_popular"
COLD_START_PATHS = (USER_CATEGORIES, PEER_CATEGORIES, POPULAR)


class ColdStart:
    """Answers cold-start candidate requests for one query day.

    Args: `popular` int64[L] / `popular_clicks` float32[L]: every live ad in popularity order with its click
    count (`retrieval.retrieve.popularity`); `window_clicks` (user_id int64[c], ad_id int64[c]): the clicks of
    the popularity window; `activity`: the event log up to the day before `day` (None: skip source 1).
    """

    def __init__(
        self,
        ds: Dataset,
        day: int,
        popular: np.ndarray,
        popular_clicks: np.ndarray,
        window_clicks: tuple[np.ndarray, np.ndarray],
        activity: ActivityLog | None,
        n_categories: int = 3,
        peer_features: tuple[str, ...] = ("region",),
        peer_min_clicks: int = 20,
        history: int = 50,
    ) -> None:
        self.day = int(day)
        self.popular = popular
        self.popular_clicks = popular_clicks
        self.activity = activity
        self.n_categories = n_categories
        self.peer_min_clicks = peer_min_clicks
        self.history = history
        ads = ds.columns["ads"]
        self.has_category = "category" in ads
        self._ad_ids = np.zeros(0, np.int64)
        self._ad_cat = np.zeros(0, np.int64)
        if self.has_category:
            t = ds.ads(["ad_id", "category"])
            order = np.argsort(t.column("ad_id").to_numpy())
            self._ad_ids = t.column("ad_id").to_numpy()[order].astype(np.int64)
            self._ad_cat = t.column("category").to_numpy()[order].astype(np.int64)
        self.popular_cat = self.categories_of(popular)
        users = ds.users(["user_id"]).column("user_id").to_numpy().astype(np.int64)
        self.user_ids = np.sort(users)
        # peers: one group code per user from the values of the peer features the users table has
        self.peer_features = tuple(f for f in peer_features if f in ds.columns["users"])
        self._group: np.ndarray | None = None
        self._group_cat: dict[int, np.ndarray] = {}
        if self.peer_features and self.has_category:
            t = ds.users(["user_id", *self.peer_features])
            order = np.argsort(t.column("user_id").to_numpy())
            vals = np.stack(
                [
                    t.column(f).to_numpy(zero_copy_only=False)[order].astype(np.int64)
                    for f in self.peer_features
                ],
                axis=1,
            )
            _, self._group = np.unique(vals, axis=0, return_inverse=True)
            self._group = self._group.ravel()
            cu, ca = window_clicks
            g = self.group_of(cu)
            c = self.categories_of(ca)
            ok = (g >= 0) & (c >= 0)
            g, c = g[ok], c[ok]
            order = np.argsort(g, kind="stable")
            gids, start = np.unique(g[order], return_index=True)
            for gid, part in zip(gids, np.split(c[order], start[1:]), strict=True):
                self._group_cat[int(gid)] = part

    def known(self, user_id: int) -> bool:
        """Whether the dataset's users table has this user."""
        pos = np.searchsorted(self.user_ids, user_id)
        return bool(pos < len(self.user_ids) and self.user_ids[pos] == user_id)

    def categories_of(self, ad_ids: np.ndarray) -> np.ndarray:
        """int64 category per ad id; -1 for unknown ads (or a dataset without categories)."""
        ad_ids = np.asarray(ad_ids, np.int64)
        if len(self._ad_ids) == 0:
            return np.full(len(ad_ids), -1, np.int64)
        pos = np.clip(np.searchsorted(self._ad_ids, ad_ids), 0, len(self._ad_ids) - 1)
        return np.where(self._ad_ids[pos] == ad_ids, self._ad_cat[pos], -1)

    def group_of(self, user_ids: np.ndarray) -> np.ndarray:
        """Peer group code per user id; -1 for users not in the users table (or no peer features)."""
        user_ids = np.asarray(user_ids, np.int64)
        if self._group is None or len(self.user_ids) == 0:
            return np.full(len(user_ids), -1, np.int64)
        pos = np.clip(np.searchsorted(self.user_ids, user_ids), 0, len(self.user_ids) - 1)
        return np.where(self.user_ids[pos] == user_ids, self._group[pos], -1)

    def user_categories(self, user_id: int) -> np.ndarray:
        """Categories of the ads in the user's clicks and conversions before the query day (most recent
        `history` events), one entry per event."""
        if self.activity is None or not self.has_category:
            return np.zeros(0, np.int64)
        s = self.activity.sequences(
            np.array([user_id], np.int64), np.array([self.day * 86400], np.int64), self.history
        )
        ads = s.ad_id[0][np.isin(s.kind[0], (CLICK, CONVERSION)) & (s.ad_id[0] >= 0)]
        c = self.categories_of(ads)
        return c[c >= 0]

    def peer_categories(self, user_id: int) -> np.ndarray:
        """Categories of the window's clicks by the user's peers (one entry per click), if there are enough."""
        g = int(self.group_of(np.array([user_id]))[0])
        c = self._group_cat.get(g, np.zeros(0, np.int64))
        return c if len(c) >= self.peer_min_clicks else np.zeros(0, np.int64)

    def top_categories(self, events: np.ndarray) -> np.ndarray:
        """The `n_categories` most frequent categories of `events` (ties by category code)."""
        cats, counts = np.unique(events, return_counts=True)
        return cats[np.lexsort((cats, -counts))][: self.n_categories]

    def candidates(
        self, user_id: int, n: int, excluded_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """(ids int64[m], scores float32[m], path), m = min(n, live ads not excluded): see the module
        docstring."""
        keep = np.ones(len(self.popular), bool)
        if excluded_ids is not None:
            keep = ~np.isin(self.popular, excluded_ids)
        path, events = USER_CATEGORIES, self.user_categories(user_id)
        if len(events) == 0:
            path, events = PEER_CATEGORIES, self.peer_categories(user_id)
        if len(events) == 0:
            order = np.flatnonzero(keep)[:n]
            return self.popular[order], self.popular_clicks[order], POPULAR
        first = np.isin(self.popular_cat, self.top_categories(events))
        order = np.concatenate([np.flatnonzero(first & keep), np.flatnonzero(~first & keep)])[:n]
        return self.popular[order], self.popular_clicks[order], path
