"""Embedding store speed, each figure beside a same-run reference on the same bytes (the machine is shared and
noisy; the ratio survives it):

- aggregation: a 1M x 64 pool with 100k daily updates (50k existing entities, 50k new), moving average;
  reference: a numpy copy of the pool's state and prev arrays (the bytes any new version must produce);
- publish: the pool's arrays written into a version directory, fsynced and renamed (`publishing`);
  reference: `np.save` of the same bytes to one file + fsync;
- lookup: 10k random ids from a published, memory-mapped version, warm (a serving process that has touched
  the map) and cold (the first lookup after opening it); reference: numpy fancy indexing of the same rows from
  an in-memory array with precomputed positions;
- one `derm daily` on the default synthetic day (the demo's workspace), by stage.

Interleaved runs, median of 7. Writes benchmarks/results/store_speed.json. Usage: python benchmarks/store_speed.py
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, write_result

from adslog.workspace import Workspace
from dermcore.artifact import make_manifest, publishing, write_json_atomic
from embstore.aggregate import AggregationConfig, Pool, aggregate
from embstore.store import STORE_KIND, STORE_SCHEMA_VERSION, StoreVersion, write_pool

N, DIM, UPDATES, LOOKUPS, REPEATS = 1_000_000, 64, 100_000, 10_000, 7


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(2**40, N, replace=False)).astype(np.int64)
    state = rng.standard_normal((N, DIM), dtype=np.float32)
    pool = Pool(ids, state, state.copy(), np.zeros(N, np.int32))
    upd = np.concatenate(
        [rng.choice(ids, UPDATES // 2, replace=False), rng.choice(2**40, UPDATES // 2) + 2**41]
    )
    vecs = rng.standard_normal((UPDATES, DIM), dtype=np.float32)
    cfg = AggregationConfig()
    tmp = Path(tempfile.mkdtemp(prefix="store_speed_"))
    times: dict[str, list[float]] = {
        k: []
        for k in (
            "aggregate",
            "aggregate_ref",
            "publish",
            "publish_ref",
            "lookup_cold",
            "lookup",
            "lookup_ref",
        )
    }
    try:
        after = aggregate(pool, upd, vecs, 1, cfg)
        for i in range(REPEATS):
            times["aggregate"].append(timed(lambda: aggregate(pool, upd, vecs, 1, cfg)))
            times["aggregate_ref"].append(timed(lambda: (state.copy(), pool.prev.copy())))

            def publish(i: int = i) -> None:
                with publishing(tmp / f"day={i}") as d:
                    write_pool(d, "user", after)
                    write_json_atomic(
                        d / "manifest.json", make_manifest(STORE_KIND, STORE_SCHEMA_VERSION, day=i, dim=DIM)
                    )

            def publish_ref(i: int = i) -> None:
                with open(tmp / f"ref{i}.npy", "wb") as f:
                    for a in (after.ids, after.vectors(), after.state, after.prev, after.last_day):
                        np.save(f, a)
                    f.flush()
                    os.fsync(f.fileno())

            times["publish"].append(timed(publish))
            times["publish_ref"].append(timed(publish_ref))
            v = StoreVersion(tmp / f"day={i}")
            q = rng.choice(after.ids, LOOKUPS, replace=False)
            # cold: the first lookup after opening the version (each new page of the map faults in once);
            # warm: a serving process that has touched the map, timed on a fresh random set of ids
            times["lookup_cold"].append(timed(lambda v=v, q=q: v.lookup("user", q)))
            v.lookup("user", after.ids)
            q = rng.choice(after.ids, LOOKUPS, replace=False)
            mem = np.ascontiguousarray(after.vectors())
            qpos = np.searchsorted(after.ids, q)
            times["lookup"].append(timed(lambda v=v, q=q: v.lookup("user", q)))
            times["lookup_ref"].append(timed(lambda mem=mem, qpos=qpos: mem[qpos].copy()))
            shutil.rmtree(tmp / f"day={i}")
            os.remove(tmp / f"ref{i}.npy")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "command": "python benchmarks/store_speed.py",
        "pool": {"n": N, "dim": DIM, "updates": UPDATES, "new_ids": UPDATES // 2, "heuristic": "ma 0.8"},
        "aggregate_seconds": med["aggregate"],
        "aggregate_reference_seconds": med["aggregate_ref"],
        "aggregate_target_seconds": 2.0,
        "publish_seconds": med["publish"],
        "publish_reference_seconds": med["publish_ref"],
        "lookup_10k_ms": med["lookup"] * 1000,
        "lookup_10k_cold_ms": med["lookup_cold"] * 1000,
        "lookup_10k_reference_ms": med["lookup_ref"] * 1000,
        "lookup_target_ms": 10.0,
        "repeats": REPEATS,
        "all_seconds": times,
        "daily": daily_by_stage(),
    }
    path = write_result("store_speed", result)
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("all_seconds", "daily")} | {"results": str(path)}
        )
    )


def daily_by_stage() -> dict:
    """One `derm daily` on the default synthetic data: the demo workspace's last day, on a copy."""
    from workflow.cycle import load_cycle_config, run_day
    from workflow.demo import run_demo

    src = ROOT / "benchmarks" / "work" / "demo"
    if not (src / "report.json").exists():
        run_demo(src)
    work = Path(tempfile.mkdtemp(prefix="daily_")) / "w"
    try:
        shutil.copytree(src, work)
        ws = Workspace(work)
        day = ws.dataset().last_day
        t = time.perf_counter()
        res = run_day(ws, day, load_cycle_config(ws, "cpu"))
        total = time.perf_counter() - t
        return {"day": day, "stage_seconds": res["stage_seconds"], "total_seconds": round(total, 3)}
    finally:
        shutil.rmtree(work.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
