"""`derm eval`: the time-split evaluation of one day with the versions published before it.

Retrieval: for every user who clicked on day d, the top K live ads (by schedule) from the ANN index of the
store version before d, against the ads the user clicked that day; users without an embedding are answered by
the cold-start path and counted in `n_cold`. Baselines: popularity (most clicks in the 7 days before d among
live ads, ties by ad_id) and, on synthetic data, the oracle (live ads ranked by true p_click at the reference
context) and `relevance_recall_at_k` (overlap of our top K with the oracle's top K).
Ranking: the ranker published before d scores every impression of d (real context); ROC-AUC and PR-AUC of its
CTR head, and `oracle_roc_auc` of the logged p_click on the same impressions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from adslog.errors import DermError
from adslog.progress import Progress, no_progress
from adslog.sequences import ActivityLog
from adslog.workspace import Workspace, version_name
from embstore.store import open_version
from eval.metrics import overlap_at_k, pr_auc, recall_at_k, roc_auc
from ranking.train import DermLookup, load_ranker, score
from retrieval.retrieve import Retriever
from towers.batches import Inputs
from towers.train import resolve_device

log = logging.getLogger(__name__)

EVAL_SCHEMA_VERSION = 1


def _group(users: np.ndarray, ads: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    order = np.lexsort((ads, users))
    u, a = users[order], ads[order]
    uniq, start = np.unique(u, return_index=True)
    return uniq, [np.unique(x) for x in np.split(a, start[1:])]


def oracle_topk(
    data_root: Path, users: np.ndarray, live: np.ndarray, day: int, k: int, chunk: int = 256
) -> np.ndarray | None:
    """Top-k live ads by true p_click at the reference context, int64[n_users, k]; None without an oracle."""
    from adslog.oracle import Oracle  # synthetic data only

    try:
        oracle = Oracle.load(data_root)
    except DermError:
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


def evaluate_day(
    ws: Workspace,
    day: int | None = None,
    ks: tuple[int, ...] = (20, 100),
    progress: Progress = no_progress,
    device: str = "cpu",
) -> dict[str, Any]:
    """The `derm eval --json` document for `day` (default: the data's last day); the ranker scores on
    `device` (auto | cpu | cuda)."""
    ds = ws.dataset()
    day = ds.last_day if day is None else ds.check_day(day)
    ks = tuple(sorted(set(ks)))
    kmax = max(ks)
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
    users, relevant = _group(clicked.column("user_id").to_numpy(), clicked.column("ad_id").to_numpy())
    cand = retriever.retrieve(users, kmax)
    n_cold = sum(p == "cold_start" for p in cand.path)
    pop = np.broadcast_to(retriever.popular[:kmax], (len(users), min(kmax, len(retriever.popular))))
    retrieval: dict[str, Any] = {
        "n_users": int(len(users)),
        "n_cold": int(n_cold),
        "n_live_ads": int(len(retriever.live)),
        "recall_at_k": {str(k): recall_at_k(cand.ids, relevant, k) for k in ks},
        "popularity_recall_at_k": {str(k): recall_at_k(pop, relevant, k) for k in ks},
    }
    progress("eval", 1, 3)
    otop = oracle_topk(ds.root, users, retriever.live, day, kmax) if ds.has_oracle else None
    if otop is not None:
        retrieval["oracle_recall_at_k"] = {str(k): recall_at_k(otop, relevant, k) for k in ks}
        retrieval["relevance_recall_at_k"] = {str(k): overlap_at_k(cand.ids, otop, k) for k in ks}
    progress("eval", 2, 3)
    ranking: dict[str, Any] = {}
    versions = dict(cand.versions)
    rday = ws.version_before(ws.ranker_dir, day)
    if rday is not None:
        snap = load_ranker(Path(ws.ranker_dir) / version_name(rday), resolve_device(device))
        versions["ranker"] = snap.version
        inputs = Inputs(ds, snap.spec, ActivityLog.from_dataset(ds, day), snap.config.seq_len)
        arrays = inputs.arrays(imp)
        derm = DermLookup(ws, snap.config.derm_inputs).features(arrays, int(snap.manifest["derm_dim"]))
        p_ctr, _ = score(snap, inputs, arrays, derm)
        ranking = {
            "n_impressions": int(len(arrays)),
            "roc_auc": roc_auc(p_ctr, arrays.click),
            "pr_auc": pr_auc(p_ctr, arrays.click),
            "predicted_ctr": float(p_ctr.mean()) if len(p_ctr) else None,
            "observed_ctr": float(arrays.click.mean()) if len(arrays) else None,
        }
        if "p_click" in imp.column_names:
            ranking["oracle_roc_auc"] = roc_auc(imp.column("p_click").to_numpy(), arrays.click)
    embeddings: dict[str, Any] = {}
    for task in ("ctr", "cvr"):
        d = ws.version_before(ws.embeddings_dir(task), day)
        if d is None:
            continue
        v = open_version(ws.embeddings_dir(task), d)
        active = {
            "user": np.unique(imp.column("user_id").to_numpy()),
            "ad": np.unique(imp.column("ad_id").to_numpy()),
        }
        embeddings[task] = {
            e: {
                "stability": v.manifest["stats"][e]["stability"],
                "coverage": float(np.isin(active[e], v.ids(e)).mean()) if len(active[e]) else None,
            }
            for e in ("user", "ad")
        }
    model_dir = ws.models_dir("ctr")
    mday = ws.version_before(model_dir, day)
    train_days: list[int] = []
    if mday is not None:
        from adslog.artifact import read_json

        train_days = list(read_json(model_dir / version_name(mday) / "manifest.json").get("days_seen", []))
    progress("eval", 3, 3)
    return {
        "schema_version": EVAL_SCHEMA_VERSION,
        "day": int(day),
        "embedding_day": None if store is None else store.day,
        "train_days": train_days,
        "versions": versions,
        "retrieval": retrieval,
        "ranking": ranking,
        "embeddings": embeddings,
    }
