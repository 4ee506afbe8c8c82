"""`derm eval`: the time-split evaluation of one day with the versions published before it.

Retrieval: for every user who clicked on day d, the top K live ads (by schedule) from the ANN index of the
store version before d, against the ads the user clicked that day; users without an embedding are answered by
serving's cold-start fallback (`retrieval.cold_start`, the default `ServeConfig` knobs) and counted in `n_cold`. Baselines: popularity (most clicks in the 7 days before d among
live ads, ties by ad_id) and, on synthetic data, the oracle (live ads ranked by true p_click at the reference
context) and `relevance_recall_at_k` (overlap of our top K with the oracle's top K).
Counts: `retrieval` and `ranking` (and each `by_surface` entry) say what their figures rest on: `n_users`,
`n_impressions`, `n_clicks`; `warnings` says when a figure means little (`eval.warnings`).
Ranking: the ranker published before d scores every impression of d (real context); ROC-AUC and PR-AUC of its
CTR head, and `oracle_roc_auc` of the logged p_click on the same impressions.

Added in schema 1 without changing any earlier key (all K-keyed maps use the `--k` values):
- retrieval: `ndcg_at_k`, `hit_rate_at_k` and their `popularity_` / `oracle_` / `random_` twins; `random_*` are
  exact expectations for a uniformly random top K of the live ads (recall = |clicked ∩ live| / |clicked| *
  K / n_live per user), not a seeded draw. `recall_curve` {"k", "ours", "popularity", "random", "oracle"} at
  CURVE_KS plus the `--k` values (for plots). `vs_popularity` {K: {"diff", "lo", "hi", "p_value", "n_boot"}}:
  paired-bootstrap 95 % interval of ours - popularity recall@K, resampling users (1000 replicates, seed 0).
  `by_surface` {surface: {"n_users", "recall_at_k", "popularity_recall_at_k"}}: relevant = the ads the user
  clicked on that surface.
- ranking: `log_loss`, `gauc` (impression-weighted mean of per-user ROC-AUC over users with both classes;
  `gauc_detail` holds the weighting, the unweighted mean and the counts), `calibration` (predicted vs observed
  CTR by prediction decile, with ECE), `constant_log_loss` (log loss of always predicting the day's observed
  CTR), `oracle_log_loss`, `oracle_gauc`, and `by_surface` {surface: the same metrics on its impressions};
  `nonpersonal_oracle_roc_auc`: ROC-AUC of the true P(click) with each user's latent interests replaced by the
  day's mean (what a model that learns no per-user taste can reach; synthetic data only).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adslog.sequences import ActivityLog
from adslog.workspace import Workspace, version_name
from dermcore.errors import DermError
from dermcore.progress import Progress, no_progress
from dermfeatures.batches import ImpressionArrays, Inputs
from dermtrain.loop import resolve_device
from embstore.store import embeddings_dir, open_version
from eval.bootstrap import paired_bootstrap
from eval.metrics import (
    by_group,
    calibration,
    gauc,
    hit_rate_at_k,
    log_loss,
    ndcg_at_k,
    overlap_at_k,
    pr_auc,
    random_hit_rate_at_k,
    random_ndcg_at_k,
    random_recall_at_k,
    recall_at_k,
    recall_per_user,
    roc_auc,
)
from eval.warnings import WarningConfig, eval_warnings
from ranking.train import (
    DermLookup,
    RankerSnapshot,
    feature_fn,
    kge_lookup,
    load_ranker,
    ranker_dir,
    score,
)
from retrieval.retrieve import Retriever
from towers.train import models_dir

log = logging.getLogger(__name__)

EVAL_SCHEMA_VERSION = 1
SLATE_USERS = 300  # users sampled for the slate's true value on synthetic data (~3 s on the demo)
#: the oracle's top k scores every clicked user against every live ad (users x ads true p_click): above this many
#: clicked users it runs on a seeded sample of them, so its cost stops growing with users x ads (issue 16). On
#: synthetic_quality's last day (1,991 clicked users, 3,288 live ads) it took 0.6 s of eval's 30 s; the stage
#: that grew was the random baselines' per-user membership test (`eval.metrics._live_share`, now one test).
#: Every committed benchmark has fewer clicked users per day than the cap, so their documents are unchanged
ORACLE_USERS = 20_000
#: retrieval is scored on at most this many of the day's clicked users (a seeded sample, recorded as
#: `retrieval_sample`; all of them below it): each user's serving path scores every live ad with the co-click
#: graph (rank x ads), so users x ads made the stage grow as N^2 with the day's impressions N (issue 16; at 10M
#: impressions a day ~160,000 clicked users against 600,000 ads). Every committed benchmark has fewer clicked
#: users per day than the cap, so their documents are unchanged
RETRIEVAL_USERS = 10_000
#: the ranker's figures are scored on at most this many of the day's impressions (a seeded uniform sample,
#: recorded as `ranking_sample`; all of them below it): scoring is the ranker's forward pass per impression (at
#: 1M impressions ~46 of eval's 78 s on 2 cores), and a 2M-impression sample leaves ROC-AUC's standard error near
#: 0.0005 at a 2 % click rate. Every committed benchmark scores fewer impressions per day, so their documents are
#: unchanged
RANKING_ROWS = 2_000_000
CURVE_KS = (10, 20, 50, 100, 200)
BOOTSTRAP_REPLICATES = 1000
#: eval's folder of a workspace: WORK/evals/day=<D>.json (the `derm eval --json` document of each day)
EVALS = "evals"


def evals_dir(ws: Workspace) -> Path:
    return ws.inside(EVALS)


def eval_path(ws: Workspace, day: int) -> Path:
    """WORK/evals/day=<D>.json: day D's evaluation."""
    return ws.inside(EVALS, f"day={int(day)}.json")


def surface_names(ds: Any) -> dict[int, str]:
    """Surface code -> name when the dataset's column doc lists one name per code (the synthetic log does)."""
    spec = ds.columns["impressions"].get("surface")
    if spec is None:
        return {}
    names = [x.strip() for x in (spec.doc or "").split(",")]
    return dict(enumerate(names)) if spec.cardinality and len(names) == spec.cardinality else {}


def _ranking_metrics(
    p: np.ndarray, y: np.ndarray, users: np.ndarray, oracle: np.ndarray | None
) -> dict[str, Any]:
    g = gauc(p, y, users)
    out: dict[str, Any] = {
        "n_impressions": int(len(p)),
        "n_clicks": int(np.asarray(y).sum()),
        "n_users": int(len(np.unique(users))),
        "roc_auc": roc_auc(p, y),
        "pr_auc": pr_auc(p, y),
        "log_loss": log_loss(p, y),
        "gauc": g["gauc"],
        "predicted_ctr": float(p.mean()) if len(p) else None,
        "observed_ctr": float(y.mean()) if len(y) else None,
    }
    if oracle is not None:
        out["oracle_roc_auc"] = roc_auc(oracle, y)
        out["oracle_log_loss"] = log_loss(oracle, y)
        out["oracle_gauc"] = gauc(oracle, y, users)["gauc"]
    return out


def group_by_user(users: np.ndarray, ads: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(sorted distinct users, each one's sorted distinct ads) of parallel (user, ad) arrays, e.g. the clicks of
    a day: the relevant sets of recall@K."""
    order = np.lexsort((ads, users))
    u, a = users[order], ads[order]
    uniq, start = np.unique(u, return_index=True)
    return uniq, [np.unique(x) for x in np.split(a, start[1:])]


def day_clicks(ds: Any, day: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """`group_by_user` of the day's clicks: (users with a click, the ads each clicked)."""
    t = ds.impressions(day, ["user_id", "ad_id", "click"])
    t = t.filter(pc.equal(t.column("click"), 1))
    return group_by_user(t.column("user_id").to_numpy(), t.column("ad_id").to_numpy())


def oracle_topk(
    data_root: Path, users: np.ndarray, live: np.ndarray, day: int, k: int, chunk: int = 256
) -> np.ndarray | None:
    """Top-k live ads by true p_click at the reference context, int64[n_users, k]; None without an oracle."""
    from adslog.oracle import NoOracleError, Oracle  # synthetic data only

    try:
        oracle = Oracle.load(data_root)
    except NoOracleError:
        return None
    out = np.full((len(users), k), -1, np.int64)
    kk = min(k, len(live))
    for s in range(0, len(users), chunk):
        p = oracle.p_click(users[s : s + chunk, None], live[None, :], day)
        top = np.argpartition(-p, kk - 1, axis=1)[:, :kk]
        ps = np.take_along_axis(p, top, axis=1)
        top = np.take_along_axis(top, np.argsort(-ps, axis=1, kind="stable"), axis=1)
        out[s : s + chunk, :kk] = live[top]
    return out


def oracle_sample(n: int, cap: int, seed: int) -> np.ndarray | None:
    """Sorted positions of a seeded sample of `cap` of n users; None (all of them) when n <= cap (the oracle's
    and the retrieval figures' user samples)."""
    if cap < 1:
        raise ValueError("a user sample's cap (oracle_users, retrieval_users) must be >= 1")
    if n <= cap:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _nonpersonal_oracle(data_root: Path, imp: Any, day: int) -> np.ndarray | None:
    """True P(click) of the logged impressions with each user's latent interests replaced by the day's mean
    (biases, region / age x category, surface, position kept): what a model that learns no per-user taste can
    reach. None without an oracle."""
    from adslog.oracle import NoOracleError, Oracle  # synthetic data only

    try:
        oracle = Oracle.load(data_root)
    except NoOracleError:
        return None
    u, a, s, p = (imp.column(c).to_numpy() for c in ("user_id", "ad_id", "surface", "position"))
    return oracle.p_click_nonpersonal(u, a, day, s, p)


def evaluate_day(
    ws: Workspace,
    day: int | None = None,
    ks: tuple[int, ...] = (20, 100),
    progress: Progress = no_progress,
    device: str = "cpu",
    slate_users: int = SLATE_USERS,
    warn: WarningConfig | None = None,
    oracle_users: int = ORACLE_USERS,
    retrieval_users: int = RETRIEVAL_USERS,
    ranking_rows: int = RANKING_ROWS,
) -> dict[str, Any]:
    """The `derm eval --json` document for `day` (default: the data's last day); the ranker scores on
    `device` (auto | cpu | cuda). On synthetic data (a dataset with an oracle) the document gains `slate`: the
    true expected clicks and revenue per user of each ordering (`eval.slate`) for a seeded sample of
    `slate_users` users shown ads that day (0: skip); its oracle figures (`oracle_*`, `relevance_recall_at_k`)
    rest on at most `oracle_users` clicked users (a seeded sample, recorded as `oracle_sample`); the retrieval
    figures on at most `retrieval_users` (likewise, `retrieval_sample`), the ranker's on at most `ranking_rows`
    impressions (`ranking.ranking_sample`). `warnings` lists what makes a figure
    mean little
    (`eval.warnings`, thresholds from `warn`); `version_days` the day of each version that served the day,
    `period` what one day of the dataset is."""
    if ranking_rows < 1:
        raise ValueError("ranking_rows must be >= 1")
    ds = ws.dataset()
    day = ds.last_day if day is None else ds.check_day(day)
    ks = tuple(sorted(set(ks)))
    curve_ks = tuple(sorted(set(ks) | set(CURVE_KS)))
    kmax = max(curve_ks)
    progress("eval", 0, 3)
    retriever = Retriever(ws, day, ds)
    store = retriever.store
    imp_cols = ["user_id", "ad_id", "click", "ts", "day"] + [
        c
        for c in ("surface", "position", "p_click", "conversion", "conversion_ts")
        if c in ds.columns["impressions"]
    ]
    imp = ds.impressions(day, imp_cols)
    clicked = imp.filter(pc.equal(imp.column("click"), 1))
    users, relevant = group_by_user(clicked.column("user_id").to_numpy(), clicked.column("ad_id").to_numpy())
    r_idx = oracle_sample(len(users), retrieval_users, day + 1)
    n_clicked_users, rclicked = len(users), clicked
    if r_idx is not None:
        users, relevant = users[r_idx], [relevant[i] for i in r_idx]
        rclicked = clicked.filter(pc.is_in(clicked.column("user_id"), pa.array(users)))
    # users without an embedding get serving's fallback (`adserving.two_stage.TwoStage` with the default knobs)
    from adserving.two_stage import ServeConfig

    sc = ServeConfig()
    activity = ActivityLog.from_dataset(ds, day)
    cold = retriever.cold_start(activity, sc.cold_start_categories, sc.peer_features, sc.peer_min_clicks)
    cand = retriever.retrieve(users, kmax, cold_start=cold)
    n_cold = sum(p != "ann" for p in cand.path)
    pop = np.broadcast_to(retriever.popular[:kmax], (len(users), min(kmax, len(retriever.popular))))
    retrieval: dict[str, Any] = {
        "n_users": int(len(users)),
        # the popularity prior the served index version recorded (None: the ANN order), see retrieval.prior
        "prior": retriever.prior.to_json() if retriever.prior is not None else None,
        # the co-click graph blended in (None: none recorded, or gamma 0), see retrieval.graph_filter
        "graph": retriever.graph.to_json() if retriever.graph is not None else None,
        "n_impressions": int(imp.num_rows),
        "n_clicks": int(clicked.num_rows),
        "n_cold": int(n_cold),
        "n_live_ads": int(len(retriever.live)),
        "popularity_window_periods": retriever.popularity_window,
        **(
            {"retrieval_sample": {"n_users": len(users), "of": n_clicked_users, "seed": day + 1}}
            if r_idx is not None
            else {}
        ),
        "recall_at_k": {str(k): recall_at_k(cand.ids, relevant, k) for k in ks},
        "popularity_recall_at_k": {str(k): recall_at_k(pop, relevant, k) for k in ks},
    }
    live = retriever.live
    progress("eval", 1, 3)
    otop, o_rel = None, relevant
    if ds.has_oracle:
        o_idx = oracle_sample(len(users), oracle_users, day)
        o_users, o_cand = (users, cand.ids) if o_idx is None else (users[o_idx], cand.ids[o_idx])
        o_rel = relevant if o_idx is None else [relevant[i] for i in o_idx]
        otop = oracle_topk(ds.root, o_users, retriever.live, day, kmax)
        if otop is not None and o_idx is not None:
            retrieval["oracle_sample"] = {"n_users": int(len(o_idx)), "of": int(len(users)), "seed": int(day)}
    if otop is not None:
        retrieval["oracle_recall_at_k"] = {str(k): recall_at_k(otop, o_rel, k) for k in ks}
        retrieval["relevance_recall_at_k"] = {str(k): overlap_at_k(o_cand, otop, k) for k in ks}
    systems = {"": (cand.ids, relevant), "popularity_": (pop, relevant)}
    if otop is not None:
        systems["oracle_"] = (otop, o_rel)
    for prefix, (top, rel) in systems.items():
        retrieval[f"{prefix}ndcg_at_k"] = {str(k): ndcg_at_k(top, rel, k) for k in ks}
        retrieval[f"{prefix}hit_rate_at_k"] = {str(k): hit_rate_at_k(top, rel, k) for k in ks}
    retrieval["random_recall_at_k"] = {str(k): random_recall_at_k(relevant, live, k) for k in ks}
    retrieval["random_ndcg_at_k"] = {str(k): random_ndcg_at_k(relevant, live, k) for k in ks}
    retrieval["random_hit_rate_at_k"] = {str(k): random_hit_rate_at_k(relevant, live, k) for k in ks}
    curve: dict[str, Any] = {
        "k": list(curve_ks),
        "ours": [recall_at_k(cand.ids, relevant, k) for k in curve_ks],
        "popularity": [recall_at_k(pop, relevant, k) for k in curve_ks],
        "random": [random_recall_at_k(relevant, live, k) for k in curve_ks],
    }
    if otop is not None:
        curve["oracle"] = [recall_at_k(otop, o_rel, k) for k in curve_ks]
    retrieval["recall_curve"] = curve
    retrieval["vs_popularity"] = {}
    for k in ks:
        if len(users) == 0:
            break
        b = paired_bootstrap(
            np.mean,
            recall_per_user(cand.ids, relevant, k),
            recall_per_user(pop, relevant, k),
            n=BOOTSTRAP_REPLICATES,
            seed=0,
        )
        retrieval["vs_popularity"][str(k)] = {x: b[x] for x in ("diff", "lo", "hi", "p_value", "n_boot")}
    names = surface_names(ds)
    if "surface" in rclicked.column_names and len(users):
        by_surface = {}
        surf = rclicked.column("surface").to_numpy()
        for code in np.unique(surf):
            sel = surf == code
            su, srel = group_by_user(
                rclicked.column("user_id").to_numpy()[sel], rclicked.column("ad_id").to_numpy()[sel]
            )
            rows = np.searchsorted(users, su)
            by_surface[names.get(int(code), str(int(code)))] = {
                "n_users": int(len(su)),
                "n_clicks": int(sel.sum()),
                "recall_at_k": {str(k): recall_at_k(cand.ids[rows], srel, k) for k in ks},
                "popularity_recall_at_k": {str(k): recall_at_k(pop[rows], srel, k) for k in ks},
            }
        retrieval["by_surface"] = by_surface
    progress("eval", 2, 3)
    ranking: dict[str, Any] = {}
    versions = dict(cand.versions)
    rday = ws.version_before(ranker_dir(ws), day)
    if rday is not None:
        sample, rimp = None, imp
        if imp.num_rows > ranking_rows:
            sample = {"n_impressions": ranking_rows, "of": imp.num_rows, "seed": day + 2}
            pick = np.random.default_rng(day + 2).choice(imp.num_rows, ranking_rows, replace=False)
            rimp = imp.take(pa.array(np.sort(pick)))
        snap, arrays, p_ctr = ranker_predictions(ws, day, rimp, device, activity)
        versions["ranker"] = snap.version
        y = arrays.click
        oracle_p = rimp.column("p_click").to_numpy() if "p_click" in rimp.column_names else None
        ranking = _ranking_metrics(p_ctr, y, arrays.user_id, oracle_p)
        if sample is not None:
            ranking["ranking_sample"] = sample
        has_context = {"surface", "position"} <= set(rimp.column_names)
        nonpersonal = (
            _nonpersonal_oracle(ws.data_path(), rimp, day) if oracle_p is not None and has_context else None
        )
        if nonpersonal is not None:
            ranking["nonpersonal_oracle_roc_auc"] = roc_auc(nonpersonal, y)
        g = gauc(p_ctr, y, arrays.user_id)
        ranking["gauc_detail"] = {"weighting": "impressions", **{x: g[x] for x in g if x != "gauc"}}
        ranking["calibration"] = calibration(p_ctr, y)
        ranking["constant_log_loss"] = log_loss(np.full(len(y), y.mean()), y) if len(y) else None
        if "surface" in rimp.column_names:
            surf = rimp.column("surface").to_numpy()
            cols = [p_ctr, y, arrays.user_id]
            ranking["by_surface"] = by_group(
                lambda p, yy, u, *o: _ranking_metrics(p, yy, u, o[0] if o else None),
                surf,
                *(cols + ([oracle_p] if oracle_p is not None else [])),
                names=names,
            )
    embeddings: dict[str, Any] = {}
    for task in ("ctr", "cvr"):
        d = ws.version_before(embeddings_dir(ws, task), day)
        if d is None:
            continue
        v = open_version(embeddings_dir(ws, task), d)
        active = {
            "user": np.unique(imp.column("user_id").to_numpy()),
            "ad": np.unique(imp.column("ad_id").to_numpy()),
        }
        embeddings[task] = {
            e: {
                "n_active": int(len(active[e])),
                "stability": v.manifest["stats"][e]["stability"],
                "coverage": float(np.isin(active[e], v.ids(e)).mean()) if len(active[e]) else None,
            }
            for e in ("user", "ad")
        }
    model_dir = models_dir(ws, "ctr")
    mday = ws.version_before(model_dir, day)
    train_days: list[int] = []
    if mday is not None:
        from dermcore.artifact import read_json

        train_days = list(read_json(model_dir / version_name(mday) / "manifest.json").get("days_seen", []))
    slate = _slate(ws, day, imp, device, slate_users) if ds.has_oracle and rday is not None else None
    progress("eval", 3, 3)
    doc: dict[str, Any] = {
        "schema_version": EVAL_SCHEMA_VERSION,
        "day": int(day),
        "embedding_day": None if store is None else store.day,
        "train_days": train_days,
        "versions": versions,
        "retrieval": retrieval,
        "ranking": ranking,
        "embeddings": embeddings,
    }
    if slate is not None:
        doc["slate"] = slate
    doc["period"] = ds.period
    doc["version_days"] = {
        "embeddings": None if store is None else int(store.day),
        "towers": mday,
        "ranker": rday,
    }
    doc["warnings"] = eval_warnings(doc, warn)
    return doc


def ranker_predictions(
    ws: Workspace, day: int, imp: Any, device: str = "cpu", activity: ActivityLog | None = None
) -> tuple[RankerSnapshot, ImpressionArrays, np.ndarray]:
    """The ranker serving `day` (the version before it) on the impressions `imp` of that day (logged context):
    (its snapshot, the impressions' arrays, p_ctr float[n] in `imp`'s row order). `activity`: the day's
    `ActivityLog.from_dataset(ds, day)` when the caller has it (read from the log otherwise)."""
    rday = ws.version_before(ranker_dir(ws), day)
    if rday is None:
        raise DermError(f"{ranker_dir(ws)}: no ranker is published before day {day}")
    snap = load_ranker(Path(ranker_dir(ws)) / version_name(rday), resolve_device(device))
    ds = ws.dataset()
    activity = activity if activity is not None else ActivityLog.from_dataset(ds, day)
    inputs = Inputs(ds, snap.spec, activity, snap.config.seq_len)
    arrays = inputs.arrays(imp)
    features = feature_fn(
        DermLookup(ws, snap.config.derm_inputs, snap.manifest),
        kge_lookup(ws, ds, snap.config, snap.manifest),
        int(snap.manifest["derm_dim"]),
        int(snap.manifest.get("kge_dim", 0)),
        check=arrays,
    )
    p_ctr, _ = score(snap, inputs, arrays, features)  # features looked up per batch
    return snap, arrays, p_ctr


def _slate(ws: Workspace, day: int, imp: Any, device: str, n: int) -> dict[str, Any] | None:
    """`eval.slate.slate_value` for a seeded sample of `n` users shown ads on `day` (None when n is 0)."""
    from adserving.two_stage import TwoStage
    from adslog.oracle import Oracle
    from eval.slate import slate_value

    shown = np.unique(imp.column("user_id").to_numpy()).astype(np.int64)
    if n <= 0 or len(shown) == 0:
        return None
    users = np.sort(np.random.default_rng(day).choice(shown, size=min(n, len(shown)), replace=False))
    ts = TwoStage(ws, day=day, device=resolve_device(device).type)
    out = slate_value(ts, Oracle.load(ws.data_path()), users, n_boot=200)
    return {"sample": f"{len(users)} of the {len(shown)} users shown ads (seed {day})", **out}
