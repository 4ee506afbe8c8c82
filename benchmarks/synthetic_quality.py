"""Quality on a larger-than-demo synthetic log through the full daily path (issue 3's quality bars).

`derm demo`'s library path on a fresh workspace with a bigger log (1.8M impressions vs the demo's 1.4M): the
CTR upstream model (the demo's default; the ranker's default inputs are its user and ad embeddings) trained from
scratch on a window, then one `derm daily` cycle per day (increment, embed, aggregate, index, ranker fine-tune),
and the last day evaluated with the versions published before it. Writes the `derm eval --json` document of that
day plus `upstream_ctr_roc_auc` (the CTR model's interaction tower on that day's impressions, logged context),
the bars and whether each is met, and `reachable`: the oracle's own ratio to popularity, since no model can
exceed what ranking by the true click probability reaches on this log. The default world's oracle reaches
only about 1.1-1.2x popularity's recall@100, so `other_worlds` repeats the run on the same log with less
popularity skew (`popularity_sigma` 0.6), where a 2x bar is reachable.
Usage: python benchmarks/synthetic_quality.py   (writes benchmarks/results/synthetic_quality.json)
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from typing import Any

from common import ROOT, write_result

from adslog.synth import SynthConfig
from adslog.workspace import Workspace
from eval.baselines import logistic_vs_ranker
from eval.upstream import upstream_heads
from workflow.demo import DemoConfig, run_demo

SYNTH = SynthConfig(n_users=12_000, n_ads=7_000, n_days=12, impressions_per_day=150_000, seed=0)
TRAIN_DAYS = 8
#: the same log with less popularity skew in the logging policy: the oracle reaches 2.25x popularity's
#: recall@100 there (benchmarks/synthetic_reachability.py) against 1.2x on the default world, so the 2x bar can
#: be tested at all
OTHER_WORLDS: dict[str, dict[str, Any]] = {"popularity_sigma=0.6": {"popularity_sigma": 0.6}}


def run_world(name: str, synth: SynthConfig) -> dict[str, Any]:
    """The daily path on a fresh workspace for one log; the `derm eval` document of its last day and the bars."""
    work = ROOT / "benchmarks" / "work" / "synthetic_quality" / name
    shutil.rmtree(work, ignore_errors=True)
    base = DemoConfig()
    cfg = DemoConfig(
        synth=synth,
        train_days=TRAIN_DAYS,
        cycle=replace(base.cycle, device="cpu"),
        ks=(20, 50, 100),
    )
    s = run_demo(work, cfg)
    doc = s["report"]
    day = s["eval_day"]
    ws = Workspace.open(work)
    up = upstream_heads(ws, day)
    baselines = logistic_vs_ranker(ws, day)
    r, k = doc["retrieval"], "100"
    ours, pop = r["recall_at_k"][k], r["popularity_recall_at_k"][k]
    oracle = r.get("oracle_recall_at_k", {}).get(k)
    rank_auc, oracle_auc = doc["ranking"]["roc_auc"], doc["ranking"].get("oracle_roc_auc")
    bars = {
        "recall_at_100_vs_popularity": {"bar": 2.0, "ratio": ours / pop if pop else None},
        "recall_at_100_vs_oracle": {"bar": 0.5, "ratio": ours / oracle if oracle else None},
        "ranking_roc_auc_vs_oracle": {
            "bar": -0.02,
            "diff": rank_auc - oracle_auc if rank_auc is not None and oracle_auc is not None else None,
        },
    }
    bars["recall_at_100_vs_popularity"]["met"] = (bars["recall_at_100_vs_popularity"]["ratio"] or 0) >= 2.0
    bars["recall_at_100_vs_oracle"]["met"] = (bars["recall_at_100_vs_oracle"]["ratio"] or 0) >= 0.5
    d = bars["ranking_roc_auc_vs_oracle"]["diff"]
    bars["ranking_roc_auc_vs_oracle"]["met"] = d is not None and d >= -0.02
    print(
        json.dumps(
            {
                "world": name,
                "recall_at_100": ours,
                "popularity": pop,
                "oracle": oracle,
                "ranking_roc_auc": rank_auc,
                "oracle_roc_auc": oracle_auc,
                "upstream_ctr_roc_auc": up["ctr_roc_auc"],
                "logistic_roc_auc": baselines["logistic_roc_auc"],
                "total_seconds": s["total_seconds"],
            }
        ),
        flush=True,
    )
    return {
        "synth": {
            f: getattr(synth, f) for f in ("n_users", "n_ads", "n_days", "impressions_per_day", "seed")
        },
        "world": {f: getattr(synth, f) for f in ("popularity_sigma", "affinity_strength")},
        "train_days": s["train_days"],
        "daily_days": s["daily_days"],
        "eval_day": day,
        "cycle": cfg.cycle.to_json(),
        "eval": doc,
        "upstream_ctr_roc_auc": up["ctr_roc_auc"],
        "upstream": up,
        "baselines": baselines,
        "bars": bars,
        "reachable": {
            "oracle_recall_at_100_over_popularity": oracle / pop if oracle and pop else None,
            "note": "ranking live ads by the true p_click reaches this multiple of popularity's recall@100 on "
            "this log; a recall bar above it cannot be met by any model on this log",
            "nonpersonal_oracle_roc_auc": doc["ranking"].get("nonpersonal_oracle_roc_auc"),
            "nonpersonal_note": "ROC-AUC of the true p_click with the users' latent interests replaced by the "
            "day's mean: the part of the oracle's ranking a model can reach without learning each user's taste "
            "(from the few clicks per user this log has)",
        },
        "dataset_stats": s["dataset_stats"],
        "stage_seconds": s["stage_seconds"],
        "total_seconds": s["total_seconds"],
    }


def main() -> None:
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "command": "python benchmarks/synthetic_quality.py",
        **run_world("default", SYNTH),
    }
    result["other_worlds"] = {}
    for name, over in OTHER_WORLDS.items():
        result["other_worlds"][name] = run_world(name, replace(SYNTH, **over))
        result["wall_seconds"] = round(time.perf_counter() - t0, 1)
        write_result("synthetic_quality", result)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(write_result("synthetic_quality", result))


if __name__ == "__main__":
    main()
