"""Two-stage vs one-stage on the test day of the synthetic log: recall@50 of the clicked ads.

The workspace is the default demo (`workflow.demo.run_demo` with `DemoConfig()`: 14 days, bootstrap on 7,
six daily cycles), built under benchmarks/work/two_stage (a rerun reuses every published stage). The test day
is the last day, served by the versions published before it, exactly as `derm eval` evaluates it.

Users: everyone who clicked on the test day; relevant items: the ads they clicked that day (eval/evaluate.py's
definition of recall@K: mean over users of |top K ∩ clicked| / |clicked|). Systems, all on the same users:
- `retrieval`: the first stage alone: the top 50 of the serving path's candidates (ANN over the live ads;
  users without an embedding get the cold-start fallback of `retrieval.cold_start`).
- `two_stage`: 500 candidates from the same path, scored by the ranker, top 50 by p_ctr (`--order rank_score`,
  no advertiser cap): the click-ranking question this comparison asks.
- `ranker_all_live`: the ranker applied to every live ad, top 50 by p_ctr: a reference, not a ceiling.
- `oracle`: every live ad by its true p_click at the reference context (`adslog.oracle`), top 50.
- `retrieval_500_oracle`: the 500 candidates ordered by true p_click: the best the ranker could do with them.
- `served_ecpm_cap3`: what `derm query` returns by default (eCPM order, 3 ads per advertiser): it maximises
  expected revenue, not clicks, so its recall is shown for context only.
- `popularity`: the most-clicked live ads of the 7 days before.
Also recall@500 of the candidates (how many clicked ads the first stage lets through), paired-bootstrap 95 %
intervals (users resampled, 1000 replicates) for two_stage - retrieval and ranker_all_live - two_stage.
Writes benchmarks/results/two_stage.json.
"""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("OMP_NUM_THREADS", "1")

import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import torch  # noqa: E402
from common import ROOT, write_result  # noqa: E402

from adserving.auction import Order  # noqa: E402
from adserving.two_stage import ServeConfig, TwoStage  # noqa: E402
from adslog.workspace import Workspace  # noqa: E402
from eval.bootstrap import paired_bootstrap  # noqa: E402
from eval.evaluate import group_by_user, oracle_topk  # noqa: E402
from eval.metrics import recall_at_k, recall_per_user  # noqa: E402
from workflow.demo import DemoConfig, run_demo  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "two_stage"
K, CANDIDATES = 50, 500
SERVED = ServeConfig(k=K, candidates=CANDIDATES, order=Order.ECPM, max_per_advertiser=3)


def clicked_by_user(ws: Workspace, day: int) -> tuple[np.ndarray, list[np.ndarray]]:
    t = ws.dataset().impressions(day, ["user_id", "ad_id", "click"])
    t = t.filter(pc.equal(t.column("click"), 1))
    users, relevant = group_by_user(t.column("user_id").to_numpy(), t.column("ad_id").to_numpy())
    return users.astype(np.int64), relevant


def top_by(key: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    top = ids[np.lexsort((ids, -key))][:k]
    return np.r_[top, np.full(k - len(top), -1, np.int64)]


def measure(ws: Workspace, day: int, max_users: int | None = None) -> dict[str, Any]:
    """Every system's recall@50 on `day` (see the module docstring); `max_users` caps the users (tests)."""
    t0 = time.perf_counter()
    ts = TwoStage(ws, SERVED, day=day)
    live = ts.retriever.live
    users, relevant = clicked_by_user(ws, day)
    users, relevant = users[:max_users], relevant[:max_users]
    n = len(users)
    top: dict[str, np.ndarray] = {
        name: np.full((n, K), -1, np.int64)
        for name in ("retrieval", "two_stage", "ranker_all_live", "retrieval_500_oracle", "served_ecpm_cap3")
    }
    cand500 = np.full((n, CANDIDATES), -1, np.int64)
    paths: list[str] = []
    seconds = {"candidates": 0.0, "rank_candidates": 0.0, "rank_all_live": 0.0, "served": 0.0}
    from adslog.oracle import Oracle

    oracle = Oracle.load(ws.data_path())
    for i, u in enumerate(users.tolist()):
        t = time.perf_counter()
        ids, _, path = ts.candidates(u, CANDIDATES)
        seconds["candidates"] += time.perf_counter() - t
        paths.append(path)
        cand500[i, : len(ids)] = ids
        top["retrieval"][i, : min(K, len(ids))] = ids[:K]
        t = time.perf_counter()
        p_ctr, _ = ts.rank(u, ids)
        seconds["rank_candidates"] += time.perf_counter() - t
        top["two_stage"][i] = top_by(p_ctr, ids, K)
        top["retrieval_500_oracle"][i] = top_by(oracle.p_click(u, ids, day).astype(np.float64), ids, K)
        t = time.perf_counter()
        p_all, _ = ts.rank(u, live)
        seconds["rank_all_live"] += time.perf_counter() - t
        top["ranker_all_live"][i] = top_by(p_all, live, K)
        t = time.perf_counter()
        served = ts.query(u, SERVED)["results"]
        seconds["served"] += time.perf_counter() - t
        top["served_ecpm_cap3"][i, : len(served)] = [r["ad_id"] for r in served]
    otop = oracle_topk(ws.data_path(), users, live, day, K)
    assert otop is not None
    top["oracle"] = otop
    top["popularity"] = np.broadcast_to(ts.retriever.popular[:K], (n, K))
    recall = {name: recall_at_k(t, relevant, K) for name, t in top.items()}

    def diff(a: str, b: str) -> dict[str, Any]:
        r = paired_bootstrap(
            np.mean,
            recall_per_user(top[a], relevant, K),
            recall_per_user(top[b], relevant, K),
            n=1000,
            seed=0,
        )
        return {x: r[x] for x in ("diff", "lo", "hi", "p_value", "n_boot")}

    return {
        "test_day": day,
        "k": K,
        "candidates": CANDIDATES,
        "n_users": n,
        "n_live_ads": int(len(live)),
        "paths": {p: paths.count(p) for p in sorted(set(paths))},
        "recall_at_50": recall,
        "candidates_recall_at_500": recall_at_k(cand500, relevant, CANDIDATES),
        "two_stage_minus_retrieval": diff("two_stage", "retrieval"),
        "ranker_all_live_minus_two_stage": diff("ranker_all_live", "two_stage"),
        "versions": ts.versions,
        "ranker_config": ts.ranker.config.to_json(),
        "seconds": {k: round(v, 1) for k, v in seconds.items()}
        | {"measure": round(time.perf_counter() - t0, 1)},
    }


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    # a fresh workspace: run_demo resumes published versions, which would keep models of older code
    shutil.rmtree(WORK, ignore_errors=True)
    summary = run_demo(WORK, DemoConfig())
    build_s = round(time.perf_counter() - t0, 1)
    result = measure(Workspace.open(WORK), int(summary["eval_day"]))
    result = {
        "command": "python benchmarks/two_stage.py",
        "dataset": "synthetic (DemoConfig defaults)",
        **result,
        "build_or_resume_seconds": build_s,
    }
    path = write_result("two_stage", result)
    print(path)
    print(result["recall_at_50"], result["candidates_recall_at_500"])


if __name__ == "__main__":
    main()
