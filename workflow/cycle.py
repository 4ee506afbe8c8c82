"""The daily cycle and the bootstrap that precedes it.

bootstrap(train days W = [a..b]):
    towers trained from scratch on W -> models/<task>/day=b
    back inference with that snapshot for each day of W -> embeddings/<task>/day=a..b (marked back_inferred;
        allowed because these days only train downstream models, never evaluate them)
    index over the pooled ads of store version b -> index/day=b
    with `kge.enabled`: graph, KGE and KGE store versions for each day of W (from scratch on the first)
    ranker trained on W (day d's rows read the store version before d) -> ranker/day=b; a ranker with
        `kge_finetune` trains on the days of W that have a KGE version before them (W minus its first day)

run_day(d), in order:
    1. evaluate d with the versions published before d -> evals/day=d.json
    2. towers: one increment on d from the snapshot before d -> models/<task>/day=d
    3. inference for d's active users and ads (+ launch embeddings of ads going live on d+1), aggregated into
       the pool -> embeddings/<task>/day=d
    4. index over the new pool -> index/day=d
    5. with `kge.enabled`: graph version d (events before the end of d) -> graph/day=d, one KGE increment
       (from scratch the first time) -> kge/<model>/day=d, and its store family -> embeddings/kge-<model>/day=d
       (`adgraph.family`; the same store gates), which serves d + 1
    6. ranker: one increment on d (embeddings of the version before d) -> ranker/day=d
    7. with `feature_store` set: the store version the workspace now serves is published to the online
       feature store (`adserving.versions.publish_workspace`, the `derm publish` path; a no-op when it is live)

Quality gates: a store version with NaN / non-unit vectors or a coverage drop over `gates.max_coverage_drop`
is never written; neither is an index whose self-check recall is under `min_index_recall`.
Either way the run fails with QualityGateError and readers keep serving yesterday's store and index
(`Workspace.serving_version` picks the newest day live in both).

Every stage first checks whether its version is already published and skips it, so a run killed at any point
(even SIGKILL) resumes where it stopped and recomputes no published artifact; `overwrite` recomputes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from adgraph.family import KGECycleConfig
from adslog.dataset import Dataset
from adslog.sequences import ActivityLog
from adslog.workspace import Workspace, version_name
from dermcore.artifact import read_json, write_json_atomic
from dermcore.errors import ConfigError, DataError, DermError
from dermcore.progress import Progress, no_progress
from dermdist.config import Engine, RayInferenceConfig, RayTrainConfig
from embstore.aggregate import AggregationConfig, Heuristic
from embstore.store import StoreGates, StoreVersion, embeddings_dir, open_version, publish_day
from eval.evaluate import SLATE_USERS, day_clicks, eval_path, evaluate_day, oracle_sample
from eval.warnings import WarningConfig
from index import Backend, IndexConfig, SearchParams
from index.refresh import RefreshConfig
from index.versions import index_dir
from ranking.model import RankerConfig
from ranking.train import ranker_dir, train_ranker
from retrieval.graph_filter import GraphConfig
from retrieval.prior import POPULARITY_DAYS
from retrieval.retrieve import Retriever
from towers.config import Task, TowerConfig
from towers.export import Towers, load_towers
from towers.infer import DailyEmbeddings, embed_day
from towers.train import models_dir, train_towers
from workflow.lineage import check_cycle_lineage

log = logging.getLogger(__name__)

CYCLE_FILE = "cycle.json"
#: the retrieval prior's beta and the graph's gamma are fitted on at most this many of the validation day's
#: clicked users (a seeded sample, recorded in each fit's `n_users`): the fits score every live ad per user
#: (the graph: rank x ads), so users x ads grew the index stage as N^2 with the day's impressions N (issue 16).
#: Below the cap (every committed benchmark's days) the fits are unchanged
RERANK_FIT_USERS = 10_000

# (dataset, snapshot, day, known ad ids int64 | None, activity log | None) -> the day's embeddings
Embedder = Callable[[Dataset, Towers, int, "np.ndarray | None", "ActivityLog | None"], DailyEmbeddings]


@dataclass(frozen=True)
class CycleConfig:
    """Everything the daily cycle needs, written to WORK/cycle.json at bootstrap and reused every day."""

    tasks: tuple[str, ...] = ("ctr",)
    towers: TowerConfig = field(default_factory=TowerConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    # Users: the paper's moving average (w = 0.8) smooths noisy daily behaviour. Ads: the latest embedding
    # (acc). The Pin tower sees static features only, so an ad's daily vector changes only when the model
    # does; averaging it across model versions just lags the current user tower's space (measured: recall@100
    # 0.547 with ma vs 0.603 with acc for ads on the demo's last day, popularity 0.593).
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    ad_aggregation: AggregationConfig = field(default_factory=lambda: AggregationConfig(Heuristic.ACC))
    index: IndexConfig = field(default_factory=IndexConfig)
    self_check_queries: int = 1000
    self_check_k: int = 100
    # quality gates: a day whose store would lose more coverage than this, or whose index self-check recall is
    # below the threshold, is not published and yesterday's versions stay live
    gates: StoreGates = field(default_factory=StoreGates)
    min_index_recall: float = 0.9
    store_float16: bool = False
    # fit the retrieval popularity prior (`retrieval.prior`) each day on the evaluated day's clicks (beta and
    # window chosen by recall@self_check_k over `prior_windows`; beta 0, the ANN order, is on the grid) and
    # record it in that day's index version, which serves the next day
    retrieval_prior: bool = True
    prior_windows: tuple[int, ...] = (1, 3, 7)
    # fit the co-click graph's weight (`retrieval.graph_filter`, gamma; 0, no graph, is on the grid) the same
    # way, over `graph_window` days of clicks, and record it beside the prior
    retrieval_graph: bool = True
    graph_window: int = 28
    # days (periods) of clicks behind the popularity list, the cold-start fallback and eval's popularity
    # baseline; recorded in each index version so every reader of that version uses the same window
    popularity_window: int = POPULARITY_DAYS
    device: str = "auto"
    # online feature store URL (redis://HOST:PORT/DB[?prefix=NAME]) the cycle publishes to as its last step;
    # None: no online store. Stored in cycle.json: name a server without a password in the URL.
    feature_store: str | None = None
    # where the day's inference runs: local (this process) | ray (Ray Data over `ray_actors` actors; the
    # `dist` extra). `ray_address` is the cluster to join, a property of this run like `device`: never saved
    # in cycle.json (None: RAY_ADDRESS or a new local instance).
    engine: Engine = Engine.LOCAL
    ray_actors: int | None = None
    ray_address: str | None = None
    # the onsite-offsite graph, KGE model and KGE store family of each day (`adgraph.family.KGECycleConfig`);
    # off by default. A ranker reads the family with `ranker.kge_family`
    kge: KGECycleConfig = field(default_factory=KGECycleConfig)
    # with the ray engine, train the towers and the ranker on this many data-parallel Ray Train workers (torch
    # DDP, `dermdist.train`); None: train in the driver process. Ignored by the local engine.
    train_workers: int | None = None
    # users sampled for each evaluation's true slate value (`eval.slate`, synthetic data only; 0: none): every
    # evaluation of the workspace (the cycle's, `derm eval`, the demo's and the run's last one) uses it, so
    # they write the same document
    slate_users: int = SLATE_USERS

    def __post_init__(self) -> None:
        object.__setattr__(self, "engine", Engine.parse(self.engine))
        n = self.slate_users
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"slate_users must be an integer >= 0, got {n!r}")
        if self.ranker.kge_family is not None and not (
            self.kge.enabled and self.ranker.kge_family == self.kge.family
        ):
            raise ConfigError(
                f"ranker.kge_family {self.ranker.kge_family!r} needs kge.enabled with that model "
                f"(kge.model.model = {self.ranker.kge_family.removeprefix('kge-')!r})"
            )
        RayInferenceConfig(self.ray_address, self.ray_actors)  # validates (ConfigError)
        if self.train_workers is not None:
            RayTrainConfig(self.train_workers)  # validates (ConfigError)
        if not 0.0 <= self.min_index_recall <= 1.0:
            raise ConfigError("min_index_recall must be in [0, 1]")
        if self.feature_store is not None:
            from embstore.online import OnlineStoreConfig

            OnlineStoreConfig(self.feature_store)  # validates the URL (ConfigError)
        if "ctr" not in self.tasks:
            raise ConfigError("the ctr upstream model is required (it feeds the ad index)")
        for t in self.tasks:
            Task(t)
        object.__setattr__(self, "prior_windows", tuple(self.prior_windows))
        if isinstance(self.popularity_window, bool) or not isinstance(self.popularity_window, int):
            raise ConfigError(f"popularity_window must be an integer >= 1, got {self.popularity_window!r}")
        if self.popularity_window < 1:
            raise ConfigError(f"popularity_window must be an integer >= 1, got {self.popularity_window!r}")
        if (
            isinstance(self.graph_window, bool)
            or not isinstance(self.graph_window, int)
            or self.graph_window < 1
        ):
            raise ConfigError(f"graph_window must be an integer >= 1 (days), got {self.graph_window!r}")
        if not self.prior_windows or any(not isinstance(w, int) or w < 1 for w in self.prior_windows):
            raise ConfigError("prior_windows must be one or more integers >= 1 (days)")

    def to_json(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks),
            "towers": self.towers.to_json(),
            "ranker": self.ranker.to_json(),
            "aggregation": _agg_json(self.aggregation),
            "ad_aggregation": _agg_json(self.ad_aggregation),
            "index": {
                "backend": self.index.backend.value,
                "spec": self.index.spec,
                "metric": self.index.metric,
                "seed": self.index.seed,
            },
            "self_check_queries": self.self_check_queries,
            "self_check_k": self.self_check_k,
            "max_coverage_drop": self.gates.max_coverage_drop,
            "min_index_recall": self.min_index_recall,
            "store_float16": self.store_float16,
            "retrieval_prior": self.retrieval_prior,
            "prior_windows": list(self.prior_windows),
            "retrieval_graph": self.retrieval_graph,
            "graph_window": self.graph_window,
            "popularity_window": self.popularity_window,
            "feature_store": self.feature_store,
            "engine": self.engine.value,
            "ray_actors": self.ray_actors,
            "kge": self.kge.to_json(),
            "train_workers": self.train_workers,
            "slate_users": self.slate_users,
        }

    @classmethod
    def from_json(
        cls, d: dict[str, Any], device: str = "auto", ray_address: str | None = None
    ) -> CycleConfig:
        towers = TowerConfig.from_json(d["towers"])
        return cls(
            tasks=tuple(d["tasks"]),
            towers=towers,
            ranker=RankerConfig.from_json(d["ranker"]),
            aggregation=_agg_from(d["aggregation"]),
            ad_aggregation=_agg_from(d["ad_aggregation"]),
            index=IndexConfig(
                backend=Backend(d["index"]["backend"]),
                spec=d["index"]["spec"],
                dim=towers.dim,
                metric=d["index"]["metric"],
                seed=int(d["index"].get("seed", 0)),
            ),
            self_check_queries=int(d["self_check_queries"]),
            self_check_k=int(d["self_check_k"]),
            gates=StoreGates(float(d.get("max_coverage_drop", StoreGates.max_coverage_drop))),
            min_index_recall=float(d.get("min_index_recall", cls.min_index_recall)),
            store_float16=bool(d.get("store_float16", False)),
            # workspaces written before the option served the ANN order
            retrieval_prior=bool(d.get("retrieval_prior", False)),
            prior_windows=tuple(d.get("prior_windows", cls.prior_windows)),
            # workspaces written before the option served without the graph
            retrieval_graph=bool(d.get("retrieval_graph", False)),
            graph_window=int(d.get("graph_window", cls.graph_window)),
            popularity_window=d.get("popularity_window", POPULARITY_DAYS),
            device=device,
            feature_store=d.get("feature_store"),
            # workspaces written before the option ran in one process
            engine=Engine.parse(d.get("engine", Engine.LOCAL.value)),
            ray_actors=d.get("ray_actors"),
            ray_address=ray_address,
            # workspaces written before the option had no KGE stage
            kge=KGECycleConfig.from_json(d["kge"]) if "kge" in d else KGECycleConfig(),
            train_workers=d.get("train_workers"),
            # workspaces written before the option sampled the default
            slate_users=d.get("slate_users", SLATE_USERS),
        )


def _agg_json(a: AggregationConfig) -> dict[str, Any]:
    return {"heuristic": a.heuristic.value, "weight": a.weight, "ttl_days": a.ttl_days}


def _agg_from(d: dict[str, Any]) -> AggregationConfig:
    return AggregationConfig(Heuristic(d["heuristic"]), float(d["weight"]), int(d["ttl_days"]))


def save_cycle_config(ws: Workspace, cfg: CycleConfig) -> None:
    write_json_atomic(ws.inside(CYCLE_FILE), cfg.to_json())


def set_cycle_config(ws: Workspace, assignments: Mapping[str, str], device: str = "auto") -> CycleConfig:
    """Set dotted keys of WORK/cycle.json (`index.spec` = "HNSW32,Flat", `ranker.lr` = "0.001"): each value is
    read as JSON (numbers, true / false, null, lists), else taken as a string. The whole config is validated
    before anything is written (ConfigError naming the key; nothing written), then saved atomically under the
    workspace lock: the one explicit way to change what later cycles do (`derm config set`)."""
    cur = load_cycle_config(ws, device).to_json()
    for key, raw in assignments.items():
        parts = key.split(".")
        node: Any = cur
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node or isinstance(node[parts[-1]], dict):
            known = ", ".join(_leaf_keys(cur))
            raise ConfigError(f"unknown cycle config key {key!r} (known: {known})")
        try:
            node[parts[-1]] = json.loads(raw)
        except json.JSONDecodeError:
            node[parts[-1]] = raw
    try:
        cfg = CycleConfig.from_json(cur, device)
    except (KeyError, TypeError, ValueError) as e:
        keys = ", ".join(assignments)
        raise ConfigError(f"invalid value for {keys}: {str(e).splitlines()[0]}") from None
    with ws.lock():
        save_cycle_config(ws, cfg)
    return cfg


def _leaf_keys(d: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in d.items():
        out += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


def load_cycle_config(ws: Workspace, device: str = "auto") -> CycleConfig:
    p = ws.root / CYCLE_FILE
    if not p.exists():
        raise DataError(
            p, "workspace has no cycle config: run `derm run --data DATA --work WORK` (or `derm train`) first"
        )
    try:
        return CycleConfig.from_json(read_json(p), device)
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(p, f"invalid cycle config ({e})") from None


class Timer:
    """Seconds per stage, summed over calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def stage(self, name: str) -> Callable[[], None]:
        t0 = time.perf_counter()

        def done() -> None:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)

        return done


def task_config(cfg: CycleConfig, task: str) -> TowerConfig:
    """The tower config of `task`: the cycle's, with seed + 1 for cvr (the two models never share a seed)."""
    from dataclasses import replace

    return replace(cfg.towers, task=Task(task), seed=cfg.towers.seed + (0 if task == "ctr" else 1))


def publish_embeddings(
    ws: Workspace,
    ds: Dataset,
    task: str,
    day: int,
    cfg: CycleConfig,
    model_day: int,
    back_inferred: bool,
    activity: ActivityLog | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Infer day `day` with snapshot `model_day` and publish store version `day` (skips if published)."""
    sdir = embeddings_dir(ws, task)
    if (sdir / version_name(day) / "manifest.json").exists() and not overwrite:
        return open_version(sdir, day).manifest
    # the export reads only the towers it runs: both here, none in a driver whose Ray actors load their own
    needed = ("user", "ad") if cfg.engine is Engine.LOCAL else ()
    towers = load_towers(models_dir(ws, task) / version_name(model_day), needed, cfg_device(cfg))
    prev_day = ws.version_before(sdir, day)
    previous: StoreVersion | None = open_version(sdir, prev_day) if prev_day is not None else None
    known = previous.ids("ad") if previous is not None else None
    daily = day_embedder(cfg)(ds, towers, day, known, activity)
    imp = ds.impressions(day, ["user_id", "ad_id"])
    active = {
        "user": np.unique(imp.column("user_id").to_numpy()),
        "ad": np.unique(imp.column("ad_id").to_numpy()),
    }
    return publish_day(
        sdir,
        task,
        day,
        towers.manifest,
        {"user": (daily.user_ids, daily.user_vecs), "ad": (daily.ad_ids, daily.ad_vecs)},
        previous,
        {"user": cfg.aggregation, "ad": cfg.ad_aggregation},
        active,
        back_inferred=back_inferred,
        overwrite=overwrite,
        gates=None if back_inferred else cfg.gates,
        float16=cfg.store_float16,
    )


def publish_kge(
    ws: Workspace, day: int, cfg: CycleConfig, overwrite: bool = False, gates: bool = True
) -> dict[str, Any] | None:
    """The KGE stage of day `day` (None when `cfg.kge` is off): graph version `day`, KGE version `day` (an
    increment from the newest version before it, or from scratch) and store version `day` of the KGE family.
    Every step is skipped when published, like every stage of the cycle. The same path as `derm graph build`,
    `derm kge train` and `derm kge publish`."""
    if not cfg.kge.enabled:
        return None
    from adgraph.family import publish_kge_family
    from adgraph.graph import publish_graph
    from adgraph.snapshot import train_kge

    publish_graph(ws, day, cfg.kge.graph, overwrite=overwrite)
    train_kge(ws, day, cfg.kge.model, overwrite=overwrite)
    return publish_kge_family(
        ws, day, cfg.kge.model.model, cfg.kge.aggregation, cfg.gates if gates else None, overwrite=overwrite
    )


def check_engine(cfg: CycleConfig) -> None:
    """EngineError naming `pip install 'derm[dist]'` when the config's engine is not installed: callers check
    before any stage runs, so a run never trains for an hour and then fails at the embedding."""
    if cfg.engine is Engine.RAY:
        from dermdist.infer import require_ray

        require_ray()


def day_embedder(cfg: CycleConfig) -> Embedder:
    """The engine that embeds a day for `publish_embeddings` (and so for the cycle and the bootstrap):
    `towers.infer.embed_day` in this process, or `dermdist.embed_day_ray` on a Ray cluster. Either result goes
    through the same store publish, gates and lineage."""
    if cfg.engine is Engine.LOCAL:
        return embed_day
    from dermdist.infer import embed_day_ray

    check_engine(cfg)
    return partial(embed_day_ray, cfg=RayInferenceConfig(cfg.ray_address, cfg.ray_actors))


def ray_training(cfg: CycleConfig) -> RayTrainConfig | None:
    """The data-parallel training of this run: with the ray engine and `train_workers` set, that many Ray
    Train workers; else None (train in this process)."""
    if cfg.engine is not Engine.RAY or cfg.train_workers is None:
        return None
    return RayTrainConfig(cfg.train_workers, cfg.ray_address)


def train_task_towers(
    ws: Workspace,
    ds: Dataset,
    task: str,
    days: list[int],
    cfg: CycleConfig,
    parent_day: int | None,
    progress: Progress = no_progress,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train `task`'s towers on `days` (from scratch, or one increment from snapshot `parent_day`) and publish
    `models/<task>/day=<max(days)>`: in this process, or data-parallel on Ray (`ray_training`)."""
    mdir = models_dir(ws, task)
    parent = mdir / version_name(parent_day) if parent_day is not None else None
    rcfg = ray_training(cfg)
    if rcfg is not None:
        from dermdist.train import train_towers_ray

        return train_towers_ray(
            ds.root, days, task_config(cfg, task), mdir, parent, cfg.device, rcfg, overwrite
        )
    return train_towers(
        ds,
        days,
        task_config(cfg, task),
        mdir,
        parent=parent,
        device=cfg.device,
        progress=progress,
        overwrite=overwrite,
    )


def train_cycle_ranker(
    ws: Workspace,
    ds: Dataset,
    days: list[int],
    cfg: CycleConfig,
    parent_day: int | None,
    progress: Progress = no_progress,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the ranker on `days` (from scratch, or fine-tune ranker `parent_day`) and publish
    `ranker/day=<max(days)>`: in this process, or data-parallel on Ray (`ray_training`)."""
    parent = ranker_dir(ws) / version_name(parent_day) if parent_day is not None else None
    rcfg = ray_training(cfg)
    if rcfg is not None:
        from dermdist.train import train_ranker_ray

        return train_ranker_ray(ws, days, cfg.ranker, parent, cfg.device, rcfg, overwrite)
    return train_ranker(ws, ds, days, cfg.ranker, parent, cfg.device, progress, overwrite)


def cfg_device(cfg: CycleConfig) -> str:
    from dermtrain.loop import resolve_device

    return resolve_device(cfg.device).type


def publish_index(
    ws: Workspace,
    day: int,
    cfg: CycleConfig,
    overwrite: bool = False,
    refresh: RefreshConfig | None = None,
    params: SearchParams | None = None,
) -> dict[str, Any]:
    """Publish the ad index over store version `day` of the ctr model (skips if published): the one path of
    the daily cycle, `derm index build` (refresh mode rebuild) and `derm index refresh`, so every one applies
    the self-check gate (`cfg.min_index_recall`: QualityGateError, nothing published) and records the
    retrieval prior and graph fitted on `day`'s clicks (`fit_retrieval_rerank`).

    By default the previous index version is updated in place when few ads changed and the index type allows
    it, else rebuilt; the manifest's `refresh` records which and why (see `index.refresh`). `params` become the
    version's query-time defaults (None: the previous version's).
    """
    from index.versions import publish_workspace_index

    target = index_dir(ws) / version_name(day) / "manifest.json"
    if target.exists() and not overwrite:
        m: dict[str, Any] = read_json(target)
        return m
    return publish_workspace_index(
        ws,
        day,
        cfg.index,
        refresh,
        params,
        self_check_queries=cfg.self_check_queries,
        k=cfg.self_check_k,
        overwrite=overwrite,
        min_recall=cfg.min_index_recall,
        popularity_window=cfg.popularity_window,
        **fit_retrieval_rerank(ws, ws.dataset(), day, cfg),
    )


def fit_retrieval_rerank(ws: Workspace, ds: Dataset, day: int, cfg: CycleConfig) -> dict[str, Any]:
    """The retrieval re-ranking for the days after `day`, fitted on `day`'s clicks with the versions that served
    it (a validation period strictly before the days it will serve): {"retrieval_prior": `PriorFit.to_json()`,
    "retrieval_graph": `GraphFit.to_json()`}, each left out when the cycle fits none, nothing served `day` or
    nobody clicked. The graph's gamma is fitted on top of the prior just fitted (its beta fixed)."""
    out: dict[str, Any] = {}
    if not (cfg.retrieval_prior or cfg.retrieval_graph) or ws.version_before(index_dir(ws), day) is None:
        return out
    users, relevant = day_clicks(ds, day)
    if len(users) == 0:
        return out
    idx = oracle_sample(len(users), RERANK_FIT_USERS, day)
    if idx is not None:
        users, relevant = users[idx], [relevant[i] for i in idx]
    try:
        retriever = Retriever(ws, day, ds, prior=None, graph=None)
    except DataError as e:
        # the versions that served `day` cannot be read (a corrupt index file): the index of `day` is rebuilt
        # from its verified store version below, serving the ANN order until the next day's fit
        log.warning("no retrieval prior or graph fitted on day %d: %s", day, e)
        return out
    if retriever.index is None:
        return out
    prior = None
    if cfg.retrieval_prior:
        fit = retriever.fit_prior(users, relevant, cfg.self_check_k, windows=cfg.prior_windows)
        log.info(
            "retrieval prior fitted on day %d: beta %s, window %d (recall@%d %.4f vs %.4f without)",
            day,
            fit.config.beta,
            fit.config.window,
            fit.k,
            fit.recall_chosen,
            fit.recall_without_prior,
        )
        out["retrieval_prior"] = fit.to_json()
        prior = fit.config
    if cfg.retrieval_graph:
        with_graph = Retriever(ws, day, ds, prior=prior, graph=GraphConfig(window=cfg.graph_window))
        gfit = with_graph.fit_graph(users, relevant, cfg.self_check_k)
        log.info(
            "retrieval graph fitted on day %d: gamma %s (recall@%d %.4f vs %.4f without)",
            day,
            gfit.config.gamma,
            gfit.k,
            gfit.recall_chosen,
            gfit.recall_without_graph,
        )
        out["retrieval_graph"] = gfit.to_json()
    return out


def bootstrap(
    ws: Workspace,
    train_days: list[int],
    cfg: CycleConfig,
    progress: Progress = no_progress,
    timer: Timer | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train everything from scratch on `train_days` and publish the versions of their last day."""
    check_engine(cfg)
    ds = ws.dataset()
    timer = timer or Timer()
    train_days = sorted(train_days)
    last = train_days[-1]
    save_cycle_config(ws, cfg)
    for task in cfg.tasks:
        mdir = models_dir(ws, task)
        if overwrite or not (mdir / version_name(last) / "manifest.json").exists():
            done = timer.stage(f"train_{task}")
            train_task_towers(ws, ds, task, train_days, cfg, None, progress, overwrite)
            done()
        done = timer.stage(f"embed_{task}")
        for i, d in enumerate(train_days):
            publish_embeddings(ws, ds, task, d, cfg, last, back_inferred=True, overwrite=overwrite)
            progress(f"embed {task}", i + 1, len(train_days))
        done()
    done = timer.stage("index")
    publish_index(ws, last, cfg, overwrite)
    done()
    if cfg.kge.enabled:
        done = timer.stage("kge")
        for d in train_days:
            publish_kge(ws, d, cfg, overwrite, gates=False)  # coverage grows from nothing over the window
        done()
    if overwrite or not (ranker_dir(ws) / version_name(last) / "manifest.json").exists():
        days = train_days
        if cfg.ranker.kge_finetune and cfg.ranker.kge_family is not None:
            fam = embeddings_dir(ws, cfg.ranker.kge_family)
            days = [d for d in train_days if ws.version_before(fam, d) is not None]
            if not days:
                raise ConfigError("ranker.kge_finetune needs a bootstrap window of at least two periods")
        done = timer.stage("ranker")
        train_cycle_ranker(ws, ds, days, cfg, None, progress, overwrite)
        done()
    return {"train_days": train_days, "stage_seconds": timer.seconds}


def run_day(
    ws: Workspace,
    day: int,
    cfg: CycleConfig | None = None,
    progress: Progress = no_progress,
    timer: Timer | None = None,
    overwrite: bool = False,
    ks: tuple[int, ...] = (20, 100),
    warn: WarningConfig | None = None,
) -> dict[str, Any]:
    """One daily cycle for `day` (see the module docstring). Returns the day's eval document and timings.
    `ks` and `warn` go to the evaluation; a gap since the newest versions that holds impressions adds a
    `daily_gap` warning to the eval document (and a log line)."""
    ds = ws.dataset()
    ds.check_day(day)
    cfg = cfg or load_cycle_config(ws)
    timer = timer or Timer()
    names = [models_dir(ws, t) / version_name(day) for t in cfg.tasks]
    names += [embeddings_dir(ws, t) / version_name(day) for t in cfg.tasks]
    names += [index_dir(ws) / version_name(day), ranker_dir(ws) / version_name(day)]
    if cfg.kge.enabled:
        names.append(embeddings_dir(ws, cfg.kge.family) / version_name(day))
    if not overwrite and eval_path(ws, day).exists() and all((n / "manifest.json").exists() for n in names):
        log.info("day %d is already published; skipping (use overwrite to recompute)", day)
        publish_online(ws, cfg, timer)  # a cycle whose publish failed (server down) completes on a rerun
        return {"day": day, "skipped": True, "eval": read_json(eval_path(ws, day)), "stage_seconds": {}}
    if ws.version_before(models_dir(ws, "ctr"), day) is None:
        raise DermError(f"{ws.root}: no model snapshot before day {day}: train first (`derm train`)")
    check_cycle_lineage(ws, day, cfg.tasks)  # before anything is trained or written
    if overwrite or not eval_path(ws, day).exists():
        done = timer.stage("eval")
        doc = evaluate_day(ws, day, ks, slate_users=cfg.slate_users, warn=warn)
        gap = daily_gap(ws, ds, day)
        if gap is not None:
            log.warning("%s", gap["message"])
            doc["warnings"] = [*doc.get("warnings", []), gap]
        write_json_atomic(eval_path(ws, day), doc)
        done()
    doc = read_json(eval_path(ws, day))
    for task in cfg.tasks:
        mdir = models_dir(ws, task)
        if overwrite or not (mdir / version_name(day) / "manifest.json").exists():
            parent = ws.version_before(mdir, day)
            if parent is None:
                raise DermError(f"{mdir}: no snapshot before day {day}")
            done = timer.stage(f"train_{task}")
            train_task_towers(ws, ds, task, [day], cfg, parent, progress, overwrite)
            done()
        done = timer.stage(f"embed_{task}")
        publish_embeddings(ws, ds, task, day, cfg, day, back_inferred=False, overwrite=overwrite)
        done()
    done = timer.stage("index")
    publish_index(ws, day, cfg, overwrite)  # QualityGateError (nothing published) under min_index_recall
    done()
    if cfg.kge.enabled:
        done = timer.stage("kge")
        publish_kge(ws, day, cfg, overwrite)
        done()
    if overwrite or not (ranker_dir(ws) / version_name(day) / "manifest.json").exists():
        parent = ws.version_before(ranker_dir(ws), day)
        done = timer.stage("ranker")
        train_cycle_ranker(ws, ds, [day], cfg, parent, progress, overwrite)
        done()
    publish_online(ws, cfg, timer)
    return {"day": day, "skipped": False, "eval": doc, "stage_seconds": timer.seconds}


def publish_online(ws: Workspace, cfg: CycleConfig, timer: Timer) -> None:
    """Step 6: the store version the workspace serves (not necessarily `day`'s: rerunning an old day never
    moves the online store back) goes to the online feature store, when one is configured."""
    if cfg.feature_store is None:
        return
    from adserving.versions import publish_workspace
    from embstore.online import OnlineStoreConfig

    done = timer.stage("publish_online")
    publish_workspace(ws, OnlineStoreConfig(cfg.feature_store))
    done()


def daily_gap(ws: Workspace, ds: Dataset, day: int) -> dict[str, Any] | None:
    """The `daily_gap` warning (`eval.warnings`) for running `day`: None when the newest model version is of
    day - 1, or when every day between holds no impressions (nothing was skipped)."""
    prev = ws.version_before(models_dir(ws, "ctr"), day)
    if prev is None or day - prev <= 1:
        return None
    between = [d for d in range(prev + 1, day) if ds.first_day <= d <= ds.last_day]
    rows = sum(pq.ParquetFile(f).metadata.num_rows for d in between for f in ds.partition_files(d))
    if rows == 0:
        return None
    return {
        "code": "daily_gap",
        "from_day": prev + 1,
        "to_day": day - 1,
        "n_periods": len(between),
        "n_impressions": int(rows),
        "message": f"day {day}: the newest versions are of day {prev}; days {prev + 1}..{day - 1} "
        f"({len(between)} periods, {rows} impressions) never went through the daily cycle "
        f"(run `derm daily --from {prev + 1} --to {day - 1}` first)",
    }


def run_days(
    ws: Workspace,
    days: list[int],
    cfg: CycleConfig | None = None,
    progress: Progress = no_progress,
    overwrite: bool = False,
    ks: tuple[int, ...] = (20, 100),
    warn: WarningConfig | None = None,
) -> list[dict[str, Any]]:
    if cfg is not None:
        check_engine(cfg)  # before the lock and any stage
    with ws.lock():
        return [run_day(ws, d, cfg, progress, overwrite=overwrite, ks=ks, warn=warn) for d in days]
