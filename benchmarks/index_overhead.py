"""Overhead of our public `search()` over a direct faiss / hnswlib call on the same index object.

Same index, same queries (user-like: near planted cluster centres with their own noise), same k, ef and
nprobe, no filter. The two are timed in alternating short units (batch 1000: one call of 1,000 queries;
batch 1: 100 single-query calls) in ABBA order, PAIRS pairs per batch size, so load from other processes
on a shared machine hits both sides alike. The headline ratio is the median over pairs of QPS ours / QPS
direct (1.0 = no overhead) with a bootstrap 95 % interval of that median (resampling pairs); the ratio of
the two median QPS is recorded beside it.
Writes benchmarks/results/index_overhead.json.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import faiss
import numpy as np
from common import write_result

from index import Backend, IndexConfig, SearchParams, make_index
from index.synthetic import ClusteredConfig, ClusteredData

N, DIM, K = 100_000, 64, 100
BATCH, N_SINGLE, SINGLE_UNIT = 1000, 300, 100
PAIRS = {"batch_1000": 41, "batch_1": 61}
N_BOOT, SEED = 2000, 0
CASES: list[tuple[str, Backend, str, SearchParams]] = [
    ("faiss Flat", Backend.FAISS, "Flat", SearchParams()),
    ("faiss IVF4096,Flat nprobe 32", Backend.FAISS, "IVF4096,Flat", SearchParams(nprobe=32)),
    ("faiss HNSW32,Flat efSearch 128", Backend.FAISS, "HNSW32,Flat", SearchParams(ef=128)),
    ("hnswlib M16 ef 128", Backend.HNSWLIB, "M16,efc200", SearchParams(ef=128)),
]


def direct_fn(index: Any, backend: Backend, params: SearchParams) -> Any:
    """The library call our wrapper makes, with the same parameters set once on the same object."""
    raw = index._index
    if backend is Backend.HNSWLIB:
        raw.set_ef(params.ef)
        return lambda q: raw.knn_query(q, k=K, num_threads=-1)
    inner: Any = faiss.downcast_index(raw.index)
    if params.nprobe is not None:
        inner.nprobe = params.nprobe
    if params.ef is not None:
        inner.hnsw.efSearch = params.ef
    return lambda q: raw.search(q, K)


def timed(fn: Any, batches: list[np.ndarray]) -> float:
    """Queries per second of fn over the batches (one call per batch)."""
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    return sum(len(b) for b in batches) / (time.perf_counter() - t0)


def paired_ratios(direct: Any, ours: Any, units: list[list[np.ndarray]], n_pairs: int) -> tuple[list, list]:
    """QPS of direct and ours over `n_pairs` back-to-back pairs, ABBA order, cycling through `units`."""
    qd: list[float] = []
    qo: list[float] = []
    for r in range(n_pairs):
        unit = units[r % len(units)]
        pair = [(qd, direct), (qo, ours)] if r % 2 == 0 else [(qo, ours), (qd, direct)]
        for acc, fn in pair:
            acc.append(timed(fn, unit))
    return qd, qo


def bootstrap_median_ci(x: list[float], n_boot: int = N_BOOT, seed: int = SEED) -> list[float]:
    """95 % percentile interval of the median of x, resampling x with replacement."""
    arr = np.asarray(x)
    rng = np.random.default_rng(seed)
    meds = np.median(arr[rng.integers(0, arr.size, (n_boot, arr.size))], axis=1)
    return [round(float(np.percentile(meds, 2.5)), 4), round(float(np.percentile(meds, 97.5)), 4)]


def main() -> None:
    data = ClusteredData(ClusteredConfig(n=N, dim=DIM))
    queries = data.queries(BATCH)
    singles = [queries[i : i + 1] for i in range(N_SINGLE)]
    out: dict[str, Any] = {}
    for name, backend, spec, params in CASES:
        index = make_index(IndexConfig(backend, spec, DIM))
        t0 = time.perf_counter()
        index.build(data.ids, data.vecs)
        build_s = time.perf_counter() - t0
        direct = direct_fn(index, backend, params)

        def ours(q: np.ndarray, index: Any = index, params: SearchParams = params) -> Any:
            return index.search(q, K, params)

        # same answers: the wrapper only maps ids and normalises scores
        d_out, o_ids = direct(queries[:50]), ours(queries[:50])[0]
        d_ids = d_out[0] if backend is Backend.HNSWLIB else d_out[1]
        assert (np.asarray(d_ids, np.int64) == o_ids).mean() > 0.99, name
        row: dict[str, Any] = {"build_seconds": round(build_s, 2)}
        single_units = [singles[i : i + SINGLE_UNIT] for i in range(0, N_SINGLE, SINGLE_UNIT)]
        for label, units in (("batch_1000", [[queries]]), ("batch_1", single_units)):
            timed(direct, units[0][:20]), timed(ours, units[0][:20])  # warm-up
            qd, qo = paired_ratios(direct, ours, units, PAIRS[label])
            paired = [o / d for o, d in zip(qo, qd, strict=True)]
            row[f"qps_direct_{label}"] = round(statistics.median(qd), 1)
            row[f"qps_ours_{label}"] = round(statistics.median(qo), 1)
            # headline: median of the back-to-back pairs' ratios, robust to load that drifts between runs
            row[f"qps_ratio_{label}"] = round(statistics.median(paired), 4)
            row[f"qps_ratio_ci95_{label}"] = bootstrap_median_ci(paired)
            row[f"ratio_of_medians_{label}"] = round(statistics.median(qo) / statistics.median(qd), 4)
            row[f"ratio_per_run_{label}"] = [round(x, 4) for x in paired]
        out[name] = row
        print(name, {k: v for k, v in row.items() if not k.startswith("ratio_per_run")}, flush=True)
    worst_1000 = min(r["qps_ratio_batch_1000"] for r in out.values())
    worst_1 = min(r["qps_ratio_batch_1"] for r in out.values())
    write_result(
        "index_overhead",
        {
            "command": "python benchmarks/index_overhead.py",
            "n_vectors": N,
            "dim": DIM,
            "k": K,
            "batch": BATCH,
            "n_single_queries": N_SINGLE,
            "pairs": PAIRS,
            "single_query_unit": SINGLE_UNIT,
            "faiss_threads": faiss.omp_get_max_threads(),
            "load_avg_at_end": os.getloadavg()[0],
            "ratio": (
                "median over interleaved ABBA pairs of QPS ours / QPS direct, bootstrap 95% CI of that median "
                "(qps_ratio_ci95_*; ratio_of_medians_* beside it)"
            ),
            "queries": "user-like: near one of 1,000 planted centres with their own noise (not indexed vectors)",
            "per_backend": out,
            "worst_qps_ratio_batch_1000": worst_1000,
            "worst_qps_ratio_batch_1": worst_1,
            "bars": {"batch_1000": 0.95, "batch_1": 0.90},
            "meets_bars": worst_1000 >= 0.95 and worst_1 >= 0.90,
        },
    )


if __name__ == "__main__":
    main()
