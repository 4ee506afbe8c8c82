"""`derm run --config FILE`: the run's one config, read from TOML or JSON and validated.

Every key is optional (defaults: `RunConfig()`), every key is documented in `KEY_DOCS` (printed by
`derm run --show-config`), and an unknown key is an error naming it. Windows count the dataset's periods
(`adslog.periods`): with weekly periods, `train_periods = 8` is 8 weeks and `aggregation.users.ttl_days = 12`
is 12 weeks. Layout (TOML; JSON has the same nesting):

    train_periods = 8            # top level: the run itself
    ks = [20, 100]
    [towers]                     # towers.config.TowerConfig fields (backbone, dim, epochs_initial, seed, ...)
    [ranker]                     # ranking.model.RankerConfig fields (epochs_initial, seed, ...)
    [aggregation.users]          # heuristic (ma | acc | ap), weight, ttl_days
    [aggregation.ads]
    [index]                      # backend (faiss | hnswlib), spec
    [cycle]                      # tasks, self_check_queries, self_check_k, max_coverage_drop, ...
    [kge]                        # enabled, model (transra | transr | transe), dim, epochs, ... (adgraph.family)
    [warnings]                   # eval.warnings.WarningConfig fields
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dermcore.errors import ConfigError, DataError
from embstore.aggregate import AggregationConfig, Heuristic
from embstore.store import StoreGates
from eval.warnings import WarningConfig
from index import Backend, IndexConfig
from ranking.model import RankerConfig
from towers.config import TowerConfig
from workflow.cycle import CycleConfig

RUN_CONFIG_FILE = "run_config.json"


@dataclass(frozen=True)
class RunConfig:
    """`derm run`: bootstrap on the first `train_periods` periods, the daily cycle over the rest."""

    train_periods: int | None = None  # None: `derm data inspect`'s suggestion
    ks: tuple[int, ...] = (20, 100)
    min_clicks: int = 20  # sparse-period threshold of the suggestion (adslog.inspect)
    cycle: CycleConfig = field(default_factory=CycleConfig)
    warnings: WarningConfig = field(default_factory=WarningConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))
        if self.train_periods is not None and self.train_periods < 1:
            raise ConfigError(f"train_periods must be >= 1, got {self.train_periods}")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError("ks must hold at least one K >= 1")
        if self.min_clicks < 0:
            raise ConfigError("min_clicks must be >= 0")

    def to_json(self) -> dict[str, Any]:
        c = self.cycle
        towers = c.towers.to_json()
        for k in _TOWER_SKIP:
            towers.pop(k, None)
        return {
            "train_periods": self.train_periods,
            "ks": list(self.ks),
            "min_clicks": self.min_clicks,
            "device": c.device,
            "towers": towers,
            "ranker": c.ranker.to_json(),
            "aggregation": {"users": _agg(c.aggregation), "ads": _agg(c.ad_aggregation)},
            "index": {"backend": c.index.backend.value, "spec": c.index.spec},
            "cycle": {
                "tasks": list(c.tasks),
                "self_check_queries": c.self_check_queries,
                "self_check_k": c.self_check_k,
                "max_coverage_drop": c.gates.max_coverage_drop,
                "min_index_recall": c.min_index_recall,
                "store_float16": c.store_float16,
                "retrieval_prior": c.retrieval_prior,
                "prior_windows": list(c.prior_windows),
                "retrieval_graph": c.retrieval_graph,
                "graph_window": c.graph_window,
                "popularity_window": c.popularity_window,
                "feature_store": c.feature_store,
                "engine": c.engine.value,
                "ray_actors": c.ray_actors,
                "train_workers": c.train_workers,
                "slate_users": c.slate_users,
            },
            "kge": {
                "enabled": c.kge.enabled,
                "model": c.kge.model.model.value,
                "dim": c.kge.model.dim,
                "epochs": c.kge.model.epochs,
                "incremental_epochs": c.kge.model.incremental_epochs,
                "lr": c.kge.model.lr,
                "seed": c.kge.model.seed,
                "window_days": c.kge.graph.window_days,
            },
            "warnings": {f.name: getattr(self.warnings, f.name) for f in fields(WarningConfig)},
        }


_TOWER_SKIP = ("task", "extra")  # set by the cycle per model / never interpreted


def _agg(a: AggregationConfig) -> dict[str, Any]:
    return {"heuristic": a.heuristic.value, "weight": a.weight, "ttl_days": a.ttl_days}


_TOP = {"train_periods", "ks", "min_clicks", "device"}
_AGG = {"heuristic", "weight", "ttl_days"}
_CYCLE = {
    "tasks",
    "retrieval_prior",
    "prior_windows",
    "retrieval_graph",
    "graph_window",
    "popularity_window",
    "feature_store",
    "self_check_queries",
    "self_check_k",
    "max_coverage_drop",
    "min_index_recall",
    "store_float16",
    "engine",
    "ray_actors",
    "train_workers",
    "slate_users",
}


_KGE = {"enabled", "model", "dim", "epochs", "incremental_epochs", "lr", "seed", "window_days"}


def _known(section: str) -> set[str]:
    if section == "towers":
        return {f.name for f in fields(TowerConfig)} - set(_TOWER_SKIP)
    if section == "ranker":
        return {f.name for f in fields(RankerConfig)}
    if section == "warnings":
        return {f.name for f in fields(WarningConfig)}
    return {"index": {"backend", "spec"}, "cycle": _CYCLE, "kge": _KGE}.get(section, set())


def _check_keys(path: Path, d: dict[str, Any], known: set[str], prefix: str) -> None:
    for k in d:
        if k not in known:
            raise DataError(path, f"unknown key {prefix + k!r} (known: {', '.join(sorted(known))})")


def _table(path: Path, d: dict[str, Any], key: str) -> dict[str, Any]:
    v = d.get(key, {})
    if not isinstance(v, dict):
        raise DataError(path, f"{key!r} must be a table of keys")
    return v


def parse_run_config(raw: dict[str, Any], path: Path, device: str | None = None) -> RunConfig:
    """A RunConfig from the nested dict of a config file (see the module docstring); every problem is a
    DataError naming `path` and the key."""
    sections = {"towers", "ranker", "aggregation", "index", "cycle", "kge", "warnings"}
    _check_keys(path, raw, _TOP | sections, "")
    for s in sections - {"aggregation"}:
        _check_keys(path, _table(path, raw, s), _known(s), f"{s}.")
    agg = _table(path, raw, "aggregation")
    _check_keys(path, agg, {"users", "ads"}, "aggregation.")
    for e in ("users", "ads"):
        _check_keys(path, _table(path, agg, e), _AGG, f"aggregation.{e}.")
    base = RunConfig()
    where = ""
    try:
        where = "towers"
        towers = replace(base.cycle.towers, **_table(path, raw, "towers"))
        where = "ranker"
        ranker = replace(base.cycle.ranker, **_table(path, raw, "ranker"))
        aggs = []
        for e, default in (("users", base.cycle.aggregation), ("ads", base.cycle.ad_aggregation)):
            where = f"aggregation.{e}"
            a = _table(path, agg, e)
            aggs.append(
                AggregationConfig(
                    Heuristic(a.get("heuristic", default.heuristic.value)),
                    float(a.get("weight", default.weight)),
                    int(a.get("ttl_days", default.ttl_days)),
                )
            )
        where = "index"
        ix = _table(path, raw, "index")
        backend = Backend(ix.get("backend", base.cycle.index.backend.value))
        spec = ix.get("spec", "HNSW32" if backend is Backend.HNSWLIB else base.cycle.index.spec)
        where = "kge"
        kg = _table(path, raw, "kge")
        k0 = base.cycle.kge
        kge = replace(
            k0,
            enabled=kg.get("enabled", k0.enabled),
            model=replace(k0.model, **{k: v for k, v in kg.items() if k not in ("enabled", "window_days")}),
            graph=replace(k0.graph, window_days=kg.get("window_days", k0.graph.window_days)),
        )
        where = "cycle"
        cy = _table(path, raw, "cycle")
        cycle = CycleConfig(
            tasks=tuple(cy.get("tasks", base.cycle.tasks)),
            towers=towers,
            ranker=ranker,
            aggregation=aggs[0],
            ad_aggregation=aggs[1],
            index=IndexConfig(backend=backend, spec=str(spec), dim=towers.dim),
            self_check_queries=int(cy.get("self_check_queries", base.cycle.self_check_queries)),
            self_check_k=int(cy.get("self_check_k", base.cycle.self_check_k)),
            gates=StoreGates(float(cy.get("max_coverage_drop", base.cycle.gates.max_coverage_drop))),
            min_index_recall=float(cy.get("min_index_recall", base.cycle.min_index_recall)),
            store_float16=bool(cy.get("store_float16", base.cycle.store_float16)),
            retrieval_prior=bool(cy.get("retrieval_prior", base.cycle.retrieval_prior)),
            prior_windows=tuple(cy.get("prior_windows", base.cycle.prior_windows)),
            retrieval_graph=bool(cy.get("retrieval_graph", base.cycle.retrieval_graph)),
            graph_window=cy.get("graph_window", base.cycle.graph_window),
            popularity_window=cy.get("popularity_window", base.cycle.popularity_window),
            feature_store=cy.get("feature_store", base.cycle.feature_store),
            engine=cy.get("engine", base.cycle.engine),
            ray_actors=cy.get("ray_actors", base.cycle.ray_actors),
            train_workers=cy.get("train_workers", base.cycle.train_workers),
            slate_users=cy.get("slate_users", base.cycle.slate_users),
            device=device or str(raw.get("device", base.cycle.device)),
            kge=kge,
        )
        where = "warnings"
        warn = WarningConfig(**_table(path, raw, "warnings"))
        where = ""
        return RunConfig(
            train_periods=raw.get("train_periods"),
            ks=tuple(raw.get("ks", base.ks)),
            min_clicks=int(raw.get("min_clicks", base.min_clicks)),
            cycle=cycle,
            warnings=warn,
        )
    except (ConfigError, ValueError, TypeError) as e:
        raise DataError(path, f"{where + ': ' if where else ''}{e}") from None


def load_run_config(path: str | Path, device: str | None = None) -> RunConfig:
    """Read a `.toml` or `.json` run config (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        if path.suffix.lower() == ".toml":
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        elif path.suffix.lower() == ".json":
            raw = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise DataError(path, "config file must end in .toml or .json")
    except tomllib.TOMLDecodeError as e:
        raise DataError(path, f"not valid TOML ({e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise DataError(path, "the config must be a table (TOML) or an object (JSON)")
    return parse_run_config(raw, path, device)


# Every key of `RunConfig.to_json()`, documented (tested: no key without a line here).
KEY_DOCS: dict[str, str] = {
    "train_periods": "periods the towers, embeddings, index and ranker are bootstrapped on (default: the "
    "suggestion of `derm data inspect`)",
    "ks": "K values of recall@K, nDCG@K and hit rate@K",
    "min_clicks": "a period with fewer clicks is sparse (the suggested split avoids testing on it)",
    "device": "auto | cpu | cuda (the --device option wins)",
    "towers.dim": "embedding width of the user and Pin towers",
    "towers.token_dim": "width of each feature token",
    "towers.hidden": "hidden widths of the interaction tower's MLP (and of the towers when backbone = mlp)",
    "towers.backbone": "dhen (the paper's DHEN stack) | mlp (the foundation's MLP towers) | sum (the sum of the "
    "feature tokens, no projection; token_dim = dim)",
    "towers.dhen_layers": "DHEN layers per tower",
    "towers.dhen_modules": "the two modules each DHEN layer ensembles: masknet | transformer | mlp",
    "towers.dhen_hidden": "hidden width of the DHEN MaskNet / MLP modules and transformer feed-forward",
    "towers.dhen_heads": "attention heads of the DHEN transformer module (divides token_dim)",
    "towers.id_buckets": "cap on the buckets of any hashed id table",
    "towers.id_bucket_factor": "buckets per known id (next power of two)",
    "towers.embedding_init_std": "std of the normal init of id / categorical tables (null: N(0, 1))",
    "towers.sparse_embeddings": "true: sparse id-table gradients and SparseAdam; false: dense Adam on every table",
    "towers.sparse_optimizer": "the sparse tables' optimiser: lazy (SparseAdam: rows absent from a batch stand "
    "still) or catch_up (rows move as under dense Adam, at sparse cost)",
    "towers.seq_len": "clicks in the user's activity sequence",
    "towers.batch_size": "training batch size (also the in-batch softmax's candidates)",
    "towers.lr": "learning rate (decays linearly within each run)",
    "towers.weight_decay": "weight decay",
    "towers.epochs_initial": "epochs of the bootstrap training over the train window",
    "towers.epochs_incremental": "epochs of each daily increment over one period",
    "towers.weight_ctr": "weight of the CTR head's BCE loss",
    "towers.weight_cvr": "weight of the CVR head's BCE loss",
    "towers.weight_contrastive": "weight of the in-batch sampled softmax",
    "towers.extra_negatives": "ads drawn uniformly from the training ads that join each batch's softmax as "
    "negatives (mixed negative sampling; 0 = in-batch only)",
    "towers.logq": "logQ correction of the sampled softmax",
    "towers.logq_decay": "decay of the running ad-frequency estimate behind logQ",
    "towers.temperature_init": "initial softmax temperature",
    "towers.learn_temperature": "train the temperature (false: fixed at temperature_init)",
    "towers.negative_rate": "negative downsampling of the training rows: impressions without click or conversion "
    "kept with this probability and weight 1 / rate in the CTR loss (1.0: every row)",
    "towers.seed": "random seed of the towers (the cvr model uses seed + 1)",
    "ranker.derm_inputs": "DERM embeddings the ranker reads: ctr-user, ctr-ad, cvr-user, cvr-ad",
    "ranker.token_dim": "width of every ranker feature token",
    "ranker.hidden": "hidden widths of each task tower",
    "ranker.n_experts": "experts of the multi-gate mixture",
    "ranker.cross_layers": "DCNv2 cross layers per expert",
    "ranker.cross_rank": "rank of the low-rank cross weights (null: full rank)",
    "ranker.derm_projection": "width of the DERM projection layer (null: none)",
    "ranker.seq_heads": "attention heads over the activity sequence",
    "ranker.seq_layers": "transformer layers over the activity sequence",
    "ranker.batch_size": "ranker batch size",
    "ranker.lr": "ranker learning rate",
    "ranker.epochs_initial": "epochs of the bootstrap ranker (the maximum with early stopping)",
    "ranker.epochs_incremental": "epochs of each daily fine-tune",
    "ranker.early_stopping": "hold out the last training period and keep the best epoch",
    "ranker.patience": "epochs without improvement before early stopping",
    "ranker.seq_len": "clicks in the ranker's activity sequence",
    "ranker.id_buckets": "cap on the buckets of the ranker's hashed id tables",
    "ranker.embedding_init_std": "std of the normal init of the ranker's tables (null: N(0, 1))",
    "ranker.wide_buckets": "rows of the wide (linear, hashed one-hot and crossed) part; 0: no wide part",
    "ranker.wide_lr": "learning rate of the wide part when wide_fit = adam (null: ranker.lr)",
    "ranker.wide_fit": "regression (the wide part fitted like the one-hot regression by L-BFGS, then frozen while "
    "the deep part learns the residual) | adam (learned with the deep part)",
    "ranker.wide_window": "days of rows each daily fine-tune refits the wide part on",
    "ranker.wide_features": "onehot (the log's one-hot fields and crosses from the raw values, the regression "
    "baseline's: dermfeatures.onehot) | spec (the feature spec's fields, ids as hashed, and their crosses)",
    "ranker.sparse_optimizer": "the ranker's sparse tables' optimiser: lazy (SparseAdam) or catch_up (rows move "
    "as under dense Adam, at sparse cost)",
    "ranker.kge_family": "KGE store family the ranker reads (kge-transra | kge-transr | kge-transe; needs "
    "kge.enabled with that model); null: no KGE inputs",
    "ranker.kge_inputs": "entities whose KGE vectors the ranker reads: user, ad, advertiser",
    "ranker.kge_finetune": "false: frozen KGE vectors as inputs; true: trainable ID tables started from them",
    "ranker.kge_attention": "target attention of the candidate ad over the user's graph neighbours' KGE vectors "
    "(needs kge_finetune)",
    "ranker.kge_lr": "learning rate of the KGE ID tables (null: ranker.lr)",
    "ranker.kge_neighbours": "graph neighbours of each kind (ads, advertisers) the attention reads",
    "ranker.kge_scores": "KGE relations whose score f_r(user, candidate) enters the wide part (with a found "
    "flag): user_converted_offsite_advertiser, user_converted_ad, user_clicked_ad; []: none",
    "ranker.negative_rate": "negative downsampling of the deep part's training rows (weight 1 / rate; the wide "
    "fit, validation, calibration and scoring read every row; 1.0: every row)",
    "ranker.seed": "random seed of the ranker",
    "aggregation.users.heuristic": "users' pool heuristic: ma (moving average) | acc (latest) | ap",
    "aggregation.users.weight": "w of the users' moving average",
    "aggregation.users.ttl_days": "periods a user's pooled embedding lives without activity",
    "aggregation.ads.heuristic": "ads' pool heuristic: ma | acc | ap",
    "aggregation.ads.weight": "w of the ads' moving average",
    "aggregation.ads.ttl_days": "periods an ad's pooled embedding lives without activity",
    "index.backend": "faiss | hnswlib",
    "index.spec": "faiss factory string (Flat, IVF1024,Flat, HNSW32, ...) or HNSW32 for hnswlib",
    "cycle.tasks": "upstream models: [ctr] or [ctr, cvr]",
    "cycle.self_check_queries": "queries of the index recall self-check",
    "cycle.self_check_k": "k of the index recall self-check",
    "cycle.max_coverage_drop": "gate: largest coverage drop of a store version vs the serving one",
    "cycle.min_index_recall": "gate: lowest index self-check recall",
    "cycle.store_float16": "store embeddings as float16",
    "cycle.retrieval_prior": "fit the retrieval popularity prior on each evaluated period, record it in the index",
    "cycle.prior_windows": "popularity windows (periods) the prior's fit chooses from",
    "cycle.retrieval_graph": "fit the co-click graph's weight on each evaluated period, record it in the index",
    "cycle.graph_window": "periods of clicks the co-click graph is built from",
    "cycle.popularity_window": "periods of clicks behind the popularity list, cold start and eval's baseline",
    "cycle.feature_store": "online feature store URL the cycle publishes to (redis://HOST:PORT/DB); null: none",
    "cycle.engine": "where the daily inference runs: local (this process) | ray (Ray Data actors; "
    "pip install 'derm[dist]'; the cluster: derm daily --address or RAY_ADDRESS)",
    "cycle.ray_actors": "actors of the ray engine's pool (null: one per CPU of the cluster)",
    "kge.enabled": "build the onsite-offsite graph, train the KGE model and publish its store family each period",
    "kge.model": "KGE model: transra (TransR with an identity anchor) | transr | transe",
    "kge.dim": "width of the KGE entity vectors",
    "kge.epochs": "epochs of the KGE model's from-scratch training",
    "kge.incremental_epochs": "epochs of each daily KGE increment",
    "kge.lr": "Adagrad learning rate of the KGE model",
    "kge.seed": "random seed of the KGE model",
    "kge.window_days": "periods of events in each day's graph (null: every period so far)",
    "cycle.train_workers": "with the ray engine: data-parallel Ray Train workers (torch DDP) that train the "
    "towers and the ranker (null: train in the driver process; ignored by the local engine)",
    "cycle.slate_users": "users sampled for each evaluation's true slate value (synthetic data only; 0: none)",
    "warnings.max_version_age": "warn when the versions are older than the evaluated period by more periods",
    "warnings.min_positives": "warn when a figure rests on fewer positives (clicked users, clicks)",
}


def flat_keys(d: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of the leaves of a nested dict (`towers.dim`, ...)."""
    out: list[str] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += flat_keys(v, f"{prefix}{k}.")
        else:
            out.append(prefix + k)
    return out


def config_text(cfg: RunConfig) -> str:
    """The resolved config as commented TOML-like lines: `key = value  # doc`."""
    lines = []
    for key in flat_keys(cfg.to_json()):
        v: Any = cfg.to_json()
        for part in key.split("."):
            v = v[part]
        lines.append(f"{key} = {json.dumps(v)}  # {KEY_DOCS.get(key, '')}")
    return "\n".join(lines)
