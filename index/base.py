"""The one small protocol every ANN backend implements, its config, and the checks shared by all backends.

Every backend speaks the same language at its boundary: ids are explicit int64 (never row positions), vectors
are contiguous float32 `[n, dim]` and L2-normalised (cosine = inner product), and results are
`(ids int64[n, k], scores float32[n, k])` with higher score = better, `-1` / `-inf` padding missing results.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from adslog.errors import DermError

if TYPE_CHECKING:
    from index.faiss_backend import FaissIndex
    from index.hnsw_backend import HnswIndex

log = logging.getLogger(__name__)

NORM_TOL = 1e-3
PAD_ID = -1
PAD_SCORE = -np.inf
DEVICES = ("auto", "cpu", "cuda")
METRICS = ("ip",)


class Backend(StrEnum):
    FAISS = "faiss"
    HNSWLIB = "hnswlib"


@dataclass(frozen=True)
class IndexConfig:
    """Build-time description of an index; its JSON goes into the artifact manifest.

    `spec` is a faiss factory string ("Flat", "IVF1024,Flat", "HNSW32,Flat", "IVF256,PQ16,RFlat") for the faiss
    backend, and "HNSW" or "M16,efc200" (optionally "ef64" for the default query-time ef) for hnswlib.
    `metric` is "ip" on L2-normalised vectors (cosine), the only metric the towers produce.
    """

    backend: Backend = Backend.FAISS
    spec: str = "Flat"
    dim: int = 64
    metric: str = "ip"
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "backend", Backend(self.backend))
        except ValueError:
            choices = ", ".join(b.value for b in Backend)
            raise DermError(f"unknown index backend {self.backend!r} (choose from {choices})") from None
        if not isinstance(self.spec, str) or not self.spec.strip():
            raise DermError("index spec must be a non-empty string")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim <= 0:
            raise DermError(f"index dim must be a positive int, got {self.dim!r}")
        if self.metric not in METRICS:
            raise DermError(
                f"unsupported metric {self.metric!r}: only 'ip' on L2-normalised vectors (cosine) is supported"
            )
        if self.device not in DEVICES:
            raise DermError(f"unknown device {self.device!r} (choose from {', '.join(DEVICES)})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise DermError(f"seed must be a non-negative int, got {self.seed!r}")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["backend"] = self.backend.value
        return d

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> IndexConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(obj) - known
        if unknown:
            raise DermError(f"unknown index config fields: {sorted(unknown)}")
        return cls(**obj)


@dataclass(frozen=True)
class SearchParams:
    """Query-time knobs, changed without a rebuild: `ef` (HNSW beam width), `nprobe` (IVF lists visited)."""

    ef: int | None = None
    nprobe: int | None = None

    def __post_init__(self) -> None:
        for name in ("ef", "nprobe"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise DermError(f"search param {name} must be a positive int or None, got {v!r}")

    def to_json(self) -> dict[str, int | None]:
        return {"ef": self.ef, "nprobe": self.nprobe}


@runtime_checkable
class AnnIndex(Protocol):
    """What retrieval code may call on any backend (implemented by FaissIndex and HnswIndex)."""

    config: IndexConfig

    def build(self, ids: np.ndarray, vecs: np.ndarray) -> None: ...

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(
        self,
        queries: np.ndarray,
        k: int,
        params: SearchParams | None = None,
        allowed_ids: np.ndarray | None = None,
        excluded_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path, config: IndexConfig) -> AnnIndex: ...

    @property
    def ntotal(self) -> int: ...

    def ids(self) -> np.ndarray: ...

    def get_vectors(self, ids: np.ndarray) -> np.ndarray: ...

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64[n], vecs float32[n, dim]) of every live entry, in storage order, read in bulk."""
        ...

    def default_params(self) -> SearchParams:
        """The query-time values used when `search` gets no params (resolved: None only where none apply)."""
        ...

    def set_default_params(self, params: SearchParams) -> None:
        """Change the query-time defaults (no rebuild); fields left None keep their current value."""
        ...

    def in_place_blocker(self) -> str | None:
        """Why this index cannot take removals and replacements in place (None: it can)."""
        ...

    def tombstone_fraction_after(self, n_removed: int, n_replaced: int, n_new: int) -> float:
        """Share of stored entries that would be removed-but-kept after removing n_removed ids, replacing the
        vectors of n_replaced and adding n_new (0 where storage compacts)."""
        ...


# --- boundary checks ---------------------------------------------------------------------------------------


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


# --- exact reference and recall ----------------------------------------------------------------------------


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


# --- dispatch ------------------------------------------------------------------------------------------------


def index_class(backend: Backend) -> type[FaissIndex] | type[HnswIndex]:
    """The AnnIndex implementation for `backend` (imported lazily: each backend pulls in its library)."""
    if backend is Backend.FAISS:
        from index.faiss_backend import FaissIndex

        return FaissIndex
    if backend is Backend.HNSWLIB:
        from index.hnsw_backend import HnswIndex

        return HnswIndex
    raise DermError(f"unknown index backend {backend!r}")


def make_index(config: IndexConfig) -> AnnIndex:
    """An empty index for `config`; call `build(ids, vecs)` next."""
    index: AnnIndex = index_class(config.backend)(config)
    return index
