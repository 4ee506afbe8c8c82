"""Latency of one user's two-stage query through the in-process library call, over >= 100k live ads.

The workspace is built by the real pipeline (`workflow.cycle.bootstrap`: towers, back-inferred embeddings,
index, ranker, all with the default `CycleConfig`) on a synthetic log sized for it: 125k ads over 3 days
(short campaigns relative to the period put ~84 % of them live on the query day, every one embedded by the
daily inference, which covers the ads live the next day), 5k users, 40k impressions a day. Bootstrap trains on
the first two days; the query day is the third, served by the versions of day two.

Each query: `TwoStage.query(user, ServeConfig(k=50, candidates=500))`: store lookup, ANN over the live ads
(500), ranker features and forward pass on 500 candidates, eCPM order with the advertiser cap, top 50.
Single thread (torch 1 thread, faiss omp 1). Users with an embedding (the ANN path) are queried in a seeded
random order after a warm-up; cold-start users (no embedding) are timed separately. Reports p50/p99 and the
per-stage breakdown (median and p99 of each stage's milliseconds). Writes benchmarks/results/query_latency.json.
The built workspace stays under benchmarks/work/query_latency and a rerun reuses whatever stage is published.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import time  # noqa: E402
from typing import Any  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import ROOT, write_result  # noqa: E402

from adserving.two_stage import ServeConfig, TwoStage  # noqa: E402
from adslog.synth import SynthConfig, generate  # noqa: E402
from adslog.workspace import Workspace  # noqa: E402
from workflow.cycle import CycleConfig, bootstrap  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "query_latency"
SYNTH = SynthConfig(n_users=5_000, n_ads=125_000, n_days=3, impressions_per_day=40_000, n_advertisers=4_000)
TRAIN_DAYS = 2
QUERY = ServeConfig(k=50, candidates=500)
WARMUP, N_QUERIES, N_COLD = 30, 1000, 200
TARGET_P99_MS = 50.0
STAGES = ("embedding_lookup", "ann", "cold_start", "features", "forward", "order")


def build() -> tuple[Workspace, dict[str, float]]:
    data = WORK / "data"
    t0 = time.perf_counter()
    if not (data / "manifest.json").exists():
        generate(SYNTH, data, overwrite=data.exists())
    t_synth = time.perf_counter() - t0
    ws = Workspace.open(WORK, data)
    days = ws.dataset().days()
    cfg = CycleConfig(device="cpu")
    t1 = time.perf_counter()
    with ws.lock():
        bootstrap(ws, days[:TRAIN_DAYS], cfg)
    return ws, {"synth": round(t_synth, 1), "bootstrap": round(time.perf_counter() - t1, 1)}


def percentiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p90_ms": round(float(np.percentile(a, 90)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "max_ms": round(float(a.max()), 3),
        "mean_ms": round(float(a.mean()), 3),
    }


def run(ts: TwoStage, users: np.ndarray) -> tuple[list[float], dict[str, list[float]], list[str]]:
    totals: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    paths: list[str] = []
    for u in users:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        doc = ts.query(int(u), QUERY, timings)
        totals.append(time.perf_counter() - t0)
        paths.append(doc["path"])
        for s, v in timings.items():
            stages[s].append(v)
    return totals, stages, paths


def main() -> None:
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    ws, build_seconds = build()
    ds = ws.dataset()
    day = ds.last_day
    t0 = time.perf_counter()
    ts = TwoStage(ws, QUERY, day=day)
    load_s = time.perf_counter() - t0
    store = ts.retriever.store
    assert store is not None and ts.retriever.index is not None
    live = ts.retriever.live
    n_live_indexed = int(np.isin(live, ts.retriever.index.ids()).sum())
    if n_live_indexed < 100_000:
        raise SystemExit(f"only {n_live_indexed} live ads are indexed; the benchmark needs >= 100k")
    rng = np.random.default_rng(0)
    with_emb = store.ids("user")
    users = rng.choice(with_emb, size=WARMUP + N_QUERIES, replace=len(with_emb) < WARMUP + N_QUERIES)
    run(ts, users[:WARMUP])
    totals, stages, paths = run(ts, users[WARMUP:])
    assert set(paths) == {"ann"}
    all_users = ds.users(["user_id"]).column("user_id").to_numpy()
    cold_users = np.setdiff1d(all_users, with_emb)
    cold = rng.choice(cold_users, size=min(N_COLD, len(cold_users)), replace=False)
    cold_totals, cold_stages, cold_paths = run(ts, cold)
    result: dict[str, Any] = {
        "command": "python benchmarks/query_latency.py",
        "what": "one user's TwoStage.query (ANN 500 candidates -> ranker -> eCPM order, cap 3 -> top 50), "
        "in-process, single thread; seconds measured around the library call",
        **percentiles(totals),
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": bool(percentiles(totals)["p99_ms"] < TARGET_P99_MS),
        "n_queries": len(totals),
        "warmup_queries": WARMUP,
        "breakdown_ms": {s: percentiles(v) for s, v in stages.items() if v},
        "cold_start": {
            **percentiles(cold_totals),
            "n_queries": len(cold_totals),
            "paths": {p: cold_paths.count(p) for p in sorted(set(cold_paths))},
            "breakdown_ms": {s: percentiles(v) for s, v in cold_stages.items() if v},
        },
        "serve_config": QUERY.to_json(),
        "workspace": {
            "synth": {
                "n_users": SYNTH.n_users,
                "n_ads": SYNTH.n_ads,
                "n_days": SYNTH.n_days,
                "impressions_per_day": SYNTH.impressions_per_day,
                "n_advertisers": SYNTH.n_advertisers,
            },
            "ads_how": "synthesized ad set (SynthConfig n_ads), every live ad embedded by the real pipeline",
            "query_day": day,
            "n_live_ads": int(len(live)),
            "n_live_ads_indexed": n_live_indexed,
            "n_indexed": int(ts.retriever.index.ntotal),
            "n_users_with_embedding": int(len(with_emb)),
            "index": ts.retriever.index_manifest.get("config"),
            "ranker_config": ts.ranker.config.to_json(),
            "versions": ts.versions,
            "build_seconds": build_seconds,
            "load_seconds": round(load_s, 2),
        },
        "threads": {"torch": torch.get_num_threads(), "faiss_omp": faiss.omp_get_max_threads()},
    }
    path = write_result("query_latency", result)
    print(path)
    print({k: result[k] for k in ("p50_ms", "p99_ms", "meets_target")}, result["breakdown_ms"])


if __name__ == "__main__":
    main()
