"""Query-time tuning: sweep the index's knob (IVF `nprobe` or HNSW `ef`) and report recall@k against exact
search and queries per second for each value, so a user can pick a point. Nothing is rebuilt: the knob is a
search parameter (`SearchParams`), and the chosen value can be passed to any search or recorded as the
version's default (`derm index build --nprobe/--ef`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dermcore.errors import DermError
from index.boundary import as_ids, as_vectors, check_k
from index.exact import exact_search, recall_of_results
from index.types import AnnIndex, SearchParams

log = logging.getLogger(__name__)

NPROBE_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
EF_MULTIPLIERS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


@dataclass(frozen=True)
class TunePoint:
    knob: str | None  # "nprobe", "ef", or None for an index without a query-time knob (Flat)
    value: int | None
    recall_at_k: float
    qps: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "knob": self.knob,
            "value": self.value,
            "recall_at_k": round(self.recall_at_k, 5),
            "qps": round(self.qps, 1),
            "seconds": round(self.seconds, 4),
        }


def knob_of(index: AnnIndex) -> str | None:
    """The query-time knob `index` has: "nprobe" (IVF), "ef" (HNSW graphs), or None (Flat)."""
    defaults = index.default_params()
    if defaults.nprobe is not None:
        return "nprobe"
    if defaults.ef is not None:
        return "ef"
    return None


def default_values(index: AnnIndex, knob: str | None, k: int) -> list[int | None]:
    """A ladder of knob values worth trying; it always includes the index's current default."""
    if knob is None:
        return [None]
    current = getattr(index.default_params(), knob)
    if knob == "nprobe":
        nlist = _nlist(index)
        values = {v for v in NPROBE_LADDER if nlist is None or v <= nlist}
    else:
        values = {max(1, round(k * m)) for m in EF_MULTIPLIERS}  # ef below k is raised to k by every backend
    values.add(int(current))
    return list(sorted(values))


def time_qps(
    search: Callable[[], object], repeats: int = 3, min_seconds: float = 0.05, max_reps: int = 50
) -> float:
    """Seconds of the fastest of several calls of `search` (one batch search), after one warm-up call: at
    least `repeats` calls, more until `min_seconds` are spent (at most `max_reps`), since a single
    sub-millisecond batch is dominated by timer and thread start-up noise."""
    search()
    best, spent, reps = float("inf"), 0.0, 0
    while reps < repeats or (spent < min_seconds and reps < max_reps):
        t = time.perf_counter()
        search()
        dt = time.perf_counter() - t
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best


def tune(
    index: AnnIndex,
    queries: np.ndarray,
    k: int = 100,
    values: list[int] | None = None,
    ad_ids: np.ndarray | None = None,
    ad_vecs: np.ndarray | None = None,
    repeats: int = 3,
    min_seconds: float = 0.05,
) -> list[TunePoint]:
    """Recall@k against exact search and QPS of `index` for each value of its knob: the one ANN sweep
    (`derm index tune`, `eval.ann_sweep` in the report, `benchmarks/index_scale.py`).

    queries float32[q, dim] (user embeddings); ground truth from (ad_ids, ad_vecs) when given, else the
    vectors the index stores. QPS is timed by `time_qps`: one batch over all queries, after a warm-up pass,
    the fastest of at least `repeats` passes (more until `min_seconds` are spent, at most 50).
    """
    k = check_k(k)
    if repeats < 1:
        raise DermError(f"repeats must be >= 1, got {repeats}")
    queries = as_vectors(queries, index.config.dim, "queries", check_norm=False)
    if queries.shape[0] == 0 or index.ntotal == 0:
        raise DermError("tuning needs at least one query and a non-empty index")
    if ad_ids is None or ad_vecs is None:
        ad_ids = index.ids()
        ad_vecs = index.get_vectors(ad_ids)
    ad_ids = as_ids(ad_ids, "ad_ids")
    ad_vecs = as_vectors(ad_vecs, index.config.dim, "ad vectors", check_norm=False)
    k = min(k, int(ad_ids.size))
    knob = knob_of(index)
    todo: list[int | None]
    if values is None:
        todo = default_values(index, knob, k)
    else:
        if knob is None:
            raise DermError(f"index {index.config.spec!r} has no query-time knob to sweep (exact search)")
        todo = [int(v) for v in sorted(set(values))]
    _, ex_scores = exact_search(ad_ids, ad_vecs, queries, k)
    points = []
    for value in todo:
        params = SearchParams(**{knob: value}) if knob is not None else None
        ann_ids, _ = index.search(queries, k, params)
        recall = recall_of_results(ann_ids, ex_scores, queries, ad_ids, ad_vecs)
        best = time_qps(lambda: index.search(queries, k, params), repeats, min_seconds)  # noqa: B023
        points.append(TunePoint(knob, value, recall, queries.shape[0] / max(best, 1e-9), best))
        log.info("%s=%s: recall@%d %.4f, %.0f QPS", knob, value, k, recall, points[-1].qps)
    return points


def _nlist(index: AnnIndex) -> int | None:
    inner = getattr(index, "_inner", None)
    if inner is None:
        return None
    import faiss

    base = inner()
    ivf = faiss.try_extract_index_ivf(base)
    return None if ivf is None else int(ivf.nlist)
