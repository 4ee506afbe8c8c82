"""hnswlib backend: labels are our int64 ids (hnswlib stores them as size_t, hence ids >= 0).

hnswlib facts this module relies on (hnswlib 0.8):
- space "ip" returns distance `1 - dot`; scores are converted back to `dot` (higher = better).
- `add_items` with an existing live label updates that element's vector in place (`updatePoint`, which
  re-selects the neighbours of its neighbours: ~4x a fresh insert at 1M). With `allow_replace_deleted=True`
  it refuses a *deleted* label, so re-adding a removed id first calls `unmark_deleted`. Brand-new labels are
  inserted as new elements (`replace_deleted=False`): reusing a deleted slot would also run `updatePoint`,
  so deleted elements stay as tombstones until the refresh's tombstone limit asks for a rebuild.
- `knn_query` raises RuntimeError when it cannot fill k columns for every row (deleted elements, small ef):
  we retry with a larger ef, then a smaller k, and pad.
- `set_ef` mutates the index, so concurrent searches with different `ef` are not safe.
- `add_items` with several threads inserts in a racy order; `add` uses one thread, so the same changes
  applied to the same loaded graph give the same graph (a delta version's readers serve what the refresh's
  recall self-check measured; see index.delta). `build` keeps all threads.
Filters: a selective filter (<= EXACT_FILTER_MAX eligible ids) is answered by exact search over the eligible
vectors, which beats the Python filter callback; a broad one (>= OVERFETCH_MIN_FRACTION of the index) by
over-fetch and vectorised post-filter; anything in between by hnswlib's `filter=` callback. Rows still short
of k fall back to exact search over the eligible ids.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from dermcore.errors import DataError, DermError
from index.boundary import (
    as_ids,
    check_ids_vecs,
    check_search,
    compact_rows,
    eligible_mask,
    fast_path_ok,
    pad_results,
)
from index.exact import exact_search, fill_short_rows
from index.types import Backend, IndexConfig, SearchParams

log = logging.getLogger(__name__)

INDEX_FILE = "index.hnsw"
LIVE_IDS_FILE = "live_ids.npy"
EXACT_FILTER_MAX = 4096
OVERFETCH_MIN_FRACTION = 0.25


@dataclass(frozen=True)
class HnswSpec:
    """Build-time graph parameters parsed from the spec: "HNSW", "HNSW32", "M16,efc200", "M16,efc200,ef64"."""

    M: int = 16
    ef_construction: int = 200
    ef: int = 64

    @classmethod
    def parse(cls, spec: str) -> HnswSpec:
        values: dict[str, int] = {}
        keys = {"M": "M", "HNSW": "M", "efc": "ef_construction", "ef": "ef"}
        for tok in (t.strip() for t in spec.split(",")):
            m = re.fullmatch(r"(HNSW|M|efc|ef)(\d*)", tok)
            if m is None or (m.group(1) != "HNSW" and not m.group(2)):
                raise DermError(
                    f"bad hnswlib spec {spec!r}: token {tok!r} (expected HNSW[M], M<int>, efc<int>, ef<int>)"
                )
            if m.group(2):
                value = int(m.group(2))
                if value <= 0:
                    raise DermError(f"bad hnswlib spec {spec!r}: {tok!r} must be positive")
                values[keys[m.group(1)]] = value
        return cls(**values)


class HnswIndex:
    """An `AnnIndex` over hnswlib (CPU only)."""

    def __init__(self, config: IndexConfig) -> None:
        if config.backend is not Backend.HNSWLIB:
            raise DermError(f"HnswIndex needs backend 'hnswlib', got {config.backend.value!r}")
        if config.device == "cuda":
            raise DermError("the hnswlib backend runs on CPU only; use device 'cpu' or 'auto'")
        self.config = config
        self.spec = HnswSpec.parse(config.spec)
        self._index: Any = None
        self._live = np.empty(0, np.int64)  # sorted ids present (not deleted)
        self._deleted = np.empty(0, np.int64)  # sorted labels marked deleted (tombstones)
        self._ef = self.spec.ef  # query default; set_default_params changes it without a rebuild
        self._cur_ef = self._ef  # what the hnswlib object is set to now (set_ef only when it differs)

    # --- building and mutation ---------------------------------------------------------------------------

    def build(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Create the graph. ids int64[n] (>= 0, unique), vecs float32[n, dim] L2-normalised."""
        ids, vecs = check_ids_vecs(ids, vecs, self.config.dim)
        index = hnswlib.Index(space="ip", dim=self.config.dim)
        index.init_index(
            max_elements=max(ids.size, 1),
            ef_construction=self.spec.ef_construction,
            M=self.spec.M,
            random_seed=self.config.seed,
            allow_replace_deleted=True,
        )
        index.set_ef(self._ef)
        self._cur_ef = self._ef
        if ids.size:
            index.add_items(vecs, ids)
        self._index = index
        self._live = np.sort(ids)
        self._deleted = np.empty(0, np.int64)
        log.info("built hnswlib %r over %d vectors (dim %d)", self.config.spec, ids.size, self.config.dim)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Add vectors; an id already present (or removed earlier) gets its vector replaced.

        New ids become new elements (a fresh insert costs a quarter of hnswlib's in-place `updatePoint`,
        which reusing a deleted slot runs); removed elements stay in the graph as tombstones, routing
        searches but never returned, until a rebuild (see `tombstone_fraction_after`).
        """
        self._require_built()
        ids, vecs = check_ids_vecs(ids, vecs, self.config.dim)
        if ids.size == 0:
            return
        live = _in_sorted(self._live, ids)
        revive = _in_sorted(self._deleted, ids)
        for label in ids[revive]:  # only ids removed earlier and added back
            self._index.unmark_deleted(int(label))
        update = revive | live
        if update.any():
            self._index.add_items(vecs[update], ids[update], num_threads=1, replace_deleted=False)
        new = ~update
        n_new = int(new.sum())
        if n_new:
            need = self._index.element_count + n_new
            if need > self._index.get_max_elements():
                self._index.resize_index(max(need, int(self._index.get_max_elements() * 1.25)))
            self._index.add_items(vecs[new], ids[new], num_threads=1, replace_deleted=False)
        self._live = np.sort(np.concatenate([self._live, ids[~live]]))  # ids are unique (checked)
        if revive.any():
            self._deleted = np.setdiff1d(self._deleted, ids[revive], assume_unique=True)

    def remove(self, ids: np.ndarray) -> int:
        """Mark the given ids deleted; returns how many were present (absent ids are ignored)."""
        self._require_built()
        present = np.intersect1d(np.unique(as_ids(ids)), self._live, assume_unique=True)
        for label in present:
            self._index.mark_deleted(int(label))
        self._live = np.setdiff1d(self._live, present, assume_unique=True)
        self._deleted = np.union1d(self._deleted, present)
        return int(present.size)

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
        if params.nprobe is not None:
            raise DermError("nprobe does not apply to the hnswlib backend (use ef)")
        ef = params.ef or self._ef
        nq, n_live = queries.shape[0], self._live.size
        empty = (np.empty((nq, 0), np.int64), np.empty((nq, 0), np.float32))
        if nq == 0 or n_live == 0:
            return pad_results(*empty, k)
        if allowed is None and excluded is None:
            out = self._knn(queries, min(k, n_live), ef)
        else:
            eligible = self._live[eligible_mask(self._live, allowed, excluded)]
            if eligible.size == 0:
                return pad_results(*empty, k)
            if eligible.size <= EXACT_FILTER_MAX:
                return exact_search(eligible, self.get_vectors(eligible), queries, k)
            frac = eligible.size / n_live
            if frac >= OVERFETCH_MIN_FRACTION:
                k_fetch = min(n_live, math.ceil(2 * k / frac) + 8)
                ids, scores = self._knn(queries, k_fetch, max(ef, k_fetch))
                out = compact_rows(ids, scores, np.isin(ids, eligible), k)
            else:
                allowed_set = set(eligible.tolist())
                out = self._knn(queries, min(k, eligible.size), ef, allowed_set.__contains__)
        out_ids, out_scores = pad_results(*out, k)
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

        Taken only for contiguous float32 [q, dim] finite queries and 0 < k <= ntotal; hnswlib either fills
        all k columns (then no padding or fill-in is needed) or raises, and then the general path retries.
        """
        if (params is not None and params.nprobe is not None) or not fast_path_ok(
            queries, k, self.config.dim, self._live.size, allowed_ids, excluded_ids
        ):
            return None
        ef = max((params.ef if params is not None else None) or self._ef, k)
        if ef != self._cur_ef:
            self._index.set_ef(ef)
            self._cur_ef = ef
        try:
            labels, dist = self._index.knn_query(queries, k=k, num_threads=-1)
        except RuntimeError:
            return None
        return labels.view(np.int64), np.subtract(1.0, dist, out=dist)

    def _knn(self, queries: np.ndarray, k: int, ef: int, filt: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """hnswlib knn_query with (-1, -inf) padding; retries when hnswlib cannot fill k columns."""
        attempts = [(k, max(ef, k)), (k, max(4 * ef, 4 * k))]
        kk = k // 2
        while kk >= 1:
            attempts.append((kk, max(4 * ef, 4 * kk)))
            kk //= 2
        # the Python filter callback needs the GIL: threads would only contend for it
        threads = 1 if filt is not None else -1
        for kk, ef_try in attempts:
            if ef_try != self._cur_ef:
                self._index.set_ef(ef_try)
                self._cur_ef = ef_try
            try:
                labels, dist = self._index.knn_query(queries, k=kk, num_threads=threads, filter=filt)
            except RuntimeError as e:
                if "contiguous 2D array" not in str(e):
                    raise DermError(f"hnswlib search failed: {e}") from None
                log.debug("hnswlib could not return k=%d with ef=%d; retrying", kk, ef_try)
                continue
            # in place: labels are uint64 (ids < 2**63, so the int64 view is exact), dist is float32
            scores = np.subtract(1.0, dist, out=dist)
            return labels.view(np.int64), scores
        n = queries.shape[0]
        return np.full((n, 0), -1, np.int64), np.full((n, 0), -np.inf, np.float32)

    # --- state -------------------------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self._live.size)

    def ids(self) -> np.ndarray:
        """int64[ntotal] ids present, sorted (read-only view; copy before modifying)."""
        view = self._live.view()
        view.flags.writeable = False
        return view

    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        """float32[len(ids), dim] stored vectors; DermError for ids not present."""
        ids = as_ids(ids)
        if ids.size == 0:
            return np.empty((0, self.config.dim), np.float32)
        try:  # hnswlib raises "Label not found" for unknown and deleted labels
            vecs = self._index.get_items(ids, return_type="numpy")
        except RuntimeError:
            missing = ~np.isin(ids, self._live)
            raise DermError(
                f"{int(missing.sum())} id(s) not in the index (first {int(ids[missing][0])})"
            ) from None
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64[n], vecs float32[n, dim]) of every live entry, in storage order, read in bulk.

        hnswlib's pickling state (`__getstate__`) hands back its level-0 block, which holds each element's
        label and vector at fixed offsets: one copy instead of `n` locked label lookups in `get_items`.
        """
        self._require_built()
        try:
            st = self._index.__getstate__()[0]
            n, size = int(st["cur_element_count"]), int(st["size_data_per_element"])
            lab, dat = int(st["label_offset"]), int(st["offset_data"])
            block = st["data_level0"].view(np.uint8)[: n * size].reshape(n, size)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
            log.debug("hnswlib state not readable (%s): per-label reads", e)
            return self._live.copy(), self.get_vectors(self._live)
        labels = np.ascontiguousarray(block[:, lab : lab + 8]).view(np.uint64).ravel().view(np.int64)
        pos = np.minimum(np.searchsorted(self._live, labels), max(self._live.size - 1, 0))
        keep = self._live[pos] == labels if self._live.size else np.zeros(n, dtype=bool)
        rows = block[keep, dat : dat + 4 * self.config.dim]
        vecs = np.ascontiguousarray(rows).view(np.float32).reshape(-1, self.config.dim)
        ids = labels[keep]
        if ids.size != self._live.size:
            raise DermError(f"hnswlib holds {ids.size} live labels, expected {self._live.size}")
        return ids, vecs

    def default_params(self) -> SearchParams:
        return SearchParams(ef=self._ef)

    def set_default_params(self, params: SearchParams) -> None:
        if params.nprobe is not None:
            raise DermError("nprobe does not apply to the hnswlib backend (use ef)")
        if params.ef is not None:
            self._ef = params.ef

    def in_place_blocker(self) -> str | None:
        """None: hnswlib marks removed ids deleted, reuses their slots for new ids, updates vectors in place."""
        self._require_built()
        return None

    @property
    def tombstones(self) -> int:
        """Deleted elements still in the graph (they route searches, are never returned)."""
        return int(self._deleted.size)

    def tombstone_fraction_after(self, n_removed: int, n_replaced: int, n_new: int) -> float:
        """Share of graph elements that would be tombstones after such an update (replacements update in place)."""
        self._require_built()
        return (self._deleted.size + n_removed) / max(int(self._index.element_count) + n_new, 1)

    def _require_built(self) -> None:
        if self._index is None:
            raise DermError("the index is empty: call build(ids, vecs) first")

    # --- persistence -------------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write `index.hnsw` (graph, vectors, deletion marks) and `live_ids.npy` (int64, sorted)."""
        self._require_built()
        directory = Path(directory)
        self._index.save_index(str(directory / INDEX_FILE))
        np.save(directory / LIVE_IDS_FILE, self._live, allow_pickle=False)

    @classmethod
    def load(cls, directory: Path, config: IndexConfig) -> HnswIndex:
        directory = Path(directory)
        out = cls(config)
        for name in (INDEX_FILE, LIVE_IDS_FILE):
            if not (directory / name).is_file():
                raise DataError(directory / name, "hnswlib index file not found")
        try:
            live = np.load(directory / LIVE_IDS_FILE, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(directory / LIVE_IDS_FILE, f"cannot read live ids ({e})") from None
        if live.dtype != np.int64 or live.ndim != 1:
            raise DataError(
                directory / LIVE_IDS_FILE, f"expected int64[n], found {live.dtype}{list(live.shape)}"
            )
        index = hnswlib.Index(space="ip", dim=config.dim)
        try:
            index.load_index(str(directory / INDEX_FILE), max_elements=0, allow_replace_deleted=True)
        except RuntimeError as e:
            raise DataError(directory / INDEX_FILE, f"cannot read hnswlib index ({e})") from None
        labels = np.sort(np.asarray(index.get_ids_list(), dtype=np.int64))
        present = _in_sorted(labels, live)
        if not present.all():
            raise DataError(
                directory / INDEX_FILE, f"{int((~present).sum())} live id(s) missing from the graph"
            )
        index.set_ef(out._ef)
        out._index = index
        out._live = live
        out._deleted = labels[~_in_sorted(live, labels)]
        return out


def _in_sorted(sorted_keys: np.ndarray, x: np.ndarray) -> np.ndarray:
    """bool[len(x)]: x[i] in `sorted_keys` (a binary search per element: no sort of the large side)."""
    if sorted_keys.size == 0:
        return np.zeros(x.shape[0], dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, x), sorted_keys.size - 1)
    return np.asarray(sorted_keys[pos] == x)
