"""The workspace's index versions: build or refresh `WORK/index/day=<D>` from store version D, move LATEST.

One function serves `derm index build` (mode rebuild), `derm index refresh` and the daily cycle (mode
auto), all through `workflow.cycle.publish_index` (which adds the self-check gate and the retrieval prior): the index over the ctr model's pooled ad embeddings of store version D, its parent the newest index
version before D (rollback aware), its self-check queries a seeded sample of that version's user embeddings.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from adslog.workspace import Workspace, version_name
from dermcore.artifact import read_json, set_latest
from dermcore.errors import DermError
from embstore.store import StoreVersion, embeddings_dir, open_version
from index.artifact import load_index_artifact
from index.refresh import RefreshConfig, refresh_index_artifact
from index.tune import TunePoint, tune
from index.types import IndexConfig, SearchParams

log = logging.getLogger(__name__)

TASK = "ctr"  # the ad index serves the ctr model's embeddings
#: the index's folder of a workspace: WORK/index/day=<D>/ (index versions; LATEST)
INDEX = "index"


def index_dir(ws: Workspace) -> Path:
    """WORK/index: the ANN index versions over the ctr store's pooled ad embeddings."""
    return ws.inside(INDEX)


def self_check_sample(store: StoreVersion, n: int, seed: int) -> np.ndarray | None:
    """float32[min(n, users), dim]: a seeded sample of the version's user embeddings (None: no users)."""
    users = store.vectors("user")
    if len(users) == 0 or n <= 0:
        return None
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(users[np.sort(rng.choice(len(users), min(n, len(users)), replace=False))])


def publish_workspace_index(
    ws: Workspace,
    day: int,
    config: IndexConfig,
    refresh: RefreshConfig | None = None,
    params: SearchParams | None = None,
    self_check_queries: int = 1000,
    k: int = 100,
    overwrite: bool = False,
    min_recall: float | None = None,
    retrieval_prior: dict[str, Any] | None = None,
    popularity_window: int | None = None,
    retrieval_graph: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish index version `day` over store version `day`, from the previous index version; move LATEST.
    A self-check recall under `min_recall` raises QualityGateError and nothing is published.
    `retrieval_prior` (a `retrieval.prior.PriorFit.to_json()` record) is recorded as `upstream.retrieval_prior`:
    the popularity prior the retrievers serving this version apply; `popularity_window` as
    `upstream.popularity_window`: the days of clicks behind their popularity list and cold-start fallback;
    `retrieval_graph` (a `retrieval.graph_filter.GraphFit.to_json()` record) as `upstream.retrieval_graph`.

    An already published version is returned as is unless `overwrite`. `params` become the version's
    query-time defaults (None: the previous version's). Returns the manifest.
    """
    target = index_dir(ws) / version_name(day)
    if (target / "manifest.json").exists() and not overwrite:
        m: dict[str, Any] = read_json(target / "manifest.json")
        return m
    store = open_version(embeddings_dir(ws, TASK), day)
    ids, vecs = store.ids("ad"), store.vectors("ad")
    if len(ids) == 0:
        raise DermError(f"{store.dir}: the store version holds no ad embeddings to index")
    prev_day = ws.version_before(index_dir(ws), day)
    previous = index_dir(ws) / version_name(prev_day) if prev_day is not None else None
    m = refresh_index_artifact(
        previous,
        target,
        ids,
        vecs,
        config,
        upstream={
            "embedding_version": store.manifest["artifact_id"],
            "lineage": store.lineage,
            "day": day,
            **({"retrieval_prior": retrieval_prior} if retrieval_prior is not None else {}),
            **({"popularity_window": int(popularity_window)} if popularity_window is not None else {}),
            **({"retrieval_graph": retrieval_graph} if retrieval_graph is not None else {}),
        },
        refresh=refresh,
        self_check_queries=self_check_sample(store, self_check_queries, seed=day),
        k=min(k, len(ids)),
        params=params,
        overwrite=overwrite,
        min_recall=min_recall,
    )
    set_latest(index_dir(ws), target.name)
    r = m.get("refresh") or {}
    log.info("index day=%d: %s (%s)", day, r.get("mode"), r.get("reason"))
    return m


def tune_workspace_index(
    ws: Workspace,
    day: int | None = None,
    k: int = 100,
    n_queries: int = 1000,
    values: list[int] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Sweep the knob of index version `day` (default: LATEST) on its store version's user embeddings.

    Ground truth is exact search over the store version's ad vectors. Returns {"index", "spec", "knob",
    "default", "k", "n_queries", "points": [{knob, value, recall_at_k, qps, seconds}]}.
    """
    if day is None:
        day = ws.latest_day(index_dir(ws))
        if day is None:
            raise DermError(f"{index_dir(ws)}: no index version: run `derm index build` first")
    directory = index_dir(ws) / version_name(day)
    index, m = load_index_artifact(directory, device=device)
    store = _store_of(ws, m)
    queries = self_check_sample(store, n_queries, seed=10_000 + day)  # not the self-check's own sample
    if queries is None:
        raise DermError(f"{store.dir}: the store version holds no user embeddings to tune with")
    ids, vecs = store.ids("ad"), store.vectors("ad")
    points: list[TunePoint] = tune(index, queries, min(k, len(ids)), values, ad_ids=ids, ad_vecs=vecs)
    knob = points[0].knob
    return {
        "index": str(directory),
        "backend": m["backend"],
        "spec": m["spec"],
        "knob": knob,
        "default": None if knob is None else dataclasses.asdict(index.default_params())[knob],
        "k": min(k, len(ids)),
        "n_queries": int(queries.shape[0]),
        "points": [p.to_json() for p in points],
    }


def _store_of(ws: Workspace, manifest: dict[str, Any]) -> StoreVersion:
    """The store version an index was built from (checked by artifact id, so a mismatch is an error)."""
    up = manifest.get("upstream") or {}
    day = up.get("day")
    if not isinstance(day, int):
        raise DermError("index manifest does not name the store day it was built from")
    store = open_version(embeddings_dir(ws, TASK), day)
    if store.manifest["artifact_id"] != up.get("embedding_version"):
        raise DermError(
            f"{store.dir}: store version {store.manifest['artifact_id']!r} is not the one the index was built "
            f"from ({up.get('embedding_version')!r})"
        )
    return store


def index_path(ws: Workspace, day: int) -> Path:
    return index_dir(ws) / version_name(day)
