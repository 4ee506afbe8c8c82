"""Why the KGE path gained so little CVR ROC-AUC in kge_ranker.json (issue 14), measured on its own rows.

Data: kge_ranker.py's synthetic log and split (train days 20004-20008, test days 20009-20011); test rows are the
clicked test impressions (CVR is post-click). Each figure is an ROC-AUC on those rows twice: `realised` (the
few realised conversions) and `oracle` (each row a positive with its true P(conversion | click), a negative
with the rest: `adgraph.offsite.weighted_auc`, free of label noise).

1. `ceiling`: how much CVR information offsite data can carry at all (`adgraph.offsite.conversion_terms`): the
   oracle's P(conversion | click); the logit without the conversion-specific term (who converts where); that
   plus the expected term given the user x advertiser affinity a exactly (any offsite signal's ceiling); a
   alone; the user's offsite conversion count on the advertiser before the row's day.
2. `kge_configs`: what the KGE learns of a, per config (scratch on the graph version of day 20010, seed 0):
   Pearson r of the offsite score f(user, converted_offsite, advertiser) with a on 20,000 random (user,
   advertiser) pairs; r of the advertisers' KGE cosine with their true conversion-factor cosine over all
   advertiser pairs; next-day filtered MRR (the new edges of day 20011; popularity beside).
3. `lineage_scores`: the KGE versions kge_ranker's rows read (from scratch on day 20002, then one increment a
   day), under the old default (uniform negatives, lr 0.01) and the new one (degree-weighted, lr 0.1): each
   relation score alone; the attention proxy (mean cosine of the candidate's advertiser with the user's
   offsite-converted advertisers, store vectors, as the attention block starts), beside the same proxy with
   the true advertiser conversion factors.
4. `wide_part`: the ranker's fitted wide part alone (`ranking.train.start_ranker`, before the deep part
   trains), without and with the KGE relation scores of each lineage: CTR and CVR ROC-AUC on the test rows.
5. `ranker_variants` (seed 0, the same rows as kge_ranker, `kge_ranker.run_arms`): what more deep training or a
   larger KGE table learning rate gives: none and finetune_attention_no_scores at 3 epochs; the latter at
   kge_lr 0.01 (kge_ranker: 1 epoch, kge_lr = lr = 0.002).
Usage: python benchmarks/kge_signal.py   (writes benchmarks/results/kge_signal.json)
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
from common import write_result
from kge_ranker import SEEDS, SYNTH, WORK, prepare, run_arms, split_days

from adgraph.evaluate import held_out_edges, link_prediction, popularity_scorer
from adgraph.family import kge_family
from adgraph.graph import GraphConfig, GraphVersion, NodeType, Relation, build_edges, graph_dir
from adgraph.models import KGEModel, ModelKind
from adgraph.offsite import _pair_counts, conversion_terms, weighted_auc
from adgraph.train import KGEConfig, Loss, Sampling, train_scratch
from adslog.dataset import Dataset
from adslog.oracle import Oracle, roc_auc
from adslog.sequences import ActivityLog, AdvertiserMap
from adslog.synth import generate
from adslog.workspace import Workspace, version_name
from dermfeatures.batches import ImpressionArrays, Inputs
from embstore.store import embeddings_dir, open_version
from ranking.kge import KGELookup, Neighbours, kge_dim
from ranking.model import KGE_SCORES, RankerConfig
from ranking.train import RankerRows, new_snapshot, predict, ranker_spec, start_ranker

HERE = WORK.parent / "kge_signal"
#: the KGE configs compared; `before` and `now` also get a daily lineage (section 3)
OLD = KGEConfig(sampling=Sampling.UNIFORM, lr=0.01)
NOW = KGEConfig()
CONFIGS = {
    "before_uniform_lr0.01": OLD,
    "degree_lr0.01": replace(OLD, sampling=Sampling.DEGREE),
    "now_degree_lr0.1": NOW,
    "softmax_uniform_lr0.01": replace(OLD, loss=Loss.SOFTMAX),
    "softmax_degree_lr0.01": replace(OLD, loss=Loss.SOFTMAX, sampling=Sampling.DEGREE),
    "transr_before": replace(OLD, model=ModelKind.TRANSR),
    "transr_now": replace(NOW, model=ModelKind.TRANSR),
}
LINEAGES = {"before_uniform_lr0.01": OLD, "now_degree_lr0.1": NOW}
BASE = RankerConfig(derm_inputs=(), token_dim=8, hidden=(32,), cross_rank=16, seq_heads=1, seq_len=20)
L = 20  # neighbours of the attention proxy (RankerConfig.kge_neighbours)


def both(score: np.ndarray, p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"oracle": weighted_auc(score, p, 1 - p), "realised": roc_auc(score, y)}


def ceiling(ds: Dataset, a: ImpressionArrays, surface: np.ndarray, y: np.ndarray) -> tuple[dict, dict]:
    t = conversion_terms(ds, a.user_id, a.ad_id, a.day, surface)
    p = t["p_conv"]
    adv = AdvertiserMap.from_dataset(ds)(a.ad_id)
    off = ds.table("offsite_conversions", ["user_id", "advertiser_id", "ts"])
    n_off = np.zeros(len(a))
    for d in np.unique(a.day):
        m = a.day == d
        o = off.filter(pc.less(off.column("ts"), int(d) * 86400))
        n_off[m] = _pair_counts(
            o.column("user_id").to_numpy(), o.column("advertiser_id").to_numpy(), a.user_id[m], adv[m]
        )
    out = {
        "oracle_p_conv": both(p, p, y),
        "logit_without_conversion_term": both(t["logit_without"], p, y),
        "logit_with_offsite_ceiling": both(t["logit_with_offsite"], p, y),
        "affinity_a_alone": both(t["affinity"], p, y),
        "offsite_count_alone": both(n_off, p, y),
        "share_with_offsite_history": float((n_off > 0).mean()),
    }
    return out, t


def random_pairs(ds: Dataset, n: int = 20_000) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user ids, advertiser ids, a, advertiser conversion factors of every advertiser) for random pairs."""
    o = Oracle.load(ds.root)
    t = o.truth
    rng = np.random.default_rng(0)
    urow = rng.integers(0, len(o.user_ids), n)
    vrow = rng.integers(0, len(t.advertiser_ids), n)
    c = t.user_conv.shape[1]
    a = np.einsum("nc,nc->n", t.user_conv[urow], t.advertiser_conv[vrow]) / np.sqrt(c)
    return o.user_ids[urow], t.advertiser_ids[vrow], a, t.advertiser_conv


def config_row(model: KGEModel, pairs: tuple, adv_ids: np.ndarray, train: Any, test: Any) -> dict[str, Any]:
    users, advs, a, adv_conv = pairs
    s, f = model.relation_scores(Relation.USER_CONVERTED_OFFSITE_ADVERTISER, users, advs)
    vecs, fv = model.entity_vectors(NodeType.ADVERTISER, adv_ids)
    vn = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    cn = adv_conv / np.linalg.norm(adv_conv, axis=1, keepdims=True)
    iu = np.triu_indices(len(vn), 1)
    k = fv[iu[0]] & fv[iu[1]]
    lp = link_prediction(model, train, test)
    return {
        "offsite_score_r_with_a": float(np.corrcoef(s[f], a[f])[0, 1]),
        "pairs_found": float(f.mean()),
        "advertiser_cosine_r_with_conversion_factor_cosine": float(
            np.corrcoef((vn @ vn.T)[iu][k], (cn @ cn.T)[iu][k])[0, 1]
        ),
        "next_day_mrr": lp["mrr"],
        "next_day_mrr_by_relation": {
            r: v.get("mrr") for r, v in lp["per_relation"].items() if v.get("mrr") is not None
        },
    }


def lineage_scores(
    ws: Workspace,
    ds: Dataset,
    a: ImpressionArrays,
    p: np.ndarray,
    y: np.ndarray,
    affinity: np.ndarray,
    adv_conv_true: np.ndarray,
) -> dict[str, Any]:
    adv = AdvertiserMap.from_dataset(ds)(a.ad_id)
    out: dict[str, Any] = {}
    for model in (ModelKind.TRANSRA, ModelKind.TRANSR):
        lk = KGELookup(ws, ds, kge_family(model), ("user",), scores=KGE_SCORES)
        f = lk.score_features(a)
        e: dict[str, Any] = {}
        for r in KGE_SCORES:
            s, found = f[f"kge_score_{r}"].astype(np.float64), f[f"kge_score_{r}_found"] > 0
            s = np.where(found, s, s[found].mean())  # unknown pairs: the mean, no information
            e[r] = {
                **both(s, p, y),
                "found": float(found.mean()),
                "r_with_a": float(np.corrcoef(s[found], affinity[found])[0, 1]),
            }
        # the attention proxy: mean cosine of the candidate's advertiser with the offsite neighbours
        fam = kge_family(model)
        prox = np.zeros(len(a))
        for d in np.unique(a.day):
            m = np.flatnonzero(a.day == d)
            sv = open_version(embeddings_dir(ws, fam), ws.version_before(embeddings_dir(ws, fam), int(d)))
            g = GraphVersion(graph_dir(ws) / version_name(sv.day))
            nb = Neighbours(g, (Relation.USER_CONVERTED_OFFSITE_ADVERTISER.value,)).matrix(a.user_id[m], L)
            cand, _ = sv.lookup("advertiser", adv[m])
            vecs, fv = sv.lookup("advertiser", np.where(nb >= 0, nb, 0).ravel())
            fv = fv.reshape(nb.shape) & (nb >= 0)
            sim = np.einsum("nld,nd->nl", vecs.reshape(*nb.shape, -1), cand) * fv
            prox[m] = sim.sum(1) / np.maximum(fv.sum(1), 1)
        e["attention_proxy_store_vectors"] = both(prox, p, y)
        out[model.value] = e
    # the same proxy with the true advertiser conversion factors: the attention path's ceiling
    o = Oracle.load(ds.root).truth
    row_of = {int(x): i for i, x in enumerate(o.advertiser_ids)}
    cn = adv_conv_true / np.linalg.norm(adv_conv_true, axis=1, keepdims=True)
    prox = np.zeros(len(a))
    for d in np.unique(a.day):
        m = np.flatnonzero(a.day == d)
        g = GraphVersion(graph_dir(ws) / version_name(int(d) - 1))
        nb = Neighbours(g, (Relation.USER_CONVERTED_OFFSITE_ADVERTISER.value,)).matrix(a.user_id[m], L)
        rows = np.vectorize(lambda x: row_of.get(int(x), -1))(nb) if nb.size else nb
        ok = rows >= 0
        cand = cn[np.array([row_of[int(x)] for x in adv[m]])]
        sim = np.einsum("nld,nd->nl", cn[np.maximum(rows, 0)], cand) * ok
        prox[m] = sim.sum(1) / np.maximum(ok.sum(1), 1)
    out["attention_proxy_true_factors"] = both(prox, p, y)
    return out


def wide_part(ws: Workspace, ds: Dataset, split: dict[str, list[int]]) -> dict[str, Any]:
    """CTR / CVR ROC-AUC on the test rows of the fitted wide part alone, without and with KGE scores."""
    spec = ranker_spec(ds, split["train"], BASE)
    inputs = Inputs(ds, spec, ActivityLog.from_dataset(ds, split["test"][-1]), BASE.seq_len)
    cutoff = (split["train"][-1] + 1) * 86400
    a_tr = inputs.impressions(split["train"], label_cutoff_ts=cutoff)
    a_te = inputs.impressions(split["test"])
    c = a_te.click > 0

    def run(cfg: RankerConfig, lk: KGELookup | None) -> dict[str, Any]:
        dim = kge_dim(ws, cfg.kge_family)
        snap = new_snapshot(spec, cfg, 0, torch.device("cpu"), dim)
        tr = RankerRows(inputs, a_tr, {} if lk is None else lk.features(a_tr, dim))
        te = RankerRows(inputs, a_te, {} if lk is None else lk.features(a_te, dim))
        rec = start_ranker(snap, inputs, tr, split["train"], cutoff, kge=lk)
        p = predict(snap.ranker, te)
        assert rec is not None
        return {
            "ctr_roc_auc": roc_auc(p[:, 0], a_te.click),
            "cvr_roc_auc": roc_auc(p[c, 1], a_te.conversion[c]),
            "l2": rec["l2"],
            "cvr_dense_weights": rec.get("cvr_dense_weights"),
        }

    out = {"none": run(BASE, None)}
    fam = kge_family(ModelKind.TRANSRA)
    for name in ("offsite", "all"):
        rels = KGE_SCORES[:1] if name == "offsite" else KGE_SCORES
        cfg = replace(BASE, kge_family=fam, kge_scores=rels)
        out[f"transra_scores_{name}"] = run(cfg, KGELookup(ws, ds, fam, cfg.kge_inputs, scores=rels))
    return out


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = WORK / "synthetic"
    if not (data / "manifest.json").exists():
        generate(SYNTH, data)
    ds = Dataset.open(data)
    split = split_days(ds.days(), 5, 3)
    result: dict[str, Any] = {
        "command": "python benchmarks/kge_signal.py",
        "protocol": __doc__,
        "days": split,
        "configs": {k: v.to_json() for k, v in CONFIGS.items()},
    }
    # the test rows: clicked impressions of the test days
    ev = ds.impressions(split["test"], ["ts", "day", "user_id", "ad_id", "click", "conversion", "surface"])
    ev = ev.filter(pc.equal(ev.column("click"), 1))
    col = {k: ev.column(k).to_numpy() for k in ev.column_names}
    n = len(col["ts"])
    a = ImpressionArrays(
        col["user_id"].astype(np.int64), col["ad_id"].astype(np.int64), col["ts"].astype(np.int64),
        col["day"].astype(np.int32), np.ones(n, np.float32), col["conversion"].astype(np.float32),
        np.zeros((n, 0), np.int64), np.zeros((n, 0), np.int64),
    )  # fmt: skip
    surface = col["surface"].astype(np.int64)
    y = a.conversion
    result["n_test_clicks"], result["n_test_conversions"] = len(a), int(y.sum())
    result["ceiling"], terms = ceiling(ds, a, surface, y)
    p = terms["p_conv"]
    print("ceiling", {k: v for k, v in result["ceiling"].items()}, flush=True)
    # 2: scratch models per config on the last KGE day's graph, next-day link prediction
    last = split["kge"][-1]
    train = build_edges(ds, last, GraphConfig())[0]
    test = held_out_edges(train, build_edges(ds, last + 1, GraphConfig())[0])
    pairs = random_pairs(ds)
    adv_ids = Oracle.load(ds.root).truth.advertiser_ids
    result["kge_configs"] = {}
    model = None
    for name, cfg in CONFIGS.items():
        t1 = time.perf_counter()
        model, stats = train_scratch(cfg, train, last)
        result["kge_configs"][name] = {
            **config_row(model, pairs, adv_ids, train, test),
            "train_seconds": round(stats["seconds"], 1),
        }
        print(name, result["kge_configs"][name], round(time.perf_counter() - t1, 1), "s", flush=True)
    assert model is not None
    pop = link_prediction(model, train, test, scorer=popularity_scorer(model, train))
    result["kge_configs"]["popularity_next_day_mrr"] = pop["mrr"]
    # 3 and 4: the daily lineages kge_ranker's rows read, old and new default
    result["lineage_scores"], result["wide_part"] = {}, {}
    for name, cfg in LINEAGES.items():
        ws = Workspace.create(HERE / f"ws_{name.split('_', 1)[1]}", data)
        prepare(ws, split["kge"], cfg)
        result["lineage_scores"][name] = lineage_scores(ws, ds, a, p, y, terms["affinity"], pairs[3])
        print(name, result["lineage_scores"][name], flush=True)
        result["wide_part"][name] = wide_part(ws, ds, split)
        print(name, result["wide_part"][name], flush=True)
        write_result("kge_signal", {**result, "complete": False})
    # 5: ranker variants on kge_ranker's rows, seed 0 (the new-default lineage)
    ws = Workspace.create(HERE / "ws_degree_lr0.1", data)
    variants: dict[str, Any] = {}
    for label, base, names in (
        ("epochs_3", replace(BASE, epochs_initial=3), ["none", "finetune_attention_no_scores"]),
        ("kge_lr_0.01", replace(BASE, kge_lr=0.01), ["finetune_attention_no_scores"]),
        ("epochs_1", BASE, ["none", "finetune_attention_no_scores"]),
    ):
        res = run_arms(ws, ds, split, base, ("user", "ad", "advertiser"), names, SEEDS[:1])[0]
        c, yy = res["_labels"]["click"], res["_labels"]["conversion"]
        for arm in names:
            q = res[arm]["p"]
            variants[f"{arm}_{label}"] = {
                "ctr_roc_auc": roc_auc(q[:, 0], c),
                "cvr_roc_auc": roc_auc(q[c > 0, 1], yy[c > 0]),
                "seconds": res[arm]["seconds"],
            }
        print(label, {k: v for k, v in variants.items() if k.endswith(label)}, flush=True)
    result["ranker_variants"] = variants
    result["complete"] = True
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(write_result("kge_signal", result), flush=True)


if __name__ == "__main__":
    main()
