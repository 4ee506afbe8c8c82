"""The ranker's wide part fitted like the regression (`RankerConfig.wide_fit`) on the demo day, beside the one-hot
logistic regression on the same rows (`eval.baselines.logistic_vs_ranker`'s procedure).

Needs the demo workspace benchmarks/work/demo (`python benchmarks/demo.py` or `derm demo`; only the towers'
daily embedding versions are read). `--lr` fits the regression once (L2 chosen on the last day before the eval
day from LR_L2, refit on all 13 days) and keeps its eval-day logits in benchmarks/work/lr_eval.npz. A ranker
arm retrains ONLY the ranker with `train_ranker`'s steps (a 7-day bootstrap with `epochs_initial`, then one
increment per daily day with `epochs_incremental`, point-in-time DERM embeddings, the wide part fitted /
refitted by `ranking.wide.fit_wide_part` when `wide_fit` is "regression") and scores the eval day's
impressions with their logged context. Interval: paired bootstrap of ranker - regression over users (200
replicates, seed 0); a ranker arm with a wide part also reports the wide part alone (its logits plus
intercept) and the paired interval of ranker - wide part alone (what the deep residual adds). The arms before
`RankerConfig.wide_features` ran with the spec's features ("spec"); `onehot*` arms read the regression's
one-hot fields (`dermfeatures.onehot`). `regression:<variant>` arms fit only a wide part's features like the
regression (no deep part, no daily schedule; L2 chosen from WIDE_L2 on the last day before the eval day, refit
on all 13): `all` = the spec's 24 hashed features, `lrfields` = the regression's 9 fields on those keys,
`..._exact` = id tables of 64 buckets per id (almost no collisions); `onehot@B` = the regression's fields
from `Inputs.onehot_keys` hashed into 2^B rows (the ranker's wide part with wide_features "onehot").
Appends JSON lines to benchmarks/work/ranker_wide.jsonl; `--collect` writes benchmarks/results/ranker_wide.json.
Usage: python benchmarks/ranker_wide.py --lr | ARM [ARM ...] | --collect
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from common import ROOT, write_result

from adslog.sequences import ActivityLog
from adslog.workspace import Workspace
from dermfeatures.batches import Inputs
from dermfeatures.spec import build_feature_spec
from eval.baselines import ADS_FIELDS, logistic_regression, read_rows
from eval.bootstrap import paired_bootstrap
from eval.metrics import roc_auc
from ranking import train as rt
from ranking.model import RankerConfig, WidePart
from ranking.train import ranker_spec
from ranking.wide import WIDE_REFIT_ITERS, choose_l2, fit_column, fit_wide_part, wide_keys

WORK = ROOT / "benchmarks" / "work"
LINES = WORK / "ranker_wide.jsonl"
ADAM = RankerConfig(wide_fit="adam", wide_features="spec")  # the ranker before the options
ONEHOT = {"wide_fit": "regression", "wide_features": "onehot"}
ARMS: dict[str, dict[str, Any]] = {
    "adam": {},
    "adam_seed1": {"cfg": {"seed": 1}},
    "no_wide": {"cfg": {"wide_buckets": 0}},
    "adam_wide_alone": {"wide_only": True},  # the deep logits replaced by the output biases
    "regression": {"cfg": {"wide_fit": "regression"}},
    "regression_seed1": {"cfg": {"wide_fit": "regression", "seed": 1}},
    "regression_no_deep": {"cfg": {"wide_fit": "regression"}, "no_deep": True},
    "regression_2_epochs": {"cfg": {"wide_fit": "regression", "epochs_initial": 2}},
    "regression_bucket_factor_8": {"cfg": {"wide_fit": "regression"}, "factor": 8},
    "onehot": {"cfg": ONEHOT},
    "onehot_seed1": {"cfg": {**ONEHOT, "seed": 1}},
}
LR_COLS = [0, 5, 6, 8, 10, 11, 16, 12, 20]  # the regression's fields among the wide part's 24 keys


def _rows(ws: Workspace, spec: Any, cfg: RankerConfig, days: list[int], last: int) -> rt.RankerRows:
    inputs = Inputs(ws.dataset(), spec, ActivityLog.from_dataset(ws.dataset(), last), cfg.seq_len)
    a = inputs.impressions(days, label_cutoff_ts=(last + 1) * 86400)
    return rt.RankerRows(inputs, a, rt.DermLookup(ws, cfg.derm_inputs).features(a, 64))


def _eval_rows(ws: Workspace, spec: Any, cfg: RankerConfig, day: int) -> rt.RankerRows:
    cols = ["user_id", "ad_id", "click", "ts", "day", "surface", "position"]
    inputs = Inputs(ws.dataset(), spec, ActivityLog.from_dataset(ws.dataset(), day), cfg.seq_len)
    a = inputs.arrays(ws.dataset().impressions(day, cols))
    return rt.RankerRows(inputs, a, rt.DermLookup(ws, cfg.derm_inputs).features(a, 64))


def _wide_only(self: Any, b: dict[str, torch.Tensor]) -> torch.Tensor:
    return self.wide(b) + torch.stack([layer.bias[0] for layer in self.output_layers()])


def _compare(name: str, p: np.ndarray, y: np.ndarray, users: np.ndarray, lr: Any) -> dict[str, Any]:
    ci = paired_bootstrap(roc_auc, p, lr["logit"], y, groups=users, n=200, seed=0)
    return {
        "arm": name,
        "ranker_auc": roc_auc(p, y),
        "lr_auc": roc_auc(lr["logit"], y),
        "diff": ci["diff"],
        "ci": [ci["lo"], ci["hi"]],
    }


def ranker_arm(ws: Workspace, name: str, lr: Any) -> dict[str, Any]:
    import types

    arm = ARMS[name]
    cfg = replace(ADAM, **arm.get("cfg", {}))
    ds = ws.dataset()
    days = ds.days()
    boot, daily, ev = days[:7], days[7:-1], days[-1]
    t0 = time.time()
    spec = ranker_spec(ds, boot, cfg, arm.get("factor", 2))
    snap = rt.new_snapshot(spec, cfg, 64, torch.device("cpu"))
    if arm.get("wide_only"):
        snap.ranker.forward = types.MethodType(_wide_only, snap.ranker)  # type: ignore[method-assign]
    rows = _rows(ws, spec, cfg, boot, boot[-1])
    clicked = rows.arrays.click > 0
    snap.ranker.init_output_bias(
        float(rows.arrays.click.mean()), float(rows.arrays.conversion[clicked].mean())
    )
    out: dict[str, Any] = {}
    prior = None
    if cfg.wide_fit == "regression":
        rec = fit_wide_part(snap.ranker, rows.inputs, boot, (boot[-1] + 1) * 86400)
        prior, out["wide_fit"] = tuple(rec["prior"]), rec
    deep = not arm.get("no_deep")
    if deep:
        rt.fit(snap, rows, None, cfg.epochs_initial, torch.device("cpu"), seed=cfg.seed + boot[-1])
    seen = list(boot)
    for d in daily:
        seen.append(d)
        if prior is not None:
            fit_wide_part(snap.ranker, rows.inputs, seen, (d + 1) * 86400, prior, True, WIDE_REFIT_ITERS)
        if deep:
            rt.fit(
                snap,
                _rows(ws, spec, cfg, [d], d),
                None,
                cfg.epochs_incremental,
                torch.device("cpu"),
                seed=cfg.seed + d,
            )
    er = _eval_rows(ws, spec, cfg, ev)
    y = er.arrays.click
    assert np.array_equal(er.arrays.ad_id, lr["ad_id"]) and np.array_equal(y, lr["click"])
    p = rt.predict(snap.ranker, er)[:, 0]
    np.save(WORK / f"ranker_wide_pred_{name}.npy", p)
    res = _compare(name, p, y, er.arrays.user_id, lr)
    if snap.ranker.wide is not None:
        with torch.no_grad():
            wl = np.concatenate(
                [
                    snap.ranker.wide(er.batch(np.arange(s, min(s + 16384, len(y)))))[:, 0].numpy()
                    for s in range(0, len(y), 16384)
                ]
            )
        res["wide_part_alone_auc"] = roc_auc(wl, y)
        ci = paired_bootstrap(roc_auc, p, wl, y, groups=er.arrays.user_id, n=200, seed=0)
        res["ranker_minus_wide_part"], res["ranker_minus_wide_part_ci"] = ci["diff"], [ci["lo"], ci["hi"]]
        np.save(WORK / f"ranker_wide_widelogit_{name}.npy", wl)
    return {**res, **out, "config": cfg.to_json(), "seconds": round(time.time() - t0, 1)}


def regression_arm(ws: Workspace, variant: str, lr: Any) -> dict[str, Any]:
    ds = ws.dataset()
    days = ds.days()
    before, ev = days[:-1], days[-1]
    t0 = time.time()
    onehot = variant.startswith("onehot@")
    if onehot:
        cfg = RankerConfig(wide_buckets=1 << int(variant.split("@")[1]), **ONEHOT)
        spec = ranker_spec(ds, days[:7], cfg)
    else:
        cfg = RankerConfig(wide_buckets=1 << 18, wide_features="spec")
        spec = build_feature_spec(ds, days[:7], 1 << 17, 64 if variant.endswith("exact") else 2)
    wide = WidePart(spec, cfg.wide_buckets, 2, onehot=onehot)
    inputs = Inputs(ds, spec, ActivityLog.from_dataset(ds, days[0]), 1)
    a = inputs.impressions(before)
    k = wide_keys(inputs, a, wide.keys)
    ae = inputs.arrays(ds.impressions(ev, ["user_id", "ad_id", "click", "ts", "day", "surface", "position"]))
    ke = wide_keys(inputs, ae, wide.keys)
    if variant.startswith("lrfields"):
        k, ke = k[:, LR_COLS], ke[:, LR_COLS]
    tr, va = a.day < before[-1], a.day == before[-1]
    chosen, by_l2 = choose_l2(
        k[torch.from_numpy(tr)], a.click[tr], k[torch.from_numpy(va)], a.click[va], wide.buckets
    )
    col = fit_column(k, a.click, chosen.l2, wide.buckets, chosen.weight, chosen.bias)
    s = col.weight[ke].sum(1).numpy() + col.bias
    res = _compare(f"regression:{variant}", s, ae.click, ae.user_id, lr)
    # collisions: distinct training features (field, key) against the distinct rows they land in
    if onehot:
        raw = inputs.onehot_keys(a)
        res["features"] = sum(len(np.unique(raw[:, j])) for j in range(raw.shape[1]))
    res["buckets_touched"] = len(torch.unique(k))
    return {**res, "l2": chosen.l2, "validation_roc_auc_by_l2": by_l2, "seconds": round(time.time() - t0, 1)}


def fit_lr(ws: Workspace) -> None:
    ds = ws.dataset()
    days = ds.days()
    before = days[:-1]
    fit = logistic_regression(read_rows(ds, before[:-1], ADS_FIELDS), read_rows(ds, before[-1:], ADS_FIELDS))
    test = read_rows(ds, [days[-1]], ADS_FIELDS)
    np.savez(
        WORK / "lr_eval.npz",
        logit=fit.model.logits(test),
        click=test["click"],
        ad_id=test["ad_id"],
        user_id=test["user_id"],
        fit=json.dumps(fit.to_json()),
    )


def collect() -> None:
    """benchmarks/results/ranker_wide.json from this run's lines; the arms of the committed file not rerun are
    kept under `earlier_arms` (measured by earlier runs on the same workspace recipe, against the same
    regression logits: lr_auc 0.7244 in every line)."""
    lines = [json.loads(x) for x in LINES.read_text().splitlines() if x.strip()]
    arms = {x["arm"]: x for x in lines}
    path = ROOT / "benchmarks" / "results" / "ranker_wide.json"
    prev = json.loads(path.read_text()) if path.exists() else {}
    earlier = {k: v for k, v in (prev.get("earlier_arms") or prev.get("arms") or {}).items() if k not in arms}
    earlier_notes = prev.get("earlier_notes") if "earlier_arms" in prev else prev.get("notes")
    earlier_git = prev.get("earlier_git_sha") if "earlier_arms" in prev else prev.get("git_sha")
    result = {
        "command": "python benchmarks/ranker_wide.py --lr; python benchmarks/ranker_wide.py ARM ...; "
        "python benchmarks/ranker_wide.py --collect",
        "workspace": "benchmarks/work/demo (derm demo: 7-day bootstrap, daily days 20007..20012, eval day 20013)",
        "arms": arms,
        "earlier_arms": earlier,
        "earlier_notes": earlier_notes or [],
        "earlier_git_sha": earlier_git,
        "notes": [
            "arms: this run (RankerConfig.wide_features; onehot = the regression's one-hot fields in the wide "
            "part, the default); earlier_arms: earlier runs of this script with the spec's features "
            "(wide_features = spec), against the same regression logits",
            "This run: the demo workspace rebuilt by `derm demo --work benchmarks/work/demo` (only its towers' "
            "embedding versions are read); --lr reproduced the regression's eval-day ROC-AUC of the earlier runs "
            "(0.72436, L2 3e-6); arms one at a time, 1 torch thread, on a machine shared with other sessions "
            "(load 5-6 on 2 cores): seconds are not timings of the method.",
            "regression:onehot@B: the regression's fields (Inputs.onehot_keys) hashed into 2^B rows, fitted alone "
            "on the 12 days before day 20012 for each L2 of WIDE_L2, the best on day 20012 refitted on all 13; "
            "features / buckets_touched count the distinct training features and the rows they land in.",
        ],
    }
    print(write_result("ranker_wide", result))


def main() -> None:
    torch.set_num_threads(1)
    ws = Workspace.open(WORK / "demo")
    if sys.argv[1:] == ["--lr"]:
        return fit_lr(ws)
    if sys.argv[1:] == ["--collect"]:
        return collect()
    lr = np.load(WORK / "lr_eval.npz")
    for name in sys.argv[1:]:
        if name.startswith("regression:"):
            res = regression_arm(ws, name.split(":", 1)[1], lr)
        else:
            res = ranker_arm(ws, name, lr)
        print(json.dumps(res, default=str), flush=True)
        with LINES.open("a") as f:
            f.write(json.dumps(res, default=str) + "\n")


if __name__ == "__main__":
    main()
