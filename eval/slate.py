"""The served slate's true value (synthetic data only): what each ordering of the ads would earn, by the truth.

Recall of *logged* clicks rewards guessing what the logging policy exposed, so it cannot say whether the
ranker helps. The synthetic generator knows every (user, ad) pair's true P(click) and P(conversion | click),
so a slate can be scored by what it would truly earn. For every user who was shown ads on `day`, each system's
top k is scored at the reference context (surface 0, position 0: the same for every system, so the figure
compares choices of ads, not placements):

- expected clicks per user: the sum of true p_click over the slate;
- expected revenue per user: the sum of bid x p_click [x p_conversion for conversion-objective ads], in the
  eCPM units of `adserving.auction.ecpm` (1000 x, per thousand impressions).

Systems, on the same users: `retrieval` (the first k of the serving path's candidates, ANN order; cold users
get the cold-start path's order), `two_stage` (the ranker's p_ctr order over the candidates), `served` (the
eCPM order with the advertiser cap, what `derm query` returns), `oracle_candidates` (the candidates ordered by
the truth: the best any ranker could do with them; by true p_click for clicks and by true value for revenue)
and `oracle` (every live ad ordered by the truth). Paired-bootstrap intervals (users resampled) of
two_stage - retrieval and served - retrieval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adserving.auction import CONVERSION_OBJECTIVE, ECPM_SCALE, ecpm, select_top
from adserving.two_stage import TwoStage
from eval.bootstrap import paired_bootstrap

SYSTEMS = ("retrieval", "two_stage", "served", "oracle_candidates", "oracle")


def _top(key: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest keys (descending, ties by position)."""
    order = np.lexsort((np.arange(len(key)), -key))
    return order[:k]


def slate_value(
    ts: TwoStage,
    oracle: Any,
    users: np.ndarray,
    ks: tuple[int, ...] = (10, 50),
    candidates: int = 500,
    cap: int | None = 3,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Expected clicks and revenue per user of each system's top k (see the module docstring).

    Args: `ts` the serving two-stage for the day (`ts.day`); `oracle` an `adslog.oracle.Oracle` of the same
    dataset; `users` int64[n] the users to score (every user shown ads that day, or a sample). Returns
    `{"k<k>": {system: clicks, ..., "fraction_of_oracle": {...}, "two_stage_minus_retrieval_ci": [lo, hi],
    "served_minus_retrieval_ci": [lo, hi], "revenue": {the same for revenue}}, "n_users", "paths"}`.
    """
    day = ts.day
    live = ts.retriever.live
    book = ts.ads
    live_rows = book.rows(live)
    kmax = max(ks)
    per = {m: {k: {s: np.zeros(len(users)) for s in SYSTEMS} for k in ks} for m in ("clicks", "revenue")}
    paths: dict[str, int] = {}
    users = np.asarray(users, np.int64)
    # stage 1 for every user at once (one ANN search and one graph product), as serving batches it
    stage1 = ts.candidates_many(users, candidates)
    for i, u in enumerate(users.tolist()):
        got = stage1[i]
        if isinstance(got, Exception):
            raise got
        ids, _, path = got
        paths[path] = paths.get(path, 0) + 1
        p_ctr, p_cvr = ts.rank(u, ids)
        rows = book.rows(ids)
        adv, bid, obj = book.advertiser[rows], book.bid[rows], book.objective[rows]
        true_click = oracle.p_click(u, ids, day).astype(np.float64)
        true_value = _value(bid, obj, true_click, oracle.p_conversion(u, ids, day))
        all_click = oracle.p_click(u, live, day).astype(np.float64)
        all_value = _value(
            book.bid[live_rows], book.objective[live_rows], all_click, oracle.p_conversion(u, live, day)
        )
        served = select_top(ecpm(bid, p_ctr, p_cvr, obj), ids, adv, kmax, cap)
        order = {
            "retrieval": np.arange(min(kmax, len(ids))),
            "two_stage": _top(p_ctr.astype(np.float64), kmax),
            "served": served,
        }
        for k in ks:
            for s, pos in order.items():
                per["clicks"][k][s][i] = true_click[pos[:k]].sum()
                per["revenue"][k][s][i] = true_value[pos[:k]].sum()
            per["clicks"][k]["oracle_candidates"][i] = true_click[_top(true_click, k)].sum()
            per["revenue"][k]["oracle_candidates"][i] = true_value[_top(true_value, k)].sum()
            per["clicks"][k]["oracle"][i] = np.sort(all_click)[::-1][:k].sum()
            per["revenue"][k]["oracle"][i] = np.sort(all_value)[::-1][:k].sum()
    out: dict[str, Any] = {"n_users": int(len(users)), "paths": paths, "candidates": candidates, "cap": cap}
    for k in ks:
        sections = {}
        for m in ("clicks", "revenue"):
            v = per[m][k]
            sec: dict[str, Any] = {s: float(v[s].mean()) for s in SYSTEMS}
            best = sec["oracle"]
            sec["fraction_of_oracle"] = {s: (sec[s] / best if best > 0 else None) for s in SYSTEMS}
            for a in ("two_stage", "served"):
                b = paired_bootstrap(np.mean, v[a], v["retrieval"], n=n_boot, seed=seed)
                sec[f"{a}_minus_retrieval"] = float(b["diff"])
                sec[f"{a}_minus_retrieval_ci"] = [float(b["lo"]), float(b["hi"])]
            sections[m] = sec
        out[f"k{k}"] = {**sections["clicks"], "revenue": sections["revenue"]}
    return out


def _value(bid: np.ndarray, objective: np.ndarray, p_click: np.ndarray, p_conv: np.ndarray) -> np.ndarray:
    """True expected revenue of each ad, in `adserving.auction.ecpm` units."""
    conv = np.where(objective == CONVERSION_OBJECTIVE, p_conv.astype(np.float64), 1.0)
    return ECPM_SCALE * bid.astype(np.float64) * p_click * conv
