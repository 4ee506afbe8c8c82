"""The TransRA paper's downstream claim on our data (issue 14): does the ranker gain from KGE vectors, frozen or
fine-tuned with target attention over the user's graph neighbours, beside the DERM embeddings?

Per dataset, one workspace: every day d of the window gets graph version d (point-in-time: events before the
end of d; `adgraph.graph.publish_graph`), KGE version d (from scratch on the first day of the span, then one
increment a day; `adgraph.snapshot.train_kge`, `KGEConfig` defaults) of TransRA and of TransR, and store version d
of their families `kge-transra` / `kge-transr` (`adgraph.family.publish_kge_family`, the cycle's path). Rows of
day d read the versions of day d - 1 (`ranking.kge.KGELookup`), in training and test alike; the finetuned tables
start from the version before the first training day. The DERM towers (the CTR model: the cycle's default
`derm_inputs` ctr-user, ctr-ad) run as the cycle runs them (`harness.upstream`): from scratch with back inference
on every day before the first training day, then one increment and one store version a day. The KGE and DERM
models are trained once per dataset (seed 0); the ranker seeds 0, 1, 2 vary the ranker's initialisation and
batch order, on the same rows.

Every arm starts as `train_ranker` starts a ranker (`ranking.train.start_ranker`): output biases at the base
rates, the wide part fitted by L-BFGS and frozen (`wide_fit` "regression", the default; the fit reads no seed, so
it is fitted once per set of dense columns and shared), then one pass of the deep part.

Arms (`ranking.model.RankerConfig`): none (no KGE); frozen (KGE vectors of user, ad, advertiser as deep inputs,
and the KGE relation scores f_r(user, candidate) of the three user relations as dense columns of the wide part,
`kge_scores`); finetune (ID tables initialised from the vectors, own learning rate); finetune_attention (+ the
target-attention block); transr_finetune_attention (the same from TransR); finetune_attention_no_scores
(finetune_attention without the relation scores: the vectors' own share); derm (the DERM inputs, no KGE);
derm_finetune_attention (both). Metrics on the pooled test days: ROC-AUC and PR-AUC of the CTR head (all
impressions) and the CVR head (clicked impressions, post-click); mean and std (ddof 1) over seeds; per arm vs
none a paired bootstrap interval per seed (test impressions resampled) and a t interval of the mean paired
difference over seeds; derm_finetune_attention also vs derm.

Data: the synthetic generator (offsite conversions carry conversion information, `offsite_signal.json`;
why the KGE path gains what it gains: `kge_signal.json`) and MovieLens-100K in weekly buckets (click = rating >=
4, conversion = rating 5; no offsite data, so the graph has clicked / converted / in-category edges only).
Usage: python benchmarks/kge_ranker.py [--quick] [--no-movielens]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import RESULTS, ROOT, write_result
from harness import mean_std, seed_scores, t_half, upstream

from adgraph.family import kge_family, publish_kge_family
from adgraph.graph import publish_graph
from adgraph.models import ModelKind
from adgraph.snapshot import train_kge
from adgraph.train import KGEConfig
from adslog.dataset import Dataset
from adslog.sequences import ActivityLog
from adslog.synth import SynthConfig, generate
from adslog.workspace import Workspace
from dermfeatures.batches import Inputs
from embstore.store import StoreGates, embeddings_dir, open_version
from eval.metrics import pr_auc, roc_auc
from ranking.kge import KGELookup, kge_dim
from ranking.model import RankerConfig
from ranking.train import (
    DermLookup,
    FittedWide,
    RankerRows,
    dense_columns,
    fit,
    fitted_wide,
    new_snapshot,
    predict,
    ranker_spec,
    start_ranker,
)
from towers.config import Backbone, TowerConfig

WORK = ROOT / "benchmarks" / "work" / "kge_ranker"
SEEDS = (0, 1, 2)
BOOT = 100
METRICS = {"roc_auc": roc_auc, "pr_auc": pr_auc}
T975 = {2: 12.706, 3: 4.303}  # t by seed count; no interval past 3 seeds (harness.t_half)
SYNTH = SynthConfig(n_users=5000, n_ads=2500, n_advertisers=200, n_days=12, impressions_per_day=80_000)
MODELS = (ModelKind.TRANSRA, ModelKind.TRANSR)
#: the DERM inputs the daily cycle's ranker reads (`RankerConfig`'s default)
CYCLE_DERM_INPUTS = RankerConfig().derm_inputs
#: the DERM towers: the foundation's MLP backbone, as in ranker_ablation.py (DHEN costs ~2.5x more per step on
#: CPU: the budget, not a choice)
TOWERS = TowerConfig(dim=32, token_dim=16, backbone=Backbone.MLP, batch_size=1024, epochs_initial=2)


ARMS = (
    "none",
    "frozen",
    "finetune",
    "finetune_attention",
    "transr_finetune_attention",
    "finetune_attention_no_scores",
    "derm",
    "derm_finetune_attention",
)
#: what the results keep of each fitted wide part's record (`ranking.wide.fit_wide_part`)
WIDE_RECORD = ("l2", "rows", "ctr_dense_weights", "cvr_dense_weights", "ctr_converged", "cvr_converged")


def arms(
    base: RankerConfig,
    inputs: tuple[str, ...] = ("user", "ad", "advertiser"),
    derm: tuple[str, ...] = CYCLE_DERM_INPUTS,
) -> dict[str, RankerConfig]:
    ra, r = kge_family(ModelKind.TRANSRA), kge_family(ModelKind.TRANSR)
    base = replace(base, kge_inputs=inputs, derm_inputs=())
    ft = {"kge_finetune": True, "kge_lr": base.kge_lr if base.kge_lr is not None else base.lr}
    fa = replace(base, kge_family=ra, kge_attention=True, **ft)
    return {
        "none": base,
        "frozen": replace(base, kge_family=ra),
        "finetune": replace(base, kge_family=ra, **ft),
        "finetune_attention": fa,
        "transr_finetune_attention": replace(fa, kge_family=r),
        # the vectors' own share: the same arm without the KGE relation scores in the wide part
        "finetune_attention_no_scores": replace(fa, kge_scores=()),
        "derm": replace(base, derm_inputs=derm),
        "derm_finetune_attention": replace(fa, derm_inputs=derm),
    }


def prepare(ws: Workspace, days: list[int], kcfg: KGEConfig) -> dict[str, Any]:
    """Graph, KGE and store family versions for each of `days`, for both models; returns timings and sizes."""
    info: dict[str, Any] = {"graph_edges": {}, "kge_seconds": {}}
    t0 = time.perf_counter()
    for d in days:
        m = publish_graph(ws, d)
        info["graph_edges"][str(d)] = int(m["n_edges"])
    info["graph_seconds"] = round(time.perf_counter() - t0, 1)
    for model in MODELS:
        t0 = time.perf_counter()
        for d in days:
            train_kge(ws, d, replace(kcfg, model=model))
            # coverage gate off: the first versions cover few of the day's users by construction
            publish_kge_family(ws, d, model, gates=StoreGates(1.0))
        info["kge_seconds"][model.value] = round(time.perf_counter() - t0, 1)
        print(f"  kge {model.value}: {info['kge_seconds'][model.value]} s", flush=True)
    return info


def prepare_derm(ws: Workspace, split: dict[str, list[int]], towers: TowerConfig) -> dict[str, Any]:
    """The DERM towers as the daily cycle runs them (`harness.upstream`, the cycle's stages): from scratch with
    back inference on `derm_window`, then one increment and one store version a day over `derm_daily`; the
    tasks behind `CYCLE_DERM_INPUTS`. Returns the seconds and the versions published."""
    t0 = time.perf_counter()
    tasks = tuple(sorted({name.split("-")[0] for name in CYCLE_DERM_INPUTS}))
    upstream(
        ws, ws.dataset(), split["derm_window"], towers, split["derm_daily"], tasks, daily_increments=True
    )
    return {"tasks": list(tasks), "seconds": round(time.perf_counter() - t0, 1)}


def run_arms(
    ws: Workspace,
    ds: Dataset,
    split: dict[str, list[int]],
    base: RankerConfig,
    inputs_kge: tuple[str, ...],
    names: list[str],
    seeds: tuple[int, ...],
) -> list[dict[str, Any]]:
    """Every arm of `names` on the same rows, per seed; returns per seed arm -> {p: test probabilities (n, 2),
    seconds} and the test labels. The rows, their DERM / KGE features and the fitted wide part
    (`ranking.train.start_ranker`: deterministic, no seed) are built once and shared by every arm and seed."""
    spec = ranker_spec(ds, split["train"], base)
    inputs = Inputs(ds, spec, ActivityLog.from_dataset(ds, split["test"][-1]), base.seq_len)
    cutoff = (split["train"][-1] + 1) * 86400
    a_train = inputs.impressions(split["train"], label_cutoff_ts=cutoff)
    a_test = inputs.impressions(split["test"])
    cfgs = arms(base, inputs_kge)
    feats_train: dict[str, np.ndarray] = {}
    feats_test: dict[str, np.ndarray] = {}
    dims: dict[str | None, int] = {None: 0}
    derm = sorted({d for a in names for d in cfgs[a].derm_inputs})
    derm_dim = 0
    if derm:
        lookup = DermLookup(ws, tuple(derm))
        first = lookup.version(derm[0].split("-")[0], split["train"][0])
        assert first is not None, "no DERM store version before the first training day"
        derm_dim = int(first.manifest["dim"])
        feats_train.update(lookup.features(a_train, derm_dim))
        feats_test.update(lookup.features(a_test, derm_dim))
    kge_feats: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
    lookups: dict[str, KGELookup] = {}
    for fam in sorted({cfgs[a].kge_family for a in names if cfgs[a].kge_family is not None}):
        dims[fam] = kge_dim(ws, fam)
        lookups[fam] = KGELookup(ws, ds, fam, inputs_kge, base.kge_neighbours, scores=base.kge_scores)
        kge_feats[fam] = (lookups[fam].features(a_train, dims[fam]), lookups[fam].features(a_test, dims[fam]))
    fitted: dict[
        tuple[str, ...], FittedWide | None
    ] = {}  # by dense columns: the KGE arms' differ from none's
    out: list[dict[str, Any]] = []
    for seed in seeds:
        res: dict[str, Any] = {}
        for arm in names:
            cfg = replace(cfgs[arm], seed=seed)
            fam = cfg.kge_family
            tr, te = dict(feats_train), dict(feats_test)
            if fam is not None:
                tr.update(kge_feats[fam][0])
                te.update(kge_feats[fam][1])
            train, test = RankerRows(inputs, a_train, tr), RankerRows(inputs, a_test, te)
            init = None
            if cfg.kge_finetune and fam is not None:
                kd = ws.version_before(embeddings_dir(ws, fam), split["train"][0])
                assert kd is not None
                init = open_version(embeddings_dir(ws, fam), kd)
            snap = new_snapshot(spec, cfg, derm_dim, torch.device("cpu"), dims[fam], init)
            t0 = time.perf_counter()
            dense = dense_columns(cfg)
            lk = lookups.get(fam) if fam is not None else None
            rec = start_ranker(snap, inputs, train, split["train"], cutoff, fitted.get(dense), lk)
            if dense not in fitted:
                fitted[dense] = fitted_wide(snap, rec, cutoff)
                print(f"  wide part {dense} fitted: {time.perf_counter() - t0:.1f} s", flush=True)
            t0 = time.perf_counter()
            stats = fit(snap, train, None, cfg.epochs_initial, torch.device("cpu"), seed=seed)
            res[arm] = {"p": predict(snap.ranker, test), "seconds": round(time.perf_counter() - t0, 1)}
            print(
                f"  seed {seed} {arm}: {res[arm]['seconds']} s, loss {stats['loss_by_epoch'][-1]}", flush=True
            )
        res["_labels"] = {"click": a_test.click, "conversion": a_test.conversion, "n_train": len(a_train)}
        res["_wide"] = {
            "+".join(k) or "none": None if f is None else {x: f.record.get(x) for x in WIDE_RECORD}
            for k, f in fitted.items()
        }
        out.append(res)
    return out


def headroom(
    ds: Dataset, split: dict[str, list[int]], base: RankerConfig, inputs_kge: tuple[str, ...], ws: Workspace
) -> dict[str, Any]:
    """How much a KGE / offsite input *could* add to CVR, on the bar's own rows (the clicked test impressions,
    realised conversions): the ROC-AUC of the generator's true P(conversion | click), of its logit without the
    conversion-specific term (what nobody can know without seeing who converts where), of the ceiling of any
    offsite-derived signal (`adgraph.offsite.conversion_terms`: that logit plus the true user x advertiser
    conversion affinity's share), of the affinity alone, and of each TransRA relation score the frozen arm's
    wide part reads, alone. Synthetic logs only (they carry the oracle)."""
    from adgraph.offsite import conversion_terms

    spec = ranker_spec(ds, split["train"], base)
    inputs = Inputs(ds, spec, ActivityLog.from_dataset(ds, split["test"][-1]), base.seq_len)
    a = inputs.impressions(split["test"])
    ev = ds.impressions(split["test"], ["ts", "user_id", "ad_id", "surface"])
    assert (ev.column("user_id").to_numpy() == a.user_id).all() and (ev.column("ts").to_numpy() == a.ts).all()
    c = np.flatnonzero(a.click > 0)
    rows, y = a.take(c), a.conversion[c]
    surface = ev.column("surface").to_numpy().astype(np.int64)[c]
    t = conversion_terms(ds, rows.user_id, rows.ad_id, rows.day.astype(np.int64), surface)
    out: dict[str, Any] = {
        "rows": int(len(c)),
        "conversions": int(y.sum()),
        "true_p_conversion": roc_auc(t["p_conv"], y),
        "logit_without_conversion_term": roc_auc(t["logit_without"], y),
        "offsite_ceiling": roc_auc(t["logit_with_offsite"], y),
        "affinity_alone": roc_auc(t["affinity"], y),
    }
    fam = kge_family(ModelKind.TRANSRA)
    lookup = KGELookup(ws, ds, fam, inputs_kge, base.kge_neighbours, scores=base.kge_scores)
    for k, v in sorted(lookup.score_features(rows).items()):
        if not k.endswith("_found"):
            out[f"{k}_alone"] = roc_auc(np.asarray(v, np.float64), y)
    return out


def _vs(rows_by_key: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    vs: dict[str, Any] = {}
    for key, rows in rows_by_key.items():
        d = [r["diff"] for r in rows]
        m, half = statistics.fmean(d), t_half(d, T975)
        vs[key] = {
            "diff_mean": m,
            "diff_ci95_over_seeds": None if half is None else [m - half, m + half],
            "per_seed_bootstrap": rows,
        }
    return vs


def summarise(per_seed: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per arm: mean / std / per-seed metrics, `vs_none` (paired, per seed and over seeds); finetune_attention
    also `vs_frozen` (the bar's second half), the DERM + KGE arm also `vs_derm` (what the KGE path adds on top of
    the DERM inputs)."""
    seeds = SEEDS[: len(per_seed)]  # an incomplete run has fewer seeds
    scores, boots = seed_scores(per_seed, seeds, names, METRICS, BOOT)
    out: dict[str, Any] = {}
    for arm in names:
        e: dict[str, Any] = {}
        for key, vals in scores[arm].items():
            mean_std(e, key, vals, statistics.fmean)
        e["train_seconds_per_seed"] = [res[arm]["seconds"] for res in per_seed]
        if arm != "none":
            e["vs_none"] = _vs(boots[arm])
        out[arm] = e
    if "frozen" in names and "finetune_attention" in names:
        # the bar's "at least as good as frozen KGE inputs", paired on the same test rows
        _, b = seed_scores(
            per_seed, seeds, ["frozen", "finetune_attention"], METRICS, BOOT, reference="frozen"
        )
        out["finetune_attention"]["vs_frozen"] = _vs(b["finetune_attention"])
    if "derm" in names and "derm_finetune_attention" in names:
        _, b = seed_scores(
            per_seed, seeds, ["derm", "derm_finetune_attention"], METRICS, BOOT, reference="derm"
        )
        out["derm_finetune_attention"]["vs_derm"] = _vs(b["derm_finetune_attention"])
    return out


def bar(a: dict[str, Any]) -> dict[str, Any]:
    """finetune_attention beats none on CVR ROC-AUC by more than the seed spread, and is >= frozen.

    `at_least_frozen` (and `met`) compare the means strictly. Beside them, the paired difference
    finetune_attention - frozen (`summarise`'s `vs_frozen`) with an interval, so "at least as good" can be
    judged against the test rows' noise: `vs_frozen_ci` is the paired bootstrap's 95 % interval over test
    impressions, averaged over seeds (the mean of the per-seed lower bounds, the mean of the upper bounds; the
    seeds share the test rows, so their intervals are near copies), `vs_frozen_ci_over_seeds` the t interval of
    the mean paired difference over seeds (ranker initialisation and batch order only; None below 2 seeds);
    `not_worse_than_frozen`: `vs_frozen_ci`'s upper bound >= 0 (the data cannot tell finetune_attention below
    frozen); `met_not_worse`: beats_none and not_worse_than_frozen."""
    fa, n, fr = a["finetune_attention"], a["none"], a["frozen"]
    lift = fa["cvr_roc_auc_mean"] - n["cvr_roc_auc_mean"]
    spread = max(fa["cvr_roc_auc_std"] or 0.0, n["cvr_roc_auc_std"] or 0.0)
    out: dict[str, Any] = {
        "cvr_lift_vs_none": lift,
        "spread_max_std": spread,
        "cvr_diff_vs_frozen": fa["cvr_roc_auc_mean"] - fr["cvr_roc_auc_mean"],
        "beats_none": bool(lift > spread),
        "at_least_frozen": bool(fa["cvr_roc_auc_mean"] >= fr["cvr_roc_auc_mean"]),
        "met": bool(lift > spread and fa["cvr_roc_auc_mean"] >= fr["cvr_roc_auc_mean"]),
    }
    vs = (fa.get("vs_frozen") or {}).get("cvr_roc_auc")
    if vs:
        rows = vs["per_seed_bootstrap"]
        ci = [statistics.fmean(r["lo"] for r in rows), statistics.fmean(r["hi"] for r in rows)]
        out.update(
            vs_frozen_diff_mean=vs["diff_mean"],
            vs_frozen_ci=ci,
            vs_frozen_ci_over_seeds=vs["diff_ci95_over_seeds"],
            not_worse_than_frozen=bool(ci[1] >= 0),
            met_not_worse=bool(lift > spread and ci[1] >= 0),
        )
    return out


def run_dataset(
    data: Path,
    work: Path,
    split: dict[str, list[int]],
    base: RankerConfig,
    kcfg: KGEConfig,
    towers: TowerConfig,
    inputs_kge: tuple[str, ...] = ("user", "ad", "advertiser"),
    names: tuple[str, ...] = ARMS,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    ws = Workspace.create(work, data)  # reuses one bound to `data`
    ds = ws.dataset()
    info = prepare(ws, split["kge"], kcfg)
    if any(arms(base)[a].derm_inputs for a in names):
        info["derm"] = prepare_derm(ws, split, towers)
        print(f"  derm towers: {info['derm']['seconds']} s", flush=True)
    per_seed = run_arms(ws, ds, split, base, inputs_kge, list(names), SEEDS)
    room = headroom(ds, split, base, inputs_kge, ws) if ds.has_oracle else None
    c = per_seed[0]["_labels"]["click"]
    a = summarise(per_seed, list(names))
    return {
        "days": split,
        "n_train_rows": per_seed[0]["_labels"]["n_train"],
        "n_test_impressions": int(len(c)),
        "n_test_clicks": int(c.sum()),
        "n_test_conversions": int(per_seed[0]["_labels"]["conversion"][c > 0].sum()),
        "kge_inputs": list(inputs_kge),
        "prepare": info,
        "wide_parts": per_seed[0]["_wide"],
        "arms": a,
        "bar_finetune_attention_cvr": bar(a)
        if {"none", "frozen", "finetune_attention"} <= set(names)
        else None,
        "cvr_headroom": room,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def split_days(days: list[int], n_train: int, n_test: int) -> dict[str, list[int]]:
    """Train and test days; the KGE versions serving them (the first from scratch on the graph of the day before
    the span, then one increment a day); the DERM towers' bootstrap window (every day before the first training
    day) and their daily increments (each day from the first training day to the day before the last test
    day)."""
    train, test = days[-n_test - n_train : -n_test], days[-n_test:]
    return {
        "kge": days[-n_test - n_train - 2 : -1],
        "derm_window": [d for d in days if d < train[0]],
        "derm_daily": [d for d in days if train[0] <= d < test[-1]],
        "train": train,
        "test": test,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-movielens", action="store_true")
    ap.add_argument(
        "--movielens-only",
        action="store_true",
        help="keep the synthetic part of the existing kge_ranker.json, (re)run MovieLens",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    synth_cfg = (
        SYNTH
        if not args.quick
        else replace(SYNTH, n_users=1500, n_ads=1000, n_days=8, impressions_per_day=15_000)
    )
    kcfg = KGEConfig() if not args.quick else KGEConfig(epochs=3, dim=16, relation_dim=None)
    base = RankerConfig(derm_inputs=(), token_dim=8, hidden=(32,), cross_rank=16, seq_heads=1, seq_len=20)
    result: dict[str, Any] = {
        "command": "python benchmarks/kge_ranker.py" + (" --quick" if args.quick else ""),
        "seeds": list(SEEDS),
        "bootstrap_replicates": BOOT,
        "configs": {
            "ranker_base": base.to_json(),
            "kge": kcfg.to_json(),
            "derm_towers": TOWERS.to_json(),
            "arms": {k: v.to_json() for k, v in arms(base).items()},
        },
        "protocol": __doc__,
    }
    data = WORK / ("synthetic_quick" if args.quick else "synthetic")
    if not (data / "manifest.json").exists() and not args.movielens_only:
        generate(synth_cfg, data)
    if args.movielens_only:
        prev = json.loads((RESULTS / "kge_ranker.json").read_text())
        result["synthetic"] = prev["synthetic"]
        result["synthetic_note"] = f"from the run at git {prev.get('git_sha')} (--movielens-only)"
    else:
        split = split_days(Dataset.open(data).days(), 5 if not args.quick else 3, 3 if not args.quick else 2)
        print("synthetic", split, flush=True)
        result["synthetic"] = {"synth_config": dict(synth_cfg.__dict__)}
        ws_name = "ws_quick" if args.quick else "ws_synthetic"
        result["synthetic"].update(run_dataset(data, WORK / ws_name, split, base, kcfg, TOWERS))
        write_result("kge_ranker" + ("_quick" if args.quick else ""), {**result, "complete": False})
    ml_src = ROOT.parent / "shared" / "data" / "movielens_100k"
    if args.quick or args.no_movielens:
        result["movielens_100k"] = {"skipped": "quick run" if args.quick else "--no-movielens"}
    elif not (ml_src / "ml-100k.inter").exists():
        result["movielens_100k"] = {"skipped": f"{ml_src} not available"}
    else:
        from adslog.importers import import_movielens_100k
        from adslog.rebucket import rebucket

        ml = WORK / "movielens_daily"
        if not (ml / "manifest.json").exists():
            import_movielens_100k(ml_src, ml)
        wk = WORK / "movielens_weekly"
        if not (wk / "manifest.json").exists():
            rebucket(ml, wk, 7)
        wd = [d for d in Dataset.open(wk).days() if Dataset.open(wk).partition_files(d)]
        ml_split = split_days(wd, 6, 4)
        print("movielens", ml_split, flush=True)
        result["movielens_100k"] = run_dataset(
            wk,
            WORK / "ws_movielens",
            ml_split,
            replace(base, batch_size=512),
            kcfg,
            replace(TOWERS, batch_size=512, epochs_initial=1),
            ("user", "ad"),
        )
    result["complete"] = True
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(write_result("kge_ranker" + ("_quick" if args.quick else ""), result), flush=True)


if __name__ == "__main__":
    main()
