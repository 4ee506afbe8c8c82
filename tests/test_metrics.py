"""eval.metrics: hand-computed examples, ties, undefined cases, and agreement with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from eval.metrics import ndcg_at_k, overlap_at_k, pr_auc, recall_at_k, roc_auc

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
