"""Training KGE models on the daily graph: from scratch on a window, then one increment per day.

Negative sampling is typed: each negative corrupts the head or the tail (a fair coin per negative) with an
entity of that side's node type, drawn uniformly or by degree (degree ** degree_power, degrees counted in the
graph being trained on). Losses: margin ranking (max(0, margin - f(pos) + f(neg)), mean over negatives) or
softmax cross-entropy over [pos, negs] / temperature. Entities get sparse row-wise Adagrad updates; every
random draw comes from a generator seeded by (seed, day, epoch), so a run is reproducible and an increment
resumed from a published snapshot continues exactly as an uninterrupted one would.

From scratch (the first version of a family, or `scratch=True`) trains `epochs` passes over every edge of the
day's graph (the graph holds the window). An increment starts from the newest version before the day (its
parameters and Adagrad state), adds the graph's new nodes, and trains `incremental_epochs` passes over the
edges updated since the parent's cutoff plus a uniform replay sample of the older edges.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from adgraph.graph import SECONDS_PER_DAY, NodeType, Relation
from adgraph.models import EntityIndex, KGEModel, LossFn, ModelKind, relation_types
from dermcore.errors import ConfigError, DermError, VersionMismatchError
from dermcore.progress import Progress, no_progress

log = logging.getLogger(__name__)


class Loss(StrEnum):
    MARGIN = "margin"
    SOFTMAX = "softmax"


class Sampling(StrEnum):
    UNIFORM = "uniform"
    DEGREE = "degree"


@dataclass(frozen=True)
class KGEConfig:
    """One KGE model family. relation_dim: k of TransR's relation spaces (None = dim; TransE and TransRA need
    k = dim). anchor: TransRA's identity-projection relation (ignored by the others).

    The defaults serve the ranker, the KGE family's consumer, not next-day link prediction; the two disagree.
    Degree-weighted negatives and lr 0.1 (since issue 14's ranker measurements; before: uniform, 0.01): with
    uniform negatives the positives a model must rank above random entities are mostly the ones the user was
    *exposed* to, so it learns exposure and popularity, and its offsite score f(user, converted_offsite,
    advertiser) tracks the synthetic log's latent conversion affinity <user_conv, advertiser_conv> at Pearson
    r 0.01 on random (user, advertiser) pairs; negatives drawn by degree are exposed too, which leaves the
    conversion part to learn: r 0.18 at lr 0.01, 0.39 at lr 0.1 (TransR 0.41; scratch on kge_ranker.json's
    graph of day 20010, `kge_signal.json`). On kge_ranker's test clicks the daily TransRA lineage's offsite
    score alone scores CVR ROC-AUC 0.559 (oracle-weighted; r with a 0.46) against 0.525 (r 0.05) under the
    old pair, and the ranker's fitted wide part with the three scores 0.6274 against 0.6163 (none: 0.6139;
    `ranking.model.RankerConfig.kge_scores`). The price is next-day link prediction, which popularity
    rewards: on the same graph filtered MRR 0.043 (uniform, 0.01) vs 0.030 (degree, 0.1), popularity 0.041.
    The link-prediction choice (lr 0.01 x 30 epochs on a validation split, `benchmarks/kge_tuning.py`; with 0.1
    and uniform negatives the TransR / TransRA projections drift and MRR falls) is what
    `benchmarks/kge_link_prediction.py` measures with. Margin vs softmax loss: softmax at lr 0.01 r 0.12 vs
    margin 0.01 with uniform negatives, 0.19 vs 0.18 with degree ones, so margin stays."""

    model: ModelKind = ModelKind.TRANSRA
    dim: int = 32
    relation_dim: int | None = None
    anchor: Relation = Relation.USER_CLICKED_AD
    loss: Loss = Loss.MARGIN
    margin: float = 1.0
    temperature: float = 0.1
    negatives: int = 16
    sampling: Sampling = Sampling.DEGREE
    degree_power: float = 0.75
    batch_size: int = 512
    lr: float = 0.1
    epochs: int = 30
    incremental_epochs: int = 3
    replay_ratio: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, enum in (
            ("model", ModelKind),
            ("anchor", Relation),
            ("loss", Loss),
            ("sampling", Sampling),
        ):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                raise ConfigError(
                    f"KGEConfig.{name}: unknown value {getattr(self, name)!r} (choose {[e.value for e in enum]})"
                ) from None
        for name in ("dim", "negatives", "batch_size", "epochs"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"KGEConfig.{name} must be a positive integer, got {v!r}")
        if not isinstance(self.incremental_epochs, int) or self.incremental_epochs < 0:
            raise ConfigError(f"KGEConfig.incremental_epochs must be >= 0, got {self.incremental_epochs!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"KGEConfig.seed must be a non-negative integer, got {self.seed!r}")
        if self.relation_dim is not None:
            if not isinstance(self.relation_dim, int) or self.relation_dim < 1:
                raise ConfigError(f"KGEConfig.relation_dim must be None or >= 1, got {self.relation_dim!r}")
            if self.model is not ModelKind.TRANSR and self.relation_dim != self.dim:
                raise ConfigError(
                    f"KGEConfig.relation_dim: {self.model.value} needs relation_dim = dim ({self.dim})"
                )
        for name in ("margin", "temperature", "lr"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and np.isfinite(v) and v > 0):
                raise ConfigError(f"KGEConfig.{name} must be a positive number, got {v!r}")
        for name in ("degree_power", "replay_ratio"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and np.isfinite(v) and v >= 0):
                raise ConfigError(f"KGEConfig.{name} must be >= 0, got {v!r}")

    @property
    def k(self) -> int:
        return self.dim if self.relation_dim is None else self.relation_dim

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("model", "anchor", "loss", "sampling"):
            d[name] = getattr(self, name).value
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KGEConfig:
        return cls(**d)

    def loss_fn(self) -> LossFn:
        if self.loss is Loss.MARGIN:
            margin = float(self.margin)
            return lambda pos, neg: F.relu(margin - pos[:, None] + neg).mean()
        temp = float(self.temperature)

        def softmax(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
            logits = torch.cat([pos[:, None], neg], dim=1) / temp
            return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long))

        return softmax


@dataclass(frozen=True)
class Triples:
    """rel int64[n] (index into the model's relations), head / tail int64[n] global entity rows."""

    rel: np.ndarray
    head: np.ndarray
    tail: np.ndarray

    def __len__(self) -> int:
        return len(self.rel)

    def take(self, idx: np.ndarray) -> Triples:
        return Triples(self.rel[idx], self.head[idx], self.tail[idx])


def graph_ids(edges: pa.Table) -> dict[NodeType, np.ndarray]:
    """Sorted unique int64 ids per node type of an edge table."""
    out: dict[NodeType, np.ndarray] = {}
    for t in NodeType:
        parts = [
            edges.filter(pc.equal(edges.column(f"{s}_type"), t.value)).column(f"{s}_id").to_numpy()
            for s in ("head", "tail")
        ]
        ids = np.unique(np.concatenate(parts)).astype(np.int64)
        if len(ids):
            out[t] = ids
    return out


def graph_relations(edges: pa.Table) -> tuple[Relation, ...]:
    present = set(pc.unique(edges.column("relation")).to_pylist())
    return tuple(r for r in Relation if r.value in present)


def to_triples(model: KGEModel, edges: pa.Table) -> Triples:
    """Map an edge table to model rows; every relation and entity must be known to the model."""
    rel_idx = {r.value: i for i, r in enumerate(model.relations)}
    rels = edges.column("relation").to_pylist()
    unknown = sorted(set(rels) - set(rel_idx))
    if unknown:
        raise VersionMismatchError(
            f"relations {unknown} are not in the model's {[r.value for r in model.relations]}: retrain from scratch"
        )
    rel = np.array([rel_idx[r] for r in rels], np.int64)
    head = np.empty(len(rel), np.int64)
    tail = np.empty(len(rel), np.int64)
    for i, r in enumerate(model.relations):
        m = rel == i
        if not m.any():
            continue
        ht, tt = relation_types(r)
        for side, t, out in (("head_id", ht, head), ("tail_id", tt, tail)):
            ids = edges.column(side).to_numpy()[m]
            rows, found = model.index.rows(t, ids)
            if not found.all():
                raise DermError(f"{(~found).sum()} {t.value} ids of {r.value} edges are not in the model")
            out[m] = rows
    return Triples(rel, head, tail)


class NegativeSampler:
    """Typed corruption: each negative replaces the head or the tail with an entity of the same node type."""

    def __init__(self, model: KGEModel, triples: Triples, cfg: KGEConfig) -> None:
        self.types = list(model.index.types)
        tcode = {t: i for i, t in enumerate(self.types)}
        self.head_type = np.array([tcode[relation_types(r)[0]] for r in model.relations], np.int64)
        self.tail_type = np.array([tcode[relation_types(r)[1]] for r in model.relations], np.int64)
        self.offsets = np.array([model.index.offsets[t] for t in self.types], np.int64)
        self.counts = np.array([model.index.count(t) for t in self.types], np.int64)
        self.cum: list[np.ndarray | None] = []
        for t in self.types:
            if cfg.sampling is Sampling.UNIFORM:
                self.cum.append(None)
                continue
            lo, n = model.index.offsets[t], model.index.count(t)
            both = np.r_[triples.head, triples.tail]
            mine = both[(both >= lo) & (both < lo + n)] - lo
            deg = np.bincount(mine, minlength=n).astype(np.float64)
            w = deg**cfg.degree_power
            self.cum.append(None if w.sum() <= 0 else np.cumsum(w) / w.sum())

    def sample(self, batch: Triples, n_neg: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(heads, tails) int64[B, 1 + n_neg]: column 0 the positive, then its corruptions."""
        B = len(batch)
        heads = np.repeat(batch.head[:, None], n_neg + 1, axis=1)
        tails = np.repeat(batch.tail[:, None], n_neg + 1, axis=1)
        corrupt_head = rng.random((B, n_neg)) < 0.5
        side_type = np.where(
            corrupt_head, self.head_type[batch.rel][:, None], self.tail_type[batch.rel][:, None]
        )
        draws = np.empty((B, n_neg), np.int64)
        for ti in range(len(self.types)):
            m = side_type == ti
            k = int(m.sum())
            if k == 0:
                continue
            cum = self.cum[ti]
            if cum is None:
                local = rng.integers(0, self.counts[ti], k)
            else:
                local = np.searchsorted(cum, rng.random(k), side="right").clip(0, self.counts[ti] - 1)
            draws[m] = self.offsets[ti] + local
        heads[:, 1:] = np.where(corrupt_head, draws, heads[:, 1:])
        tails[:, 1:] = np.where(corrupt_head, tails[:, 1:], draws)
        return heads, tails


def batch_loss(
    model: KGEModel, cfg: KGEConfig, batch: Triples, heads: np.ndarray, tails: np.ndarray
) -> tuple[float, dict[str, torch.Tensor]]:
    return model.loss_and_grads(
        torch.from_numpy(batch.rel), torch.from_numpy(heads), torch.from_numpy(tails), cfg.loss_fn()
    )


def rng_for(seed: int, day: int, epoch: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, day & 0xFFFFFFFF, epoch, salt]))


def fit(
    model: KGEModel,
    triples: Triples,
    cfg: KGEConfig,
    epochs: int,
    day: int,
    sampler: NegativeSampler | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Train `epochs` passes over `triples` (shuffled per epoch). Returns {"losses": per-epoch mean loss,
    "n_triples", "epochs", "seconds", "edges_per_s"} (edges = positive triples processed)."""
    sampler = sampler or NegativeSampler(model, triples, cfg)
    losses: list[float] = []
    t0 = time.perf_counter()
    n = len(triples)
    for epoch in range(epochs):
        rng = rng_for(cfg.seed, day, epoch)
        order = rng.permutation(n)
        total, seen = 0.0, 0
        for lo in range(0, n, cfg.batch_size):
            b = triples.take(order[lo : lo + cfg.batch_size])
            heads, tails = sampler.sample(b, cfg.negatives, rng)
            loss, grads = batch_loss(model, cfg, b, heads, tails)
            model.apply(grads, cfg.lr)
            total += loss * len(b)
            seen += len(b)
        losses.append(total / max(seen, 1))
        progress("kge", epoch + 1, epochs)
        log.debug("epoch %d: loss %.4f", epoch, losses[-1])
    secs = time.perf_counter() - t0
    return {
        "losses": losses,
        "n_triples": n,
        "epochs": epochs,
        "seconds": secs,
        "edges_per_s": (n * epochs / secs) if secs > 0 else None,
    }


def new_model(cfg: KGEConfig, edges: pa.Table, day: int) -> KGEModel:
    """A freshly initialised model over the entities and relations of `edges` (seeded by seed and day)."""
    rels = graph_relations(edges)
    if not rels:
        raise DermError("the graph has no edges: nothing to train on")
    g = torch.Generator().manual_seed(int(rng_for(cfg.seed, day, -1 & 0xFFFF, 1).integers(2**62)))
    anchor = cfg.anchor if cfg.model is ModelKind.TRANSRA else None
    if anchor is not None and anchor not in rels:
        raise DermError(f"transra: the anchor relation {anchor.value} has no edges in this graph")
    return KGEModel(cfg.model, rels, EntityIndex(graph_ids(edges)), cfg.dim, cfg.k, anchor, g)


def train_scratch(
    cfg: KGEConfig, edges: pa.Table, day: int, progress: Progress = no_progress
) -> tuple[KGEModel, dict[str, Any]]:
    model = new_model(cfg, edges, day)
    stats = fit(model, to_triples(model, edges), cfg, cfg.epochs, day, progress=progress)
    stats["mode"] = "scratch"
    return model, stats


def train_increment(
    model: KGEModel,
    cfg: KGEConfig,
    edges: pa.Table,
    day: int,
    since_ts: int,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """One incremental step in place: add the graph's new nodes, then train on the edges updated at or after
    `since_ts` (the parent's cutoff) plus replay_ratio times as many older edges, sampled uniformly."""
    g = torch.Generator().manual_seed(int(rng_for(cfg.seed, day, -1 & 0xFFFF, 2).integers(2**62)))
    n_new = model.grow(graph_ids(edges), g)
    triples = to_triples(model, edges)
    fresh = edges.column("last_ts").to_numpy() >= since_ts
    old = np.flatnonzero(~fresh)
    n_replay = min(len(old), int(round(cfg.replay_ratio * int(fresh.sum()))))
    replay = np.sort(rng_for(cfg.seed, day, -1 & 0xFFFF, 3).choice(old, n_replay, replace=False))
    chosen = np.sort(np.r_[np.flatnonzero(fresh), replay]).astype(np.int64)
    sampler = NegativeSampler(model, triples, cfg)
    stats = fit(model, triples.take(chosen), cfg, cfg.incremental_epochs, day, sampler, progress)
    stats.update(mode="incremental", n_new_nodes=n_new, n_fresh=int(fresh.sum()), n_replay=n_replay)
    return stats


def since_ts_of(parent_day: int) -> int:
    """The first second after the parent version's events (its cutoff)."""
    return (int(parent_day) + 1) * SECONDS_PER_DAY
