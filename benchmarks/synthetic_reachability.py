"""What the synthetic log lets any retrieval model reach: the oracle's recall@100 against popularity's, by world.

Issue 3's retrieval bar asks for recall@100 >= 2x popularity's on the synthetic log. No model can beat ranking
the live ads by their true p_click (the oracle), so the bar is reachable only where the oracle itself reaches
2x popularity. This script generates logs that differ in one or two world parameters (popularity skew of the
logging policy's candidates, personalisation strength of the click model) and measures, on each log's last
day, with the definitions of `derm eval` (users who clicked that day; relevant = the ads they clicked):
- `popularity`: the live ads by clicks in the 7 days before (`retrieval.retrieve.popularity`), top 100;
- `oracle`: the live ads by true p_click at the reference context (`eval.evaluate.oracle_topk`), top 100;
plus the log's stats (CTR, oracle and non-personal-oracle ROC-AUC, the top 1 % of ads' impression share).
No model is trained: this is a property of the log. Writes benchmarks/results/synthetic_reachability.json.
Usage: python benchmarks/synthetic_reachability.py
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow.compute as pc
from common import ROOT, write_result

from adslog.dataset import Dataset
from adslog.synth import SynthConfig, generate
from eval.evaluate import group_by_user, oracle_topk
from eval.metrics import recall_at_k
from retrieval.retrieve import popularity

K = 100
#: the base world: synthetic_quality's density (users : ads : impressions) at half its size
BASE = SynthConfig(n_users=6_000, n_ads=3_500, n_days=9, impressions_per_day=75_000, seed=0)
WORLDS: dict[str, dict[str, Any]] = {
    "default": {},
    "popularity_sigma=0.9": {"popularity_sigma": 0.9},
    "popularity_sigma=0.6": {"popularity_sigma": 0.6},
    "popularity_sigma=0.6, affinity_strength=1.6": {"popularity_sigma": 0.6, "affinity_strength": 1.6},
}


def measure(cfg: SynthConfig) -> dict[str, Any]:
    work = ROOT / "benchmarks" / "work" / "synthetic_reachability"
    shutil.rmtree(work, ignore_errors=True)
    generate(cfg, work)
    ds = Dataset.open(work)
    day = ds.days()[-1]
    live = np.sort(ds.live_ads(day))
    imp = ds.impressions(day, ["user_id", "ad_id", "click"])
    clicked = imp.filter(pc.equal(imp.column("click"), 1))
    users, relevant = group_by_user(clicked.column("user_id").to_numpy(), clicked.column("ad_id").to_numpy())
    pop, _ = popularity(ds, day, live)
    top = oracle_topk(work, users, live, day, K)
    assert top is not None
    pop_r = recall_at_k(np.broadcast_to(pop[:K], (len(users), K)), relevant, K)
    oracle_r = recall_at_k(top, relevant, K)
    stats = ds.manifest.get("stats", {})
    shutil.rmtree(work, ignore_errors=True)
    return {
        "day": day,
        "n_users": len(users),
        "n_live_ads": len(live),
        "popularity_recall_at_100": pop_r,
        "oracle_recall_at_100": oracle_r,
        "oracle_over_popularity": oracle_r / pop_r if pop_r else None,
        "bar_2x_popularity_reachable": bool(pop_r and oracle_r >= 2 * pop_r),
        **{
            k: stats.get(k)
            for k in ("ctr", "oracle_roc_auc", "nonpersonal_oracle_roc_auc", "top1pct_ad_impression_share")
        },
    }


def main() -> None:
    t0 = time.perf_counter()
    worlds = {}
    for name, over in WORLDS.items():
        t = time.perf_counter()
        worlds[name] = {"overrides": over, **measure(replace(BASE, **over))}
        worlds[name]["seconds"] = round(time.perf_counter() - t, 1)
        print(
            name,
            {k: worlds[name][k] for k in ("popularity_recall_at_100", "oracle_recall_at_100")},
            flush=True,
        )
    path = write_result(
        "synthetic_reachability",
        {
            "command": "python benchmarks/synthetic_reachability.py",
            "base": dict(BASE.__dict__),
            "k": K,
            "worlds": worlds,
            "wall_seconds": round(time.perf_counter() - t0, 1),
        },
    )
    print(path)


if __name__ == "__main__":
    main()
