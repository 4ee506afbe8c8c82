"""A small ANN recall / QPS sweep over real ad vectors, run at report time (in memory, nothing published).

Builds a faiss IVF index and an hnswlib graph over the given ad vectors, searches them at a few nprobe / ef
values, and records for each point recall@k against exact search (`index.recall_against_exact`, tie tolerant)
and queries per second of the ANN search alone (one batch, the threads the process allows). Exact search
(faiss Flat through the same search path) is the reference point.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from adslog.progress import Progress, no_progress
from index import Backend, IndexConfig, SearchParams, make_index, recall_against_exact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnSweepConfig:
    """k: recall@k; nprobes / efs: query-time values swept; hnsw_spec: hnswlib build parameters; max_queries /
    max_ads cap the work (a seeded sample) so the sweep stays within seconds."""

    k: int = 10
    nprobes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    efs: tuple[int, ...] = (10, 20, 40, 80, 160)
    hnsw_spec: str = "M16,efc100"
    max_queries: int = 500
    max_ads: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.max_queries < 1 or self.max_ads < 1:
            raise ValueError("k, max_queries and max_ads must be >= 1")
        if not self.nprobes or not self.efs or min(self.nprobes + self.efs) < 1:
            raise ValueError("nprobes and efs must be non-empty and positive")


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))


def _qps(
    search: Callable[[], object], n_queries: int, min_seconds: float = 0.05, max_reps: int = 50
) -> float:
    """Queries per second of the fastest of several repeats of one batch search (after one warm-up call):
    a single sub-millisecond batch is dominated by timer and thread start-up noise."""
    search()
    best, spent, reps = float("inf"), 0.0, 0
    while reps < 3 or (spent < min_seconds and reps < max_reps):
        t = time.perf_counter()
        search()
        dt = time.perf_counter() - t
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return n_queries / max(best, 1e-9)


def ann_sweep(
    ad_ids: np.ndarray,
    ad_vecs: np.ndarray,
    queries: np.ndarray,
    cfg: AnnSweepConfig | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Recall@k vs QPS of faiss IVF (nprobe sweep) and hnswlib (ef sweep) over `ad_vecs`.

    Args: ad_ids int64[n]; ad_vecs float[n, dim]; queries float[q, dim] (e.g. pooled user embeddings); both are
    L2-normalised here (cosine, as the towers emit). Returns {"k", "n_ads", "n_queries", "dim", "config",
    "points": [{"backend", "spec", "param", "value", "recall", "qps", "build_s"}]}.
    """
    cfg = cfg or AnnSweepConfig()
    rng = np.random.default_rng(cfg.seed)
    ad_ids = np.asarray(ad_ids, np.int64)
    if len(ad_ids) > cfg.max_ads:
        keep = np.sort(rng.choice(len(ad_ids), cfg.max_ads, replace=False))
        ad_ids, ad_vecs = ad_ids[keep], ad_vecs[keep]
    if len(queries) > cfg.max_queries:
        queries = queries[np.sort(rng.choice(len(queries), cfg.max_queries, replace=False))]
    vecs, q = _normalise(ad_vecs), _normalise(queries)
    n, dim = vecs.shape
    k = min(cfg.k, n)
    points: list[dict[str, Any]] = []
    exact = make_index(IndexConfig(spec="Flat", dim=dim))
    exact.build(ad_ids, vecs)
    points.append(
        {
            "backend": "faiss",
            "spec": "Flat",
            "param": None,
            "value": None,
            "recall": recall_against_exact(exact, q, k, ad_ids=ad_ids, ad_vecs=vecs),
            "qps": _qps(lambda: exact.search(q, k), len(q)),
            "build_s": 0.0,
        }
    )
    nlist = int(max(1, min(4 * np.sqrt(n), n // 39)))  # faiss wants >= 39 training points per list
    runs: list[tuple[IndexConfig, str, tuple[int, ...]]] = [
        (IndexConfig(spec=f"IVF{nlist},Flat", dim=dim, seed=cfg.seed), "nprobe", cfg.nprobes),
        (IndexConfig(backend=Backend.HNSWLIB, spec=cfg.hnsw_spec, dim=dim, seed=cfg.seed), "ef", cfg.efs),
    ]
    total = sum(len(v) for _, _, v in runs)
    done = 0
    for icfg, param, values in runs:
        index = make_index(icfg)
        t = time.perf_counter()
        index.build(ad_ids, vecs)
        build_s = time.perf_counter() - t
        for v in values:
            if param == "nprobe" and v > nlist:
                continue
            params = SearchParams(**{param: max(v, k) if param == "ef" else v})
            points.append(
                {
                    "backend": icfg.backend.value,
                    "spec": icfg.spec,
                    "param": param,
                    "value": int(params.ef if param == "ef" else v),  # type: ignore[arg-type]
                    "recall": recall_against_exact(index, q, k, params, ad_ids=ad_ids, ad_vecs=vecs),
                    "qps": _qps(lambda: index.search(q, k, params), len(q)),  # noqa: B023 (called at once)
                    "build_s": build_s,
                }
            )
            done += 1
            progress("ann sweep", done, total)
    return {
        "k": int(k),
        "n_ads": int(n),
        "n_queries": int(len(q)),
        "dim": int(dim),
        "config": {
            "nprobes": list(cfg.nprobes),
            "efs": list(cfg.efs),
            "hnsw_spec": cfg.hnsw_spec,
            "nlist": nlist,
            "seed": cfg.seed,
        },
        "points": points,
    }
