"""eval.metrics: hand-computed examples, ties, undefined cases, and agreement with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

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
from index import recall_against_exact

# --- ROC-AUC -------------------------------------------------------------------------------------------------


def test_roc_auc_hand_example() -> None:
    # positives 0.35, 0.8; negatives 0.1, 0.4. Pairs won: 0.35>0.1, 0.8>0.1, 0.8>0.4; lost: 0.35<0.4 -> 3/4
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75, abs=1e-12)


def test_roc_auc_perfect_and_reversed() -> None:
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == pytest.approx(1.0, abs=1e-12)
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == pytest.approx(0.0, abs=1e-12)


def test_roc_auc_all_tied_scores_is_one_half() -> None:
    assert roc_auc(np.full(6, 0.3), np.array([1, 0, 0, 1, 0, 1])) == pytest.approx(0.5, abs=1e-12)


def test_roc_auc_ties_count_one_half() -> None:
    # positives 0.2, 0.5; negatives 0.5, 0.9. 0.2 loses both (0); 0.5 ties 0.5 (0.5) and loses 0.9 -> 0.5/4
    auc = roc_auc(np.array([0.2, 0.5, 0.5, 0.9]), np.array([1, 1, 0, 0]))
    assert auc == pytest.approx(0.125, abs=1e-12)
    # positives 0.5, 0.9; negatives 0.2, 0.5: 0.5 beats 0.2 (1), ties 0.5 (0.5); 0.9 beats both (2) -> 3.5/4
    auc = roc_auc(np.array([0.2, 0.5, 0.5, 0.9]), np.array([0, 1, 0, 1]))
    assert auc == pytest.approx(0.875, abs=1e-12)


def test_roc_auc_is_order_invariant() -> None:
    s = np.array([0.2, 0.5, 0.5, 0.9, 0.1, 0.5])
    y = np.array([0, 1, 0, 1, 1, 0])
    perm = np.array([5, 3, 0, 4, 1, 2])
    assert roc_auc(s[perm], y[perm]) == pytest.approx(roc_auc(s, y), abs=1e-12)


def test_roc_auc_one_class_is_none() -> None:
    assert roc_auc(np.array([0.1, 0.2, 0.3]), np.array([1, 1, 1])) is None
    assert roc_auc(np.array([0.1, 0.2, 0.3]), np.array([0, 0, 0])) is None
    assert roc_auc(np.array([]), np.array([])) is None


# --- average precision ---------------------------------------------------------------------------------------


def test_pr_auc_hand_example() -> None:
    # ranked: 0.8(+) 0.4(-) 0.35(+) 0.1(-): P=1 at R=0.5, P=2/3 at R=1 -> 0.5*1 + 0.5*2/3 = 0.8333...
    ap = pr_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert ap == pytest.approx(0.8333333333333333, abs=1e-12)


def test_pr_auc_ties_are_one_threshold() -> None:
    # thresholds 0.9: tp 0 fp 1; 0.5 (tied +,-): tp 1 fp 2, P=1/3 R=0.5; 0.2: tp 2 fp 2, P=1/2 R=1
    # AP = 0.5*1/3 + 0.5*1/2 = 0.41666...
    ap = pr_auc(np.array([0.2, 0.5, 0.5, 0.9]), np.array([1, 1, 0, 0]))
    assert ap == pytest.approx(0.4166666666666667, abs=1e-12)
    # all tied: one threshold, precision = prevalence 2/5
    assert pr_auc(np.full(5, 0.7), np.array([0, 1, 0, 1, 0])) == pytest.approx(0.4, abs=1e-12)


def test_pr_auc_undefined_without_positives_and_one_with_only_positives() -> None:
    assert pr_auc(np.array([0.1, 0.2]), np.array([0, 0])) is None
    assert pr_auc(np.array([0.1, 0.2]), np.array([1, 1])) == pytest.approx(1.0, abs=1e-12)


# --- against scikit-learn ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [1, 2, 3])
def test_auc_and_ap_match_sklearn_with_ties(seed: int, decimals: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    y = (rng.random(n) < 0.3).astype(np.int64)
    # informative but noisy scores; rounding makes heavy ties (decimals=1: only ~11 distinct values)
    s = np.round(np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1), decimals)
    assert len(np.unique(s)) < n  # ties are actually present
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert pr_auc(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-9)


# --- recall@k / NDCG@k ---------------------------------------------------------------------------------------

TOPK = np.array(
    [
        [5, 3, -1, -1],  # user 0: two results, then padding
        [7, 8, 9, 1],  # user 1: no relevant items -> skipped
        [2, 9, 4, 6],  # user 2
        [-1, -1, -1, -1],  # user 3: nothing retrieved
    ],
    dtype=np.int64,
)
RELEVANT = [
    np.array([3, 5, 4], np.int64),
    np.array([], np.int64),
    np.array([9], np.int64),
    np.array([1, 2], np.int64),
]


def test_recall_at_k_hand_example() -> None:
    # k=3: user0 {5,3,-1} hits 3,5 of {3,5,4} -> 2/3; user1 skipped; user2 {2,9,4} hits 9 -> 1; user3 -> 0
    assert recall_at_k(TOPK, RELEVANT, 3) == pytest.approx((2 / 3 + 1 + 0) / 3, abs=1e-12)
    # k=1: user0 {5} -> 1/3; user2 {2} -> 0; user3 -> 0
    assert recall_at_k(TOPK, RELEVANT, 1) == pytest.approx(0.1111111111111111, abs=1e-12)


def test_recall_at_k_padding_never_matches() -> None:
    # k=4 reaches into the -1 pads: user0 still has 2 of {3,5,4}; user3 (all pads) 0 of {1,2}
    assert recall_at_k(TOPK[:1], [np.array([3, 5, 4])], 4) == pytest.approx(2 / 3, abs=1e-12)
    assert recall_at_k(TOPK[3:], [np.array([1, 2])], 4) == pytest.approx(0.0, abs=1e-12)


def test_recall_and_ndcg_none_when_no_user_has_relevant_items() -> None:
    empty = [np.array([], np.int64)] * 2
    assert recall_at_k(TOPK[:2], empty, 3) is None
    assert ndcg_at_k(TOPK[:2], empty, 3) is None


def test_ndcg_at_k_hand_example() -> None:
    # user0, k=3: hits at ranks 1,2 -> DCG = 1 + 1/log2(3) = 1.63093; IDCG over min(3,3)=3 positions
    #   = 1 + 0.63093 + 0.5 = 2.13093 -> 0.765361
    # user2: hit at rank 2 -> 0.630930 / IDCG(1 position)=1 -> 0.630930
    # user3: 0. user1 skipped.
    got = ndcg_at_k(TOPK, RELEVANT, 3)
    assert got == pytest.approx((0.7653606369886217 + 0.6309297535714575 + 0.0) / 3, abs=1e-12)


def test_ndcg_ideal_uses_min_of_relevant_and_k() -> None:
    # 3 relevant items, k=2, both top-2 are relevant: DCG = IDCG over 2 positions -> 1.0
    assert ndcg_at_k(np.array([[3, 5, 8]]), [np.array([3, 5, 4])], 2) == pytest.approx(1.0, abs=1e-12)
    # perfect list, one relevant: 1.0; same item at rank 3: 1/log2(4) = 0.5
    assert ndcg_at_k(np.array([[4, 1, 2]]), [np.array([4])], 3) == pytest.approx(1.0, abs=1e-12)
    assert ndcg_at_k(np.array([[1, 2, 4]]), [np.array([4])], 3) == pytest.approx(0.5, abs=1e-12)


# --- overlap@k -----------------------------------------------------------------------------------------------


def test_overlap_at_k_hand_example() -> None:
    a = np.array([[1, 2, 3], [4, -1, -1]])
    b = np.array([[3, 2, 9], [4, 5, 6]])
    # row0: {1,2,3} & {3,2,9} = 2 -> 2/3; row1: {4} & {4,5,6} = 1 -> 1/3
    assert overlap_at_k(a, b, 3) == pytest.approx(0.5, abs=1e-12)
    # k=1: row0 {1} vs {3} -> 0; row1 {4} vs {4} -> 1
    assert overlap_at_k(a, b, 1) == pytest.approx(0.5, abs=1e-12)


def test_overlap_at_k_padding_does_not_match_padding() -> None:
    a = np.array([[7, -1, -1]])
    b = np.array([[7, -1, -1]])
    assert overlap_at_k(a, b, 3) == pytest.approx(1 / 3, abs=1e-12)


def test_overlap_at_k_empty_is_none() -> None:
    assert overlap_at_k(np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64), 3) is None


# --- per-user recall, hit rate -------------------------------------------------------------------------------


def test_recall_per_user_and_hit_rate_hand_example() -> None:
    # k=3 (see test_recall_at_k_hand_example): user0 2/3, user1 skipped, user2 1, user3 0
    assert recall_per_user(TOPK, RELEVANT, 3) == pytest.approx([2 / 3, 1.0, 0.0], abs=1e-12)
    assert recall_per_user(TOPK, RELEVANT, 3).mean() == pytest.approx(
        recall_at_k(TOPK, RELEVANT, 3), abs=1e-12
    )
    # hit rate k=3: user0 hit, user2 hit, user3 none -> 2/3; k=1: user0 {5} hit only -> 1/3
    assert hit_rate_at_k(TOPK, RELEVANT, 3) == pytest.approx(2 / 3, abs=1e-12)
    assert hit_rate_at_k(TOPK, RELEVANT, 1) == pytest.approx(1 / 3, abs=1e-12)
    assert hit_rate_at_k(TOPK[:2], [np.array([], np.int64)] * 2, 3) is None


def test_ndcg_matches_sklearn_ndcg_score_on_full_rankings() -> None:
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(0)
    n_items, k = 30, 10
    scores = rng.random((8, n_items))  # distinct scores: no tie handling differences
    rel = (rng.random((8, n_items)) < 0.2).astype(np.int64)
    rel[:, 0] = 1  # every user has a relevant item
    topk = np.argsort(-scores, axis=1)
    relevant = [np.nonzero(r)[0] for r in rel]
    want = np.mean([ndcg_score(rel[u : u + 1], scores[u : u + 1], k=k) for u in range(8)])
    assert ndcg_at_k(topk, relevant, k) == pytest.approx(want, abs=1e-12)


# --- random-retrieval baselines ------------------------------------------------------------------------------


def test_random_baselines_hand_example() -> None:
    live = np.arange(10)
    rel = [np.array([1, 2]), np.array([3, 99]), np.array([], np.int64)]  # 99 is not live
    # recall@2: user0 (2/2) * 2/10 = 0.2; user1 (1/2) * 2/10 = 0.1 -> 0.15
    assert random_recall_at_k(rel, live, 2) == pytest.approx(0.15, abs=1e-12)
    # K beyond n_live saturates at the live share: (1 + 0.5) / 2
    assert random_recall_at_k(rel, live, 50) == pytest.approx(0.75, abs=1e-12)
    # hit@2: user0 1 - C(8,2)/C(10,2) = 1 - 28/45; user1 1 - C(9,2)/C(10,2) = 1 - 36/45 -> mean
    assert random_hit_rate_at_k(rel, live, 2) == pytest.approx(((1 - 28 / 45) + (1 - 36 / 45)) / 2, abs=1e-12)
    # ndcg@2: E[DCG] = r/10 * (1 + 1/log2 3); IDCG user0 = 1 + 1/log2 3, user1 (|rel| = 2) the same
    d = 1 + 1 / np.log2(3)
    assert random_ndcg_at_k(rel, live, 2) == pytest.approx((2 / 10 * d / d + 1 / 10 * d / d) / 2, abs=1e-12)
    assert random_recall_at_k([np.array([], np.int64)], live, 2) is None


def test_random_baselines_match_a_monte_carlo_draw() -> None:
    rng = np.random.default_rng(1)
    live = np.arange(50)
    rel = [rng.choice(60, size=s, replace=False) for s in (1, 3, 5, 8)]
    k, n = 7, 20000
    draws = np.array([rng.permutation(live)[:k] for _ in range(n)])
    rec = np.mean([recall_at_k(np.broadcast_to(d, (4, k)), rel, k) for d in draws[:4000]])
    hit = np.mean([hit_rate_at_k(np.broadcast_to(d, (4, k)), rel, k) for d in draws[:4000]])
    assert random_recall_at_k(rel, live, k) == pytest.approx(rec, abs=0.01)
    assert random_hit_rate_at_k(rel, live, k) == pytest.approx(hit, abs=0.015)


# --- log loss, gAUC, calibration -----------------------------------------------------------------------------


def test_log_loss_hand_example_and_sklearn() -> None:
    from sklearn.metrics import log_loss as sk_log_loss

    # -(ln 0.8 + ln 0.9 + ln 0.6) / 3 for labels 1, 0, 1 with p 0.8, 0.1, 0.6
    want = -(np.log(0.8) + np.log(0.9) + np.log(0.6)) / 3
    assert log_loss(np.array([0.8, 0.1, 0.6]), np.array([1, 0, 1])) == pytest.approx(want, abs=1e-12)
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, 300)
    y = (rng.random(300) < p).astype(int)
    assert log_loss(p, y) == pytest.approx(sk_log_loss(y, p), abs=1e-12)
    # a confident mistake is clipped, not infinite; empty is None
    assert np.isfinite(log_loss(np.array([0.0]), np.array([1])))
    assert log_loss(np.array([]), np.array([])) is None


def test_gauc_hand_example() -> None:
    # user 1: pos 0.9 vs negs 0.2 (won), 0.95 (lost) -> AUC 1/2, 3 impressions
    # user 2: pos 0.5, 0.7 vs neg 0.5: tie (1/2) + won (1) -> AUC 0.75, 3 impressions
    # user 3: no click -> no AUC, left out
    scores = np.array([0.9, 0.2, 0.95, 0.5, 0.7, 0.5, 0.3, 0.4])
    labels = np.array([1, 0, 0, 1, 1, 0, 0, 0])
    users = np.array([1, 1, 1, 2, 2, 2, 3, 3])
    g = gauc(scores, labels, users)
    assert g["gauc"] == pytest.approx((3 * 0.5 + 3 * 0.75) / 6, abs=1e-12)
    assert g["gauc_unweighted"] == pytest.approx(0.625, abs=1e-12)
    assert g["n_groups"] == 2 and g["n_impressions"] == 6
    # impression weighting: give user 2 three more negatives scored 0.1. Pairs: 0.5 ties 0.5 (1/2) and beats
    # the three 0.1 (3); 0.7 beats all four (4) -> 7.5 / 8 = 0.9375 over 6 impressions
    g2 = gauc(np.r_[scores, 0.1, 0.1, 0.1], np.r_[labels, 0, 0, 0], np.r_[users, 2, 2, 2])
    assert g2["gauc"] == pytest.approx((3 * 0.5 + 6 * 0.9375) / 9, abs=1e-12)
    assert gauc(scores, np.zeros(8), users)["gauc"] is None


def test_gauc_matches_per_user_sklearn_auc() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    users = rng.integers(0, 60, n)
    y = (rng.random(n) < 0.3).astype(int)
    s = np.round(0.2 * y + rng.random(n), 1)  # heavy ties
    aucs, weights = [], []
    for u in np.unique(users):
        m = users == u
        if 0 < y[m].sum() < m.sum():
            aucs.append(roc_auc_score(y[m], s[m]))
            weights.append(m.sum())
    g = gauc(s, y, users)
    assert g["gauc"] == pytest.approx(np.average(aucs, weights=weights), abs=1e-9)
    assert g["gauc_unweighted"] == pytest.approx(np.mean(aucs), abs=1e-9)
    assert g["n_groups"] == len(aucs)


def test_calibration_hand_example() -> None:
    # two buckets at the median: {0.1, 0.1, 0.2, 0.2} observed 1/4; {0.6, 0.6, 0.8, 0.8} observed 3/4
    p = np.array([0.1, 0.2, 0.1, 0.2, 0.6, 0.8, 0.6, 0.8])
    y = np.array([0, 0, 1, 0, 1, 1, 0, 1])
    c = calibration(p, y, buckets=2)
    assert c["predicted"] == pytest.approx(0.425) and c["observed"] == pytest.approx(0.5) and c["n"] == 8
    b0, b1 = c["buckets"]
    assert (b0["n"], b0["predicted"], b0["observed"], b0["lo"], b0["hi"]) == pytest.approx(
        (4, 0.15, 0.25, 0.1, 0.2)
    )
    assert (b1["n"], b1["predicted"], b1["observed"], b1["lo"], b1["hi"]) == pytest.approx(
        (4, 0.7, 0.75, 0.6, 0.8)
    )
    # ECE = (4 * |0.15 - 0.25| + 4 * |0.7 - 0.75|) / 8 = 0.075
    assert c["ece"] == pytest.approx(0.075, abs=1e-12)
    assert calibration(np.array([]), np.array([]))["buckets"] == []


def test_calibration_of_the_truth_is_close() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, 200_000)
    c = calibration(p, rng.random(len(p)) < p)
    assert len(c["buckets"]) == 10 and sum(b["n"] for b in c["buckets"]) == len(p)
    assert c["ece"] < 0.003


# --- ANN recall, per-group breakdown -------------------------------------------------------------------------


class _FixedIndex:
    """An 'ANN index' returning fixed results: only `config.dim` and `search` are used by recall_against_exact."""

    def __init__(self, ids: np.ndarray) -> None:
        from index import IndexConfig

        self.config = IndexConfig(dim=2)
        self._ids = ids

    def search(self, queries: np.ndarray, k: int, params: object = None) -> tuple[np.ndarray, np.ndarray]:
        return self._ids[:, :k], np.zeros(self._ids[:, :k].shape, np.float32)


def test_ann_recall_hand_example_is_tie_tolerant() -> None:
    ad_ids = np.array([10, 11, 12, 13], np.int64)
    ad_vecs = np.array([[1, 0], [0.8, 0.6], [0.8, -0.6], [0, 1]], np.float32)
    q = np.array([[1, 0], [0, 1]], np.float32)
    # query 0, exact top 2: 10 (1.0), then 11 and 12 tied at 0.8 -> ANN {10, 12} is a full hit
    # query 1, exact top 2: 13 (1.0), 11 (0.6); ANN {13, 10}: 10 scores 0 < 0.6 -> 1 of 2
    index = _FixedIndex(np.array([[10, 12], [13, 10]], np.int64))
    assert recall_against_exact(index, q, 2, ad_ids=ad_ids, ad_vecs=ad_vecs) == pytest.approx(0.75, abs=1e-12)  # type: ignore[arg-type]


def test_ann_recall_of_a_flat_index_is_one() -> None:
    from index import IndexConfig, make_index

    rng = np.random.default_rng(0)
    v = rng.standard_normal((200, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    idx = make_index(IndexConfig(dim=8))
    idx.build(np.arange(200, dtype=np.int64) * 3, v)
    assert recall_against_exact(idx, v[:20], 10) == pytest.approx(1.0, abs=1e-12)


def test_by_group_per_surface() -> None:
    s = np.array([0.1, 0.9, 0.8, 0.3, 0.2, 0.7])
    y = np.array([0, 1, 1, 0, 1, 0])
    surface = np.array([0, 0, 1, 1, 2, 2])
    out = by_group(roc_auc, surface, s, y, names={0: "home_feed", 1: "search"})
    assert out == {"home_feed": 1.0, "search": 1.0, "2": 0.0}
