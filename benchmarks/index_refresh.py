"""Daily refresh with 1 % of 1M ads changed: in-place update vs rebuild, through the artifact publish path.

Version 0 is built over 1M ads; version 1 changes 1 % of them (a third new ids, a third removed, a third
with a new vector). Both ways of publishing version 1 run through `index.refresh.refresh_index_artifact`
plus the LATEST pointer move, so their seconds include loading (in place: the previous version's base
files, its delta, the diff against the new ad set and applying the change), the update or build, save,
fsync and the pointer swap. The in-place version is stored as a delta over hard-linked base files
(index.delta); the same update written in full (a compaction, `storage` "full") is timed beside it, and so
is what a reader pays to load each version. The recall self-check is left out of all timings (it is the
same exact search on every path) and measured separately on the post-refresh set.
Writes benchmarks/results/index_refresh.json.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from common import ROOT, write_result

from dermcore.artifact import set_latest
from index import Backend, IndexConfig, SearchParams, build_index_artifact, load_index_artifact
from index.exact import recall_against_exact
from index.refresh import RefreshConfig, RefreshMode, Storage, refresh_index_artifact
from index.synthetic import ClusteredConfig, ClusteredData

N, DIM, K, N_QUERIES, CHANGED = 1_000_000, 64, 100, 1000, 0.01
CASES: list[tuple[Backend, str, SearchParams | None]] = [
    (Backend.FAISS, "IVF4096,Flat", SearchParams(nprobe=64)),
    (Backend.HNSWLIB, "M16,efc100", SearchParams(ef=200)),
    (Backend.FAISS, "Flat", None),
]
REBUILD_ONLY = [(Backend.FAISS, "HNSW32,Flat", SearchParams(ef=200))]
WORK = ROOT / "benchmarks" / "work" / "index_refresh"
UPSTREAM0 = {"embedding_version": "v0", "lineage": "bench"}
UPSTREAM1 = {"embedding_version": "v1", "lineage": "bench"}


def changed_set(data: ClusteredData) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The ad set of version 1: 1 % changed, split into new, removed and replaced ids."""
    n_changed = int(CHANGED * N)
    n_new, n_removed = n_changed // 3, n_changed // 3
    n_replaced = n_changed - n_new - n_removed
    rng = np.random.default_rng(7)
    pick = rng.permutation(N)[: n_removed + n_replaced]
    removed, replaced = pick[:n_removed], pick[n_removed:]
    keep = np.ones(N, dtype=bool)
    keep[removed] = False
    vecs = data.vecs.copy()
    vecs[replaced] = data.new_vectors(n_replaced, seed=11)
    new_ids = data.ids.max() + 1 + np.arange(n_new, dtype=np.int64)
    ids1 = np.concatenate([data.ids[keep], new_ids])
    vecs1 = np.concatenate([vecs[keep], data.new_vectors(n_new, seed=12)])
    return ids1, vecs1, {"added": n_new, "removed": n_removed, "replaced": n_replaced}


def publish(
    prev: Path,
    name: str,
    ids: np.ndarray,
    vecs: np.ndarray,
    config: IndexConfig,
    mode: RefreshMode,
    storage: Storage = Storage.AUTO,
) -> tuple[float, dict[str, Any]]:
    """Seconds to publish version `name` from `prev` (refresh + pointer swap), and its manifest; the
    manifest gains `cpu_seconds`: CPU time of this process (all threads) over the same span."""
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = RefreshConfig(mode=mode, storage=storage)
    m = refresh_index_artifact(prev, WORK / name, ids, vecs, config, UPSTREAM1, cfg)
    set_latest(WORK, name)
    seconds = time.perf_counter() - t0
    return seconds, {**m, "cpu_seconds": round(time.process_time() - c0, 2)}


def recall_of(path: Path, queries: np.ndarray, ids: np.ndarray, vecs: np.ndarray) -> tuple[float, float]:
    """(recall@K of the version at `path` against exact search, seconds a reader takes to load it)."""
    t0 = time.perf_counter()
    index, _ = load_index_artifact(path)
    load_s = time.perf_counter() - t0
    return round(recall_against_exact(index, queries, K, None, ad_ids=ids, ad_vecs=vecs), 5), round(load_s, 3)


def main() -> None:
    t_start = time.perf_counter()
    data = ClusteredData(ClusteredConfig(n=N, dim=DIM))
    queries = data.queries(N_QUERIES)
    ids1, vecs1, planted = changed_set(data)
    per: dict[str, Any] = {}
    for backend, spec, params in CASES:
        name = f"{backend.value} {spec}"
        config = IndexConfig(backend, spec, DIM)
        shutil.rmtree(WORK, ignore_errors=True)
        t0 = time.perf_counter()
        build_index_artifact(WORK / "v0", data.ids, data.vecs, config, UPSTREAM0, params=params)
        set_latest(WORK, "v0")
        initial_s = time.perf_counter() - t0
        auto = refresh_index_artifact(WORK / "v0", WORK / "v1-auto", ids1, vecs1, config, UPSTREAM1)
        in_place_s, m_in = publish(WORK / "v0", "v1-in-place", ids1, vecs1, config, RefreshMode.IN_PLACE)
        rebuild_s, m_re = publish(WORK / "v0", "v1-rebuild", ids1, vecs1, config, RefreshMode.REBUILD)
        full_s, m_full = publish(
            WORK / "v0", "v1-full", ids1, vecs1, config, RefreshMode.IN_PLACE, Storage.FULL
        )
        recall_in, load_in = recall_of(WORK / "v1-in-place", queries, ids1, vecs1)
        recall_re, load_re = recall_of(WORK / "v1-rebuild", queries, ids1, vecs1)
        recall_full, _ = recall_of(WORK / "v1-full", queries, ids1, vecs1)
        st = m_in["storage"]
        row = {
            "initial_build_and_publish_seconds": round(initial_s, 2),
            "load_avg_1min_after": round(os.getloadavg()[0], 2),
            "auto_mode": auto["refresh"]["mode"],
            "auto_storage": auto["refresh"]["storage"],
            "auto_reason": auto["refresh"]["reason"],
            "counts": {k: m_in["refresh"][k] for k in ("added", "removed", "replaced", "changed_fraction")},
            "in_place_storage": st["kind"],
            "in_place_seconds": round(in_place_s, 3),
            "rebuild_seconds": round(rebuild_s, 3),
            "speedup": round(rebuild_s / in_place_s, 2),
            # CPU seconds (all threads): a load-independent view beside the wall clock on a shared machine
            "in_place_cpu_seconds": m_in["cpu_seconds"],
            "rebuild_cpu_seconds": m_re["cpu_seconds"],
            "in_place_full_write_cpu_seconds": m_full["cpu_seconds"],
            "in_place_full_write_seconds": round(full_s, 3),
            "speedup_full_write": round(rebuild_s / full_s, 2),
            "search_params": m_in["search_params"],
            "recall_in_place": recall_in,
            "recall_rebuild": recall_re,
            "recall_in_place_full_write": recall_full,
            "reader_load_seconds_in_place": load_in,
            "reader_load_seconds_rebuild": load_re,
            "delta_bytes": st.get("delta_bytes"),
            "index_file_bytes": sum(p.stat().st_size for p in (WORK / "v1-rebuild").iterdir()),
        }
        per[name] = row
        print(name, row, flush=True)
    for backend, spec, params in REBUILD_ONLY:  # show the decision on a small set; its rebuild = its build
        config = IndexConfig(backend, spec, DIM)
        shutil.rmtree(WORK, ignore_errors=True)
        small = 20_000
        build_index_artifact(
            WORK / "v0", data.ids[:small], data.vecs[:small], config, UPSTREAM0, params=params
        )
        m = refresh_index_artifact(
            WORK / "v0",
            WORK / "v1",
            data.ids[100 : small + 100],
            data.vecs[100 : small + 100],
            config,
            UPSTREAM1,
        )
        per[f"{backend.value} {spec}"] = {
            "rebuild_only": True,
            "auto_mode": m["refresh"]["mode"],
            "auto_reason": m["refresh"]["reason"],
            "note": "decision shown on a 20k subset; its 1M rebuild cost is its build_seconds in index_scale.json",
        }
    shutil.rmtree(WORK, ignore_errors=True)
    in_place_capable = {
        k: v for k, v in per.items() if not v.get("rebuild_only") and v["auto_mode"] == "in_place"
    }
    worst = min(in_place_capable, key=lambda k: in_place_capable[k]["speedup"])
    write_result(
        "index_refresh",
        {
            "command": "python benchmarks/index_refresh.py",
            "n_vectors": N,
            "dim": DIM,
            "k": K,
            "n_queries": N_QUERIES,
            "changed_fraction": CHANGED,
            "planted_changes": planted,
            "speedup": in_place_capable[worst]["speedup"],
            "worst_backend": worst,
            "recall_in_place": in_place_capable[worst]["recall_in_place"],
            "recall_rebuild": in_place_capable[worst]["recall_rebuild"],
            "bar": {"speedup": 10},
            "excluded_from_worst_case": {
                k: v.get("auto_reason") for k, v in per.items() if k not in in_place_capable
            },
            "timing_note": (
                "seconds include loading the previous version (in place: its base files and delta, the diff, "
                "applying the change), update or build, save (in place: hard links + delta file), fsync, rename "
                "and the LATEST pointer move; the recall self-check is excluded from all (same exact search). "
                "in_place_full_write_seconds: the same update written in full (a compaction); "
                "reader_load_seconds_*: load_index_artifact of the published version (delta applied on load)"
            ),
            "faiss_threads": faiss.omp_get_max_threads(),
            "load_avg_at_end": os.getloadavg()[0],
            "total_seconds": round(time.perf_counter() - t_start, 1),
            "per_backend": per,
        },
    )


if __name__ == "__main__":
    main()
