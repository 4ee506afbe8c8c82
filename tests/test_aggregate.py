"""embstore.aggregate: the MA / ACC / AP heuristics against their formulas, carry-over, TTL, duplicates, the
served unit-norm vectors, and the stability statistic."""

from __future__ import annotations

import numpy as np
import pytest

from embstore.aggregate import AggregationConfig, Heuristic, Pool, aggregate, dedup_last, stability

E1 = [1.0, 0.0]
E2 = [0.0, 1.0]
E3 = [0.6, 0.8]


def _ids(*xs: int) -> np.ndarray:
    return np.array(xs, np.int64)


def _vecs(*rows: list[float]) -> np.ndarray:
    return np.array(rows, np.float32).reshape(len(rows), 2)


def _three_days(cfg: AggregationConfig) -> list[Pool]:
    """Entity 7 gets daily embeddings E1, E2, E3 on days 1, 2, 3; returns the pool after each day."""
    pool = Pool.empty(2)
    out = []
    for day, e in zip((1, 2, 3), (E1, E2, E3), strict=True):
        pool = aggregate(pool, _ids(7), _vecs(e), day, cfg)
        out.append(pool)
    return out


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        # acc: E(t) = e_t
        (AggregationConfig(Heuristic.ACC), [E1, E2, E3]),
        # ma w=0.8: E1; 0.8*[1,0] + 0.2*[0,1] = [0.8,0.2]; 0.8*[0.8,0.2] + 0.2*[0.6,0.8] = [0.76,0.32]
        (AggregationConfig(Heuristic.MA, weight=0.8), [E1, [0.8, 0.2], [0.76, 0.32]]),
        # ma w=0.5: E1; [0.5,0.5]; 0.5*[0.5,0.5] + 0.5*[0.6,0.8] = [0.55,0.65]
        (AggregationConfig(Heuristic.MA, weight=0.5), [E1, [0.5, 0.5], [0.55, 0.65]]),
        # ap: E1; ([1,0]+[0,1])/2 = [0.5,0.5]; ([0,1]+[0.6,0.8])/2 = [0.3,0.9]  (previous DAILY, not state)
        (AggregationConfig(Heuristic.AP), [E1, [0.5, 0.5], [0.3, 0.9]]),
    ],
    ids=["acc", "ma0.8", "ma0.5", "ap"],
)
def test_heuristic_matches_formula_over_three_days(cfg: AggregationConfig, expected: list) -> None:
    pools = _three_days(cfg)
    for day, (pool, want) in enumerate(zip(pools, expected, strict=True), start=1):
        assert pool.ids.tolist() == [7]
        np.testing.assert_allclose(pool.state, [want], atol=1e-6)
        assert pool.state.dtype == np.float32
        # prev is always the latest daily embedding; last_day the day of it
        np.testing.assert_allclose(pool.prev, [[E1, E2, E3][day - 1]], atol=1e-6)
        assert pool.last_day.tolist() == [day]


def test_first_appearance_is_the_daily_embedding_for_every_heuristic() -> None:
    base = aggregate(Pool.empty(2), _ids(1), _vecs(E1), 1, AggregationConfig(Heuristic.MA, weight=0.8))
    for h in Heuristic:
        cfg = AggregationConfig(h, weight=0.8)
        # entity 2 is new on day 2 while entity 1 is updated
        pool = aggregate(base, _ids(1, 2), _vecs(E2, E3), 2, cfg)
        assert pool.ids.tolist() == [1, 2]
        np.testing.assert_allclose(pool.state[1], E3, atol=1e-7)
        np.testing.assert_allclose(pool.prev[1], E3, atol=1e-7)
        assert pool.last_day.tolist() == [2, 2]


def test_absent_entity_carries_over_unchanged() -> None:
    cfg = AggregationConfig(Heuristic.MA, weight=0.8)
    p1 = aggregate(Pool.empty(2), _ids(3, 4), _vecs(E1, E2), 1, cfg)
    p2 = aggregate(p1, _ids(4), _vecs(E3), 2, cfg)  # 3 absent today
    assert p2.ids.tolist() == [3, 4]
    np.testing.assert_array_equal(p2.state[0], np.float32(E1))
    np.testing.assert_array_equal(p2.prev[0], np.float32(E1))
    assert p2.last_day.tolist() == [1, 2]
    # 4: 0.8*[0,1] + 0.2*[0.6,0.8] = [0.12, 0.96]
    np.testing.assert_allclose(p2.state[1], [0.12, 0.96], atol=1e-6)
    # a day with no daily embeddings at all carries everything over
    p3 = aggregate(p2, np.zeros(0, np.int64), np.zeros((0, 2), np.float32), 3, cfg)
    assert p3.ids.tolist() == [3, 4]
    np.testing.assert_array_equal(p3.state, p2.state)
    assert p3.last_day.tolist() == [1, 2]


def test_ma_after_a_gap_continues_from_the_carried_state() -> None:
    cfg = AggregationConfig(Heuristic.MA, weight=0.5)
    p1 = aggregate(Pool.empty(2), _ids(3), _vecs(E1), 1, cfg)
    p2 = aggregate(p1, _ids(9), _vecs(E2), 2, cfg)
    p3 = aggregate(p2, _ids(3), _vecs(E2), 3, cfg)
    # 0.5*[1,0] + 0.5*[0,1]
    np.testing.assert_allclose(p3.state[p3.ids.tolist().index(3)], [0.5, 0.5], atol=1e-7)


def test_ttl_drops_entities_older_than_ttl_and_keeps_exactly_ttl() -> None:
    # keep iff day - last_day <= ttl_days
    cfg = AggregationConfig(Heuristic.ACC, ttl_days=2)
    p1 = aggregate(Pool.empty(2), _ids(1, 2), _vecs(E1, E2), 1, cfg)
    p2 = aggregate(p1, _ids(2), _vecs(E3), 2, cfg)
    p3 = aggregate(p2, _ids(5), _vecs(E1), 3, cfg)
    assert p3.ids.tolist() == [1, 2, 5]  # entity 1: 3 - 1 = 2 = ttl -> kept
    assert p3.last_day.tolist() == [1, 2, 3]
    p4 = aggregate(p3, _ids(5), _vecs(E2), 4, cfg)
    assert p4.ids.tolist() == [2, 5]  # entity 1: 4 - 1 = 3 > ttl -> dropped; entity 2: 4 - 2 = 2 kept
    np.testing.assert_allclose(p4.state, [E3, E2], atol=1e-7)
    p5 = aggregate(p4, np.zeros(0, np.int64), np.zeros((0, 2), np.float32), 5, cfg)
    assert p5.ids.tolist() == [5]


def test_reappearing_after_expiry_is_a_first_appearance() -> None:
    cfg = AggregationConfig(Heuristic.MA, weight=0.8, ttl_days=1)
    p1 = aggregate(Pool.empty(2), _ids(1), _vecs(E1), 1, cfg)
    p3 = aggregate(p1, _ids(2), _vecs(E2), 3, cfg)  # 3 - 1 = 2 > 1: entity 1 expires
    assert p3.ids.tolist() == [2]
    p4 = aggregate(p3, _ids(1), _vecs(E3), 4, cfg)
    np.testing.assert_allclose(p4.state[0], E3, atol=1e-7)  # not 0.8*E1 + 0.2*E3


def test_same_day_duplicates_keep_the_last_row() -> None:
    ids, vecs = dedup_last(_ids(3, 1, 3, 2, 1), _vecs(E1, E1, E2, E3, E3))
    assert ids.dtype == np.int64
    assert ids.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(vecs, np.array([E3, E3, E2], np.float32))
    cfg = AggregationConfig(Heuristic.MA, weight=0.8)
    pool = aggregate(Pool.empty(2), _ids(5, 5, 5), _vecs(E1, E3, E2), 1, cfg)
    assert pool.ids.tolist() == [5]
    np.testing.assert_array_equal(pool.state, [E2])
    # on a later day too: the update uses the last row only: 0.8*[0,1] + 0.2*[0.6,0.8] = [0.12, 0.96]
    pool = aggregate(pool, _ids(5, 5), _vecs(E1, E3), 2, cfg)
    np.testing.assert_allclose(pool.state, [[0.12, 0.96]], atol=1e-6)


def test_ids_sorted_int64_from_unsorted_int32_input() -> None:
    cfg = AggregationConfig(Heuristic.ACC)
    big = 2**40 + 5
    p1 = aggregate(Pool.empty(2), np.array([9, 2, 5], np.int32), _vecs(E1, E2, E3), 1, cfg)
    assert p1.ids.dtype == np.int64
    assert p1.ids.tolist() == [2, 5, 9]
    np.testing.assert_array_equal(p1.state, np.array([E2, E3, E1], np.float32))
    p2 = aggregate(p1, _ids(big, 3), _vecs(E1, E2), 2, cfg)
    assert p2.ids.dtype == np.int64
    assert p2.ids.tolist() == [2, 3, 5, 9, big]
    assert len(p2) == 5


def test_vectors_are_unit_norm_renormalised_state() -> None:
    pool = _three_days(AggregationConfig(Heuristic.MA, weight=0.8))[-1]
    # state [0.76, 0.32] has norm sqrt(0.68) = 0.824621 < 1 (a mean of unit vectors is shorter)
    assert np.linalg.norm(pool.state[0]) == pytest.approx(0.8246211, abs=1e-6)
    v = pool.vectors()
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, [[0.9216354, 0.3880570]], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    # the state itself stays unnormalised so the moving average is exactly the formula
    np.testing.assert_allclose(pool.state, [[0.76, 0.32]], atol=1e-6)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        AggregationConfig(weight=1.0)
    with pytest.raises(ValueError):
        AggregationConfig(weight=-0.1)
    with pytest.raises(ValueError):
        AggregationConfig(ttl_days=0)
    AggregationConfig(weight=0.0, ttl_days=1)  # boundaries allowed


def test_stability_hand_example() -> None:
    cfg = AggregationConfig(Heuristic.MA, weight=0.5)
    p0 = aggregate(Pool.empty(2), _ids(5), _vecs(E1), 0, cfg)
    p1 = aggregate(p0, _ids(1, 2, 3), _vecs(E1, E2, E1), 1, cfg)
    p2 = aggregate(p1, _ids(1, 2, 4, 5), _vecs(E3, E2, E1, E2), 2, cfg)
    s = stability(p1, p2, 2)
    # counted: 1 and 2 (daily embeddings on day 1 and day 2). Not 3 (absent day 2), not 4 (new on day 2),
    # not 5 (last daily embedding before day 2 was on day 0).
    assert s["n"] == 2
    # raw: cos(E1, E3) = 0.6, cos(E2, E2) = 1 -> 0.8
    assert s["raw"] == pytest.approx(0.8, abs=1e-6)
    # pooled: entity 1 goes [1,0] -> 0.5*[1,0] + 0.5*[0.6,0.8] = [0.8,0.4], cos = 0.8/sqrt(0.8) = 0.894427;
    # entity 2 stays [0,1] -> 1. Mean 0.947214
    assert s["pooled"] == pytest.approx(0.9472136, abs=1e-6)


def test_stability_without_previous_pool_or_without_updates() -> None:
    cfg = AggregationConfig(Heuristic.MA)
    p1 = aggregate(Pool.empty(2), _ids(1), _vecs(E1), 1, cfg)
    assert stability(Pool.empty(2), p1, 1) == {"raw": None, "pooled": None, "n": 0}
    # nothing updated on day 2
    p2 = aggregate(p1, np.zeros(0, np.int64), np.zeros((0, 2), np.float32), 2, cfg)
    assert stability(p1, p2, 2) == {"raw": None, "pooled": None, "n": 0}
    # updated on day 3 but the previous pool's embedding was from day 1, not day 2
    p3 = aggregate(p2, _ids(1), _vecs(E2), 3, cfg)
    s = stability(p2, p3, 3)
    assert s["n"] == 0
    assert s["raw"] is None and s["pooled"] is None
