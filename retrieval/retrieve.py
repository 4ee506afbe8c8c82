"""Retrieval: user id -> pooled user embedding -> ANN over the ad index -> live, eligible ad candidates.

For query day d, retrieval reads the store version and the index published before d (both `day=<d-1>` in a
daily cycle), and refuses to mix an index built from a different store version (version skew) unless told to.
Store and index are read at the same day: the newest one published in both (`Workspace.serving_version`), and
the index's manifest must name that store version as its source. Only ads live on day d by schedule are
eligible; callers may exclude ads.

`Retriever.retrieve` (batch, used by `derm eval`): a user with no pooled embedding is answered by the cold-start
fallback it is given (`retrieval.cold_start.ColdStart`, categories first: what `derm eval` and the serving
path `adserving.two_stage.TwoStage` both pass), else from the most-clicked live ads of the 7 days before d (ties
by ad_id), the `cold_start` path.

Optional popularity prior (by default the one the daily cycle recorded in the served index version, none when it
recorded none: the ANN order; or `Retriever(prior=PriorConfig(...))`): candidates are
re-ranked by inner product + beta x log recent click share (`retrieval.prior`), and `Retriever.fit_prior`
chooses beta on a validation day.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.compute as pc

from adslog.dataset import Dataset
from adslog.sequences import ActivityLog
from adslog.workspace import Workspace, version_name
from dermcore.errors import DataError, DermError, VersionMismatchError
from embstore.store import StoreVersion, embeddings_dir, open_version
from index import SearchParams, load_index_artifact
from index.boundary import compact_rows
from index.versions import index_dir
from retrieval.cold_start import ColdStart
from retrieval.graph_filter import (
    DEFAULT_GAMMAS,
    CoClickGraph,
    GraphConfig,
    GraphFit,
    blend,
    candidate_inner,
    find_sorted,
    fit_gamma,
    graph_from_record,
    union,
    with_graph_top,
)
from retrieval.prior import (
    DEFAULT_BETAS,
    POPULARITY_DAYS,
    LogPrior,
    PriorConfig,
    PriorFit,
    apply_prior,
    fit_beta,
    prior_from_record,
    prior_scores,
    top_k,
)

log = logging.getLogger(__name__)


def popularity_window_of(index_manifest: dict[str, Any], source: Path) -> int:
    """The popularity window an index version records (`upstream.popularity_window`; POPULARITY_DAYS when it
    records none, as versions before the option)."""
    w = (index_manifest.get("upstream") or {}).get("popularity_window", POPULARITY_DAYS)
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
        raise DataError(source, f"invalid popularity_window {w!r} in the index manifest")
    return w


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
        prior: PriorConfig | None | Literal["index"] = "index",
        store: StoreVersion | None = None,
        graph: GraphConfig | None | Literal["index"] = "index",
    ) -> None:
        """`prior`: re-rank ANN candidates with a popularity prior (`retrieval.prior`). "index" (the default,
        what serving and eval use): the prior the daily cycle fitted and recorded in the served index version
        (`upstream.retrieval_prior`), none when it recorded none; None: the ANN order; a PriorConfig: that one.
        `store`: the store version to read, from elsewhere (an online feature store) instead of the workspace;
        it must be the version the workspace serves at this day, and the index is checked against its artifact
        id and lineage as against the workspace's own. `graph`: blend the co-click graph's candidates and score
        in (`retrieval.graph_filter`); "index" (the default): the one the cycle recorded in the served index
        version (`upstream.retrieval_graph`), none when it recorded none or gamma 0; None: off; a GraphConfig:
        that one (the graph is fitted on its window's clicks even at gamma 0, for `fit_graph`)."""
        self.ws = ws
        self.ds = ds if ds is not None else ws.dataset()
        self.day = int(day)
        self.params = params
        store_dir = embeddings_dir(ws, task)
        store_day = ws.version_before(store_dir, self.day)
        index_day = ws.version_before(index_dir(ws), self.day)
        if not allow_skew:
            # serve the newest day published (and at or before LATEST) in both families: a cycle that moved
            # the store's pointer but not yet the index's is invisible here
            both = ws.serving_version([store_dir, index_dir(ws)], self.day)
            if both is not None:
                store_day = index_day = both
        if store_day is None and index_day is None:
            raise DermError(
                f"{ws.root}: nothing is published before day {self.day} (run `derm run --data DATA --work WORK` on a dataset, or `derm daily` up to day {self.day - 1})"
            )
        if store is not None and store.day != store_day:
            raise VersionMismatchError(
                f"{store.dir}: serves store {store.version}, but the workspace serves "
                f"{version_name(store_day) if store_day is not None else 'no store version'} before day "
                f"{self.day} (publish that version to the feature store)"
            )
        self.store: StoreVersion | None = (
            store
            if store is not None
            else (open_version(store_dir, store_day) if store_day is not None else None)
        )
        self.index = None
        self.index_manifest: dict = {}
        if index_day is not None and self.store is not None:
            expect = None
            if not allow_skew:
                if index_day != store_day:
                    raise VersionMismatchError(
                        f"{index_dir(ws)}: index {version_name(index_day)} does not match embedding store "
                        f"{version_name(store_day or 0)} (pass allow_skew to mix them)"
                    )
                expect = {
                    "embedding_version": self.store.manifest["artifact_id"],
                    "lineage": self.store.lineage,
                }
            self.index, self.index_manifest = load_index_artifact(
                Path(index_dir(ws)) / version_name(index_day), expect
            )
        self.live = self.ds.live_ads(self.day)
        #: days (periods) of clicks behind the popularity list and the cold-start fallback: the window the cycle
        #: recorded in the served index version (`upstream.popularity_window`), else POPULARITY_DAYS
        self.popularity_window = popularity_window_of(
            self.index_manifest, Path(index_dir(ws)) / version_name(index_day or 0)
        )
        #: clicks of the popularity window (user_id, ad_id): popularity and the cold-start fallback read them
        self.window_clicks = window_clicks(self.ds, self.day, self.popularity_window)
        self.popular, self.popular_clicks = popularity(
            self.ds, self.day, self.live, self.popularity_window, clicked_ads=self.window_clicks[1]
        )
        if prior == "index":
            recorded = (self.index_manifest.get("upstream") or {}).get("retrieval_prior")
            prior = prior_from_record(recorded, Path(index_dir(ws)) / version_name(index_day or 0))
        self.prior: PriorConfig | None = prior
        #: the log click share of the live ads over the prior's window (None without a prior)
        self.log_prior: LogPrior | None = None
        if prior is not None:
            self.log_prior = self.window_prior(prior.window, prior.alpha)
        if graph == "index":
            recorded = (self.index_manifest.get("upstream") or {}).get("retrieval_graph")
            graph = graph_from_record(recorded, Path(index_dir(ws)) / version_name(index_day or 0))
            graph = graph if graph is not None and graph.gamma > 0 else None
        self.graph: GraphConfig | None = graph
        #: the co-click graph of the graph's window and each user's clicks in it (None without a graph)
        self.graph_filter: CoClickGraph | None = None
        self._histories: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._graph_live = np.zeros(0, bool)  # which of the graph's ads are live today
        if graph is not None:
            g_users, g_ads = window_clicks(self.ds, self.day, graph.window)
            self.graph_filter = CoClickGraph.fit_cached(g_users, g_ads, graph.rank, graph.ideal_weight)
            self._graph_live = self.graph_filter.mask(self.live)
            order = np.argsort(g_users, kind="stable")
            h_users, start = np.unique(g_users[order], return_index=True)
            self._histories = (h_users, np.r_[start, len(order)], g_ads[order])
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

    def cold_start(
        self,
        activity: ActivityLog | None,
        n_categories: int = 3,
        peer_features: tuple[str, ...] = ("region",),
        peer_min_clicks: int = 20,
    ) -> ColdStart:
        """The cold-start fallback over this retriever's popularity list and window (`retrieval.cold_start`);
        `activity`: the event log before the query day (None: skip the user's own categories)."""
        return ColdStart(
            self.ds,
            self.day,
            self.popular,
            self.popular_clicks,
            self.window_clicks,
            activity,
            n_categories=n_categories,
            peer_features=peer_features,
            peer_min_clicks=peer_min_clicks,
        )

    def user_embeddings(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vecs float32[n, dim], found bool[n]) from the serving store version; never found without an index."""
        if self.store is None or self.index is None:
            return np.zeros((len(user_ids), 1), np.float32), np.zeros(len(user_ids), bool)
        return self.store.lookup("user", user_ids)

    def window_prior(self, window: int, alpha: float) -> LogPrior:
        """The log click share of the live ads over the `window` days before the query day."""
        clicked = (
            self.window_clicks[1]
            if window == self.popularity_window
            else window_clicks(self.ds, self.day, window)[1]
        )
        return LogPrior.from_clicks(self.live, clicked, alpha)

    def search(
        self,
        vecs: np.ndarray,
        k: int,
        excluded_ids: np.ndarray | None = None,
        user_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over the live ads in the index: (ids int64[n, k], scores float32[n, k]), -1 / -inf pads where
        fewer than k live ads have an embedding. Without a prior: the ANN's top k and inner products; with one:
        the top k by inner product + beta x log click share, and that score (`retrieval.prior`). With a graph
        (and `user_ids` int64[n], whose window clicks it reads): the top k of the candidate union by that score
        + gamma x the graph score (`graph_candidates`)."""
        if self.graph is not None and user_ids is not None:
            ids, base, g = self.graph_candidates(
                vecs, np.asarray(user_ids, np.int64), k, self.graph, excluded_ids
            )
            return top_k(ids, blend(base, g, self.graph.gamma), k)
        if self.prior is not None and self.log_prior is not None:
            return self._search_with_prior(vecs, k, excluded_ids, self.prior, self.log_prior)
        return self.ann_search(vecs, k, excluded_ids)

    def ann_search(
        self, vecs: np.ndarray, k: int, excluded_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """ANN top-k over the live ads in the index: (ids int64[n, k], scores float32[n, k]), -1 / -inf pads
        where fewer than k live ads have an embedding."""
        if self.index is None:
            raise DermError(f"{index_dir(self.ws)}: no index is published before day {self.day}")
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

    def _pool(self, order: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The first `size` ads of `order` that have a vector in the store: (ids int64[p], vecs float32[p, dim])."""
        assert self.store is not None
        ids = order[:size]
        vecs, found = self.store.lookup("ad", ids)
        return ids[found], vecs[found]

    def prior_candidates(
        self,
        vecs: np.ndarray,
        depth: int,
        pool_ids: np.ndarray,
        pool_vecs: np.ndarray,
        excluded_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per query: the ANN top `depth` and the `pool_ids` ads (int64[p], with their store vectors float32[p,
        dim]), the pool scored by the exact inner product. Returns ids int64[n, depth + p] (-1 pads and repeats),
        scores float32[n, depth + p] (-inf there) and floor float32[n]: the lowest ANN score fetched, -inf where
        the ANN returned fewer than `depth` (every eligible ad)."""
        ann_ids, ann_scores = self.ann_search(vecs, depth, excluded_ids)
        floor = np.where((ann_ids >= 0).all(axis=1), ann_scores[:, -1], -np.inf).astype(np.float32)
        n = len(vecs)
        # a pool ad the ANN also returned keeps its ANN entry (the first)
        ids = union(ann_ids, np.broadcast_to(pool_ids, (n, len(pool_ids))))
        scores = np.concatenate([ann_scores, (vecs @ pool_vecs.T).astype(np.float32)], axis=1)
        scores[ids < 0] = -np.inf
        return ids, scores, floor

    def _search_with_prior(
        self, vecs: np.ndarray, k: int, excluded_ids: np.ndarray | None, cfg: PriorConfig, prior: LogPrior
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top k by inner product + beta x log share, exact where the bound holds (`retrieval.prior`)."""
        if self.index is None:
            raise DermError(f"{index_dir(self.ws)}: no index is published before day {self.day}")
        order = prior.order(excluded_ids)
        size = cfg.popular_pool * k
        pool_ids, pool_vecs = self._pool(order, size)
        # the best log share left out of the pool (ads without a vector are never candidates, so this bounds
        # them from above); beta * -inf would be nan at beta 0
        outside = float(prior.at(order[size : size + 1])[0]) if len(order) > size else -np.inf
        bonus = cfg.beta * outside if cfg.beta > 0 else 0.0
        n_index = self.index.ntotal
        depth = min(max(cfg.overfetch * k, k), n_index)
        out_ids = np.full((len(vecs), k), -1, np.int64)
        out_scores = np.full((len(vecs), k), -np.inf, np.float32)
        rows = np.arange(len(vecs))
        while len(rows):
            ids, scores, floor = self.prior_candidates(vecs[rows], depth, pool_ids, pool_vecs, excluded_ids)
            top_ids, top_scores = apply_prior(ids, scores, prior, cfg.beta, k)
            done = (top_scores[:, -1] >= floor + bonus) | (depth >= n_index)
            out_ids[rows[done]], out_scores[rows[done]] = top_ids[done], top_scores[done]
            rows = rows[~done]
            if len(rows):
                log.debug("prior: %d rows fetched again at depth %d", len(rows), min(4 * depth, n_index))
            depth = min(4 * depth, n_index)
        return out_ids, out_scores

    def graph_histories(self, user_ids: np.ndarray) -> list[np.ndarray]:
        """Each user's clicked ads in the graph's window (empty for a user without any, or without a graph)."""
        if self._histories is None:
            return [np.zeros(0, np.int64) for _ in user_ids]
        users, bounds, ads = self._histories
        pos, hit = find_sorted(users, user_ids)
        return [
            ads[bounds[p] : bounds[p + 1]] if h else np.zeros(0, np.int64)
            for p, h in zip(pos, hit, strict=True)
        ]

    def graph_candidates(
        self,
        vecs: np.ndarray,
        user_ids: np.ndarray,
        k: int,
        cfg: GraphConfig,
        excluded_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The candidate union of the graph path: the ANN top `cfg.depth * k` (plus the prior's popular pool when
        this retriever has a prior) and the co-click graph's top `cfg.depth * k` live ads. Returns ids int64[n,
        c] (-1 pads and repeats), their score without the graph float32[n, c] (exact inner product, + beta x log
        click share with a prior; -inf for pads, ads without a vector and, with a prior, ads not live) and
        their graph score float32[n, c] (0: no graph evidence). The top k of the union is served, not the exact
        top k over every eligible ad."""
        if self.index is None or self.store is None or self.graph_filter is None:
            raise DermError(f"{index_dir(self.ws)}: no index or graph before day {self.day}")
        depth = min(max(cfg.depth * k, k), self.index.ntotal)
        if self.prior is not None and self.log_prior is not None:
            pool_ids, pool_vecs = self._pool(self.log_prior.order(excluded_ids), self.prior.popular_pool * k)
            ann_ids = self.prior_candidates(vecs, depth, pool_ids, pool_vecs, excluded_ids)[0]
        else:
            ann_ids = self.ann_search(vecs, depth, excluded_ids)[0]
        graph = self.graph_filter
        allowed = self._graph_live
        if excluded_ids is not None:
            allowed = allowed & ~graph.mask(excluded_ids)
        ids, g = with_graph_top(graph, ann_ids, self.graph_histories(user_ids), depth, allowed)
        uniq = np.unique(ids[ids >= 0])
        ad_vecs, found = self.store.lookup("ad", uniq)
        pos, _ = find_sorted(uniq, ids)
        ok = (ids >= 0) & (found[pos] if len(uniq) else False)
        scores = np.where(ok, candidate_inner(vecs, ad_vecs, pos) if len(uniq) else 0.0, -np.inf)
        scores = scores.astype(np.float32)
        if self.prior is not None and self.log_prior is not None:
            scores = prior_scores(ids, scores, self.log_prior.at(ids), self.prior.beta)
        return ids, scores, g

    def fit_graph(
        self,
        user_ids: np.ndarray,
        relevant: Sequence[np.ndarray],
        k: int,
        gammas: Sequence[float] = DEFAULT_GAMMAS,
    ) -> GraphFit:
        """Choose the graph's gamma by recall@k of this query day's clicks, over the candidates serving draws
        (`graph_candidates`, with this retriever's prior, if any, at its beta). Call it with the Retriever of a
        validation day D made with `graph=GraphConfig(...)`; users without an embedding are skipped."""
        if self.graph is None:
            raise DermError("fit_graph needs a Retriever made with graph=GraphConfig(...)")
        user_ids = np.asarray(user_ids, np.int64)
        if len(relevant) != len(user_ids):
            raise DermError(f"{len(user_ids)} users but {len(relevant)} relevant lists")
        vecs, found = self.user_embeddings(user_ids)
        ids, base, g = self.graph_candidates(vecs[found], user_ids[found], k, self.graph)
        rel = [np.asarray(relevant[int(i)], np.int64) for i in np.flatnonzero(found)]
        return fit_gamma(ids, base, g, rel, k, gammas, self.graph, validation=f"day {self.day}")

    def fit_prior(
        self,
        user_ids: np.ndarray,
        relevant: Sequence[np.ndarray],
        k: int,
        betas: Sequence[float] = DEFAULT_BETAS,
        windows: Sequence[int] = (POPULARITY_DAYS,),
        base: PriorConfig | None = None,
    ) -> PriorFit:
        """Choose the prior's beta (and window) by recall@k of this query day's clicks.

        Call it with the Retriever of a validation day D (it reads the versions published before D, and counts
        clicks before D), `user_ids` int64[n] D's users with clicks and `relevant` the ads each clicked on D;
        serve later days with `fit.config`. Users without an embedding are skipped (the cold-start path serves
        them, prior or not). Candidates: the ANN top overfetch * k and the popular_pool * k most clicked live ads
        of each window, as serving draws them (`base`: alpha, overfetch and popular_pool; default this
        retriever's prior or `PriorConfig()`)."""
        base = base or self.prior or PriorConfig()
        if self.index is None or self.store is None:
            raise DermError(f"{index_dir(self.ws)}: no index is published before day {self.day}")
        user_ids = np.asarray(user_ids, np.int64)
        if len(relevant) != len(user_ids):
            raise DermError(f"{len(user_ids)} users but {len(relevant)} relevant lists")
        vecs, found = self.user_embeddings(user_ids)
        priors = {int(w): self.window_prior(int(w), base.alpha) for w in windows}
        size = base.popular_pool * k
        pool = np.unique(
            np.concatenate([p.order()[:size] for p in priors.values()] + [np.zeros(0, np.int64)])
        )
        pool_ids, pool_vecs = self._pool(pool, len(pool))
        depth = min(max(base.overfetch * k, k), self.index.ntotal)
        ids, scores, _ = self.prior_candidates(vecs[found], depth, pool_ids, pool_vecs)
        rel = [np.asarray(relevant[int(i)], np.int64) for i in np.flatnonzero(found)]
        lp = {w: p.at(ids) for w, p in priors.items()}
        return fit_beta(ids, scores, lp, rel, k, betas, base, validation_days=(self.day,))

    def retrieve(
        self,
        user_ids: np.ndarray,
        k: int,
        excluded_ids: np.ndarray | None = None,
        cold_start: ColdStart | None = None,
    ) -> Candidates:
        """Top-k live candidates per user; exactly k when k eligible ads exist. Users without an embedding are
        answered by `cold_start` (the serving fallback, `retrieval.cold_start`: their path is its source) or,
        without one, by the popularity list (path `cold_start`)."""
        user_ids = np.asarray(user_ids, np.int64)
        n = len(user_ids)
        ids = np.full((n, k), -1, np.int64)
        scores = np.full((n, k), -np.inf, np.float32)
        vecs, found = self.user_embeddings(user_ids)
        if found.any():
            ids[found], scores[found] = self.search(vecs[found], k, excluded_ids, user_ids[found])
        path = ["ann" if f else "cold_start" for f in found]
        if cold_start is not None:
            for r in np.flatnonzero(~found):
                c_ids, c_scores, path[r] = cold_start.candidates(int(user_ids[r]), k, excluded_ids)
                ids[r, : len(c_ids)], scores[r, : len(c_ids)] = c_ids, c_scores
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
        return Candidates(ids, scores, path, dict(self.versions))
