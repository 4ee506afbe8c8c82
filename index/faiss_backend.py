"""faiss backend: any factory string, wrapped in `IndexIDMap2` so results carry our explicit int64 ids.

How each operation maps onto faiss (checked against faiss 1.15):
- Filters become `IDSelectorBatch` / `IDSelectorNot` / `IDSelectorAnd` passed in `SearchParameters(sel=...)`.
  `IndexIDMap2` translates the selector to external ids (it wraps it in an `IDSelectorTranslated`), but only
  indices that read `params.sel` honour it: Flat, IVF and HNSW directly under the IDMap. Everything else
  (e.g. `IndexRefineFlat`, which silently ignores a top-level selector) and GPU clones over-fetch and
  post-filter instead.
- `remove`: `IndexIDMap2.remove_ids` is only correct over `IndexFlat`, which compacts in order. Over IVF it
  silently corrupts the id mapping (IVF keeps its internal labels while the IDMap compacts its table), and
  HNSW has no `remove_ids` at all; for those, removed entries are tombstoned: their slot in `id_map` is
  rewritten to a unique negative id, which a range selector (or the post-filter) excludes.
- Rows that come back short of k (HNSW under a very selective filter, IVF when the probed lists hold too
  few eligible vectors) are answered by exact search over the eligible ids' reconstructed vectors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np

from dermcore.errors import DataError, DermError
from index.boundary import (
    as_ids,
    check_ids_vecs,
    check_search,
    compact_rows,
    fast_path_ok,
    pad_results,
)
from index.exact import fill_short_rows
from index.types import Backend, IndexConfig, SearchParams

log = logging.getLogger(__name__)

# faiss's bundled type stubs lag its SWIG API (SearchParameters keyword arguments, DirectMap, HNSW params)
faiss: Any = _faiss

INDEX_FILE = "index.faiss"
TRAIN_SAMPLE_MAX = 100_000
INT64_MAX = np.iinfo(np.int64).max
OVERFETCH_FACTOR = 4
GPU_MAX_K = 2048  # classic faiss GPU indices cap k (and over-fetched k); larger requests run on the CPU index


class FaissIndex:
    """An `AnnIndex` over faiss. Not safe for concurrent mutation; concurrent searches on CPU are fine."""

    def __init__(self, config: IndexConfig) -> None:
        if config.backend is not Backend.FAISS:
            raise DermError(f"FaissIndex needs backend 'faiss', got {config.backend.value!r}")
        self.config = config
        self._index: Any = None  # faiss.IndexIDMap2 on CPU: the source of truth
        self._n_tomb = 0
        self._ids_cache: np.ndarray | None = None
        self._gpu_index: Any = None
        self._params_cache: dict[tuple[int | None, int | None, int], Any] = {}
        self._plain = False  # Flat / IVF / HNSW directly under the IDMap: takes SearchParameters, fast path
        self._inner_obj: Any = None  # the downcast inner index (downcast_index costs a SWIG call)
        self._knob: str | None = None  # "nprobe" (IVF), "ef" (HNSW) or None
        self._n_stored = 0  # entries in the IDMap, tombstones included
        self._fast_ok = False  # the unfiltered fast search path applies
        self._device = "cpu"
        if config.device != "cpu":
            from index.gpu import resolve_device

            self._device = resolve_device(config.device)

    # --- building and mutation ---------------------------------------------------------------------------

    def build(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Create the index from scratch. ids int64[n] (>= 0, unique), vecs float32[n, dim] L2-normalised."""
        ids, vecs = check_ids_vecs(ids, vecs, self.config.dim)
        try:
            base = faiss.index_factory(self.config.dim, self.config.spec, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise DermError(f"invalid faiss spec {self.config.spec!r}: {_faiss_message(e)}") from None
        index = self._build_on_gpu(base, ids, vecs) if self._device == "cuda" else None
        if index is None:
            ivf = faiss.try_extract_index_ivf(base)
            if ivf is not None:
                # reconstruct() for the exact fallback; stays valid because IVF entries are only tombstoned
                ivf.set_direct_map_type(faiss.DirectMap.Array)
            if not base.is_trained:
                self._train(base, vecs)
            index = faiss.IndexIDMap2(base)
            if ids.size:
                index.add_with_ids(vecs, ids)
        self._index = index
        self._n_tomb = 0
        self._invalidate()
        log.info("built faiss %r over %d vectors (dim %d)", self.config.spec, ids.size, self.config.dim)

    def _build_on_gpu(self, base: Any, ids: np.ndarray, vecs: np.ndarray) -> Any:
        """Train and fill `base` on the GPU (k-means and list assignment are the build's cost); the CPU copy
        comes back as the source of truth. None, with a warning, where faiss cannot build this spec there."""
        from index.gpu import build_on_gpu

        for cp in _clustering_params(faiss.try_extract_index_ivf(base)):
            cp.seed = self.config.seed
            cp.min_points_per_centroid = 1
        try:
            index = build_on_gpu(base, self._train_sample(vecs), ids, vecs)
        except DermError as e:
            log.warning("building %r on the CPU: %s", self.config.spec, e)
            return None
        ivf = faiss.try_extract_index_ivf(index.index)
        if ivf is not None:
            ivf.set_direct_map_type(faiss.DirectMap.Array)
        return index

    def _train_sample(self, vecs: np.ndarray) -> np.ndarray:
        n = vecs.shape[0]
        if n <= TRAIN_SAMPLE_MAX:
            return vecs
        rng = np.random.default_rng(self.config.seed)
        return vecs[np.sort(rng.choice(n, TRAIN_SAMPLE_MAX, replace=False))]

    def _train(self, base: Any, vecs: np.ndarray) -> None:
        n = vecs.shape[0]
        if n == 0:
            raise DermError(f"spec {self.config.spec!r} needs training data, got 0 vectors")
        sample = self._train_sample(vecs)
        ivf = faiss.try_extract_index_ivf(base)
        if ivf is not None and sample.shape[0] < 39 * ivf.nlist:
            log.warning(
                "training %r on %d vectors; faiss recommends >= %d (39 per IVF list)",
                self.config.spec,
                sample.shape[0],
                39 * ivf.nlist,
            )
        for cp in _clustering_params(ivf):
            cp.seed = self.config.seed
            # faiss fprintf()s its own "please provide at least" warning to stderr; we log it above instead
            cp.min_points_per_centroid = 1
        try:
            base.train(sample)
        except RuntimeError as e:
            raise DermError(
                f"cannot train faiss {self.config.spec!r} on {n} vectors: {_faiss_message(e)}"
            ) from None

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Add vectors; an id already present is replaced (old vector removed, new one added)."""
        self._require_built()
        ids, vecs = check_ids_vecs(ids, vecs, self.config.dim)
        existing = ids[np.isin(ids, self.ids(), assume_unique=True)]
        if existing.size:
            self.remove(existing)
        if ids.size:
            self._index.add_with_ids(vecs, ids)
        self._invalidate()

    def remove(self, ids: np.ndarray) -> int:
        """Remove the given ids; returns how many were present (absent ids are ignored)."""
        self._require_built()
        present = np.intersect1d(np.unique(as_ids(ids)), self.ids(), assume_unique=True)
        if present.size == 0:
            return 0
        if isinstance(self._inner(), faiss.IndexFlat):
            n = int(self._index.remove_ids(faiss.IDSelectorBatch(present)))
        else:
            table = faiss.vector_to_array(self._index.id_map)
            pos = np.flatnonzero(np.isin(table, present, assume_unique=True))
            table[pos] = -2 - pos  # unique negative ids: never returned, never equal to a real id or -1
            faiss.copy_array_to_vector(table, self._index.id_map)
            self._index.construct_rev_map()
            self._n_tomb += pos.size
            n = int(pos.size)
        self._invalidate()
        return n

    def _invalidate(self) -> None:
        """Drop caches after any change; recompute what the fast search path reads without SWIG calls."""
        self._ids_cache = None
        self._gpu_index = None
        self._params_cache.clear()
        built = self._index is not None
        self._inner_obj = self._inner() if built else None
        self._plain = built and _honours_selector(self._inner_obj)
        self._knob = None
        if isinstance(self._inner_obj, faiss.IndexIVF):
            self._knob = "nprobe"
        elif isinstance(self._inner_obj, faiss.IndexHNSW):
            self._knob = "ef"
        self._n_stored = int(self._index.ntotal) if built else 0
        self._fast_ok = self._plain and self._n_tomb == 0 and self._device == "cpu"

    # --- queries -----------------------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        params: SearchParams | None = None,
        allowed_ids: np.ndarray | None = None,
        excluded_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product. queries float32[q, dim] -> (ids int64[q, k], scores float32[q, k]).

        Missing results are (-1, -inf). With filters, k results come back whenever k eligible ids exist.
        """
        fast = self._search_fast(queries, k, params, allowed_ids, excluded_ids)
        if fast is not None:
            return fast
        queries, k, params, allowed, excluded = check_search(
            queries, k, self.config.dim, params, allowed_ids, excluded_ids
        )
        nq = queries.shape[0]
        n_int = 0 if self._index is None else int(self._index.ntotal)
        if nq == 0 or self.ntotal == 0 or (allowed is not None and allowed.size == 0):
            return pad_results(np.empty((nq, 0), np.int64), np.empty((nq, 0), np.float32), k)
        filtered = allowed is not None or excluded is not None
        gpu_index = self._gpu() if k <= GPU_MAX_K // OVERFETCH_FACTOR - 16 else None
        if gpu_index is None and _honours_selector(self._inner()):
            refs: list[Any] = []
            sel = self._selector(allowed, excluded, refs)
            sp = self._search_params(params, sel, k, refs)
            scores, ids = self._index.search(queries, min(k, n_int), params=sp)
            out_ids, out_scores = pad_results(ids, scores, k)
        else:
            post = filtered or self._n_tomb > 0
            k_fetch = min(n_int, OVERFETCH_FACTOR * k + 16 if post else k)
            if gpu_index is not None:
                if params.ef is not None:
                    raise DermError("ef does not apply to faiss indices on the GPU")
                if params.nprobe is not None:
                    from index.gpu import set_nprobe

                    set_nprobe(gpu_index, params.nprobe)
                scores, ids = gpu_index.search(queries, k_fetch)
            else:
                refs = []
                scores, ids = self._index.search(
                    queries, k_fetch, params=self._search_params(params, None, k_fetch, refs)
                )
            if post:
                keep = ids >= 0
                if allowed is not None:
                    keep &= np.isin(ids, allowed)
                if excluded is not None:
                    keep &= ~np.isin(ids, excluded)
                out_ids, out_scores = compact_rows(ids, scores, keep, k)
            else:
                out_ids, out_scores = pad_results(ids, scores, k)
        return fill_short_rows(self, queries, k, out_ids, out_scores, allowed, excluded)

    def _search_fast(
        self,
        queries: Any,
        k: Any,
        params: SearchParams | None,
        allowed_ids: Any,
        excluded_ids: Any,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The unfiltered common case in a few microseconds, or None to take the general path.

        Taken only for contiguous float32 [q, dim] finite queries, 0 < k <= stored vectors, no tombstones,
        no GPU clone and an index that takes SearchParameters; the answer is final when every row came back
        full (faiss sorts results, so a full last column means full rows), else the general path pads and
        fills short rows. Query-time params equal to the index's own settings are not passed: SWIG's
        conversion of a SearchParameters object costs 3-8 us per call, a tenth of a single IVF query.
        """
        if not self._fast_ok or not fast_path_ok(
            queries, k, self.config.dim, self._n_stored, allowed_ids, excluded_ids
        ):
            return None
        sp = None
        if params is not None and not self._knobs_match(params, k):
            sp = self._search_params(params, None, k, [])
        scores, ids = self._index.search(queries, k, params=sp)
        n = queries.shape[0]
        if n and (ids[0, -1] < 0 if n == 1 else ids[:, -1].min() < 0):
            return None
        return ids, scores

    def _knobs_match(self, params: SearchParams, k: int) -> bool:
        """True when searching with `params` is searching with the index's own nprobe / efSearch."""
        if self._knob == "nprobe":
            return params.ef is None and params.nprobe in (None, self._inner_obj.nprobe)
        if self._knob == "ef":
            if params.nprobe is not None:
                return False
            # the value `_structure_params` would pass, compared with what the index holds
            return params.ef is None or max(params.ef, k) == self._inner_obj.hnsw.efSearch
        return params.ef is None and params.nprobe is None

    def _selector(self, allowed: np.ndarray | None, excluded: np.ndarray | None, refs: list[Any]) -> Any:
        """An IDSelector over external ids; `refs` keeps the Python objects alive (SWIG does not)."""
        parts: list[Any] = []
        if self._n_tomb:
            parts.append(faiss.IDSelectorRange(0, int(INT64_MAX)))
        if allowed is not None:
            parts.append(faiss.IDSelectorBatch(allowed))
        if excluded is not None and excluded.size:
            inner = faiss.IDSelectorBatch(excluded)
            refs.append(inner)
            parts.append(faiss.IDSelectorNot(inner))
        refs.extend(parts)
        if not parts:
            return None
        sel = parts[0]
        for p in parts[1:]:
            sel = faiss.IDSelectorAnd(sel, p)
            refs.append(sel)
        return sel

    def _search_params(self, params: SearchParams, sel: Any, k: int, refs: list[Any]) -> Any:
        """A SearchParameters object matching the index structure, or None for library defaults.

        Without a selector the object depends only on (ef, nprobe, k), so it is cached: making a SWIG object
        per call is a measurable share of a single-query search. faiss only reads it during a search.
        """
        if sel is None:
            key = (params.ef, params.nprobe, k)
            if key not in self._params_cache:
                held: list[Any] = []
                self._params_cache[key] = (self._make_search_params(params, None, k, held), held)
            return self._params_cache[key][0]
        return self._make_search_params(params, sel, k, refs)

    def _make_search_params(self, params: SearchParams, sel: Any, k: int, refs: list[Any]) -> Any:
        inner = self._inner()
        if isinstance(inner, faiss.IndexRefine):
            base_params = _structure_params(
                faiss.downcast_index(inner.base_index), params, None, k, self.config
            )
            refs.append(base_params)
            if base_params is None and sel is None:
                return None
            return faiss.IndexRefineSearchParameters(k_factor=inner.k_factor, base_index_params=base_params)
        return _structure_params(inner, params, sel, k, self.config)

    def _gpu(self) -> Any:
        if self._device != "cuda" or self._index is None:
            return None
        if self._gpu_index is None:
            from index.gpu import to_gpu

            self._gpu_index = to_gpu(self._index)
        return self._gpu_index

    # --- state -------------------------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal) - self._n_tomb

    def ids(self) -> np.ndarray:
        """int64[ntotal] ids present, in storage order (read-only view; copy before modifying)."""
        if self._index is None:
            return np.empty(0, np.int64)
        if self._ids_cache is None:
            table = faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)
            self._ids_cache = table[table >= 0] if self._n_tomb else table
            self._ids_cache.flags.writeable = False
        return self._ids_cache

    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        """float32[len(ids), dim] stored vectors (decoded codes for compressed specs); DermError for unknown ids."""
        self._require_built()
        ids = as_ids(ids)
        if ids.size == 0:
            return np.empty((0, self.config.dim), np.float32)
        try:  # IndexIDMap2 looks ids up in its reverse map and raises for unknown (or removed) ones
            vecs = self._index.reconstruct_batch(ids)
        except RuntimeError:
            missing = ~np.isin(ids, self.ids())
            raise DermError(
                f"{int(missing.sum())} id(s) not in the index (first {int(ids[missing][0])})"
            ) from None
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64[n], vecs float32[n, dim]) of every live entry, in storage order, read in bulk.

        One `reconstruct_n` over the inner index (IVF walks each list once; Flat and HNSW copy their
        storage), instead of `ntotal` id lookups: what a refresh compares the new ad set against.
        """
        self._require_built()
        table = faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)
        vecs = self._inner().reconstruct_n(0, int(self._index.ntotal))
        if self._n_tomb:
            keep = table >= 0
            return table[keep], np.ascontiguousarray(vecs[keep], dtype=np.float32)
        return table, np.ascontiguousarray(vecs, dtype=np.float32)

    def default_params(self) -> SearchParams:
        """The faiss index's own query defaults (IVF nprobe, HNSW efSearch), saved inside the index file."""
        inner = self._inner()
        if isinstance(inner, faiss.IndexRefine):
            inner = faiss.downcast_index(inner.base_index)
        if isinstance(inner, faiss.IndexIVF):
            return SearchParams(nprobe=int(inner.nprobe))
        if isinstance(inner, faiss.IndexHNSW):
            return SearchParams(ef=int(inner.hnsw.efSearch))
        return SearchParams()

    def set_default_params(self, params: SearchParams) -> None:
        inner = self._inner()
        if isinstance(inner, faiss.IndexRefine):
            inner = faiss.downcast_index(inner.base_index)
        _structure_params(inner, params, None, 1, self.config)  # raises for ef/nprobe that do not apply
        if params.nprobe is not None:
            inner.nprobe = params.nprobe
        if params.ef is not None:
            inner.hnsw.efSearch = params.ef
        self._invalidate()

    def in_place_blocker(self) -> str | None:
        """Why this index cannot be updated in place (None: it can: Flat and IVF over full vectors)."""
        inner = self._inner()
        if isinstance(inner, faiss.IndexRefine):
            return "faiss refine indices cannot remove vectors"
        if isinstance(inner, faiss.IndexHNSW):
            return "faiss HNSW graphs cannot remove vectors"
        if isinstance(inner, faiss.IndexFlat | faiss.IndexIVFFlat):
            return None
        return f"faiss {self.config.spec!r} stores compressed codes: changed vectors cannot be told apart"

    @property
    def tombstones(self) -> int:
        """Removed entries still stored (IVF/HNSW keep them until a rebuild); searches skip them."""
        return self._n_tomb

    def tombstone_fraction_after(self, n_removed: int, n_replaced: int, n_new: int) -> float:
        """Share of stored entries that would be tombstones after such an update (a replaced id leaves one)."""
        if isinstance(self._inner(), faiss.IndexFlat):
            return 0.0  # IndexFlat compacts on removal
        stored = int(self._index.ntotal) + n_replaced + n_new
        return (self._n_tomb + n_removed + n_replaced) / max(stored, 1)

    def _inner(self) -> Any:
        self._require_built()
        return faiss.downcast_index(self._index.index)

    def _require_built(self) -> None:
        if self._index is None:
            raise DermError("the index is empty: call build(ids, vecs) first")

    # --- persistence -------------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write `directory/index.faiss` (the CPU index, tombstones included)."""
        self._require_built()
        faiss.write_index(self._index, str(Path(directory) / INDEX_FILE))

    @classmethod
    def load(cls, directory: Path, config: IndexConfig) -> FaissIndex:
        path = Path(directory) / INDEX_FILE
        if not path.is_file():
            raise DataError(path, "faiss index file not found")
        try:
            raw = faiss.read_index(str(path))
        except RuntimeError as e:
            raise DataError(path, f"cannot read faiss index ({_faiss_message(e)})") from None
        if not isinstance(raw, faiss.IndexIDMap2):
            raise DataError(path, f"expected an IndexIDMap2, found {type(raw).__name__}")
        if raw.d != config.dim:
            raise DataError(path, f"index dim {raw.d} does not match config dim {config.dim}")
        if raw.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise DataError(path, "index metric is not inner product")
        out = cls(config)
        out._index = raw
        out._n_tomb = int((faiss.vector_to_array(raw.id_map) < 0).sum())
        out._invalidate()
        return out


def _structure_params(inner: Any, params: SearchParams, sel: Any, k: int, config: IndexConfig) -> Any:
    if isinstance(inner, faiss.IndexIVF):
        if params.ef is not None:
            raise DermError(f"ef does not apply to faiss spec {config.spec!r} (use nprobe)")
        if params.nprobe is None and sel is None:
            return None
        return faiss.SearchParametersIVF(sel=sel, nprobe=params.nprobe or inner.nprobe)
    if isinstance(inner, faiss.IndexHNSW):
        if params.nprobe is not None:
            raise DermError(f"nprobe does not apply to faiss spec {config.spec!r} (use ef)")
        if params.ef is None and sel is None:
            return None
        return faiss.SearchParametersHNSW(sel=sel, efSearch=max(params.ef or inner.hnsw.efSearch, k))
    if params.ef is not None or params.nprobe is not None:
        raise DermError(f"search params ef/nprobe do not apply to faiss spec {config.spec!r}")
    return None if sel is None else faiss.SearchParameters(sel=sel)


def _honours_selector(inner: Any) -> bool:
    return isinstance(inner, faiss.IndexFlat | faiss.IndexIVF | faiss.IndexHNSW)


def _clustering_params(ivf: Any) -> list[Any]:
    """The k-means parameters faiss will use to train `ivf` (coarse quantizer, and PQ codebooks if any)."""
    out = []
    if ivf is not None:
        ivf = faiss.downcast_index(ivf)  # try_extract_index_ivf returns a base-class proxy without .pq
        out.append(ivf.cp)
        pq = getattr(ivf, "pq", None)
        if pq is not None:
            out.append(pq.cp)
        if getattr(ivf, "do_polysemous_training", False):
            # index_factory turns this on for IVF-PQ; it only serves polysemous_ht filtering (unused here)
            # and multiplies training time (~10x on small data)
            ivf.do_polysemous_training = False
    return out


def _faiss_message(e: Exception) -> str:
    """The useful last line of a faiss C++ exception ("Error in ... at file:line: Error: '...' failed: msg")."""
    return str(e).strip().splitlines()[-1][-300:]
