"""KGE models behind one small interface: TransE, TransR and TransRA (TransR with an anchor space).

Score functions (higher = more plausible), for head / tail entity vectors h, t in R^d:

    TransE   f_r(h, t) = -|| h + r - t ||_2                                       r in R^d
    TransR   f_r(h, t) = -|| c(M_r h) + r - c(M_r t) ||_2                         r in R^k, M_r in R^{k x d}
    TransRA  as TransR, with M_a = I (fixed, not a parameter) for the anchor relation a

c(x) = x * min(1, 1 / ||x||) clamps a projected vector into the unit ball (PyKEEN's TransR convention, after
Lin et al. 2015). After every update, entity rows and relation vectors are clamped to norm <= 1 as well.

TransRA, our reading of arXiv 2508.02609 (only its summary is available): TransR gives every relation its own
space, so an entity vector by itself lives in no space where any relation is a translation; a downstream model
would need a per-relation projection to use it. TransRA designates one relation, the *anchor* (by default
user_clicked_ad, the densest onsite signal and the one the ranker predicts), whose projection is the identity:
entity vectors live in the space where that relation is a translation, user + r_a ~ ad, and the ranker consumes
them directly. Every other relation keeps TransR's learned projection from that space. The anchor requires
k = d. Every M_r starts as the identity (Lin et al. initialise TransR from TransE), so at initialisation
TransR, TransRA and TransE (with the same vectors) score alike; they differ in what training may change.

Entities of all node types share one table `entity` [N, d]; the rows of type T are `offsets[T] ..
offsets[T] + len(ids[T])`, row order = the order of `ids[T]` (int64 ids, first seen first: an incremental step
appends new ids, so existing rows keep their place within their type).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import numpy as np
import torch
import torch.nn.functional as F

from adgraph.graph import RELATION_TYPES, NodeType, Relation
from dermcore.errors import DermError

#: loss(positive scores float32[B], negative scores float32[B, n]) -> scalar
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ModelKind(StrEnum):
    TRANSE = "transe"
    TRANSR = "transr"
    TRANSRA = "transra"


def clamp_norm(x: torch.Tensor, maxnorm: float = 1.0) -> torch.Tensor:
    """x scaled into the ball of radius `maxnorm` along the last axis (unchanged when already inside)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x * (maxnorm / norm.clamp_min(maxnorm))


def transe_score(h: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """-||h + r - t||_2 over the last axis; h, r, t broadcastable (..., d) -> (...)."""
    return -torch.linalg.vector_norm(h + r - t, dim=-1)


def transr_score(h: torch.Tensor, r: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """-||c(M h) + r - c(M t)||_2: h, t (..., d); r (..., k); m (..., k, d) broadcastable -> (...)."""
    hp = clamp_norm(torch.einsum("...kd,...d->...k", m, h))
    tp = clamp_norm(torch.einsum("...kd,...d->...k", m, t))
    return -torch.linalg.vector_norm(hp + r - tp, dim=-1)


class EntityIndex:
    """int64 ids per node type -> global rows of the entity table (and back)."""

    def __init__(self, ids: dict[NodeType, np.ndarray]) -> None:
        self.types = tuple(t for t in NodeType if t in ids)
        self.ids = {t: np.asarray(ids[t], np.int64) for t in self.types}
        self.offsets: dict[NodeType, int] = {}
        n = 0
        for t in self.types:
            if len(np.unique(self.ids[t])) != len(self.ids[t]):
                raise DermError(f"entity index: duplicate {t.value} ids")
            self.offsets[t] = n
            n += len(self.ids[t])
        self.n = n
        self._sorted = {t: np.argsort(self.ids[t], kind="stable") for t in self.types}

    def count(self, t: NodeType) -> int:
        return len(self.ids.get(t, ()))

    def rows(self, t: NodeType, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(global rows int64[n], found bool[n]) of `ids` of type `t`; rows of unknown ids are -1."""
        q = np.asarray(ids, np.int64)
        if t not in self.ids or len(self.ids[t]) == 0:
            return np.full(q.shape, -1, np.int64), np.zeros(q.shape, bool)
        order = self._sorted[t]
        srt = self.ids[t][order]
        pos = np.searchsorted(srt, q).clip(0, len(srt) - 1)
        found = srt[pos] == q
        return np.where(found, order[pos] + self.offsets[t], -1).astype(np.int64), found

    def extended(self, new: dict[NodeType, np.ndarray]) -> tuple[EntityIndex, np.ndarray]:
        """(index with the ids of `new` not yet known appended per type, int64[self.n] new row of each old
        row)."""
        ids: dict[NodeType, np.ndarray] = {}
        for t in NodeType:
            old = self.ids.get(t, np.zeros(0, np.int64))
            add = np.asarray(new.get(t, np.zeros(0, np.int64)), np.int64)
            add = np.unique(add[~np.isin(add, old)])
            if len(old) or len(add):
                ids[t] = np.concatenate([old, add])
        out = EntityIndex(ids)
        moved = np.concatenate(
            [out.offsets[t] + np.arange(self.count(t), dtype=np.int64) for t in self.types]
            or [np.zeros(0, np.int64)]
        )
        return out, moved


class KGEModel:
    """Parameters of a TransE / TransR / TransRA model and their row-wise Adagrad state.

    entity float32[N, d] (sparse updates), relation float32[R, k], projection float32[R, k, d] (TransR and
    TransRA; the anchor's row is the identity and never updated). Scores: `score(rel, h, t)` with rel int64[B]
    and h, t int64[B, m] global entity rows -> float32[B, m].
    """

    def __init__(
        self,
        kind: ModelKind,
        relations: tuple[Relation, ...],
        index: EntityIndex,
        dim: int,
        relation_dim: int,
        anchor: Relation | None,
        generator: torch.Generator,
    ) -> None:
        self.kind = ModelKind(kind)
        self.relations = tuple(Relation(r) for r in relations)
        self.index = index
        self.dim = int(dim)
        self.relation_dim = int(relation_dim)
        if self.kind is not ModelKind.TRANSR and self.relation_dim != self.dim:
            raise DermError(f"{self.kind.value}: relation_dim must equal dim")
        self.anchor = anchor if self.kind is ModelKind.TRANSRA else None
        if self.kind is ModelKind.TRANSRA and (anchor is None or anchor not in self.relations):
            raise DermError(f"transra: anchor relation {anchor} is not among the relations {self.relations}")
        R, k, d = len(self.relations), self.relation_dim, self.dim
        self.entity = random_rows(index.n, d, generator)
        self.entity_state = torch.zeros(index.n)
        self.relation = clamp_norm(torch.randn(R, k, generator=generator) / np.sqrt(k))
        self.relation_state = torch.zeros(R, k)
        if self.kind is ModelKind.TRANSE:
            self.projection = torch.zeros(0, k, d)
        else:
            self.projection = torch.eye(k, d).repeat(R, 1, 1)
        self.projection_state = torch.zeros_like(self.projection)
        self.anchor_mask = torch.tensor([r == self.anchor for r in self.relations], dtype=torch.bool)

    # -- scoring --------------------------------------------------------------------------------------------
    def projections(self, projection: torch.Tensor | None = None) -> torch.Tensor:
        """float32[R, k, d]: every relation's projection, the anchor's exactly the identity."""
        p = self.projection if projection is None else projection
        if self.anchor is None:
            return p
        eye = torch.eye(self.relation_dim, self.dim).expand_as(p)
        return torch.where(self.anchor_mask[:, None, None], eye, p)

    def score_vectors(
        self,
        rel: torch.Tensor,
        h: torch.Tensor,
        t: torch.Tensor,
        relation: torch.Tensor,
        projection: torch.Tensor,
    ) -> torch.Tensor:
        """Scores of entity vectors h, t (B, m, d) under relations rel int64[B] -> (B, m)."""
        r = relation[rel][:, None, :]
        if self.kind is ModelKind.TRANSE:
            return transe_score(h, r, t)
        return transr_score(h, r, t, self.projections(projection)[rel][:, None, :, :])

    def score(self, rel: torch.Tensor, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """float32[B, m] scores of global entity rows h, t int64[B, m] under rel int64[B] (no gradient)."""
        with torch.no_grad():
            return self.score_vectors(rel, self.entity[h], self.entity[t], self.relation, self.projection)

    def loss_and_grads(
        self, rel: torch.Tensor, h: torch.Tensor, t: torch.Tensor, loss_fn: LossFn
    ) -> tuple[float, dict[str, torch.Tensor]]:
        """Loss of a batch whose column 0 is the positive and columns 1.. its negatives (h, t int64[B, 1+n]),
        and its gradients: entity (sparse COO [N, d]), relation, projection (dense)."""
        ent = self.entity.detach().requires_grad_(True)
        relv = self.relation.detach().requires_grad_(True)
        proj = self.projection.detach().requires_grad_(self.kind is not ModelKind.TRANSE)
        hv = F.embedding(h, ent, sparse=True)
        tv = F.embedding(t, ent, sparse=True)
        s = self.score_vectors(rel, hv, tv, relv, proj)
        loss = loss_fn(s[:, 0], s[:, 1:])
        loss.backward()
        assert ent.grad is not None and relv.grad is not None
        grads = {"entity": ent.grad, "relation": relv.grad}
        if self.kind is not ModelKind.TRANSE:
            assert proj.grad is not None
            grads["projection"] = proj.grad
        return float(loss.detach()), grads

    # -- updates --------------------------------------------------------------------------------------------
    def apply(self, grads: dict[str, torch.Tensor], lr: float, eps: float = 1e-10) -> None:
        """Adagrad step: row-wise for entities (one accumulator per row, only rows in the batch move), then
        the norm constraints (entity rows and relation vectors in the unit ball)."""
        g = grads["entity"].coalesce()
        rows = g.indices()[0]
        vals = g.values()
        if len(rows):
            self.entity_state[rows] += (vals * vals).mean(dim=1)
            step = vals / (self.entity_state[rows].sqrt() + eps)[:, None]
            self.entity[rows] = clamp_norm(self.entity[rows] - lr * step)
        gr = grads["relation"]
        self.relation_state += gr * gr
        self.relation = clamp_norm(self.relation - lr * gr / (self.relation_state.sqrt() + eps))
        if "projection" in grads:
            gp = grads["projection"]
            if self.anchor is not None:
                gp = gp.masked_fill(self.anchor_mask[:, None, None], 0.0)
            self.projection_state += gp * gp
            self.projection = self.projection - lr * gp / (self.projection_state.sqrt() + eps)

    def grow(self, new: dict[NodeType, np.ndarray], generator: torch.Generator) -> int:
        """Add the ids of `new` not yet known (random unit-ball rows, zero optimiser state); returns how many."""
        index, moved = self.index.extended(new)
        n_new = index.n - self.index.n
        if n_new == 0:
            return 0
        entity = random_rows(index.n, self.dim, generator)
        state = torch.zeros(index.n)
        mv = torch.from_numpy(moved)
        entity[mv] = self.entity
        state[mv] = self.entity_state
        self.entity, self.entity_state, self.index = entity, state, index
        return n_new

    # -- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "entity": self.entity,
            "entity_state": self.entity_state,
            "relation": self.relation,
            "relation_state": self.relation_state,
            "projection": self.projection,
            "projection_state": self.projection_state,
        }

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        for k in STATE_KEYS:
            setattr(self, k, sd[k].clone())

    def relation_scores(
        self, rel: Relation, head_ids: np.ndarray, tail_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(float32[n] scores f_rel(head, tail), found bool[n]) of int64 id pairs (head / tail of the relation's
        node types), from the model's own vectors (not the store's unit-norm ones), relation vector and
        projection. found: both entities and the relation are in the model; other rows score 0."""
        rel = Relation(rel)
        n = len(head_ids)
        out = np.zeros(n, np.float32)
        if rel not in self.relations:
            return out, np.zeros(n, bool)
        ht, tt = relation_types(rel)
        h, fh = self.index.rows(ht, np.asarray(head_ids, np.int64))
        t, ft = self.index.rows(tt, np.asarray(tail_ids, np.int64))
        found = fh & ft
        if found.any():
            r = torch.full((int(found.sum()),), self.relations.index(rel), dtype=torch.long)
            s = self.score(r, torch.from_numpy(h[found])[:, None], torch.from_numpy(t[found])[:, None])
            out[found] = s[:, 0].numpy()
        return out, found

    def entity_vectors(self, t: NodeType, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(float32[n, d] entity vectors of `ids` of type `t`, found bool[n]); unknown ids give zero rows.
        For TransRA these are vectors in the anchor space."""
        rows, found = self.index.rows(t, ids)
        out = np.zeros((len(rows), self.dim), np.float32)
        out[found] = self.entity[torch.from_numpy(rows[found])].numpy()
        return out, found


STATE_KEYS = ("entity", "entity_state", "relation", "relation_state", "projection", "projection_state")


def random_rows(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """float32[n, d]: random directions of norm 0.5 (inside the unit ball, room to move both ways)."""
    x = torch.randn(n, d, generator=generator)
    return 0.5 * x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)


def relation_types(rel: Relation) -> tuple[NodeType, NodeType]:
    return RELATION_TYPES[Relation(rel)]
