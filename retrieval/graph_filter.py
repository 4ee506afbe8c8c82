"""A co-click graph filter: a second candidate source and a re-ranking term beside the towers (issue 13).

The towers learn one vector per user and per ad by gradient descent; the co-click graph needs no training at
all. Built from the click pairs of a window (the bipartite user-ad graph, point-in-time: clicks strictly before
the query day), it scores every ad for a user from the ads the user clicked, with the closed-form graph filter
of GF-CF (Shen et al., "How Powerful is Graph Convolution for Recommendation?", CIKM 2021):

    R~ = D_U^-1/2 R D_A^-1/2                     (R: users x ads, 1 where the user clicked the ad)
    g(r) = r R~^T R~  +  w * r D_A^-1/2 V V^T D_A^1/2

`r` is the user's click row over the graph's ads, `V` the top `rank` right singular vectors of R~ (the "ideal
low-pass" part, weight `w` = `ideal_weight`). The first term is item-based collaborative filtering with the
degree normalisation of LightGCN's propagation; the second keeps the graph's smoothest `rank` directions. A
user's row needs no refit: a user with clicks after the graph was built is scored from them, a user without
clicks in the window scores 0 everywhere (the towers alone decide).

Retrieval blends the two sources (`blend`): candidates are the ANN's top and the graph's top (union), each scored

    final(user, ad) = u . p + gamma * g(user, ad) / max_ad' g(user, ad')

so gamma is in cosine units and 0 keeps the towers' order; `fit_gamma` chooses gamma by recall@k on a validation
period (0 is always on the grid). On Gowalla the blend beats both sources alone (benchmarks/gowalla.py).

scipy is used for the sparse products and for ARPACK's truncated SVD (`scipy.sparse.linalg.svds`): numpy has no
sparse matrices, and torch's `svd_lowrank` is a randomised approximation whose tail vectors are noisy. ARPACK's
cost grew far faster than the graph, though: 14 s on a 1M-impression synthetic day's window, still running after
12 minutes at 10M (scale.py, issue 16), and 172 s on a 3M day's one-day window of 47,459 x 21,499 (1.3 s for the
block method below, holding sum(s^2) 253.4 against 255.9 of 256). That graph has 11,316 connected components,
each with singular value 1: the top singular value repeats far more than `rank` times. So above `EXACT_SVD_MAX`
rows on the graph's smaller side, or with at least `rank` connected components (`n_components`), the vectors come
from seeded randomized subspace iteration instead (`randomized_right_vectors`: Halko, Martinsson and Tropp 2011,
algorithm 4.4, with `SVD_OVERSAMPLE` extra directions and `SVD_POWER_ITERS` power iterations; linear in the
clicks and the ads). Real logs' click graphs (Gowalla, MovieLens) are one large component and keep ARPACK's
vectors.
(scikit-learn has `randomized_svd`, but it is a test-only dependency here.)
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from dermcore.errors import ConfigError, DataError
from retrieval.prior import recall_by_weight

#: floats held at once (64 MB) by `with_graph_top` (the graph's dense score rows) and `candidate_inner` (the
#: candidates' gathered vectors)
GRAPH_CHUNK = 1 << 24
#: graphs whose smaller side has more rows than this get the randomized SVD (`randomized_right_vectors`), and so
#: do graphs with at least `rank` connected components
EXACT_SVD_MAX = 50_000
SVD_OVERSAMPLE = 64
SVD_POWER_ITERS = 4
#: gamma grid for `fit_gamma`, cosine units: 0 (the towers' order) up to values where the graph decides
DEFAULT_GAMMAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


@dataclass(frozen=True)
class GraphConfig:
    """The co-click graph of one retrieval stage.

    gamma: weight of the graph score (normalised to [0, 1] per user) in cosine units, >= 0; 0 turns it off.
    window: days of clicks the graph is built from, ending the day before the query day.
    rank: singular vectors of the ideal low-pass part (capped below the graph's smaller side); 0 drops it.
    ideal_weight: weight of the low-pass part beside the linear (item-based) part, >= 0.
    depth: the graph's top depth * k ads join the ANN's candidates (>= 1).
    """

    gamma: float = 0.0
    window: int = 28
    rank: int = 256
    ideal_weight: float = 0.3
    depth: int = 4

    def __post_init__(self) -> None:
        for name in ("gamma", "ideal_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"GraphConfig.{name} must be a finite number >= 0, got {v!r}")
            object.__setattr__(self, name, float(v))
        for name, low in (("window", 1), ("rank", 0), ("depth", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"GraphConfig.{name} must be an integer >= {low}, got {v!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GraphConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown graph config keys {sorted(unknown)}")
        return cls(**d)


def n_components(r: sp.csr_matrix) -> int:
    """Connected components of the bipartite graph of `r` (users x ads, every row and column with an edge). Each
    gives R~ one singular value exactly 1, so with at least `rank` of them the top `rank` singular values all
    repeat 1: the low-pass basis is arbitrary within their span, and ARPACK converges slowly on it."""
    from scipy.sparse.csgraph import connected_components

    adj = sp.bmat([[None, r], [r.T, None]], format="csr")
    return int(connected_components(adj, directed=False, return_labels=False))


def randomized_right_vectors(
    a: sp.csr_matrix,
    rank: int,
    oversample: int = SVD_OVERSAMPLE,
    power_iters: int = SVD_POWER_ITERS,
    seed: int = 0,
) -> np.ndarray:
    """float32[rank, n]: the top `rank` right singular vectors of `a` (m x n, sparse), by descending singular
    value, from randomized subspace iteration on A^T A (Halko, Martinsson and Tropp 2011, algorithms 4.4 and
    5.3 on the n side only): a seeded Gaussian start of l = `rank + oversample` directions, `power_iters`
    products with A^T A each followed by a QR, then Rayleigh-Ritz (the eigenvectors of the l x l matrix
    Z^T A^T A Z, in float64). Work: O(clicks x l) per product and O(n x l^2) per QR, in float32; only n x l
    blocks are held (on a 10M-impression day's window of 261k users x 111k ads the two-sided float64 version
    took 105 s with a 5.2 GB peak). Deterministic for a given seed.

    On a fragmented click graph (many connected components, each with singular value 1) the top singular
    value repeats far more than `rank` times; ARPACK's Lanczos from one start vector finds few vectors per
    repeated value and converges slowly there (on a 1M-impression day's window its 256 vectors held
    sum(s^2) = 244.3, a block method's 252.9 of at most 256, in a fifth of the time)."""
    from scipy.linalg import qr

    m, n = a.shape
    ell = min(rank + oversample, m, n)
    a32 = a.astype(np.float32)
    at = a32.T.tocsr()

    def orth(x: np.ndarray) -> np.ndarray:
        return np.asarray(qr(x, mode="economic", overwrite_a=True, check_finite=False)[0], np.float32)

    z = orth(np.random.default_rng(seed).standard_normal((n, ell), dtype=np.float32))
    for _ in range(power_iters):
        z = orth(at @ (a32 @ z))
    y = a32 @ z  # m x l
    w, vecs = np.linalg.eigh(y.T.astype(np.float64) @ y.astype(np.float64))
    top = np.argsort(-w)[:rank]
    return np.ascontiguousarray((z.astype(np.float64) @ vecs[:, top]).T, dtype=np.float32)


def find_sorted(keys: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pos, hit) of `ids` (any shape) in the sorted int64 `keys`: keys[pos[hit]] == ids[hit]."""
    ids = np.asarray(ids, np.int64)
    if len(keys) == 0:
        return np.zeros(ids.shape, np.int64), np.zeros(ids.shape, bool)
    pos = np.clip(np.searchsorted(keys, ids), 0, len(keys) - 1)
    return pos, keys[pos] == ids


class CoClickGraph:
    """The graph filter fitted on one window's clicks. `ads`: int64[m] sorted, the ads with a click in it."""

    def __init__(
        self, ads: np.ndarray, rt: sp.csr_matrix, vt: np.ndarray, d_half: np.ndarray, w: float
    ) -> None:
        self.ads = ads
        self._rt = rt  # R~, users x ads
        self._rtt = rt.T.tocsr()
        # the low-pass part r D^-1/2 V^T V D^1/2 as two factors: (r @ _into) @ _out
        self._into = np.ascontiguousarray((vt * d_half[None, :]).T)  # float32[m, rank]
        self._out = np.ascontiguousarray(vt / d_half[None, :])  # float32[rank, m]
        self._w = float(w)

    @property
    def rank(self) -> int:
        return int(self._out.shape[0])

    @classmethod
    def fit(
        cls, user_ids: np.ndarray, ad_ids: np.ndarray, rank: int = 256, ideal_weight: float = 0.3
    ) -> CoClickGraph:
        """The filter of the click pairs (user_ids, ad_ids int64[c]; repeats count once). `rank` is capped at
        the graph's smaller side - 1; an empty window gives a graph that scores 0 everywhere."""
        users_raw, ads_raw = np.asarray(user_ids, np.int64), np.asarray(ad_ids, np.int64)
        if users_raw.shape != ads_raw.shape:
            raise ValueError(f"{len(users_raw)} user ids but {len(ads_raw)} ad ids")
        users, ui = np.unique(users_raw, return_inverse=True)
        ads, ai = np.unique(ads_raw, return_inverse=True)
        r = sp.csr_matrix((np.ones(len(ui), np.float32), (ui, ai)), shape=(len(users), len(ads)))
        r.data[:] = 1.0  # repeats were summed: a click is an edge
        du = np.asarray(r.sum(axis=1)).ravel()
        da = np.asarray(r.sum(axis=0)).ravel()
        rt = (
            sp.diags(1.0 / np.sqrt(np.maximum(du, 1))) @ r @ sp.diags(1.0 / np.sqrt(np.maximum(da, 1)))
        ).tocsr()
        rt = rt.astype(np.float32)
        rank = min(int(rank), min(rt.shape) - 1) if min(rt.shape) > 1 else 0
        vt = np.zeros((0, len(ads)), np.float32)
        if rank > 0 and ideal_weight > 0:
            # a fixed start vector: ARPACK's default is random, and the same clicks must give the same graph
            if min(rt.shape) > EXACT_SVD_MAX or n_components(r) >= rank:
                vt = randomized_right_vectors(rt, rank)
            else:
                v0 = np.full(min(rt.shape), 1.0 / math.sqrt(min(rt.shape)))
                _, s, vt = svds(rt.astype(np.float64), k=rank, v0=v0)
                vt = vt[np.argsort(-s)].astype(np.float32)
        d_half = (1.0 / np.sqrt(np.maximum(da, 1))).astype(np.float32)
        return cls(ads, rt, vt, d_half, ideal_weight)

    @classmethod
    def fit_cached(
        cls, user_ids: np.ndarray, ad_ids: np.ndarray, rank: int = 256, ideal_weight: float = 0.3
    ) -> CoClickGraph:
        """`fit`, memoised on the content of the clicks and the settings (the last 4 graphs of this process): the
        evaluation and the serving path of one day, and the cycle's fit, read the same window's clicks. The
        graph is never modified after the fit, so sharing it is safe."""
        u, a = np.ascontiguousarray(user_ids, np.int64), np.ascontiguousarray(ad_ids, np.int64)
        h = hashlib.blake2b(digest_size=16)
        for part in (u, a, np.array([rank], np.int64), np.array([ideal_weight], np.float64)):
            h.update(part.tobytes())
            h.update(b"|")
        key = h.hexdigest()
        if key in _FITTED:
            _FITTED.move_to_end(key)
            return _FITTED[key]
        graph = cls.fit(u, a, rank, ideal_weight)
        _FITTED[key] = graph
        while len(_FITTED) > 4:
            _FITTED.popitem(last=False)
        return graph

    def rows(self, histories: Sequence[np.ndarray]) -> sp.csr_matrix:
        """The users' click rows over the graph's ads (ads outside the graph are dropped)."""
        indptr, cols = [0], []
        for h in histories:
            pos, hit = find_sorted(self.ads, np.unique(np.asarray(h, np.int64)))
            c = pos[hit]
            cols.append(c)
            indptr.append(indptr[-1] + len(c))
        col = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        return sp.csr_matrix(
            (np.ones(len(col), np.float32), col, np.asarray(indptr)), shape=(len(histories), len(self.ads))
        )

    def scores(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """float32[n, m]: each user's graph score of every ad of the graph, divided by the user's best (so in
        [0, 1]; 0 everywhere for a user without clicks in the graph). `histories`: each user's clicked ad ids."""
        r = self.rows(histories)
        g = np.asarray((r @ self._rtt @ self._rt).todense(), np.float32)
        if self.rank and self._w > 0:
            g += self._w * ((r @ self._into) @ self._out)
        best = g.max(axis=1, keepdims=True) if g.shape[1] else np.zeros((len(g), 1), np.float32)
        return np.where(best > 0, g / np.where(best > 0, best, 1), 0.0).astype(np.float32)

    def mask(self, ids: np.ndarray) -> np.ndarray:
        """bool[m]: which of the graph's ads are in `ids`."""
        return np.isin(self.ads, np.asarray(ids, np.int64))

    def at(self, scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """float32 of `ids`' shape [n, c]: `scores` (from `scores`, one row per user) of the ads `ids`; 0 for
        -1 pads and ads outside the graph."""
        ids = np.asarray(ids, np.int64)
        out = np.zeros(ids.shape, np.float32)
        pos, hit = find_sorted(self.ads, ids)
        hit &= ids >= 0
        rows = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)
        out[hit] = scores[rows[hit], pos[hit]]
        return out

    def top(
        self,
        scores: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        excluded: Sequence[np.ndarray] = (),
    ) -> np.ndarray:
        """int64[n, k] each user's k best ads by graph score, ties by ad id (-1 pads: fewer than k ads with a
        score > 0). `allowed`: int64 ads that may be returned (e.g. the live ones), or their `mask`;
        `excluded`: per user, ads to skip (e.g. seen ones)."""
        s = scores.copy()
        if allowed is not None:
            s[:, ~(allowed if allowed.dtype == bool else self.mask(allowed))] = 0.0
        for row, ex in enumerate(excluded):
            pos, hit = find_sorted(self.ads, ex)
            s[row, pos[hit]] = 0.0
        kk = min(k, s.shape[1])
        out = np.full((len(s), k), -1, np.int64)
        if kk == 0:
            return out
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        val = np.take_along_axis(s, part, 1)
        order = np.lexsort((part, -val), axis=1)  # best first, ties by ad id
        part, val = np.take_along_axis(part, order, 1), np.take_along_axis(val, order, 1)
        out[:, :kk] = np.where(val > 0, self.ads[part], -1)
        return out


_FITTED: OrderedDict[str, CoClickGraph] = OrderedDict()


def union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int64[n, ca + cb]: each row's ids of `a` then those of `b` not already in the row (-1 pads, and a
    repeat becomes -1)."""
    ids = np.concatenate([np.asarray(a, np.int64), np.asarray(b, np.int64)], axis=1)
    order = np.argsort(ids, axis=1, kind="stable")
    s = np.take_along_axis(ids, order, axis=1)
    repeat = np.zeros(s.shape, bool)
    repeat[:, 1:] = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
    rows, cols = np.nonzero(repeat)
    ids[rows, order[rows, cols]] = -1
    return ids


def with_graph_top(
    graph: CoClickGraph,
    ids: np.ndarray,
    histories: Sequence[np.ndarray],
    depth: int,
    allowed: np.ndarray | None = None,
    excluded: Sequence[np.ndarray] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The candidate union of the graph path: each row's `ids` int64[n, c] (another source's candidates, e.g.
    the ANN's top) then the graph's top `depth` ads for the user of `histories` (`CoClickGraph.top` with
    `allowed` / `excluded`). Returns (ids int64[n, c + depth] as `union` gives them, their graph score float32
    [n, c + depth]); the dense score rows are computed `GRAPH_CHUNK` floats at a time (a day's users at once
    would hold n x m floats)."""
    ids = np.asarray(ids, np.int64)
    out = np.full((len(ids), ids.shape[1] + depth), -1, np.int64)
    g = np.zeros(out.shape, np.float32)
    chunk = max(1, GRAPH_CHUNK // max(len(graph.ads), 1))
    for s in range(0, len(ids), chunk):
        g_all = graph.scores(histories[s : s + chunk])
        top = graph.top(g_all, depth, allowed, excluded[s : s + chunk] if len(excluded) else ())
        out[s : s + chunk] = union(ids[s : s + chunk], top)
        g[s : s + chunk] = graph.at(g_all, out[s : s + chunk])
    return out, g


def candidate_inner(vecs: np.ndarray, table: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """float32[n, c]: vecs[i] . table[pos[i, j]] for query vectors `vecs` float32[n, d] and their candidates'
    rows `pos` int64[n, c] of `table` float32[m, d], gathered `GRAPH_CHUNK` floats at a time: gathering every
    row's candidates at once holds n x c x d floats (a day's 3,000 validation users x ~1,000 candidates x 64
    dims: 0.8 GB)."""
    pos = np.asarray(pos, np.int64)
    out = np.empty(pos.shape, np.float32)
    step = max(1, GRAPH_CHUNK // max(pos.shape[1] * table.shape[1], 1))
    for s in range(0, len(pos), step):
        out[s : s + step] = np.einsum("nd,ncd->nc", vecs[s : s + step], table[pos[s : s + step]])
    return out


def blend(scores: np.ndarray, graph: np.ndarray, gamma: float) -> np.ndarray:
    """float32[n, c]: scores (the towers' inner products, -inf for pads) + gamma * graph (`CoClickGraph.at`)."""
    return (np.asarray(scores, np.float32) + np.float32(gamma) * np.asarray(graph, np.float32)).astype(
        np.float32
    )


@dataclass(frozen=True)
class GraphFit:
    """The outcome of `fit_gamma`: the chosen config and the validation table behind it."""

    config: GraphConfig
    k: int
    recall_at_k: dict[float, float]  # gamma -> validation recall@k
    n_users: int
    validation: str = ""

    @property
    def recall_chosen(self) -> float:
        return self.recall_at_k[self.config.gamma]

    @property
    def recall_without_graph(self) -> float:
        return self.recall_at_k[0.0]

    def to_json(self) -> dict[str, Any]:
        """The record for a manifest: the config and how it was chosen."""
        return {
            "config": self.config.to_json(),
            "chosen_by": f"validation recall@{self.k}",
            "validation": self.validation,
            "n_users": self.n_users,
            "recall_at_k_chosen": self.recall_chosen,
            "recall_at_k_without_graph": self.recall_without_graph,
            "recall_at_k_by_gamma": {repr(g): r for g, r in self.recall_at_k.items()},
        }


def fit_gamma(
    ids: np.ndarray,
    scores: np.ndarray,
    graph: np.ndarray,
    relevant: Sequence[np.ndarray],
    k: int,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    base: GraphConfig | None = None,
    validation: str = "",
) -> GraphFit:
    """Choose gamma by recall@k on a validation period: `ids` / `scores` the candidates (the union of the ANN's
    and the graph's tops, as serving draws them) with their inner products, `graph` their graph scores, `relevant`
    the ads each user clicked in the period. The best gamma wins; the smallest on ties (0 is always on the grid,
    so the fit can keep the towers' order)."""
    if not gammas or any(g < 0 or not math.isfinite(g) for g in gammas) or 0.0 not in gammas:
        raise ValueError(f"gammas must be finite, >= 0 and hold 0, got {list(gammas)}")
    table = recall_by_weight(ids, scores, graph, relevant, k, gammas)
    top = max(table.values())
    best = min(g for g, r in table.items() if r >= top - 1e-12)
    base = base or GraphConfig()
    cfg = GraphConfig(**{**base.to_json(), "gamma": best})
    n = sum(1 for r in relevant if len(r))
    return GraphFit(cfg, int(k), table, n, validation)


def graph_from_record(record: Any, source: Path) -> GraphConfig | None:
    """The GraphConfig of a `GraphFit.to_json()` record in a manifest (`source` names it in errors); None for
    no record."""
    if record is None:
        return None
    try:
        return GraphConfig.from_json(record["config"])
    except (KeyError, TypeError, ConfigError) as e:
        raise DataError(source, f"invalid retrieval_graph record ({e})") from None
