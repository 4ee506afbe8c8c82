"""Does a user's offsite conversion history say something about their conversion propensity for an advertiser
that their onsite clicks do not? Measured with the synthetic generator's oracle (issue 14, item 5).

Rows: every clicked impression of the evaluation days (CVR is P(conversion | click)). For each row's (user,
advertiser), counted strictly before the first evaluation day:

    offsite   offsite conversions of the user on the advertiser's site
    clicks    onsite clicks of the user on the advertiser's ads

Targets. `p_conv` is the oracle's true P(conversion | click) of the row. An "oracle ROC-AUC" of a score is its
expected ROC-AUC when each row is a positive with probability p_conv (a Mann-Whitney statistic with row
weights p_conv as a positive and 1 - p_conv as a negative): the AUC on infinitely many label draws, free of the
noise of the few realised conversions (reported too, as `realised_roc_auc`). A signal without information
scores 0.5.

The conditional question (what offsite says that clicks do not) is answered two ways:
- `within_click_strata`: the oracle AUC of `offsite` counting only pairs of rows with the same `clicks` count;
- the oracle logit decomposition: p_conv's logit is ad_conv_bias + surface term + conv_strength * <user_conv,
  ad_conv> / sqrt(C) (the *conversion-specific* term: which users convert on which advertisers) +
  conv_affinity * <u, ad_factor> / sqrt(D) (the click affinity, which onsite clicks also reveal). The mean of
  each term for rows with and without offsite history says which part offsite carries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc

from adslog.dataset import Dataset
from adslog.oracle import Oracle, roc_auc
from adslog.sequences import AdvertiserMap
from dermcore.errors import DataError


def weighted_auc(
    scores: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray, strata: np.ndarray | None = None
) -> float:
    """Tie-aware ROC-AUC where row i counts as a positive with weight w_pos[i] and as a negative with weight
    w_neg[i]; with `strata`, only pairs of rows in the same stratum are compared."""
    s = np.asarray(scores, np.float64)
    wp, wn = np.asarray(w_pos, np.float64), np.asarray(w_neg, np.float64)
    g = np.zeros(len(s), np.int64) if strata is None else np.asarray(strata, np.int64)
    num = den = 0.0
    for k in np.unique(g):
        m = g == k
        ss, p, n = s[m], wp[m], wn[m]
        order = np.argsort(ss, kind="stable")
        ss, p, n = ss[order], p[order], n[order]
        starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
        pg = np.add.reduceat(p, starts)
        ng = np.add.reduceat(n, starts)
        neg_before = np.cumsum(ng) - ng
        num += float(np.sum(pg * (neg_before + 0.5 * ng)))
        den += float(pg.sum() * ng.sum())
    return num / den if den > 0 else float("nan")


def _pair_counts(u: np.ndarray, v: np.ndarray, qu: np.ndarray, qv: np.ndarray) -> np.ndarray:
    """int64[len(qu)]: how many (u, v) events match each query pair (qu, qv)."""
    if len(u) == 0:
        return np.zeros(len(qu), np.int64)
    key = np.stack([u, v], 1)
    uniq, cnt = np.unique(key, axis=0, return_counts=True)
    order = np.lexsort((uniq[:, 1], uniq[:, 0]))
    uniq, cnt = uniq[order], cnt[order]
    # searchsorted on a combined sortable key (both ids are non-negative int64 below 2^62 in practice)
    lo = np.searchsorted(uniq[:, 0], qu, side="left")
    hi = np.searchsorted(uniq[:, 0], qu, side="right")
    out = np.zeros(len(qu), np.int64)
    for i in np.flatnonzero(hi > lo):
        j = lo[i] + np.searchsorted(uniq[lo[i] : hi[i], 1], qv[i])
        if j < hi[i] and uniq[j, 1] == qv[i]:
            out[i] = cnt[j]
    return out


def offsite_signal(ds: Dataset, first_eval_day: int, last_eval_day: int | None = None) -> dict[str, Any]:
    """The figures described in the module docstring, on clicks of days first_eval_day..last_eval_day
    (default: to the end of the data); history = everything before first_eval_day."""
    if not ds.has_table("offsite_conversions"):
        raise DataError(ds.root / "manifest.json", "dataset has no offsite_conversions table")
    oracle = Oracle.load(ds.root)
    last = ds.last_day if last_eval_day is None else int(last_eval_day)
    ds.check_day(first_eval_day)
    ds.check_day(last)
    if first_eval_day <= ds.first_day:
        raise DataError(ds.root, f"first_eval_day {first_eval_day} leaves no history before it")
    adv_of = AdvertiserMap.from_dataset(ds)
    cutoff = first_eval_day * 86400
    hist = ds.impressions(range(ds.first_day, first_eval_day), ["user_id", "ad_id", "click"])
    hist = hist.filter(pc.equal(hist.column("click"), 1))
    off = ds.table("offsite_conversions", ["user_id", "advertiser_id", "ts"])
    off = off.filter(pc.less(off.column("ts"), cutoff))
    ev = ds.impressions(
        range(first_eval_day, last + 1), ["day", "user_id", "ad_id", "click", "conversion", "surface"]
    )
    ev = ev.filter(pc.equal(ev.column("click"), 1))
    users = ev.column("user_id").to_numpy()
    ads = ev.column("ad_id").to_numpy()
    advs = adv_of(ads)
    days = ev.column("day").to_numpy()
    surface = ev.column("surface").to_numpy().astype(np.int64)
    n_off = _pair_counts(
        off.column("user_id").to_numpy(), off.column("advertiser_id").to_numpy(), users, advs
    ).astype(np.float64)
    n_clk = _pair_counts(
        hist.column("user_id").to_numpy(), adv_of(hist.column("ad_id").to_numpy()), users, advs
    ).astype(np.float64)
    # the oracle, row by row on the row's own day and surface
    t = oracle.truth
    urow, arow = oracle.user_rows(users), oracle.ad_rows(ads)
    p_conv = np.empty(len(users), np.float32)
    spec = np.empty(len(users), np.float32)
    aff = np.empty(len(users), np.float32)
    c = t.user_conv.shape[1]
    for d in np.unique(days):
        m = days == d
        logit = t.conversion_logit(urow[m], arow[m], int(d), surface[m])
        p_conv[m] = 1.0 / (1.0 + np.exp(-logit))
        spec[m] = (
            float(t.params["conv_strength"])
            * np.einsum("nc,nc->n", t.user_conv[urow[m]], t.ad_conv[arow[m]])
            / np.sqrt(c)
        )
        aff[m] = float(t.params["conv_affinity"]) * t.affinity(urow[m], arow[m], int(d))
    p = p_conv.astype(np.float64)
    y = ev.column("conversion").to_numpy()
    strata = np.minimum(n_clk, 5).astype(np.int64)
    has = n_off > 0

    def oracle_auc(score: np.ndarray, by: np.ndarray | None = None) -> float:
        return weighted_auc(score, p, 1 - p, by)

    scores = {
        "oracle_p_conv": p,
        "offsite": n_off,
        "onsite_clicks": n_clk,
        "onsite_clicks_then_offsite": n_clk * 1000
        + n_off,  # lexicographic: clicks first, offsite breaks ties
    }
    out: dict[str, Any] = {
        "n_eval_clicks": int(len(p)),
        "eval_days": [int(first_eval_day), int(last)],
        "n_offsite_before": int(off.num_rows),
        "share_with_offsite_history": float(has.mean()) if len(has) else None,
        "share_with_click_history": float((n_clk > 0).mean()) if len(has) else None,
        "mean_p_conv": float(p.mean()) if len(p) else None,
        "oracle_roc_auc": {k: oracle_auc(v) for k, v in scores.items()},
        "realised_roc_auc": {k: roc_auc(v, y) for k, v in scores.items()},
        "within_click_strata": {
            "offsite_oracle_roc_auc": oracle_auc(n_off, strata),
            "note": "pairs of rows with the same onsite click count (0..4, 5+) only",
        },
        "with_vs_without_offsite": {
            key: {
                "with": float(arr[has].mean()) if has.any() else None,
                "without": float(arr[~has].mean()) if (~has).any() else None,
            }
            for key, arr in (
                ("p_conv", p),
                ("conversion_specific_logit_term", spec.astype(np.float64)),
                ("click_affinity_logit_term", aff.astype(np.float64)),
                ("onsite_clicks", n_clk),
            )
        },
    }
    # the oracle AUC of the conversion-specific term alone: what a perfect 'who converts where' signal is worth
    out["oracle_roc_auc"]["conversion_specific_term"] = oracle_auc(spec.astype(np.float64))
    out["oracle_roc_auc"]["click_affinity_term"] = oracle_auc(aff.astype(np.float64))
    return out


def conversion_terms(
    ds: Dataset, user_id: np.ndarray, ad_id: np.ndarray, day: np.ndarray, surface: np.ndarray
) -> dict[str, np.ndarray]:
    """The oracle's P(conversion | click) of rows (int64 ids, days, surfaces; float64 arrays of n) and what an
    offsite signal could tell of it (the synthetic generator only):

        p_conv             the true P(conversion | click)
        logit_without      its logit less the conversion-specific term conv_strength * <user_conv, ad_conv> /
                           sqrt(C): what is knowable without knowing who converts where
        affinity           a = <user_conv, advertiser_conv> / sqrt(C), the user x advertiser conversion affinity
                           that tilts offsite conversions (`adslog.synth`)
        logit_with_offsite logit_without + conv_strength * AD_CONV_ADVERTISER_SHARE * a: the expected logit given
                           a exactly (the ad's own conversion factor beyond its advertiser's is independent
                           noise): the ceiling of any offsite-derived signal
    """
    from adslog.synth import AD_CONV_ADVERTISER_SHARE

    oracle = Oracle.load(ds.root)
    t = oracle.truth
    urow, arow = oracle.user_rows(user_id), oracle.ad_rows(ad_id)
    vrow = t.ad_advertiser[arow].astype(np.int64)
    c = t.user_conv.shape[1]
    strength = float(t.params["conv_strength"])
    logit = np.empty(len(urow))
    spec = np.empty(len(urow))
    for d in np.unique(day):
        m = day == d
        logit[m] = t.conversion_logit(urow[m], arow[m], int(d), np.asarray(surface)[m].astype(np.int64))
        spec[m] = strength * np.einsum("nc,nc->n", t.user_conv[urow[m]], t.ad_conv[arow[m]]) / np.sqrt(c)
    a = np.einsum("nc,nc->n", t.user_conv[urow], t.advertiser_conv[vrow]) / np.sqrt(c)
    without = logit - spec
    return {
        "p_conv": 1.0 / (1.0 + np.exp(-logit)),
        "logit_without": without,
        "affinity": a.astype(np.float64),
        "logit_with_offsite": without + strength * AD_CONV_ADVERTISER_SHARE * a,
    }
