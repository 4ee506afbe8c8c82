"""Two-stage serving: retrieve live candidates by ANN, score them with the ranker, order them by expected value.

One function call answers a user: `query(ws, user_id, ServeConfig(...))` (the `derm query --json` document);
`TwoStage` loads the versions once and answers many users.

Stages, for query day d (everything read from the versions published before d):
1. Candidates: the user's pooled embedding from the serving store version, ANN over the live ads of the index
   (`candidates` of them; ads live on d with no embedding yet fill a short list from popularity). A user with
   no embedding is answered by the cold-start fallback of `retrieval.cold_start` (user's categories, then
   peers' categories, then global popularity); `path` names which source answered.
2. Ranking: the trained ranker (the artifact named in `versions["ranker"]`) gives `p_ctr` and `p_cvr`
   (P(conversion | click)) per candidate at the reference context (surface 0, top slot), through the same
   feature code as training. `rank_score` is `p_ctr`.
3. Order: the auction of `adserving.auction`: by eCPM (default) or by `rank_score`, ties by ad_id, with at most
   `max_per_advertiser` ads of one advertiser in the top k.

Unknown users: a user id the dataset's users table does not have is an error by default
(`UnknownUser.ERROR`: most often a typo or a stale table); `UnknownUser.POPULAR` serves it the global popularity
fallback instead, for anonymous traffic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adserving.auction import AdBook, Order, ecpm, select_top
from adserving.versions import serving_day
from adslog.sequences import ActivityLog
from adslog.workspace import Workspace, version_name
from dermcore.errors import DataError, DermError, UnknownUserError
from dermfeatures.batches import ImpressionArrays, Inputs, to_device
from dermfeatures.spec import reference_context
from dermtrain.loop import resolve_device
from embstore.store import StoreVersion
from ranking.scoring import forward_shared_sequence, user_runs
from ranking.train import DermLookup, RankerSnapshot, attach, kge_lookup, load_ranker, ranker_dir
from retrieval.cold_start import ColdStart
from retrieval.retrieve import Retriever

SCORE_BATCH = 8192


class UnknownUser(StrEnum):
    """What a query for a user id the dataset does not know gets."""

    ERROR = "error"
    POPULAR = "popular"


@dataclass(frozen=True)
class ServeConfig:
    """How a query is answered. `k` results out of `candidates` retrieved; `max_per_advertiser` None: no cap.
    The cold-start knobs (`cold_start_categories`, `peer_features`, `peer_min_clicks`) are read when a
    `TwoStage` is built; the others per query."""

    k: int = 50
    candidates: int = 500
    order: Order = Order.ECPM
    max_per_advertiser: int | None = 3
    unknown_user: UnknownUser = UnknownUser.ERROR
    cold_start_categories: int = 3
    #: user features whose peers' clicked categories answer a cold user with no activity (source 2 of
    #: `retrieval.cold_start`); () = skip to the popularity list. Off by default: on the demo's eval day the 42
    #: cold users' recall@100 was 0.4405 with ("region",) vs 0.6409 with popularity (overall 0.6085 vs 0.6150);
    #: synthetic_quality's eval day, overall 0.5809 vs 0.5915
    peer_features: tuple[str, ...] = ()
    peer_min_clicks: int = 20

    def __post_init__(self) -> None:
        for name, enum in (("order", Order), ("unknown_user", UnknownUser)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                choices = ", ".join(e.value for e in enum)
                raise DermError(f"{name} must be one of {choices}, got {getattr(self, name)!r}") from None
        object.__setattr__(self, "peer_features", tuple(self.peer_features))
        for name in ("k", "candidates", "cold_start_categories"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DermError(f"{name} must be an integer >= 1, got {v!r}")
        if self.candidates < self.k:
            raise DermError(f"candidates ({self.candidates}) must be >= k ({self.k})")
        cap = self.max_per_advertiser
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise DermError(f"max_per_advertiser must be an integer >= 1 or None (no cap), got {cap!r}")
        if self.peer_min_clicks < 0:
            raise DermError("peer_min_clicks must be >= 0")

    def to_json(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "candidates": self.candidates,
            "order": self.order.value,
            "max_per_advertiser": self.max_per_advertiser,
            "unknown_user": self.unknown_user.value,
            "cold_start_categories": self.cold_start_categories,
            "peer_features": list(self.peer_features),
            "peer_min_clicks": self.peer_min_clicks,
        }


class TwoStage:
    """Retriever + ranker for one query day, loaded once and reused for many users."""

    def __init__(
        self,
        ws: Workspace,
        config: ServeConfig | None = None,
        day: int | None = None,
        allow_skew: bool = False,
        device: str = "cpu",
        store: StoreVersion | None = None,
    ) -> None:
        """`store`: the ctr store version read from elsewhere (an online feature store,
        `embstore.online`) instead of the workspace's; it must be the version the served index was built
        from (a VersionMismatchError otherwise) and it answers the ranker's ctr DERM inputs too."""
        self.ws = ws
        self.config = config or ServeConfig()
        self.ds = ws.dataset()
        self.day = serving_day(ws) if day is None else int(day)
        if day is not None and not self.ds.first_day < self.day <= self.ds.last_day + 1:
            raise DataError(
                ws.root,
                f"query day {self.day} is outside {self.ds.first_day + 1}..{self.ds.last_day + 1} "
                "(days after the data's first day, up to the day after its last)",
            )
        self.retriever = Retriever(ws, self.day, self.ds, allow_skew=allow_skew, store=store)
        rday = ws.version_before(ranker_dir(ws), self.day)
        if rday is None:
            raise DermError(
                f"{ranker_dir(ws)}: no ranker is published before day {self.day} (run `derm ranker train`)"
            )
        self.ranker: RankerSnapshot = load_ranker(
            Path(ranker_dir(ws)) / version_name(rday), resolve_device(device)
        )
        activity = ActivityLog.from_dataset(self.ds, min(self.day - 1, self.ds.last_day))
        self.inputs = Inputs(self.ds, self.ranker.spec, activity, self.ranker.config.seq_len)
        self.lookup = DermLookup(
            ws,
            self.ranker.config.derm_inputs,
            self.ranker.manifest,
            sources={"ctr": store} if store is not None else None,
        )
        # the KGE features of a ranker with KGE inputs, from the versions it was trained on (lineage-checked)
        self.kge = kge_lookup(ws, self.ds, self.ranker.config, self.ranker.manifest)
        self.ads = AdBook(self.ds.ads, self.ds.columns["ads"])
        c = self.config
        self.cold_start: ColdStart = self.retriever.cold_start(
            activity, c.cold_start_categories, c.peer_features, c.peer_min_clicks
        )

    @property
    def versions(self) -> dict[str, str]:
        """Every artifact version the answers come from; with a KGE ranker, `kge` names the KGE store family
        version its features read on the query day (`none` when no version precedes the day)."""
        out = {**self.retriever.versions, "ranker": self.ranker.version}
        if self.kge is not None:
            v = self.kge.version(self.day)
            out["kge"] = v.version if v is not None else "none"
        return out

    def rank(
        self,
        user_id: int,
        cand: np.ndarray,
        timings: dict[str, float] | None = None,
        share_sequence: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(p_ctr float32[n], p_cvr float32[n]) of candidate ads int64[n] for one user at the reference context;
        `timings` (if given) gains the seconds of feature assembly and of the ranker's forward pass.

        Every row has the same user and time, so the same activity sequence: with `share_sequence` the ranker's
        sequence encoder runs on one row and its token is repeated (forward hooks on `Ranker.sequence`; the
        model is unchanged and the result equal up to float rounding, tested). It was ~9 of 21 ms of the
        forward pass at 500 candidates."""
        return self.rank_many([user_id], [cand], timings, share_sequence)[0]

    def rank_many(
        self,
        user_ids: list[int],
        cands: list[np.ndarray],
        timings: dict[str, float] | None = None,
        share_sequence: bool = True,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """`rank` for several users in one pass: their candidate rows (int64[n_i] each) are concatenated into
        one feature assembly and one forward pass per SCORE_BATCH rows (the micro-batching of `dermserve`),
        the sequence encoder running once per user. Returns (p_ctr float32[n_i], p_cvr float32[n_i]) per user."""
        snap = self.ranker
        sizes = np.array([len(c) for c in cands], np.int64)
        users = np.repeat(np.asarray(user_ids, np.int64), sizes)
        cand = np.concatenate([np.asarray(c, np.int64) for c in cands] + [np.zeros(0, np.int64)])
        n = len(cand)
        p = np.zeros((n, 2), np.float32)
        dev = next(snap.ranker.parameters()).device
        t_feat = t_fwd = 0.0
        snap.ranker.eval()
        for s in range(0, n, SCORE_BATCH):
            t0 = time.perf_counter()
            ids, uid = cand[s : s + SCORE_BATCH], users[s : s + SCORE_BATCH]
            m = len(ids)
            ctx = reference_context(snap.spec, m)
            a = ImpressionArrays(
                user_id=uid,
                ad_id=ids,
                ts=np.full(m, self.day * 86400, np.int64),
                day=np.full(m, self.day, np.int32),
                click=np.zeros(m, np.float32),
                conversion=np.zeros(m, np.float32),
                ctx=ctx,
                ctx_ref=ctx,
            )
            derm = self.lookup.features(a, int(snap.manifest["derm_dim"]))
            if self.kge is not None:
                derm.update(self.kge.features(a, int(snap.manifest["kge_dim"])))
            batch = to_device(
                attach(self.inputs.impression_batch(a, reference_context=True), derm, None), dev
            )
            t1 = time.perf_counter()
            with torch.no_grad():
                logits = (
                    forward_shared_sequence(snap.ranker, batch, user_runs(uid))
                    if share_sequence
                    else snap.ranker(batch)
                )
                p[s : s + m] = torch.sigmoid(logits).float().cpu().numpy()
            t_feat, t_fwd = t_feat + t1 - t0, t_fwd + time.perf_counter() - t1
        if timings is not None:
            timings["features"] = t_feat
            timings["forward"] = t_fwd
        ends = np.cumsum(sizes)
        return [(p[e - z : e, 0], p[e - z : e, 1]) for e, z in zip(ends, sizes, strict=True)]

    def excluded_ads(
        self, exclude_ad_ids: np.ndarray | None = None, exclude_advertiser_ids: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Sorted unique int64 ad ids a query must not return: the given ads and every ad of the given
        advertisers; None when nothing is excluded."""
        parts = []
        if exclude_ad_ids is not None and len(exclude_ad_ids):
            parts.append(np.asarray(exclude_ad_ids, np.int64))
        if exclude_advertiser_ids is not None and len(exclude_advertiser_ids):
            adv = np.asarray(exclude_advertiser_ids, np.int64)
            parts.append(self.ads.ids[np.isin(self.ads.advertiser, adv)])
        return np.unique(np.concatenate(parts)) if parts else None

    def candidates(
        self,
        user_id: int,
        n: int,
        unknown_user: UnknownUser = UnknownUser.ERROR,
        timings: dict[str, float] | None = None,
        excluded: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """Stage 1 for one user: (ids int64[m], retrieval scores float32[m], path), m <= n."""
        out = self.candidates_many(np.array([user_id], np.int64), n, unknown_user, timings, excluded)[0]
        if isinstance(out, UnknownUserError):
            raise out
        return out

    def candidates_many(
        self,
        user_ids: np.ndarray,
        n: int,
        unknown_user: UnknownUser = UnknownUser.ERROR,
        timings: dict[str, float] | None = None,
        excluded: np.ndarray | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray, str] | UnknownUserError]:
        """Stage 1 for several users int64[u]: one store lookup and one ANN search over the users with an
        embedding, cold start for the others. Per user (ids int64[m], retrieval scores float32[m], path),
        m <= n, or the UnknownUserError of an unknown user under `UnknownUser.ERROR`. `excluded` (sorted
        int64 ad ids, see `excluded_ads`) are never returned."""
        t0 = time.perf_counter()
        user_ids = np.asarray(user_ids, np.int64)
        vecs, found = self.retriever.user_embeddings(user_ids)
        t1 = time.perf_counter()
        out: list[tuple[np.ndarray, np.ndarray, str] | UnknownUserError] = []
        rows = np.flatnonzero(found)
        ann_ids, ann_scores = (
            self.retriever.search(vecs[rows], n, excluded, user_ids[rows]) if len(rows) else (None, None)
        )
        t2 = time.perf_counter()
        popular = self.retriever.popular
        if excluded is not None:
            popular = popular[~np.isin(popular, excluded)]
        row_of = {int(r): j for j, r in enumerate(rows)}
        for r, user_id in enumerate(user_ids.tolist()):
            if r in row_of:
                assert ann_ids is not None and ann_scores is not None
                ids, scores = ann_ids[row_of[r]], ann_scores[row_of[r]]
                if (ids < 0).any():  # live ads without an embedding yet: fill from popularity, no score
                    have = ids[ids >= 0]
                    extra = popular[~np.isin(popular, have)][: n - len(have)]
                    ids = np.r_[have, extra]
                    scores = np.r_[scores[: len(have)], np.full(len(extra), -np.inf, np.float32)]
                out.append((ids.astype(np.int64), scores.astype(np.float32), "ann"))
                continue
            if unknown_user is UnknownUser.ERROR and not self.cold_start.known(user_id):
                out.append(
                    UnknownUserError(
                        user_id,
                        f"user {user_id} is not in the dataset's users table (an unknown user; "
                        "ServeConfig.unknown_user='popular' serves popular ads instead)",
                    )
                )
                continue
            extra_n = 0 if excluded is None else len(excluded)
            ids, scores, path = self.cold_start.candidates(user_id, n + extra_n)
            if excluded is not None:
                keep = ~np.isin(ids, excluded)
                ids, scores = ids[keep], scores[keep]
            out.append((ids[:n].astype(np.int64), scores[:n].astype(np.float32), path))
        if timings is not None:
            timings["embedding_lookup"] = t1 - t0
            if len(rows):
                timings["ann"] = t2 - t1
            if len(rows) < len(user_ids):
                timings["cold_start"] = time.perf_counter() - t2
        return out

    def query(
        self,
        user_id: int,
        config: ServeConfig | None = None,
        timings: dict[str, float] | None = None,
        exclude_ad_ids: np.ndarray | None = None,
        exclude_advertiser_ids: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """The `derm query --json` document for one user. `config` overrides the per-query fields (k,
        candidates, order, max_per_advertiser, unknown_user) of the TwoStage's config; `timings` (if given)
        gains seconds per stage: embedding_lookup, ann or cold_start, features, forward, order. Ads in
        `exclude_ad_ids` and ads of `exclude_advertiser_ids` (int64 arrays) are never returned."""
        doc = self.query_many([user_id], config, timings, exclude_ad_ids, exclude_advertiser_ids)[0]
        if isinstance(doc, UnknownUserError):
            raise doc
        return doc

    def query_many(
        self,
        user_ids: list[int] | np.ndarray,
        config: ServeConfig | None = None,
        timings: dict[str, float] | None = None,
        exclude_ad_ids: np.ndarray | None = None,
        exclude_advertiser_ids: np.ndarray | None = None,
    ) -> list[dict[str, Any] | UnknownUserError]:
        """`query` for several users with one config: one store lookup, one ANN search and one ranker pass
        for all of them (then the order per user). Per user its document, or its UnknownUserError (the
        other users are still answered). Each document equals the one `query` returns, up to float rounding
        of the ranker's batched forward pass."""
        c = self.config if config is None else config
        uids = np.asarray(user_ids, np.int64)
        excluded = self.excluded_ads(exclude_ad_ids, exclude_advertiser_ids)
        cands = self.candidates_many(uids, c.candidates, c.unknown_user, timings, excluded)
        ok = [i for i, x in enumerate(cands) if not isinstance(x, UnknownUserError)]
        ranked = self.rank_many(
            [int(uids[i]) for i in ok],
            [cands[i][0] for i in ok],  # type: ignore[index]
            timings,
        )
        t0 = time.perf_counter()
        out: list[dict[str, Any] | UnknownUserError] = list(cands)  # type: ignore[arg-type]
        for i, (p_ctr, p_cvr) in zip(ok, ranked, strict=True):
            ids, scores, path = cands[i]  # type: ignore[misc]
            out[i] = self._document(int(uids[i]), c, ids, scores, path, p_ctr, p_cvr)
        if timings is not None:
            timings["order"] = time.perf_counter() - t0
        return out

    def _document(
        self,
        user_id: int,
        c: ServeConfig,
        ids: np.ndarray,
        scores: np.ndarray,
        path: str,
        p_ctr: np.ndarray,
        p_cvr: np.ndarray,
    ) -> dict[str, Any]:
        """Stage 3 for one user: eCPM, order, advertiser cap, top k, as the `derm query --json` document."""
        rows = self.ads.rows(ids)
        adv, bid, obj = self.ads.advertiser[rows], self.ads.bid[rows], self.ads.objective[rows]
        value = ecpm(bid, p_ctr, p_cvr, obj)
        key = value if c.order is Order.ECPM else p_ctr.astype(np.float64)
        top = select_top(key, ids, adv, c.k, c.max_per_advertiser)
        results = [
            {
                "ad_id": int(ids[i]),
                "advertiser_id": int(adv[i]),
                "score": _num(scores[i]),
                "rank_score": float(p_ctr[i]),
                "p_ctr": float(p_ctr[i]),
                "p_cvr": float(p_cvr[i]),
                "bid": float(bid[i]),
                "objective": int(obj[i]),
                "ecpm": float(value[i]),
                "rank": r + 1,
            }
            for r, i in enumerate(top)
        ]
        return {
            "user_id": user_id,
            "day": self.day,
            "path": path,
            "versions": self.versions,
            "config": c.to_json(),
            "n_candidates": int(len(ids)),
            "results": results,
        }


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def query(
    ws: Workspace,
    user_id: int,
    config: ServeConfig | None = None,
    day: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """The two-stage answer for one user as the `derm query --json` document (see the module docstring)."""
    return TwoStage(ws, config, day, device=device).query(user_id)
