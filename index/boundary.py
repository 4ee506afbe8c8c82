"""Boundary checks shared by every backend: ids and vectors in (`as_ids`, `as_vectors`, `check_ids_vecs`,
`check_k`, `check_search`: the general path of every `search`), results out (`pad_results`, `compact_rows`,
`eligible_mask`), and `fast_path_ok`, the one guard that lets a backend answer an unfiltered, well-formed query
without any of those checks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dermcore.errors import DermError
from index.types import NORM_TOL, PAD_ID, PAD_SCORE, SearchParams

_F32 = np.dtype(np.float32)


def fast_path_ok(
    queries: Any, k: Any, dim: int, n: int, allowed_ids: Any = None, excluded_ids: Any = None
) -> bool:
    """True when a search can skip every boundary check: no filters, contiguous float32 [q, dim] finite
    queries and an int 0 < k <= n (the vectors the backend can return). Costs a few hundred nanoseconds."""
    return (
        allowed_ids is None
        and excluded_ids is None
        and type(queries) is np.ndarray
        and queries.dtype is _F32
        and queries.ndim == 2
        and queries.shape[1] == dim
        and queries.flags.c_contiguous
        and type(k) is int
        and 0 < k <= n
        # one BLAS dot instead of an isfinite pass: NaN/inf anywhere (or overflow) makes it non-finite
        and math.isfinite(np.vdot(queries, queries))
    )


def check_search(
    queries: Any, k: Any, dim: int, params: SearchParams | None, allowed_ids: Any, excluded_ids: Any
) -> tuple[np.ndarray, int, SearchParams, np.ndarray | None, np.ndarray | None]:
    """The general path's checks of a `search` call, shared by every backend: (queries float32[q, dim], k,
    params (default: none set), allowed ids int64 | None, excluded ids int64 | None); DermError on bad input."""
    k = check_k(k)
    queries = as_vectors(queries, dim, "queries", check_norm=False)
    allowed = None if allowed_ids is None else as_ids(allowed_ids, "allowed_ids")
    excluded = None if excluded_ids is None else as_ids(excluded_ids, "excluded_ids")
    return queries, k, params or SearchParams(), allowed, excluded


def as_ids(ids: Any, what: str = "ids") -> np.ndarray:
    """`ids` as a contiguous int64[n] array; raises DermError for non-integer or non-1-D input."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise DermError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DermError(f"{what} must be integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def as_vectors(x: Any, dim: int, what: str, check_norm: bool) -> np.ndarray:
    """`x` as contiguous float32[n, dim]; raises DermError on wrong dim, NaN/inf or (if asked) unnormalised rows."""
    arr = np.asarray(x)
    if arr.ndim == 1 and arr.size == dim:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise DermError(f"{what} must be 2-D [n, {dim}], got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise DermError(f"{what} dim mismatch: index dim is {dim}, got vectors of dim {arr.shape[1]}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    # one pass: a row's squared norm is NaN/inf when any entry is (or on overflow, checked exactly below)
    sq = np.einsum("ij,ij->i", arr, arr)
    if not np.isfinite(sq).all():
        finite = np.isfinite(arr).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise DermError(f"{what} contain NaN or inf in {bad.size} row(s) (first row {int(bad[0])})")
    if check_norm and arr.shape[0]:
        off = (sq < (1.0 - NORM_TOL) ** 2) | (sq > (1.0 + NORM_TOL) ** 2) | ~np.isfinite(sq)
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise DermError(
                f"{what} must be L2-normalised (metric 'ip' is cosine): {int(off.sum())} row(s) have norm "
                f"off 1 by more than {NORM_TOL} (row {i} has norm {float(np.linalg.norm(arr[i])):.4f})"
            )
    return arr


def check_ids_vecs(ids: Any, vecs: Any, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a build/add batch: unique int64 ids matching normalised, finite float32 rows."""
    ids = as_ids(ids)
    vecs = as_vectors(vecs, dim, "vectors", check_norm=True)
    if ids.shape[0] != vecs.shape[0]:
        raise DermError(f"got {ids.shape[0]} ids for {vecs.shape[0]} vectors")
    if ids.size and ids.min() < 0:
        raise DermError(f"ids must be >= 0 (-1 pads missing results), got {int(ids.min())}")
    if ids.size > 1:
        srt = np.sort(ids)  # a sort beats np.unique's hashing on large id arrays
        if (srt[1:] == srt[:-1]).any():
            raise DermError("ids must be unique within a batch")
    return ids, vecs


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise DermError(f"k must be a positive int, got {k!r}")
    return int(k)


def eligible_mask(
    ids: np.ndarray, allowed_ids: np.ndarray | None, excluded_ids: np.ndarray | None
) -> np.ndarray:
    """bool[len(ids)]: which of `ids` pass the allow/exclude filters (vectorised)."""
    mask = np.ones(ids.shape[0], dtype=bool)
    if allowed_ids is not None:
        mask &= np.isin(ids, allowed_ids)
    if excluded_ids is not None:
        mask &= ~np.isin(ids, excluded_ids)
    return mask


def pad_results(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalise raw library output to int64/float32 `[n, k]`: missing -> (-1, -inf), extra columns padded."""
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    missing = ids < 0
    if missing.any():
        ids = np.where(missing, PAD_ID, ids)
        scores = np.where(missing, np.float32(PAD_SCORE), scores)
    if ids.shape[1] < k:
        n, extra = ids.shape[0], k - ids.shape[1]
        ids = np.hstack([ids, np.full((n, extra), PAD_ID, dtype=np.int64)])
        scores = np.hstack([scores, np.full((n, extra), PAD_SCORE, dtype=np.float32)])
    return np.ascontiguousarray(ids), np.ascontiguousarray(scores)


def compact_rows(
    ids: np.ndarray, scores: np.ndarray, keep: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Post-filter over-fetched results: per row, the first k entries where `keep` is true, in rank order.

    Vectorised (a stable argsort of ~keep per row), so filtering costs no Python loop over rows.
    """
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    ids = np.take_along_axis(np.where(keep, ids, PAD_ID), order, axis=1)
    scores = np.take_along_axis(np.where(keep, scores, np.float32(PAD_SCORE)), order, axis=1)
    return pad_results(ids, scores, k)
