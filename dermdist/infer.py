"""Daily inference on Ray: the day's users and ads embedded by Ray Data `map_batches` over an actor pool.

The driver computes which ids the day embeds (`towers.infer.day_entities`, the single-process engine's own
choice), splits them into blocks of `batch_size`, and a pool of actors embeds them. Each actor loads, once,
the dataset's entity tables (`dermfeatures.batches.Inputs`) and the day's activity log, and from the published
snapshot only the tower a block needs, when a block first needs it (`towers.export.load_towers(dir, ("user",))`
or `("ad",)`), then runs the library's own `embed_users` / `embed_ads` on every block it is given: no second
forward pass or feature builder exists, so the vectors equal the single-process ones to float tolerance
(tested). The driver gathers the blocks into the same
`DailyEmbeddings`, checks that every id came back exactly once, and the caller publishes it through the one
atomic store publish (`workflow.cycle.publish_embeddings` -> `embstore.store.publish_day`).

Each actor reads the day's activity log from the dataset itself (`ActivityLog.from_dataset(ds, day)`): its
constructor takes only paths, and the log is read in parallel where the actor runs rather than built on the
driver and shipped. The cost is one copy of the log per actor (at scale: shard users by id so that an actor
reads only its users' events; not done yet); a caller that already holds a log passes it, and it is shared
through the object store (one copy per node). Ray Data keeps the pool's own start-up state in the object
store, so Ray's core logs one error line per actor pool at start-up about actor restarts
(ray-project/ray#53727); it is Ray's, on stderr, even with `--json`.

On a cluster, the dataset directory and the workspace's model directory must be readable at the same paths
from every node (shared storage), and derm must be installed on every node.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa

from adslog.dataset import Dataset
from adslog.sequences import ActivityLog
from dermcore.errors import DermError
from dermdist.config import RayInferenceConfig
from towers.export import Towers, load_towers
from towers.infer import DailyEmbeddings, day_entities, embed_ads, embed_users, end_of_day

log = logging.getLogger(__name__)

USER, AD = 0, 1  # the `kind` column of the id blocks


class EngineError(DermError):
    """The distributed engine cannot run: Ray is not installed, or the cluster cannot be joined."""


def require_ray() -> ModuleType:
    """The `ray` module, or EngineError naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EngineError("the ray engine needs Ray: pip install 'derm[dist]'") from None
    return ray


def connect(cfg: RayInferenceConfig) -> ModuleType:
    """Join the cluster at `cfg.address` (None: RAY_ADDRESS or a new local instance) unless this process
    already joined one; the connection is kept for the next day of the run."""
    ray = require_ray()
    # Ray's console lines follow this process's logging: shown when INFO is (derm -v), else errors only,
    # like faiss's loader noise; Ray Data's own log file in the session directory keeps everything. The
    # library draws no progress bars (stderr stays clean for `--json`).
    quiet = not logging.getLogger().isEnabledFor(logging.INFO)
    if ray.is_initialized():
        if cfg.address is not None:
            log.info("ray is already initialised in this process; address %s is not used", cfg.address)
    else:
        try:
            ray.init(
                address=cfg.address,
                include_dashboard=False,
                logging_level=logging.ERROR if quiet else logging.INFO,
            )
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = cfg.address or "a local instance"
            raise EngineError(f"cannot join the Ray cluster at {where} ({str(e).splitlines()[0]})") from None
    for h in logging.getLogger("ray.data").handlers:
        if isinstance(h, logging.StreamHandler):
            h.setLevel(logging.ERROR if quiet else logging.INFO)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


class DayEmbedder:
    """The Ray Data actor: loads the entity tables and the activity log once, and each tower of the snapshot
    the first time a block needs it (an actor given only ad blocks never builds the user tower), then embeds
    blocks of {kind int8[n], id int64[n]} into {kind, id, vec float32[n, dim]}."""

    def __init__(
        self, data_root: str, snapshot_dir: str, activity_ref: list[Any], day: int, threads: int
    ) -> None:
        import ray
        import torch

        from dermfeatures.batches import Inputs

        torch.set_num_threads(threads)
        ds = Dataset.open(data_root)
        self.snapshot_dir = Path(snapshot_dir)
        self.towers: dict[str, Towers] = {}
        # the manifest alone (no tower yet) gives the spec and the config
        self.meta = load_towers(self.snapshot_dir, ())
        # [] : the log of `day` from the dataset; [ref]: the caller's log, in a list so that Ray hands the ref
        # over unresolved and it is read here, once
        activity = ray.get(activity_ref[0]) if activity_ref else ActivityLog.from_dataset(ds, day)
        self.inputs = Inputs(ds, self.meta.spec, activity, self.meta.config.seq_len)
        self.ts = end_of_day(day)

    def tower(self, entity: str) -> Towers:
        if entity not in self.towers:
            self.towers[entity] = load_towers(self.snapshot_dir, (entity,))
        return self.towers[entity]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kind = np.asarray(batch["kind"], np.int8)
        ids = np.asarray(batch["id"], np.int64)
        vec = np.zeros((len(ids), self.meta.config.dim), np.float32)
        u = kind == USER
        if u.any():
            uid = ids[u]
            ts = np.full(len(uid), self.ts, np.int64)
            vec[u] = embed_users(self.tower("user"), self.inputs, uid, ts)
        if (~u).any():
            vec[~u] = embed_ads(self.tower("ad"), self.inputs, ids[~u])
        return {"kind": kind, "id": ids, "vec": vec}


def embed_day_ray(
    ds: Dataset,
    towers: Towers,
    day: int,
    known_ad_ids: np.ndarray | None = None,
    activity: ActivityLog | None = None,
    cfg: RayInferenceConfig | None = None,
) -> DailyEmbeddings:
    """`towers.infer.embed_day` on Ray: the same ids, the same vectors (to float tolerance), computed by a
    pool of `cfg.actors` actors. `towers` must come from a published snapshot (its directory is what actors
    load; the driver itself needs no tower: `load_towers(dir, ())`).
    `activity`: None, each actor reads the day's log from the dataset; else this log, shared through the
    object store (one copy per node)."""
    cfg = cfg or RayInferenceConfig()
    if towers.path is None:
        raise EngineError("the ray engine embeds with a published snapshot; this one has no directory")
    ents = day_entities(ds, day, known_ad_ids)
    ray = connect(cfg)
    kinds = np.concatenate([np.full(len(ents.users), USER, np.int8), np.full(len(ents.ads), AD, np.int8)])
    ids = np.concatenate([ents.users, ents.ads]).astype(np.int64)
    table = pa.table({"kind": kinds, "id": ids})
    blocks = [table.slice(s, cfg.batch_size) for s in range(0, len(ids), cfg.batch_size)] or [table]
    actors = cfg.actors or max(1, int(ray.cluster_resources().get("CPU", 1) // cfg.cpus_per_actor))
    actors = min(actors, len(blocks))
    log.info(
        "day %d on ray: %d users, %d ads, %d blocks, %d actors",
        day,
        len(ents.users),
        len(ents.ads),
        len(blocks),
        actors,
    )
    out = ray.data.from_arrow(blocks).map_batches(
        DayEmbedder,
        batch_size=None,  # one block, one call: the blocks are the batches
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cfg.cpus_per_actor,
        fn_constructor_kwargs={
            "data_root": str(ds.root),
            "snapshot_dir": str(towers.path),
            "activity_ref": [] if activity is None else [ray.put(activity)],
            "day": int(day),
            "threads": max(1, int(cfg.cpus_per_actor)),
        },
    )
    got_kind, got_id, got_vec = [], [], []
    for b in out.iter_batches(batch_size=None, batch_format="numpy"):
        got_kind.append(np.asarray(b["kind"], np.int8))
        got_id.append(np.asarray(b["id"], np.int64))
        got_vec.append(np.asarray(b["vec"], np.float32))
    kind = np.concatenate(got_kind) if got_kind else np.zeros(0, np.int8)
    got = np.concatenate(got_id) if got_id else np.zeros(0, np.int64)
    vec = np.concatenate(got_vec) if got_vec else np.zeros((0, towers.config.dim), np.float32)
    user_ids, user_vecs = _gathered(kind == USER, got, vec, ents.users, "user")
    ad_ids, ad_vecs = _gathered(kind == AD, got, vec, ents.ads, "ad")
    return DailyEmbeddings(
        day=day,
        model_version=towers.model_version,
        user_ids=user_ids,
        user_vecs=user_vecs,
        ad_ids=ad_ids,
        ad_vecs=ad_vecs,
        n_launch_ads=ents.n_launch_ads,
    )


def _gathered(
    mask: np.ndarray, ids: np.ndarray, vecs: np.ndarray, expected: np.ndarray, entity: str
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vecs) of one entity in ascending id order (`expected`'s order), or EngineError when a block was
    lost or duplicated: a partial day is never published."""
    ids, vecs = ids[mask], vecs[mask]
    order = np.argsort(ids, kind="stable")
    ids, vecs = ids[order], vecs[order]
    if not np.array_equal(ids, expected):
        raise EngineError(
            f"ray inference returned {len(ids)} {entity} embeddings for {len(expected)} {entity}s; "
            "nothing is published"
        )
    return ids, np.ascontiguousarray(vecs)
