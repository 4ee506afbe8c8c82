"""Negative downsampling: does training on every click and a tenth of the other impressions (weight 10) keep the
daily cycle's quality, and what does it save? (`TowerConfig` / `RankerConfig.negative_rate`, issue 16: the
cost model's 10M-impression day needs the per-impression cost cut.)

The synthetic log of `scale.py`'s world at 300,000 impressions a day (30,000 users, 6,000 ads per 100,000
impressions... scaled alike: 18,000 ads), three days, generator seed 0. For each negative rate (1.0: every row,
the default; 0.1) and each model seed (0, 1, 2: the towers', the ranker's and the downsampling draws'), one
workspace runs the daily cycle itself: `workflow.cycle.bootstrap` on day 0, then `run_day` on days 1 and 2 (each
evaluates its day with the versions of the day before, then trains its increments). Reported per arm: the
evaluation of day 2 (versions after one daily increment) and of day 1 (the bootstrap's): the ranker's CTR ROC-AUC,
log loss, calibration (predicted / observed CTR, ECE), its CVR ROC-AUC on the day's clicked impressions, the
retrieval recall@20 / @100 and the oracle's figures on the same rows; the seconds of each stage. Differences
0.1 - 1.0 are paired by seed, with a t interval over the seeds.

Writes benchmarks/results/downsampling.json. Usage (from the repository root): python benchmarks/downsampling.py
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import write_result
from harness import std, t_half

IMPRESSIONS = 300_000
RATES = (1.0, 0.1)
SEEDS = (0, 1, 2)
METRICS = (
    "ctr_roc_auc",
    "ctr_log_loss",
    "ctr_ece",
    "predicted_over_observed_ctr",
    "cvr_roc_auc",
    "recall_at_20",
    "recall_at_100",
)


def cycle_config(rate: float, seed: int) -> Any:
    from workflow.cycle import CycleConfig

    base = CycleConfig(device="cpu")
    towers = replace(base.towers, epochs_initial=1, negative_rate=rate, seed=seed)
    return replace(base, towers=towers, ranker=replace(base.ranker, negative_rate=rate, seed=seed))


def cvr_roc_auc(ws: Any, day: int) -> float:
    """The CVR ROC-AUC of the ranker serving `day` on that day's clicked impressions (post-click labels as
    known at the day's end)."""
    from adslog.oracle import roc_auc
    from adslog.sequences import ActivityLog
    from adslog.workspace import version_name
    from dermfeatures.batches import Inputs
    from ranking.train import DermLookup, feature_fn, kge_lookup, load_ranker, ranker_dir, score

    ds = ws.dataset()
    snap = load_ranker(ranker_dir(ws) / version_name(ws.version_before(ranker_dir(ws), day)), "cpu")
    inputs = Inputs(ds, snap.spec, ActivityLog.from_dataset(ds, day), snap.config.seq_len)
    a = inputs.impressions([day], label_cutoff_ts=(day + 1) * 86400)
    a = a.take((a.click > 0).nonzero()[0])
    feats = feature_fn(
        DermLookup(ws, snap.config.derm_inputs, snap.manifest),
        kge_lookup(ws, ds, snap.config, snap.manifest),
        int(snap.manifest["derm_dim"]),
        int(snap.manifest.get("kge_dim", 0)),
    )
    _, p_cvr = score(snap, inputs, a, feats)
    return float(roc_auc(p_cvr, a.conversion))


def metrics(doc: dict[str, Any], cvr: float) -> dict[str, float]:
    r, ret = doc["ranking"], doc["retrieval"]
    return {
        "ctr_roc_auc": r["roc_auc"],
        "ctr_log_loss": r["log_loss"],
        "ctr_ece": r["calibration"]["ece"],
        "predicted_over_observed_ctr": r["predicted_ctr"] / r["observed_ctr"],
        "cvr_roc_auc": cvr,
        "recall_at_20": ret["recall_at_k"]["20"],
        "recall_at_100": ret["recall_at_k"]["100"],
        "oracle_ctr_roc_auc": r["oracle_roc_auc"],
        "oracle_recall_at_20": ret["oracle_recall_at_k"]["20"],
    }


def run_arm(data: Path, work: Path, rate: float, seed: int) -> dict[str, Any]:
    from adslog.workspace import Workspace
    from workflow import cycle

    ws = Workspace.open(work, data)
    days = ws.dataset().days()
    cfg = cycle_config(rate, seed)
    timer = cycle.Timer()
    t0 = time.perf_counter()
    cycle.bootstrap(ws, [days[0]], cfg)
    boot = time.perf_counter() - t0
    out: dict[str, Any] = {"rate": rate, "seed": seed, "bootstrap_seconds": round(boot, 1)}
    for day in days[1:3]:
        timer = cycle.Timer()
        t0 = time.perf_counter()
        with ws.lock():
            res = cycle.run_day(ws, day, cfg, timer=timer)
        out[f"day{day - days[0]}"] = {
            **metrics(res["eval"], cvr_roc_auc(ws, day)),
            "cycle_seconds": round(time.perf_counter() - t0, 1),
            "stage_seconds": {k: round(v, 1) for k, v in res["stage_seconds"].items()},
        }
    return out


def summarise(arms: list[dict[str, Any]], day: str) -> dict[str, Any]:
    by_rate: dict[str, Any] = {}
    for rate in RATES:
        rows = [a[day] for a in arms if a["rate"] == rate]
        e: dict[str, Any] = {}
        for m in (*METRICS, "oracle_ctr_roc_auc", "oracle_recall_at_20", "cycle_seconds"):
            vals = [r[m] for r in rows]
            e[m] = {"mean": statistics.fmean(vals), "std": std(vals), "per_seed": vals}
        by_rate[repr(rate)] = e
    diffs: dict[str, Any] = {}
    for m in METRICS:
        per = [
            next(a for a in arms if a["rate"] == RATES[1] and a["seed"] == s)[day][m]
            - next(a for a in arms if a["rate"] == RATES[0] and a["seed"] == s)[day][m]
            for s in SEEDS
        ]
        mean, half = statistics.fmean(per), t_half(per)
        spread = by_rate[repr(RATES[0])][m]["std"]
        diffs[m] = {
            "mean": mean,
            "ci": [mean - half, mean + half] if half is not None else None,
            "per_seed": per,
            "seed_std_at_rate_1": spread,
            "within_seed_spread": spread is not None and abs(mean) <= spread,
        }
    return {"by_rate": by_rate, f"rate_{RATES[1]}_minus_rate_{RATES[0]}": diffs}


def main() -> None:
    from adslog.synth import SynthConfig, generate

    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="derm-downsampling-"))
    try:
        data = tmp / "data"
        synth = SynthConfig(
            n_users=IMPRESSIONS // 10, n_ads=IMPRESSIONS * 6 // 100, n_days=3, impressions_per_day=IMPRESSIONS
        )
        generate(synth, data)
        arms = []
        for rate in RATES:
            for seed in SEEDS:
                work = tmp / f"r{rate}-s{seed}"
                arm = run_arm(data, work, rate, seed)
                shutil.rmtree(work, ignore_errors=True)
                arms.append(arm)
                print(json.dumps({k: arm[k] for k in ("rate", "seed", "bootstrap_seconds")}), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    day2, day1 = summarise(arms, "day2"), summarise(arms, "day1")
    full = [a["day2"]["stage_seconds"] for a in arms if a["rate"] == RATES[0]]
    down = [a["day2"]["stage_seconds"] for a in arms if a["rate"] == RATES[1]]
    speed = {
        k: statistics.fmean(f[k] for f in full) / max(statistics.fmean(d[k] for d in down), 1e-9)
        for k in full[0]
        if all(k in d for d in down)
    }
    result = {
        "command": "python benchmarks/downsampling.py",
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "synthetic": {
            "impressions_per_day": IMPRESSIONS,
            "n_users": synth.n_users,
            "n_ads": synth.n_ads,
            "days": 3,
        },
        "rates": list(RATES),
        "seeds": list(SEEDS),
        "config": cycle_config(RATES[1], 0).to_json(),
        "arms": arms,
        "day2": day2,
        "day1": day1,
        "day2_stage_speedup": {k: round(v, 2) for k, v in speed.items()},
    }
    write_result("downsampling", result)
    d = day2[f"rate_{RATES[1]}_minus_rate_{RATES[0]}"]
    print(json.dumps({m: round(d[m]["mean"], 4) for m in METRICS}))


if __name__ == "__main__":
    main()
