"""Ablations of the upstream model (issue 3): what each part of the towers buys.

Arms (each differs from `full` in one thing): `full` (DHEN backbone, BCE heads for CTR and CVR, in-batch sampled
softmax with logQ correction), `no_contrastive` (softmax weight 0: the embeddings learn only through the
interaction tower's BCE), `no_logq`, `mlp_backbone` (the foundation's MLP towers), `single_task` (CVR head weight
0). Every arm shares data, epochs and seeds. Each run trains the CTR model from scratch on a window of days, then
scores out of time:
- retrieval recall@100: users embedded at the start of a test day (their sequence strictly before it), live ads
  embedded by the Pin tower, exact inner-product search (`index.exact.exact_search`); relevant = the ads the user
  clicked that day. MovieLens masks items the user rated before (a rating is given once);
- CTR-head ROC-AUC: the interaction tower on the test impressions with their logged context.
Differences to `full` carry paired-bootstrap 95 % intervals per seed (users for recall, impressions clustered by
user for ROC-AUC). Popularity (clicks in the 7 days before) and, on synthetic data, the oracle (true p_click) are
reported beside.

Data: synthetic (60k impressions a day: days 1-4 to train, day 5 to test; sized for the 45-minute budget) and MovieLens-100K in weekly buckets (`adslog.rebucket`;
the last 4 weeks pooled as test, the model trained on the weeks before).
Usage: python benchmarks/towers_ablation.py   (writes benchmarks/results/towers_ablation.json)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
from common import ROOT, write_result
from harness import std

from adslog.dataset import Dataset
from adslog.importers import import_movielens_100k
from adslog.rebucket import rebucket
from adslog.sequences import ActivityLog
from adslog.synth import SynthConfig, generate
from dermfeatures.batches import Inputs
from eval.bootstrap import paired_bootstrap
from eval.evaluate import oracle_topk
from eval.metrics import recall_per_user, roc_auc
from eval.upstream import head_probabilities
from index.exact import exact_search
from retrieval.retrieve import popularity
from towers.config import TowerConfig
from towers.infer import embed_ads, embed_users
from towers.train import load_snapshot, train_towers

WORK = ROOT / "benchmarks" / "work" / "towers_ablation"
ML_SRC = ROOT.parent / "shared" / "data" / "movielens_100k"
SEEDS = (0, 1, 2)
K = 100
HAS_BACKBONE = "backbone" in {f.name for f in dataclasses.fields(TowerConfig)}
ARMS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_contrastive": {"weight_contrastive": 0.0},
    "no_logq": {"logq": False},
    "mlp_backbone": {"backbone": "mlp"},
    "single_task": {"weight_cvr": 0.0},
}
SYNTH = SynthConfig(
    n_users=6_000, n_ads=3_500, n_advertisers=250, n_days=6, impressions_per_day=60_000, seed=0
)


def arm_config(base: TowerConfig, arm: str, seed: int) -> TowerConfig:
    changes = dict(ARMS[arm])
    if "backbone" in changes and not HAS_BACKBONE:
        raise SystemExit("TowerConfig has no `backbone` field: the DHEN/MLP ablation needs it")
    return replace(base, seed=seed, **changes)


def test_sets(ds: Dataset, test_days: list[int], mask_seen: bool) -> dict[str, Any]:
    """Per (user, test day): the user, the day, the clicked ads and (MovieLens) the ads seen before."""
    rows = []
    for d in test_days:
        t = ds.impressions(d, ["user_id", "ad_id", "click"])
        t = t.filter(pc.equal(t.column("click"), 1))
        u, a = t.column("user_id").to_numpy(), t.column("ad_id").to_numpy()
        order = np.argsort(u, kind="stable")
        u, a = u[order], a[order]
        users, starts = np.unique(u, return_index=True)
        for i, user in enumerate(users):
            rows.append(
                (int(user), d, np.unique(a[starts[i] : starts[i + 1] if i + 1 < len(starts) else None]))
            )
    seen: dict[tuple[int, int], np.ndarray] = {}
    if mask_seen:
        prior = ds.impressions(list(range(ds.first_day, max(test_days))), ["user_id", "ad_id", "day"])
        pu, pa_, pd = (prior.column(c).to_numpy() for c in ("user_id", "ad_id", "day"))
        for user, d, _ in rows:
            seen[(user, d)] = np.unique(pa_[(pu == user) & (pd < d)])
    return {"rows": rows, "seen": seen}


def drop_seen(ranked: np.ndarray, seen: list[np.ndarray]) -> np.ndarray:
    """int64[n, K]: row i of `ranked` (int64[n, m] or one shared list [m]) without the ids in seen[i], cut to K,
    -1 padded."""
    out = np.full((len(seen), K), -1, np.int64)
    for i, s in enumerate(seen):
        row = ranked[i] if ranked.ndim == 2 else ranked
        row = row[~np.isin(row, s)] if len(s) else row
        out[i, : min(K, len(row))] = row[:K]
    return out


def retrieve(
    emb_users: np.ndarray, live: np.ndarray, ad_vecs: np.ndarray, seen: list[np.ndarray]
) -> np.ndarray:
    extra = max((len(s) for s in seen), default=0)
    ids, _ = exact_search(live, ad_vecs, emb_users, min(K + extra, len(live)))
    return drop_seen(ids, seen)


def run_one(
    ds: Dataset, work: Path, train_days: list[int], test_days: list[int], cfg: TowerConfig, sets: dict
) -> dict[str, Any]:
    """Train from scratch on `train_days`; per-user recall@K and per-impression p_ctr on `test_days`."""
    mdir = work / "models"
    shutil.rmtree(mdir, ignore_errors=True)
    t0 = time.perf_counter()
    train_towers(ds, train_days, cfg, mdir, device="cpu")
    train_s = time.perf_counter() - t0
    snap = load_snapshot(mdir / f"day={max(train_days)}", "cpu", with_state=False)
    recalls, p_ctr, clicks, groups = [], [], [], []
    for d in test_days:
        inputs = Inputs(ds, snap.spec, ActivityLog.from_dataset(ds, d), snap.config.seq_len)
        rows = [r for r in sets["rows"] if r[1] == d]
        users = np.array([r[0] for r in rows], np.int64)
        uvec = embed_users(snap.towers, inputs, users, np.full(len(users), d * 86400, np.int64))
        live = ds.live_ads(d)
        top = retrieve(
            uvec, live, embed_ads(snap.towers, inputs, live), [sets["seen"].get((u, d), []) for u in users]
        )
        recalls.append(recall_per_user(top, [r[2] for r in rows], K))
        a = inputs.impressions([d])
        p_ctr.append(head_probabilities(snap, inputs, a)[:, 0])
        clicks.append(a.click)
        groups.append(a.user_id)
    return {
        "recall": np.concatenate(recalls),
        "p_ctr": np.concatenate(p_ctr),
        "click": np.concatenate(clicks),
        "groups": np.concatenate(groups),
        "train_seconds": round(train_s, 1),
    }


def baselines(ds: Dataset, test_days: list[int], sets: dict) -> dict[str, Any]:
    out: dict[str, list[np.ndarray]] = {"popularity": [], "oracle": []}
    for d in test_days:
        rows = [r for r in sets["rows"] if r[1] == d]
        users = np.array([r[0] for r in rows], np.int64)
        rel = [r[2] for r in rows]
        live = ds.live_ads(d)
        pop, _ = popularity(ds, d, live)
        seen = [sets["seen"].get((u, d), np.zeros(0, np.int64)) for u in users]
        out["popularity"].append(recall_per_user(drop_seen(pop, seen), rel, K))
        if ds.has_oracle:
            otop = oracle_topk(ds.root, users, live, d, K)
            if otop is not None:
                out["oracle"].append(recall_per_user(otop, rel, K))
    res: dict[str, Any] = {"popularity_recall_at_100": float(np.mean(np.concatenate(out["popularity"])))}
    if out["oracle"]:
        res["oracle_recall_at_100"] = float(np.mean(np.concatenate(out["oracle"])))
    if ds.has_oracle:
        t = ds.impressions(test_days, ["p_click", "click"])
        res["oracle_ctr_roc_auc"] = roc_auc(t.column("p_click").to_numpy(), t.column("click").to_numpy())
    return res


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm, per_seed in runs.items():
        rec = [float(r["recall"].mean()) for r in per_seed]
        auc = [roc_auc(r["p_ctr"], r["click"]) or float("nan") for r in per_seed]
        row: dict[str, Any] = {
            "recall_at_100_mean": statistics.mean(rec),
            "recall_at_100_std": std(rec),
            "ctr_roc_auc_mean": statistics.mean(auc),
            "ctr_roc_auc_std": std(auc),
            "per_seed": [
                {"seed": s, "recall_at_100": r, "ctr_roc_auc": a, "train_seconds": x["train_seconds"]}
                for s, r, a, x in zip(SEEDS, rec, auc, per_seed, strict=True)
            ],
        }
        if arm != "full":
            diffs: list[dict[str, Any]] = []
            for s, (x, f) in enumerate(zip(per_seed, runs["full"], strict=True)):
                br = paired_bootstrap(np.mean, x["recall"], f["recall"], n=500, seed=s)
                ba = paired_bootstrap(
                    roc_auc, x["p_ctr"], f["p_ctr"], labels=x["click"], groups=x["groups"], n=200, seed=s
                )
                diffs.append(
                    {
                        "seed": SEEDS[s],
                        "recall_at_100": {k: br[k] for k in ("diff", "lo", "hi")},
                        "ctr_roc_auc": {k: ba[k] for k in ("diff", "lo", "hi")},
                    }
                )
            row["vs_full"] = {
                "recall_at_100_diff_mean": statistics.mean(d["recall_at_100"]["diff"] for d in diffs),
                "ctr_roc_auc_diff_mean": statistics.mean(d["ctr_roc_auc"]["diff"] for d in diffs),
                "per_seed": diffs,
            }
        out[arm] = row
    return out


def ablate(
    name: str, ds: Dataset, train_days: list[int], test_days: list[int], base: TowerConfig, mask_seen: bool
) -> dict[str, Any]:
    t0 = time.perf_counter()
    sets = test_sets(ds, test_days, mask_seen)
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in ARMS}
    for seed in SEEDS:
        for arm in ARMS:
            r = run_one(ds, WORK / name, train_days, test_days, arm_config(base, arm, seed), sets)
            runs[arm].append(r)
            print(
                f"{name} seed {seed} {arm}: recall@100 {r['recall'].mean():.4f} "
                f"auc {roc_auc(r['p_ctr'], r['click'])} ({r['train_seconds']} s)",
                flush=True,
            )
    return {
        "train_days": train_days,
        "test_days": test_days,
        "n_test_users": len(sets["rows"]),
        "masked_seen_items": mask_seen,
        "config": base.to_json(),
        "arms": summarize(runs),
        "baselines": baselines(ds, test_days, sets),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "command": "python benchmarks/towers_ablation.py",
        "seeds": list(SEEDS),
        "k": K,
        "arms": {a: c for a, c in ARMS.items()},
    }
    data = WORK / "synthetic_data"
    if not (data / "manifest.json").exists():
        generate(SYNTH, data, overwrite=True)
    ds = Dataset.open(data)
    days = ds.days()
    base = TowerConfig()
    result["synthetic"] = ablate("synthetic", ds, days[:4], days[4:5], base, mask_seen=False)
    if (ML_SRC / "ml-100k.inter").exists():
        daily = WORK / "movielens_daily"
        if not (daily / "manifest.json").exists():
            import_movielens_100k(ML_SRC, daily, overwrite=True)
        weekly = WORK / "movielens_weekly"
        if not (weekly / "manifest.json").exists():
            rebucket(daily, weekly, 7, overwrite=True)
        ml = Dataset.open(weekly)
        weeks = ml.days()
        ml_cfg = replace(base, batch_size=1024, epochs_initial=2)
        result["movielens_100k"] = ablate(
            "movielens_100k", ml, weeks[:-4], weeks[-4:], ml_cfg, mask_seen=True
        )
    else:
        result["movielens_100k"] = {"skipped": f"{ML_SRC} not found"}
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    path = write_result("towers_ablation", result)
    print(json.dumps({"results": str(path), "total_seconds": result["total_seconds"]}))


if __name__ == "__main__":
    main()
