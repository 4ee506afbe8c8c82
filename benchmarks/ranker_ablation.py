"""The paper's Tables 2 and 4 on our data: which DERM embeddings lift the downstream ranker's CTR and CVR heads.

Per dataset and seed, both upstream models (CTR and CVR towers) are trained once (from scratch on a window,
with back inference over it; each later day the same snapshot embeds that day into a new store version) and
shared by every arm. Each arm trains the same ranker (`ranking.model.Ranker`: mixture of DCNv2 experts,
sequence transformer) with the same config, seed, training days, maximum epochs and early stopping on one
validation day; only `derm_inputs` differ. Test
rows read the store versions published before their day (point-in-time). Metrics on the pooled test days:
ROC-AUC and PR-AUC of the CTR head (all impressions) and of the CVR head (clicked impressions, post-click);
mean and standard deviation (ddof = 1) over seeds; lift vs `none` in % of `none`, with a per-seed paired
bootstrap 95 % interval over test impressions and a t interval of the mean over seeds, beside the paper's
lifts (Table 2: CTR head; Table 4: CVR head, three arms).

Data: synthetic (sized for the 45-minute budget on 2 cores) and MovieLens-100K in weekly buckets (the last 4
weeks pooled as test). MovieLens stand-ins: click = rating >= 4, conversion = rating 5 (post-click CVR).
Usage: python benchmarks/ranker_ablation.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, ROOT, write_result
from harness import mean_std, seed_scores, t_half, upstream

from adslog.dataset import Dataset
from adslog.importers import import_movielens_100k
from adslog.rebucket import rebucket
from adslog.sequences import ActivityLog
from adslog.synth import SynthConfig, generate
from adslog.workspace import Workspace
from dermfeatures.batches import Inputs
from eval.metrics import pr_auc, roc_auc
from ranking.model import DERM_INPUTS, RankerConfig
from ranking.train import (
    DermLookup,
    FittedWide,
    RankerRows,
    calibration,
    fit,
    fitted_wide,
    new_snapshot,
    predict,
    ranker_spec,
    start_ranker,
)
from towers.config import Backbone, TowerConfig

WORK = ROOT / "benchmarks" / "work" / "ranker_ablation_v3"
RESULTS_PATH = RESULTS / "ranker_ablation.json"
SEEDS = (0, 1, 2)
BOOT = 100
ARMS: dict[str, tuple[str, ...]] = {
    "none": (),
    "ctr-user": ("ctr-user",),
    "cvr-user": ("cvr-user",),
    "ctr-user+ad": ("ctr-user", "ctr-ad"),
    "ctr-user+cvr-user": ("ctr-user", "cvr-user"),
    "cvr-user+ad": ("cvr-user", "cvr-ad"),
    "ctr-user+ad+cvr-user": ("ctr-user", "ctr-ad", "cvr-user"),
    "all": DERM_INPUTS,
}
# lifts in % of the baseline: Table 2 (CTR ranker) and Table 4 (CVR ranker)
PAPER_CTR = {
    "ctr-user": (0.095, 0.2),
    "cvr-user": (0.059, 0.14),
    "ctr-user+ad": (0.160, 0.4),
    "ctr-user+cvr-user": (0.120, 0.25),
    "cvr-user+ad": (0.083, 0.19),
    "all": (0.190, 0.46),
}
PAPER_CVR = {"cvr-user+ad": (0.15, 1.1), "ctr-user+ad+cvr-user": (0.17, 1.79), "all": (0.22, 1.92)}
METRICS = {"roc_auc": roc_auc, "pr_auc": pr_auc}
#: The synthetic log and the upstream window (days ending at the validation day). The upstream models see a
#: window five times the ranker's two training days: the information the ranker's own id embeddings cannot get
#: from its rows, which is what the DERM embeddings bring it (the paper's upstream models train on far more
#: data than any one downstream model).
SYNTH = SynthConfig(n_users=4000, n_ads=2000, n_advertisers=160, n_days=18, impressions_per_day=50_000)
SYNTH_WINDOW = 10


def weekly_buckets(src: Path, out: Path) -> Path:
    """Weekly buckets of a daily dataset (`adslog.rebucket`: days and timestamps rescaled together, so label
    cutoffs at the end of a training day and point-in-time sequences agree with the buckets; keeping the
    original `ts` under a week-index `day` zeroed every conversion label in training, and the CVR head scored
    below chance)."""
    return out if (out / "manifest.json").exists() else rebucket(src, out, 7)


def run_seed(
    ws: Workspace, ds: Dataset, days: dict[str, list[int]], ranker: RankerConfig, seed: int
) -> dict[str, dict[str, Any]]:
    """Train every arm on the shared rows; returns arm -> {p (n_test, 2), epochs, ...} and the test labels."""
    spec = ranker_spec(ds, days["train"], ranker)
    inputs = Inputs(ds, spec, ActivityLog.from_dataset(ds, days["test"][-1]), ranker.seq_len)
    lookup = DermLookup(ws, DERM_INPUTS)
    first = lookup.version("ctr", days["train"][0])
    if first is None:
        raise RuntimeError(f"no ctr store version before day {days['train'][0]}")
    dim = int(first.manifest["dim"])
    cutoff = (days["val"][-1] + 1) * 86400

    def rows(ds_days: list[int], cut: int | None) -> RankerRows:
        a = inputs.impressions(ds_days, label_cutoff_ts=cut)
        return RankerRows(inputs, a, lookup.features(a, dim))

    train, val, test = rows(days["train"], cutoff), rows(days["val"], cutoff), rows(days["test"], None)
    out: dict[str, dict[str, Any]] = {}
    wide: FittedWide | None = None  # the wide part reads no DERM input: fitted once, copied into every arm
    for arm, derm in ARMS.items():
        cfg = replace(ranker, derm_inputs=derm, seed=seed)
        snap = new_snapshot(spec, cfg, dim, torch.device("cpu"))
        t0 = time.perf_counter()
        rec = start_ranker(snap, inputs, train, days["train"], cutoff, wide)  # the path train_ranker takes
        wide = wide or fitted_wide(snap, rec, cutoff)
        stats = fit(snap, train, val, cfg.epochs_initial, torch.device("cpu"), seed=seed)
        p = predict(snap.ranker, test)
        out[arm] = {
            "p": p,
            "epochs": stats["epochs"],
            "best_epoch": stats["best_epoch"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"  seed {seed} {arm}: {out[arm]['seconds']} s, best epoch {stats['best_epoch']}", flush=True)
    out["_labels"] = {"click": test.arrays.click, "conversion": test.arrays.conversion, "n_train": len(train)}
    out["_versions"] = {"embedding_versions": {k: sorted(v) for k, v in lookup.used.items()}}
    return out


def summarise(per_seed: list[dict[str, dict[str, Any]]], seeds: tuple[int, ...]) -> dict[str, Any]:
    arms: dict[str, Any] = {}
    scores, boots = seed_scores(
        per_seed, seeds, list(ARMS), METRICS, BOOT, heads=("", "cvr_"), diff_key="lift"
    )
    for arm in ARMS:
        e: dict[str, Any] = {"seeds": list(seeds)}
        for key, vals in scores[arm].items():
            mean_std(e, key, vals)
        e["epochs_per_seed"] = [res[arm]["epochs"] for res in per_seed]
        e["best_epoch_per_seed"] = [res[arm]["best_epoch"] for res in per_seed]
        e["train_seconds_per_seed"] = [res[arm]["seconds"] for res in per_seed]
        if arm != "none":
            lifts: dict[str, Any] = {}
            for key, rows in boots[arm].items():
                d = [r["lift"] for r in rows]
                base = statistics.mean(scores["none"][key])
                m, half = statistics.mean(d), t_half(d) or float("nan")  # nan: under 2 or over 10 seeds
                paper = PAPER_CTR if not key.startswith("cvr_") else PAPER_CVR
                fig = paper.get(arm)
                lifts[key] = {
                    "lift_mean": m,
                    "lift_pct": 100 * m / base,
                    "lift_ci95_over_seeds": [m - half, m + half],
                    "seeds_with_positive_lift": sum(x > 0 for x in d),
                    "per_seed_bootstrap": rows,
                    "paper_lift_pct": None if fig is None else fig[0 if key.endswith("roc_auc") else 1],
                }
            e["lift_vs_none"] = lifts
        arms[arm] = e
    return arms


def bar(arms: dict[str, Any]) -> dict[str, Any]:
    """`all` beats `none` in CTR ROC-AUC by more than the spread across seeds and in every paired seed."""
    a, n = arms["all"], arms["none"]
    lift = a["roc_auc_mean"] - n["roc_auc_mean"]
    spread = max(a["roc_auc_std"] or 0.0, n["roc_auc_std"] or 0.0)
    paired = [x - y for x, y in zip(a["roc_auc_per_seed"], n["roc_auc_per_seed"], strict=True)]
    return {
        "lift": lift,
        "spread_max_std": spread,
        "paired_lifts": paired,
        "met": bool(len(paired) >= 3 and lift > spread and all(p > 0 for p in paired)),
    }


def _doc(per_seed: list[dict[str, dict[str, Any]]], days: dict[str, list[int]]) -> dict[str, Any]:
    c = per_seed[0]["_labels"]["click"]
    arms = summarise(per_seed, SEEDS[: len(per_seed)])
    cal = calibration(per_seed[0]["all"]["p"][:, 0], c)
    return {
        "days": days,
        "n_train_rows": per_seed[0]["_labels"]["n_train"],
        "n_test_impressions": int(len(c)),
        "n_test_clicks": int(c.sum()),
        "n_test_conversions": int(per_seed[0]["_labels"]["conversion"][c > 0].sum()),
        "embedding_versions_seed0": per_seed[0]["_versions"]["embedding_versions"],
        "calibration_ctr_all_seed0": {k: cal[k] for k in ("predicted", "observed")},
        "arms": arms,
        "bar_all_beats_none_ctr_roc_auc": bar(arms),
    }


def split(days: list[int], window: int, n_train: int, n_test: int) -> dict[str, list[int]]:
    """The upstream window is the `window` days ending at the validation day (as `workflow.cycle.bootstrap`:
    the ranker's training rows read back-inferred versions, allowed because they only train it); test days
    read versions published before them, from a model that never saw a test day."""
    test = days[-n_test:]
    val = [days[-n_test - 1]]
    train = days[-n_test - 1 - n_train : -n_test - 1]
    return {
        "window": days[-n_test - window : -n_test],
        "later": [d for d in test if d < test[-1]],
        "train": train,
        "val": val,
        "test": test,
    }


def main(quick: bool = False) -> None:
    # one thread: on a 2-core machine shared with other work, two OpenMP threads per process spin against each
    # other (a ranker arm took 332 s with 2 threads under load, ~20x the single-thread step time)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    synth_cfg = SYNTH
    if quick:
        synth_cfg = replace(synth_cfg, n_days=9, impressions_per_day=6000)
    synth = WORK / ("synthetic_quick" if quick else "synthetic_data")
    if not (synth / "manifest.json").exists():
        generate(synth_cfg, synth)
    # the foundation's MLP backbone upstream (DHEN costs ~2.5x more per step on CPU): the budget, not a choice
    towers = TowerConfig(dim=32, token_dim=16, backbone=Backbone.MLP, batch_size=1024, epochs_initial=2)
    ranker = RankerConfig(
        token_dim=8,
        hidden=(32,),
        cross_rank=16,
        seq_heads=1,
        seq_len=20,
        epochs_initial=3,
        early_stopping=True,
    )
    ml_towers = replace(towers, batch_size=512, epochs_initial=1)
    ml_ranker = replace(ranker, batch_size=512)
    result: dict[str, Any] = {
        "command": "python benchmarks/ranker_ablation.py",
        "metrics": "ROC-AUC / PR-AUC of the CTR head (all test impressions) and, prefixed cvr_, of the CVR head "
        "(clicked test impressions); std with ddof=1 over seeds; lift_pct = 100 * mean lift / mean none",
        "seeds": list(SEEDS),
        "bootstrap_replicates": BOOT,
        "configs": {
            "towers": towers.to_json(),
            "ranker": ranker.to_json(),
            "movielens_towers": ml_towers.to_json(),
            "movielens_ranker": ml_ranker.to_json(),
        },
        "paper": {"table2_ctr_lift_pct": PAPER_CTR, "table4_cvr_lift_pct": PAPER_CVR},
        "upstream_note": "upstream models: foundation MLP backbone, trained once per seed on the window ending at "
        "the validation day with back inference over it (as bootstrap); test days read the versions before them "
        "(the last test day reads one more inference-only version); no daily increments, for the time budget",
    }
    runs: dict[str, tuple[Path, dict[str, list[int]], TowerConfig, RankerConfig, dict[str, Any]]] = {
        "synthetic": (
            synth,
            split(Dataset.open(synth).days(), SYNTH_WINDOW if not quick else 4, 2, 2),
            towers,
            ranker,
            {"synth_config": dict(synth_cfg.__dict__)},
        )
    }
    ml_src = ROOT.parent / "shared" / "data" / "movielens_100k"
    if quick:
        result["movielens_100k"] = {"skipped": "quick run"}
    elif (ml_src / "ml-100k.inter").exists():
        ml = WORK / "movielens_daily"
        if not (ml / "manifest.json").exists():
            import_movielens_100k(ml_src, ml)
        wk = weekly_buckets(ml, WORK / "movielens_weekly")
        wd = [d for d in Dataset.open(wk).days() if Dataset.open(wk).partition_files(d)]
        extra = {"bucketing": "weekly (ts compressed 7:1 into the bucket's day)"}
        runs["movielens_100k"] = (wk, split(wd, 10, 4, 4), ml_towers, ml_ranker, extra)
    else:
        result["movielens_100k"] = {"skipped": f"{ml_src} not available"}
    per_seed: dict[str, list[dict[str, dict[str, Any]]]] = {name: [] for name in runs}
    seconds: dict[str, float] = {name: 0.0 for name in runs}
    path = WORK / "quick.json" if quick else RESULTS_PATH
    for seed in SEEDS:  # seed-major, so that a cut-short run still holds every dataset's first seeds
        for name, (data, days, tcfg, rcfg, extra) in runs.items():
            t = time.perf_counter()
            ws = Workspace.open(WORK / (name + ("_quick" if quick else "")) / f"seed{seed}", data)
            upstream(ws, Dataset.open(data), days["window"], replace(tcfg, seed=seed), later=days["later"])
            print(f"{name} seed {seed}: upstream {time.perf_counter() - t:.0f} s", flush=True)
            per_seed[name].append(run_seed(ws, Dataset.open(data), days, rcfg, seed))
            seconds[name] += time.perf_counter() - t
            result[name] = {**_doc(per_seed[name], days), **extra, "wall_seconds": round(seconds[name], 1)}
            result["complete"] = seed == SEEDS[-1] and name == list(runs)[-1]
            result["wall_seconds"] = round(time.perf_counter() - t0, 1)
            if quick:  # a smoke run of the pipeline: never written over the committed results
                path.write_text(json.dumps(result, indent=2, default=str))
            else:
                path = write_result("ranker_ablation", result)
    print(json.dumps({"results": str(path), "wall_seconds": result["wall_seconds"]}))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
