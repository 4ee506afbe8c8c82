"""Filtered link prediction on held-out edges (the standard KGE protocol, per relation).

For each held-out triple (h, r, t) both of whose entities the model knows, the tail is ranked among every
entity of the tail's type by f_r(h, .), and the head among every entity of the head's type by f_r(., t).
Filtered: other true answers (edges of the training graph or of the held-out set) are removed from the
candidates before ranking. Ties count half (rank = 1 + #better + #equal / 2). MRR = mean 1 / rank and
Hits@10 = share of ranks <= 10, over both sides of every evaluated triple.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from adgraph.graph import Relation
from adgraph.models import KGEModel, ModelKind, clamp_norm, relation_types


def _key(h: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.stack([h, t], 1)


def _project(model: KGEModel, ri: int, x: torch.Tensor) -> torch.Tensor:
    if model.kind is ModelKind.TRANSE:
        return x
    return clamp_norm(x @ model.projections()[ri].T)


def held_out_edges(train: pa.Table, later: pa.Table) -> pa.Table:
    """Edges of `later` whose (relation, head, tail) is absent from `train` (new links, not repeats)."""

    def keys(t: pa.Table) -> pa.Array:
        return pc.binary_join_element_wise(
            t.column("relation"),
            pc.cast(t.column("head_id"), pa.string()),
            pc.cast(t.column("tail_id"), pa.string()),
            ":",
        )

    return later.filter(pc.invert(pc.is_in(keys(later), value_set=keys(train))))


#: scorer(relation index, tail side?, query rows int64[q]) -> float scores [q, n candidates of that side's type]
Scorer = Callable[[int, bool, np.ndarray], np.ndarray]


def link_prediction(
    model: KGEModel,
    train: pa.Table,
    test: pa.Table,
    max_per_relation: int = 2000,
    seed: int = 0,
    scorer: Scorer | None = None,
) -> dict[str, Any]:
    """Filtered MRR and Hits@10 per relation and over all evaluated ranks (micro). `test`: held-out edges.
    `scorer` replaces the model's scores (e.g. `popularity_scorer`); the model still names the entities.

    Returns {"mrr", "hits_at_10", "n_ranks", "per_relation": {rel: {"n_test", "n_unknown_entity", "n_evaluated",
    "mrr", "hits_at_10", "mrr_tail", "mrr_head"}}}."""
    rng = np.random.default_rng(seed)
    all_ranks: list[np.ndarray] = []
    per: dict[str, Any] = {}
    for ri, rel in enumerate(model.relations):
        ht, tt = relation_types(rel)
        te = test.filter(pc.equal(test.column("relation"), rel.value))
        if te.num_rows == 0:
            continue
        h_rows, h_ok = model.index.rows(ht, te.column("head_id").to_numpy())
        t_rows, t_ok = model.index.rows(tt, te.column("tail_id").to_numpy())
        ok = np.flatnonzero(h_ok & t_ok)
        entry: dict[str, Any] = {"n_test": te.num_rows, "n_unknown_entity": int(te.num_rows - len(ok))}
        if len(ok) > max_per_relation:
            ok = np.sort(rng.choice(ok, max_per_relation, replace=False))
        entry["n_evaluated"] = int(len(ok))
        if len(ok) == 0:
            per[rel.value] = entry
            continue
        # every true (h, t) of this relation, in rows, for filtering
        tr = train.filter(pc.equal(train.column("relation"), rel.value))
        th, _ = model.index.rows(ht, np.r_[tr.column("head_id").to_numpy(), te.column("head_id").to_numpy()])
        tt_rows, _ = model.index.rows(
            tt, np.r_[tr.column("tail_id").to_numpy(), te.column("tail_id").to_numpy()]
        )
        true = _key(th, tt_rows)
        true = true[(true >= 0).all(1)]
        qh, qt = h_rows[ok], t_rows[ok]
        score = scorer or model_scorer(model)
        ranks_t = _rank_side(model, ri, rel, qh, qt, true, True, score)
        ranks_h = _rank_side(model, ri, rel, qh, qt, true, False, score)
        r = np.r_[ranks_t, ranks_h]
        all_ranks.append(r)
        entry.update(
            mrr=float(np.mean(1.0 / r)),
            hits_at_10=float(np.mean(r <= 10)),
            mrr_tail=float(np.mean(1.0 / ranks_t)),
            mrr_head=float(np.mean(1.0 / ranks_h)),
        )
        per[rel.value] = entry
    ranks = np.concatenate(all_ranks) if all_ranks else np.zeros(0)
    return {
        "mrr": float(np.mean(1.0 / ranks)) if len(ranks) else None,
        "hits_at_10": float(np.mean(ranks <= 10)) if len(ranks) else None,
        "n_ranks": int(len(ranks)),
        "per_relation": per,
    }


def model_scorer(model: KGEModel) -> Scorer:
    """The model's f_r against every candidate of the ranked side's type."""

    def score(ri: int, tail: bool, rows: np.ndarray) -> np.ndarray:
        ht, tt = relation_types(model.relations[ri])
        ctype = tt if tail else ht
        lo, n = model.index.offsets[ctype], model.index.count(ctype)
        with torch.no_grad():
            cand = _project(model, ri, model.entity[lo : lo + n])  # (n, k)
            r = model.relation[ri]
            q = _project(model, ri, model.entity[torch.from_numpy(rows)])
            # tail: f = -||p(h) + r - p(c)||; head: f = -||p(c) + r - p(t)|| = -||p(c) - (p(t) - r)||
            q = q + r if tail else q - r
            d = torch.cdist(q[None], cand[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
        return (-d).numpy()

    return score


def popularity_scorer(model: KGEModel, train: pa.Table) -> Scorer:
    """A baseline: every candidate scored by its degree in `train` within the relation (same for all queries)."""

    def score(ri: int, tail: bool, rows: np.ndarray) -> np.ndarray:
        rel = model.relations[ri]
        ht, tt = relation_types(rel)
        ctype = tt if tail else ht
        e = train.filter(pc.equal(train.column("relation"), rel.value))
        cand, ok = model.index.rows(ctype, e.column("tail_id" if tail else "head_id").to_numpy())
        lo, n = model.index.offsets[ctype], model.index.count(ctype)
        deg = np.bincount(cand[ok] - lo, minlength=n).astype(np.float64)
        return np.broadcast_to(deg, (len(rows), n))

    return score


def _rank_side(
    model: KGEModel,
    ri: int,
    rel: Relation,
    qh: np.ndarray,
    qt: np.ndarray,
    true: np.ndarray,
    tail: bool,
    score: Scorer,
) -> np.ndarray:
    """float64[q] filtered ranks of the tails (tail=True) or heads of the query triples."""
    ht, tt = relation_types(rel)
    lo = model.index.offsets[tt if tail else ht]
    fixed = qh if tail else qt
    scores = score(ri, tail, fixed)
    target = (qt if tail else qh) - lo
    out = np.empty(len(target))
    # the other true answers of each query, removed before ranking
    kcol, acol = (0, 1) if tail else (1, 0)
    order = np.lexsort((true[:, acol], true[:, kcol]))
    keys, answers = true[order, kcol], true[order, acol]
    for i in range(len(target)):
        a, b = np.searchsorted(keys, fixed[i]), np.searchsorted(keys, fixed[i], side="right")
        s = np.array(scores[i], np.float64)
        s_true = s[target[i]]
        others = answers[a:b] - lo
        s[others[others != target[i]]] = -np.inf
        out[i] = 1 + np.sum(s > s_true) + 0.5 * (np.sum(s == s_true) - 1)
    return out
