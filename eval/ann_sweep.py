"""A small ANN recall / QPS sweep over real ad vectors, run at report time (in memory, nothing published).

Builds a faiss IVF index and an hnswlib graph over the given ad vectors, searches them at a few nprobe / ef
values with `index.tune` (the sweep `derm index tune` runs): for each point recall@k against exact search (tie
tolerant) and queries per second of the ANN search alone (one batch, the threads the process allows, timed by
`index.tune.time_qps`). Exact search (faiss Flat through the same search path) is the reference point.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from dermcore.progress import Progress, no_progress
from index import Backend, IndexConfig, TunePoint, make_index, tune

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
    exact = make_index(IndexConfig(spec="Flat", dim=dim))
    exact.build(ad_ids, vecs)
    points = [_point("faiss", "Flat", p, 0.0) for p in tune(exact, q, k, None, ad_ids, vecs)]
    nlist = int(max(1, min(4 * np.sqrt(n), n // 39)))  # faiss wants >= 39 training points per list
    runs: list[tuple[IndexConfig, list[int]]] = [
        (
            IndexConfig(spec=f"IVF{nlist},Flat", dim=dim, seed=cfg.seed),
            [v for v in cfg.nprobes if v <= nlist],
        ),
        # an ef below k is raised to k by every backend: swept (and recorded) as k
        (
            IndexConfig(backend=Backend.HNSWLIB, spec=cfg.hnsw_spec, dim=dim, seed=cfg.seed),
            sorted({max(v, k) for v in cfg.efs}),
        ),
    ]
    total, done = sum(len(v) for _, v in runs), 0
    for icfg, values in runs:
        index = make_index(icfg)
        t = time.perf_counter()
        index.build(ad_ids, vecs)
        build_s = time.perf_counter() - t
        points += [
            _point(icfg.backend.value, icfg.spec, p, build_s) for p in tune(index, q, k, values, ad_ids, vecs)
        ]
        done += len(values)
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


def _point(backend: str, spec: str, p: TunePoint, build_s: float) -> dict[str, Any]:
    return {
        "backend": backend,
        "spec": spec,
        "param": p.knob,
        "value": p.value,
        "recall": p.recall_at_k,
        "qps": p.qps,
        "build_s": build_s,
    }
