"""Exact inner-product search, the reference every ANN result is checked against (`exact_search`), tie-tolerant
recall against it, and `fill_short_rows`, which answers exactly the rows an ANN backend returned short."""

from __future__ import annotations

import logging

import numpy as np

from dermcore.errors import DermError
from index.boundary import as_ids, as_vectors, check_k, eligible_mask, pad_results
from index.types import PAD_ID, AnnIndex, SearchParams

log = logging.getLogger(__name__)


def exact_search(
    ad_ids: np.ndarray,
    ad_vecs: np.ndarray,
    queries: np.ndarray,
    k: int,
    allowed_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k (faiss IndexFlatIP), the reference every ANN result is checked against.

    Args: ad_ids int64[n]; ad_vecs float32[n, dim]; queries float32[q, dim]; allowed_ids restricts the
    candidates. Returns (ids int64[q, k], scores float32[q, k]), best first, padded with (-1, -inf).
    """
    import faiss

    k = check_k(k)
    ad_ids = as_ids(ad_ids, "ad_ids")
    ad_vecs = np.asarray(ad_vecs)
    if ad_vecs.ndim != 2:
        raise DermError(f"ad_vecs must be 2-D, got shape {ad_vecs.shape}")
    dim = ad_vecs.shape[1]
    ad_vecs = as_vectors(ad_vecs, dim, "ad vectors", check_norm=False)
    queries = as_vectors(queries, dim, "queries", check_norm=False)
    if ad_ids.shape[0] != ad_vecs.shape[0]:
        raise DermError(f"got {ad_ids.shape[0]} ad ids for {ad_vecs.shape[0]} ad vectors")
    if allowed_ids is not None:
        keep = np.isin(ad_ids, as_ids(allowed_ids, "allowed_ids"))
        ad_ids, ad_vecs = ad_ids[keep], ad_vecs[keep]
    kk = min(k, ad_ids.shape[0])
    if kk == 0:
        return pad_results(np.empty((queries.shape[0], 0), np.int64), np.empty((queries.shape[0], 0)), k)
    flat = faiss.IndexFlatIP(dim)
    flat.add(ad_vecs)
    scores, pos = flat.search(queries, kk)
    ids = np.where(pos >= 0, ad_ids[np.maximum(pos, 0)], PAD_ID)
    return pad_results(ids, scores, k)


def recall_against_exact(
    index: AnnIndex,
    queries: np.ndarray,
    k: int,
    params: SearchParams | None = None,
    *,
    ad_ids: np.ndarray | None = None,
    ad_vecs: np.ndarray | None = None,
) -> float:
    """Mean over queries of |ANN top-k ∩ exact top-k| / min(k, ntotal), tolerant of ties.

    An ANN result counts as a hit when its true score (dot with the ground-truth vector) is >= the k-th exact
    score - 1e-6, so equal-score neighbours swapped at the boundary are not misses. Ground truth is `ad_ids` /
    `ad_vecs` when given (the original float vectors), else the vectors the index reconstructs (exact for
    Flat storage, decoded codes for PQ).
    """
    k = check_k(k)
    if ad_ids is None or ad_vecs is None:
        ad_ids = index.ids()
        ad_vecs = index.get_vectors(ad_ids)
    ad_ids = as_ids(ad_ids, "ad_ids")
    queries = as_vectors(queries, index.config.dim, "queries", check_norm=False)
    if queries.shape[0] == 0:
        raise DermError("recall needs at least one query")
    if ad_ids.size == 0:
        raise DermError("recall needs a non-empty index")
    ad_vecs = as_vectors(ad_vecs, index.config.dim, "ad vectors", check_norm=False)
    _, ex_scores = exact_search(ad_ids, ad_vecs, queries, k)
    ann_ids, _ = index.search(queries, k, params)
    return recall_of_results(ann_ids, ex_scores, queries, ad_ids, ad_vecs)


def recall_of_results(
    ann_ids: np.ndarray, ex_scores: np.ndarray, queries: np.ndarray, ad_ids: np.ndarray, ad_vecs: np.ndarray
) -> float:
    """Tie-tolerant recall@k of ANN results ann_ids int64[q, k] given the exact top-k scores float32[q, k].

    Split from `recall_against_exact` so a sweep computes the exact answer once for many ANN settings.
    """
    k = ann_ids.shape[1]
    order = np.argsort(ad_ids)
    sorted_ids = ad_ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, ann_ids), 0, sorted_ids.size - 1)
    known = (ann_ids >= 0) & (sorted_ids[pos] == ann_ids)
    true_scores = np.empty(ann_ids.shape, np.float32)
    for lo in range(0, queries.shape[0], 1024):  # blocks bound the [q, k, dim] gather's memory
        hi = lo + 1024
        true_scores[lo:hi] = np.einsum("qd,qkd->qk", queries[lo:hi], ad_vecs[order[pos[lo:hi]]])
    kth = ex_scores[:, -1] if ad_ids.size >= k else np.full(queries.shape[0], -np.inf, np.float32)
    hits = (known & (true_scores >= kth[:, None] - 1e-6)).sum(axis=1)
    denom = min(k, ad_ids.size)
    return float(np.mean(np.minimum(hits, denom) / denom))


def fill_short_rows(
    index: AnnIndex,
    queries: np.ndarray,
    k: int,
    out_ids: np.ndarray,
    out_scores: np.ndarray,
    allowed_ids: np.ndarray | None,
    excluded_ids: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Replace rows holding fewer than min(k, #eligible) results by exact search over the eligible ids.

    ANN backends can come back short (HNSW under a very selective filter, IVF when the probed lists hold
    fewer than k eligible vectors, hnswlib with deleted elements); the contract is k results whenever k
    eligible ads exist, so those rows are answered exactly from the index's own (reconstructed) vectors.
    The unfiltered, full-result path costs one vectorised count.
    """
    found = (out_ids >= 0).sum(axis=1)
    if allowed_ids is None and excluded_ids is None:
        n_eligible = index.ntotal
        if (found >= min(k, n_eligible)).all():
            return out_ids, out_scores
        eligible = index.ids()
    else:
        if (found >= k).all():
            return out_ids, out_scores
        live = index.ids()
        eligible = live[eligible_mask(live, allowed_ids, excluded_ids)]
    short = np.flatnonzero(found < min(k, eligible.size))
    if short.size == 0:
        return out_ids, out_scores
    log.debug(
        "%d of %d rows short of k=%d: exact search over %d eligible ids",
        short.size,
        len(found),
        k,
        eligible.size,
    )
    vecs = index.get_vectors(eligible)
    ex_ids, ex_scores = exact_search(eligible, vecs, queries[short], k)
    out_ids = out_ids.copy()
    out_scores = out_scores.copy()
    out_ids[short] = ex_ids
    out_scores[short] = ex_scores
    return out_ids, out_scores
