"""The downstream ranker's embedding start: N(0, 1) (torch's default) against N(0, 0.01)
(`RankerConfig.embedding_init_std`), on synthetic_quality's log, in two training regimes.

Why it might matter: every hashed id (user, ad, advertiser, campaign, the sequence's ads and advertisers) gets a
16-wide embedding; at N(0, 1) each starts as a unit-variance random vector that the cross network sees as
signal, and an id shown a few hundred times over the window (this log: ~2.5 clicks per user) may not train it
away. Setup: synthetic_quality's log (12k users, 7k ads, 12 days x 150k impressions, seed 0); the CTR upstream
towers (the demo's default config) trained once on the first 8 days, back inference over them, the same
snapshot embedding days 8-10 (`harness.upstream`). Regimes, each scored on the last day's 150k
impressions (DERM embeddings from the store version before that day):
- `one_pass`: one epoch over the 11 days before the last day (1.65M impressions);
- `daily`: the daily cycle's schedule: `epochs_initial` (2) epochs over the first 8 days, then one epoch on
  each of days 8, 9 and 10 (a fresh learning-rate decay per call, as `train_ranker` does).
Each regime starts and continues the ranker the way `train_ranker` does (`ranking.train.start_ranker`: output
biases at the base rates and the wide part fitted as the regression; `continue_ranker` before each day: the
wide part refitted on the last `wide_window` days).
Seeds vary the ranker's initialisation and row order (the log and the upstream models are shared). Reported:
CTR-head ROC-AUC, PR-AUC and log loss per arm, regime and seed; the paired difference per seed with a
bootstrap 95 % interval over users (whole users resampled), and a t interval of the mean difference over seeds.
Writes benchmarks/results/ranker_init.json. Usage: python benchmarks/ranker_init.py
"""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from common import ROOT, write_result
from harness import t_half, upstream
from synthetic_quality import SYNTH, TRAIN_DAYS

from adslog.dataset import Dataset
from adslog.sequences import ActivityLog
from adslog.synth import generate
from adslog.workspace import Workspace
from dermfeatures.batches import Inputs
from eval.bootstrap import paired_bootstrap
from eval.metrics import log_loss, pr_auc, roc_auc
from ranking.train import (
    DermLookup,
    RankerRows,
    continue_ranker,
    fit,
    new_snapshot,
    predict,
    ranker_spec,
    start_ranker,
)
from workflow.demo import DemoConfig

WORK = ROOT / "benchmarks" / "work" / "ranker_init"
SEEDS = (0, 1, 2)
ARMS: dict[str, float | None] = {"normal_1": None, "std_0.01": 0.01}
BASELINE, CANDIDATE = "normal_1", "std_0.01"
REGIMES = ("one_pass", "daily")
BOOT = 200
METRICS = {"roc_auc": roc_auc, "pr_auc": pr_auc, "log_loss": log_loss}


def compare(preds: dict[str, list[np.ndarray]], y: np.ndarray, users: np.ndarray) -> dict[str, Any]:
    """Per arm: metrics per seed and their mean; the candidate - baseline difference per metric."""
    arms: dict[str, Any] = {}
    for arm, ps in preds.items():
        e: dict[str, Any] = {"embedding_init_std": ARMS[arm]}
        for m, fn in METRICS.items():
            v = [float(fn(p, y)) for p in ps]  # type: ignore[arg-type]
            e[f"{m}_per_seed"], e[f"{m}_mean"] = v, statistics.mean(v)
        arms[arm] = e
    diffs: dict[str, Any] = {"what": f"{CANDIDATE} - {BASELINE}"}
    for m, fn in METRICS.items():
        rows = []
        for seed, a, b in zip(SEEDS, preds[CANDIDATE], preds[BASELINE], strict=True):
            bs = paired_bootstrap(fn, a, b, y, groups=users, n=BOOT, seed=seed)
            rows.append({"seed": seed, "diff": bs["diff"], "lo": bs["lo"], "hi": bs["hi"]})
        d = [r["diff"] for r in rows]
        mean, half = statistics.mean(d), t_half(d) or float("nan")
        diffs[m] = {
            "mean": mean,
            "t_ci95_over_seeds": [mean - half, mean + half],
            "seeds_better": int(sum(x < 0 if m == "log_loss" else x > 0 for x in d)),
            "per_seed_bootstrap_over_users": rows,
        }
    r = diffs["roc_auc"]
    better = r["seeds_better"] == len(SEEDS) and r["t_ci95_over_seeds"][0] > 0
    return {"arms": arms, "difference": diffs, "candidate_better_roc_auc": bool(better)}


def main() -> None:
    t0 = time.perf_counter()
    torch.set_num_threads(2)
    shutil.rmtree(WORK, ignore_errors=True)
    generate(SYNTH, WORK / "data")
    ws = Workspace.create(WORK, WORK / "data")
    ds = Dataset.open(WORK / "data")
    days = ds.days()
    test = days[-1]
    window, later = days[:TRAIN_DAYS], days[TRAIN_DAYS:-1]
    demo = DemoConfig()
    upstream(ws, ds, window, demo.cycle.towers, later=later, tasks=("ctr",))
    upstream_s = time.perf_counter() - t0
    print(f"upstream ready in {upstream_s:.0f} s", flush=True)
    train_days = days[:-1]
    base = demo.cycle.ranker
    spec = ranker_spec(ds, window, base)
    inputs = Inputs(ds, spec, ActivityLog.from_dataset(ds, test), base.seq_len)
    lookup = DermLookup(ws, base.derm_inputs)
    first = lookup.version("ctr", later[0])
    assert first is not None
    dim = int(first.manifest["dim"])

    def cut(ds_days: list[int]) -> int:
        return (ds_days[-1] + 1) * 86400

    def rows(ds_days: list[int]) -> RankerRows:
        a = inputs.impressions(ds_days, label_cutoff_ts=cut(ds_days))
        return RankerRows(inputs, a, lookup.features(a, dim))

    all_rows, window_rows = rows(train_days), rows(window)
    day_rows = {d: rows([d]) for d in later}
    test_rows = rows([test])
    y, users = test_rows.arrays.click, test_rows.arrays.user_id
    preds: dict[str, dict[str, list[np.ndarray]]] = {g: {a: [] for a in ARMS} for g in REGIMES}
    seconds: dict[str, dict[str, list[float]]] = {g: {a: [] for a in ARMS} for g in REGIMES}
    cpu = torch.device("cpu")
    for seed in SEEDS:
        for regime in REGIMES:
            for arm, std in ARMS.items():
                cfg = replace(base, embedding_init_std=std, seed=seed)
                snap = new_snapshot(spec, cfg, dim, cpu)
                t = time.perf_counter()
                # train_ranker's path: start_ranker (bias init, the wide fit), then per day continue_ranker
                if regime == "one_pass":
                    start_ranker(snap, inputs, all_rows, train_days, cut(train_days))
                    fit(snap, all_rows, None, 1, cpu, seed=seed)
                else:
                    rec = start_ranker(snap, inputs, window_rows, window, cut(window))
                    fit(snap, window_rows, None, cfg.epochs_initial, cpu, seed=seed + window[-1])
                    seen = list(window)
                    for d, r in day_rows.items():
                        seen.append(d)
                        continue_ranker(snap, inputs, seen, cut([d]), rec["prior"] if rec else None)
                        fit(snap, r, None, cfg.epochs_incremental, cpu, seed=seed + d)
                seconds[regime][arm].append(round(time.perf_counter() - t, 1))
                preds[regime][arm].append(predict(snap.ranker, test_rows)[:, 0])
                auc = roc_auc(preds[regime][arm][-1], y)
                print(
                    f"seed {seed} {regime} {arm}: ROC-AUC {auc:.4f} ({seconds[regime][arm][-1]} s)",
                    flush=True,
                )
    regimes = {}
    for g in REGIMES:
        regimes[g] = compare(preds[g], y, users)
        for a in ARMS:
            regimes[g]["arms"][a]["train_seconds_per_seed"] = seconds[g][a]
    path = write_result(
        "ranker_init",
        {
            "command": "python benchmarks/ranker_init.py",
            "synth": {
                k: getattr(SYNTH, k) for k in ("n_users", "n_ads", "n_days", "impressions_per_day", "seed")
            },
            "upstream_window": window,
            "ranker_train_days": train_days,
            "test_day": test,
            "n_train_one_pass": len(all_rows),
            "n_test": len(test_rows),
            "seeds": list(SEEDS),
            "ranker": base.to_json(),
            "towers": demo.cycle.towers.to_json(),
            "regimes": regimes,
            "upstream_seconds": round(upstream_s, 1),
            "wall_seconds": round(time.perf_counter() - t0, 1),
        },
    )
    shutil.rmtree(WORK, ignore_errors=True)
    print(path)


if __name__ == "__main__":
    main()
