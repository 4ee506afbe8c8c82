"""Retrieval: user id -> pooled user embedding -> ANN over the ad index -> live, eligible ad candidates.

For query day d, retrieval reads the store version and the index published before d (both `day=<d-1>` in a
daily cycle), and refuses to mix an index built from a different store version (version skew) unless told to.
Store and index are read at the same day: the newest one published in both (`Workspace.serving_version`), and
the index's manifest must name that store version as its source. Only ads live on day d by schedule are eligible; callers may exclude ads or advertisers.

Cold start: a user with no pooled embedding is answered from the most-clicked live ads of the 7 days before d
(ties by ad_id), the `cold_start` path.
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

POPULARITY_DAYS = 7


def popularity(
    ds: Dataset, day: int, live: np.ndarray, window: int = POPULARITY_DAYS
) -> tuple[np.ndarray, np.ndarray]:
    """Live ads ordered by clicks in the `window` days before `day` (ties by ad_id), with their click counts.
    Every live ad is in the list (unclicked ones last), so the list is as long as the eligible set."""
    days = [d for d in range(day - window, day) if ds.first_day <= d <= ds.last_day]
    clicks = np.zeros(len(live), np.float32)
    if days and len(live):
        t = ds.impressions(days, ["ad_id", "click"])
        t = t.filter(pc.equal(t.column("click"), 1))
        ids, counts = np.unique(t.column("ad_id").to_numpy(), return_counts=True)
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
        self.popular, self.popular_clicks = popularity(self.ds, self.day, self.live)
        self.versions = {}
        if self.store is not None:
            self.versions["embeddings"] = self.store.version
        if self.index is not None:
            self.versions["index"] = (
                f"index:{version_name(index_day)}:{self.index_manifest['artifact_id'][:8]}"  # type: ignore[arg-type]
            )

    def user_embeddings(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.store is None:
            return np.zeros((len(user_ids), 1), np.float32), np.zeros(len(user_ids), bool)
        return self.store.lookup("user", user_ids)

    def retrieve(self, user_ids: np.ndarray, k: int, excluded_ids: np.ndarray | None = None) -> Candidates:
        """Top-k live candidates per user; exactly k when k eligible ads exist."""
        user_ids = np.asarray(user_ids, np.int64)
        n = len(user_ids)
        ids = np.full((n, k), -1, np.int64)
        scores = np.full((n, k), -np.inf, np.float32)
        vecs, found = self.user_embeddings(user_ids)
        if self.index is None:
            found[:] = False
        allowed = self.live if excluded_ids is None else np.setdiff1d(self.live, excluded_ids)
        if found.any():
            ann_ids, ann_scores = self.index.search(  # type: ignore[union-attr]
                vecs[found], k, self.params, allowed_ids=allowed
            )
            ids[found], scores[found] = ann_ids, ann_scores
        pop = self.popular[np.isin(self.popular, allowed)]
        pop_scores = self.popular_clicks[np.isin(self.popular, allowed)]
        for r in np.nonzero((ids < 0).any(axis=1))[0]:
            # cold start, or ANN returned fewer than k (ads of the day with no embedding): fill from popularity
            have = ids[r][ids[r] >= 0]
            extra = pop[~np.isin(pop, have)][: k - len(have)]
            extra_s = pop_scores[~np.isin(pop, have)][: k - len(have)]
            ids[r, len(have) : len(have) + len(extra)] = extra
            scores[r, len(have) : len(have) + len(extra)] = extra_s if not found[r] else -np.inf
        path = ["ann" if f else "cold_start" for f in found]
        return Candidates(ids, scores, path, dict(self.versions))
