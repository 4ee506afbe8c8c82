"""Retrieval: user id -> pooled user embedding -> ANN over the ad index -> live, eligible ad candidates.

For query day d, retrieval reads the store version and the index published before d (both `day=<d-1>` in a
daily cycle), and refuses to mix an index built from a different store version (version skew) unless told to.
Store and index are read at the same day: the newest one published in both (`Workspace.serving_version`), and
the index's manifest must name that store version as its source. Only ads live on day d by schedule are
eligible; callers may exclude ads.

`Retriever.retrieve` (batch, used by `derm eval`): a user with no pooled embedding is answered from the
most-clicked live ads of the 7 days before d (ties by ad_id), the `cold_start` path. The serving path
(`ranking.serve.TwoStage`) answers such users through `retrieval.cold_start` instead (categories first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from adslog.dataset import Dataset
from adslog.errors import DermError, VersionMismatchError
from adslog.workspace import Workspace, version_name
from embstore.store import StoreVersion, open_version
from index import SearchParams, load_index_artifact
from index.base import compact_rows

POPULARITY_DAYS = 7


def window_clicks(ds: Dataset, day: int, window: int = POPULARITY_DAYS) -> tuple[np.ndarray, np.ndarray]:
    """(user_id int64[c], ad_id int64[c]) of every click logged in the `window` days before `day`."""
    days = [d for d in range(day - window, day) if ds.first_day <= d <= ds.last_day]
    if not days:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    t = ds.impressions(days, ["user_id", "ad_id", "click"])
    t = t.filter(pc.equal(t.column("click"), 1))
    return t.column("user_id").to_numpy().astype(np.int64), t.column("ad_id").to_numpy().astype(np.int64)


def popularity(
    ds: Dataset,
    day: int,
    live: np.ndarray,
    window: int = POPULARITY_DAYS,
    clicked_ads: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Live ads ordered by clicks in the `window` days before `day` (ties by ad_id), with their click counts.
    Every live ad is in the list (unclicked ones last), so the list is as long as the eligible set.
    `clicked_ads` (the ad_id of each click of that window, see `window_clicks`) saves reading the log again."""
    if clicked_ads is None:
        clicked_ads = window_clicks(ds, day, window)[1]
    clicks = np.zeros(len(live), np.float32)
    if len(clicked_ads) and len(live):
        ids, counts = np.unique(clicked_ads, return_counts=True)
        pos = np.clip(np.searchsorted(live, ids), 0, len(live) - 1)
        hit = live[pos] == ids
        clicks[pos[hit]] = counts[hit]
    order = np.lexsort((live, -clicks))
    return live[order], clicks[order]


@dataclass
class Candidates:
    """ids int64[n, k] (-1 pads), scores float32[n, k] (higher is better), path: 'ann' or 'cold_start' per user."""

    ids: np.ndarray
    scores: np.ndarray
    path: list[str]
    versions: dict[str, str] = field(default_factory=dict)


class Retriever:
    """Answers retrieval queries for one query day from the versions published before it."""

    def __init__(
        self,
        ws: Workspace,
        day: int,
        ds: Dataset | None = None,
        task: str = "ctr",
        allow_skew: bool = False,
        params: SearchParams | None = None,
    ) -> None:
        self.ws = ws
        self.ds = ds if ds is not None else ws.dataset()
        self.day = int(day)
        self.params = params
        store_dir = ws.embeddings_dir(task)
        store_day = ws.version_before(store_dir, self.day)
        index_day = ws.version_before(ws.index_dir, self.day)
        if not allow_skew:
            # serve the newest day published (and at or before LATEST) in both families: a cycle that moved
            # the store's pointer but not yet the index's is invisible here
            both = ws.serving_version([store_dir, ws.index_dir], self.day)
            if both is not None:
                store_day = index_day = both
        if store_day is None and index_day is None:
            raise DermError(
                f"{ws.root}: nothing is published before day {self.day} (run `derm demo` or `derm daily`)"
            )
        self.store: StoreVersion | None = (
            open_version(store_dir, store_day) if store_day is not None else None
        )
        self.index = None
        self.index_manifest: dict = {}
        if index_day is not None and self.store is not None:
            expect = None
            if not allow_skew:
                if index_day != store_day:
                    raise VersionMismatchError(
                        f"{ws.index_dir}: index {version_name(index_day)} does not match embedding store "
                        f"{version_name(store_day or 0)} (pass allow_skew to mix them)"
                    )
                expect = {
                    "embedding_version": self.store.manifest["artifact_id"],
                    "lineage": self.store.lineage,
                }
            self.index, self.index_manifest = load_index_artifact(
                Path(ws.index_dir) / version_name(index_day), expect
            )
        self.live = self.ds.live_ads(self.day)
        #: clicks of the popularity window (user_id, ad_id): popularity and the cold-start fallback read them
        self.window_clicks = window_clicks(self.ds, self.day)
        self.popular, self.popular_clicks = popularity(
            self.ds, self.day, self.live, clicked_ads=self.window_clicks[1]
        )
        # Indexed ads that are not live today. Excluding them is the same filter as allowing only live ads, and
        # far cheaper per query when they are few (the filter is rebuilt per search); none: no filter at all.
        self._dead = np.zeros(0, np.int64)
        if self.index is not None:
            self._dead = np.setdiff1d(self.index.ids(), self.live)
        self.versions = {}
        if self.store is not None:
            self.versions["embeddings"] = self.store.version
        if self.index is not None:
            self.versions["index"] = (
                f"index:{version_name(index_day)}:{self.index_manifest['artifact_id'][:8]}"  # type: ignore[arg-type]
            )

    def user_embeddings(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vecs float32[n, dim], found bool[n]) from the serving store version; never found without an index."""
        if self.store is None or self.index is None:
            return np.zeros((len(user_ids), 1), np.float32), np.zeros(len(user_ids), bool)
        return self.store.lookup("user", user_ids)

    def search(
        self, vecs: np.ndarray, k: int, excluded_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """ANN top-k over the live ads in the index: (ids int64[n, k], scores float32[n, k]), -1 / -inf pads
        where fewer than k live ads have an embedding."""
        if self.index is None:
            raise DermError(f"{self.ws.index_dir}: no index is published before day {self.day}")
        if excluded_ids is not None:
            allowed = np.setdiff1d(self.live, excluded_ids)
            return self.index.search(vecs, k, self.params, allowed_ids=allowed)
        if len(self._dead) == 0:
            return self.index.search(vecs, k, self.params)
        # Over-fetch without a filter and drop the dead ids: a backend filter is rebuilt on every call and costs
        # more than the search (500 of 116k Flat, 12k dead, one thread: 7.9 ms with the exclusion filter, 92 ms
        # with an allow-list of the live ids, 1.5 ms unfiltered). Kept results are exactly what the filtered
        # search returns for an exact index; rows left with fewer than k take the filtered search.
        fetch = min(self.index.ntotal, 2 * k + 16)
        ids, scores = self.index.search(vecs, fetch, self.params)
        dead = self._dead[np.clip(np.searchsorted(self._dead, ids), 0, len(self._dead) - 1)] == ids
        ids, scores = compact_rows(ids, scores, (ids >= 0) & ~dead, k)
        short = np.flatnonzero((ids >= 0).sum(axis=1) < min(k, self.index.ntotal - len(self._dead)))
        if len(short):
            if len(self._dead) < len(self.live):
                filtered = self.index.search(vecs[short], k, self.params, excluded_ids=self._dead)
            else:
                filtered = self.index.search(vecs[short], k, self.params, allowed_ids=self.live)
            ids[short], scores[short] = filtered
        return ids, scores

    def retrieve(self, user_ids: np.ndarray, k: int, excluded_ids: np.ndarray | None = None) -> Candidates:
        """Top-k live candidates per user; exactly k when k eligible ads exist."""
        user_ids = np.asarray(user_ids, np.int64)
        n = len(user_ids)
        ids = np.full((n, k), -1, np.int64)
        scores = np.full((n, k), -np.inf, np.float32)
        vecs, found = self.user_embeddings(user_ids)
        if found.any():
            ids[found], scores[found] = self.search(vecs[found], k, excluded_ids)
        short = np.nonzero((ids < 0).any(axis=1))[0]
        if len(short):
            pop, pop_scores = self.popular, self.popular_clicks
            if excluded_ids is not None:
                keep = ~np.isin(pop, excluded_ids)
                pop, pop_scores = pop[keep], pop_scores[keep]
            for r in short:
                # cold start, or ANN returned fewer than k (ads of the day with no embedding): fill from popularity
                have = ids[r][ids[r] >= 0]
                new = ~np.isin(pop, have)
                extra, extra_s = pop[new][: k - len(have)], pop_scores[new][: k - len(have)]
                ids[r, len(have) : len(have) + len(extra)] = extra
                scores[r, len(have) : len(have) + len(extra)] = extra_s if not found[r] else -np.inf
        path = ["ann" if f else "cold_start" for f in found]
        return Candidates(ids, scores, path, dict(self.versions))
