"""eval.protocols.full_ranking_eval: the Gowalla full-ranking protocol on a hand example."""

from __future__ import annotations

import numpy as np
import pytest

from eval.protocols import full_ranking_eval, full_ranking_topk

# 5 items on a line of scores: user 0 prefers high item index, user 1 low, user 2 has no test items
ITEMS = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]], np.float32)
USERS = np.array([[1.0], [-1.0], [1.0]], np.float32)


def test_full_ranking_hand_example() -> None:
    train = [np.array([4]), np.array([0, 1]), np.array([], np.int64)]
    test = [np.array([3, 0]), np.array([4]), np.array([], np.int64)]
    top = full_ranking_topk(USERS, ITEMS, train, 2)
    # user 0: 4 is masked -> 3, 2; user 1: 0, 1 masked -> 2, 3
    assert top[:2].tolist() == [[3, 2], [2, 3]]
    out = full_ranking_eval(USERS, ITEMS, train, test, k=2)
    # recall: user0 1/2 (3 found, 0 not), user1 0/1 -> 0.25; user2 has no test items and is not averaged
    assert out["recall"] == pytest.approx(0.25, abs=1e-12)
    # ndcg: user0 hit at rank 1, ideal over min(2, 2) = 2 positions -> 1 / (1 + 1/log2 3); user1 0
    assert out["ndcg"] == pytest.approx((1 / (1 + 1 / np.log2(3))) / 2, abs=1e-12)
    assert out["n_users"] == 2 and out["k"] == 2


def test_full_ranking_pads_when_masked_items_leave_fewer_than_k_and_ties_go_to_lower_index() -> None:
    items = np.array([[1.0], [1.0], [1.0]], np.float32)  # all tied
    top = full_ranking_topk(np.array([[1.0]], np.float32), items, [np.array([1])], 3)
    assert top.tolist() == [[0, 2, -1]]
    out = full_ranking_eval(np.array([[1.0]], np.float32), items, [np.array([1])], [np.array([2])], k=20)
    # one test item at rank 2 of a list of 2: recall 1, ndcg 1/log2(3) / 1
    assert out["recall"] == pytest.approx(1.0) and out["ndcg"] == pytest.approx(1 / np.log2(3), abs=1e-12)


def test_full_ranking_matches_brute_force_on_random_data() -> None:
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((40, 6)), rng.standard_normal((70, 6))
    train = [rng.choice(70, 5, replace=False) for _ in range(40)]
    top = full_ranking_topk(u, v, train, 20, chunk=7)  # several chunks
    for i in range(40):
        s = (u[i].astype(np.float32) @ v.T.astype(np.float32)).astype(np.float64)
        s[train[i]] = -np.inf
        assert set(top[i].tolist()) == set(np.argsort(-s)[:20].tolist())
        assert not set(top[i].tolist()) & set(train[i].tolist())
