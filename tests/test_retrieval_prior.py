"""retrieval.prior: the popularity prior's math on hand-made numbers, the choice of beta on a constructed
validation set, and a Retriever serving with the prior (live int64 ids, the exact top k over every live ad)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from adslog.workspace import Workspace
from dermcore.errors import ConfigError, DataError
from eval.evaluate import day_clicks, eval_path
from index.versions import index_dir
from retrieval.prior import (
    DEFAULT_BETAS,
    LogPrior,
    PriorConfig,
    apply_prior,
    fit_beta,
    prior_from_record,
    prior_scores,
)
from retrieval.retrieve import Retriever
from workflow.cycle import CycleConfig


def test_config_validates_and_round_trips() -> None:
    cfg = PriorConfig(beta=0.05, window=3, alpha=0.5, overfetch=2, popular_pool=1)
    assert PriorConfig.from_json(cfg.to_json()) == cfg
    assert PriorConfig(beta=0).beta == 0.0 and isinstance(PriorConfig(beta=1).beta, float)
    for bad in ({"beta": -0.1}, {"beta": math.inf}, {"alpha": 0}, {"window": 0}, {"overfetch": 0}):
        with pytest.raises(ValueError):
            PriorConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="popular_pool"):
        PriorConfig(popular_pool=-1)
    with pytest.raises(ValueError, match="window"):
        PriorConfig(window=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown prior config keys"):
        PriorConfig.from_json({"beta": 0.1, "gamma": 1})


def test_log_prior_is_the_smoothed_click_share() -> None:
    # live ads 10, 20, 30; clicks: 20 twice, 10 once, 99 (not live) once
    p = LogPrior.from_clicks(np.array([30, 10, 20]), np.array([20, 10, 20, 99]), alpha=1.0)
    assert p.ids.tolist() == [10, 20, 30] and p.clicks.tolist() == [1.0, 2.0, 0.0]
    # (clicks + 1) / (3 live clicks + 1 * 3 ads)
    assert np.allclose(p.values, np.log([2 / 6, 3 / 6, 1 / 6]))
    assert np.allclose(np.exp(p.values).sum(), 1.0)
    assert p.order().tolist() == [20, 10, 30]
    assert p.order(excluded_ids=np.array([20])).tolist() == [10, 30]
    got = p.at(np.array([[20, -1], [99, 30]]))
    assert got[0, 0] == pytest.approx(math.log(0.5)) and got[1, 1] == pytest.approx(math.log(1 / 6))
    assert np.isneginf(got[0, 1]) and np.isneginf(got[1, 0])  # a pad and an ad that is not live


def test_prior_math_on_hand_numbers() -> None:
    p = LogPrior.from_clicks(np.array([1, 2, 3, 4]), np.repeat([1, 2, 3, 4], [1, 5, 30, 100]), alpha=1.0)
    ids = np.array([[1, 2, 3, 4], [4, 3, -1, -1]])
    scores = np.array([[0.9, 0.8, 0.5, 0.1], [0.7, 0.6, -np.inf, -np.inf]], np.float32)
    # beta = 0: the order (already by score) and the scores are unchanged; pads stay pads
    same_ids, same_scores = apply_prior(ids, scores, p, 0.0, 4)
    assert same_ids.tolist() == ids.tolist() and np.array_equal(same_scores, scores)
    # a large beta: popularity's order (4 > 3 > 2 > 1)
    pop_ids, _ = apply_prior(ids, scores, p, 1e3, 3)
    assert pop_ids.tolist() == [[4, 3, 2], [4, 3, -1]]
    # in between, by hand: score + beta * log((c + 1) / (136 + 4))
    beta = 0.2
    final = prior_scores(ids, scores, p.at(ids), beta)
    expect = scores[0] + beta * np.log((np.array([1, 5, 30, 100]) + 1) / 140)
    assert np.allclose(final[0], expect)
    # 0.9 - 0.2 * 4.248 = 0.050, 0.8 - 0.2 * 3.151 = 0.170, 0.5 - 0.2 * 1.508 = 0.198, 0.1 - 0.2 * 0.326 = 0.035
    assert np.allclose(final[0], [0.0503, 0.1698, 0.1984, 0.0348], atol=1e-3)
    mid_ids, mid_scores = apply_prior(ids, scores, p, beta, 2)
    assert mid_ids[0].tolist() == [3, 2]
    assert np.all(np.diff(mid_scores[0]) <= 0)


def test_beta_zero_keeps_the_order_of_random_sorted_rows() -> None:
    rng = np.random.default_rng(0)
    live = np.arange(100, 300, dtype=np.int64)
    p = LogPrior.from_clicks(live, rng.choice(live, 5000, p=rng.dirichlet(np.ones(200))), alpha=1.0)
    ids = np.stack([rng.choice(live, 50, replace=False) for _ in range(20)])
    scores = -np.sort(-rng.random((20, 50)).astype(np.float32), axis=1)
    scores[:, 10:12] = scores[:, 10:11]  # a tie keeps its column order
    out_ids, out_scores = apply_prior(ids, scores, p, 0.0, 30)
    assert np.array_equal(out_ids, ids[:, :30]) and np.array_equal(out_scores, scores[:, :30])


def _three_candidates(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n users with candidates A=1 (cos 0.9, log share -3), B=2 (0.8, -2), C=3 (0.5, -1). Top 1 by
    cos + beta * log share: A for beta < 0.1, B for 0.1 < beta < 0.3, C above 0.3."""
    ids = np.tile(np.array([1, 2, 3], np.int64), (n, 1))
    scores = np.tile(np.array([0.9, 0.8, 0.5], np.float32), (n, 1))
    lp = np.tile(np.array([-3.0, -2.0, -1.0], np.float32), (n, 1))
    return ids, scores, lp


def test_fit_beta_picks_the_grid_point_with_the_best_validation_recall() -> None:
    ids, scores, lp = _three_candidates(5)
    betas = (0.0, 0.05, 0.2, 0.5, 1.0)
    # 3 users clicked B, 1 clicked A, 1 clicked C: beta 0.2 (B on top) has recall 3/5
    relevant = [np.array([2]), np.array([2]), np.array([2]), np.array([1]), np.array([3])]
    fit = fit_beta(ids, scores, {7: lp}, relevant, 1, betas)
    assert fit.config.beta == 0.2 and fit.config.window == 7
    assert fit.recall_at_k[7] == {0.0: 0.2, 0.05: 0.2, 0.2: 0.6, 0.5: 0.2, 1.0: 0.2}
    assert fit.recall_chosen == 0.6 and fit.recall_without_prior == 0.2 and fit.n_users == 5
    # everyone clicked C: 0.5 and 1.0 tie, the smaller wins
    assert fit_beta(ids, scores, {7: lp}, [np.array([3])] * 5, 1, betas).config.beta == 0.5
    # everyone clicked A: no prior
    assert fit_beta(ids, scores, {7: lp}, [np.array([1])] * 5, 1, betas).config.beta == 0.0
    # a second window whose counts put A first at every beta wins when A is what users click
    flat = np.tile(np.array([-1.0, -3.0, -3.0], np.float32), (5, 1))
    two = fit_beta(ids, scores, {7: lp, 1: flat}, [np.array([1])] * 4 + [np.array([3])], 1, betas)
    assert two.config.window in (1, 7) and two.recall_chosen == 0.8
    both = fit_beta(ids, scores, {7: lp, 1: flat}, [np.array([3])] * 5, 1, betas)
    assert both.config.window == 7 and both.config.beta == 0.5  # only window 7 can put C first
    # users without clicks are skipped; the base config's other fields are kept
    base = PriorConfig(alpha=2.0, overfetch=3, popular_pool=0)
    kept = fit_beta(ids, scores, {7: lp}, relevant[:4] + [np.zeros(0, np.int64)], 1, betas, base, [42])
    assert kept.n_users == 4 and kept.config.alpha == 2.0 and kept.config.overfetch == 3
    doc = kept.to_json()
    assert doc["validation_days"] == [42] and doc["config"]["beta"] == kept.config.beta
    assert doc["recall_at_k_by_window_and_beta"]["7"]["0.2"] == 0.75
    with pytest.raises(ValueError, match="hold 0"):
        fit_beta(ids, scores, {7: lp}, relevant, 1, (0.1, 0.2))
    assert 0.0 in DEFAULT_BETAS


def _brute_force(r: Retriever, vecs: np.ndarray, cfg: PriorConfig, k: int) -> np.ndarray:
    """The top k over every live ad with a store vector, by cos + beta * log share."""
    assert r.store is not None and r.log_prior is not None
    live = r.live
    ad_vecs, found = r.store.lookup("ad", live)
    ids = np.broadcast_to(live[found], (len(vecs), int(found.sum())))
    return apply_prior(ids, vecs @ ad_vecs[found].T, r.log_prior, cfg.beta, k)[0]


def test_retriever_with_prior_serves_live_ads_exactly(demo_ws: tuple[Path, dict]) -> None:
    work, s = demo_ws
    ws = Workspace.open(work)
    day = s["eval_day"]
    live = ws.dataset().live_ads(day)
    plain = Retriever(ws, day, prior=None)
    users = plain.store.ids("user")[:40]  # type: ignore[union-attr]
    base = plain.retrieve(users, 30)
    # beta 0 through the re-ranking path: today's candidates (the index is exact)
    zero = Retriever(ws, day, prior=PriorConfig(beta=0.0)).retrieve(users, 30)
    assert np.array_equal(zero.ids, base.ids)
    for beta in (0.02, 0.2, 5.0):
        # a shallow fetch and no popular pool: the bound must send rows back for deeper fetches
        for cfg in (PriorConfig(beta=beta), PriorConfig(beta=beta, overfetch=1, popular_pool=0)):
            r = Retriever(ws, day, prior=cfg)
            c = r.retrieve(users, 30)
            assert c.ids.dtype == np.int64 and (c.ids >= 0).all() and np.isin(c.ids, live).all()
            assert all(len(set(row)) == 30 for row in c.ids.tolist())
            assert np.all(np.diff(c.scores, axis=1) <= 1e-6)
            vecs, _ = r.user_embeddings(users)
            assert np.array_equal(c.ids, _brute_force(r, vecs, cfg, 30)), (beta, cfg)
    # a large beta serves popularity's order (ties by cosine): no live ad with a vector left out is more clicked
    r = Retriever(ws, day, prior=PriorConfig(beta=1e3))
    big = r.retrieve(users[:3], 10)
    assert r.log_prior is not None and r.store is not None
    lp = r.log_prior.at(big.ids)
    assert np.all(np.diff(lp, axis=1) <= 0)
    _, has_vec = r.store.lookup("ad", live)
    for row, row_lp in zip(big.ids, lp, strict=True):
        rest = live[has_vec & ~np.isin(live, row)]
        assert r.log_prior.at(rest).max() <= row_lp.min()
    # excluded ads stay out
    excluded = base.ids[0, :5]
    ex = Retriever(ws, day, prior=PriorConfig(beta=0.2)).retrieve(users[:2], 30, excluded_ids=excluded)
    assert not np.isin(ex.ids, excluded).any() and (ex.ids >= 0).all()


def test_fit_prior_on_a_validation_day(demo_ws: tuple[Path, dict]) -> None:
    work, s = demo_ws
    ws = Workspace.open(work)
    day = s["eval_day"]
    ds = ws.dataset()
    users, relevant = day_clicks(ds, day)
    r = Retriever(ws, day, prior=None)
    fit = r.fit_prior(users, relevant, 20, windows=(1, 3))
    assert fit.config.window in (1, 3) and fit.config.beta in DEFAULT_BETAS
    assert fit.validation_days == (day,) and 0 < fit.n_users <= len(users)
    table = fit.recall_at_k
    assert fit.recall_chosen == max(max(v.values()) for v in table.values()) >= fit.recall_without_prior
    # the fit's recall at the chosen point is what serving with it gives on the same day and users
    served = Retriever(ws, day, prior=fit.config)
    vecs, found = served.user_embeddings(users)
    c = served.retrieve(users[found], 20)
    rel = [relevant[j] for j in np.flatnonzero(found)]
    got = np.mean([len(np.intersect1d(row, x)) / len(x) for row, x in zip(c.ids, rel, strict=True)])
    assert got == pytest.approx(fit.recall_chosen, abs=1e-9)


def test_daily_cycle_records_the_prior_and_serving_applies_it(demo_ws: tuple[Path, dict]) -> None:
    """The cycle fits the prior on each evaluated day's clicks and records it in that day's index version;
    Retriever (eval, query, TwoStage) applies the recorded one by default."""
    work, s = demo_ws
    ws = Workspace.open(work)
    day = s["eval_day"]
    r = Retriever(ws, day)
    served_day = r.store.day  # type: ignore[union-attr]
    rec = r.index_manifest["upstream"]["retrieval_prior"]
    # fitted on the day the index was built for, with the versions before it (validation before serving)
    assert rec["validation_days"] == [served_day] and rec["k"] == 100
    assert r.prior == PriorConfig.from_json(rec["config"])
    assert rec["recall_at_k_chosen"] >= rec["recall_at_k_without_prior"]
    doc = json.loads(eval_path(ws, day).read_text())
    assert doc["retrieval"]["prior"] == r.prior.to_json()  # type: ignore[union-attr]
    # the bootstrap's index (no validation day before it) records none
    first = min(ws.published_days(index_dir(ws)))
    m = json.loads((index_dir(ws) / f"day={first}" / "manifest.json").read_text())
    assert "retrieval_prior" not in m["upstream"]


def test_old_cycle_config_has_no_prior_and_bad_windows_are_refused() -> None:
    cfg = CycleConfig()
    old = cfg.to_json()
    del old["retrieval_prior"], old["prior_windows"]
    assert CycleConfig.from_json(old).retrieval_prior is False
    assert CycleConfig.from_json(cfg.to_json()) == cfg
    for bad in ((), (0,), (1.5,)):
        with pytest.raises(ConfigError):
            CycleConfig(prior_windows=bad)  # type: ignore[arg-type]


def test_corrupt_prior_record_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="retrieval_prior"):
        prior_from_record({"config": {"beta": -1}}, tmp_path / "manifest.json")
    with pytest.raises(DataError, match="retrieval_prior"):
        prior_from_record({"cfg": {}}, tmp_path / "manifest.json")
    assert prior_from_record(None, tmp_path) is None


def test_rerank_fits_read_a_seeded_sample_of_users_above_the_cap(
    demo_ws: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fit_retrieval_rerank` fits the prior and the graph on at most `RERANK_FIT_USERS` of the validation
    day's clicked users (their cost is users x live ads), the same sample for both."""
    from workflow import cycle

    work, s = demo_ws
    ws = Workspace.open(work)
    day = int(Retriever(ws, s["eval_day"]).store.day)  # type: ignore[union-attr]
    cfg = cycle.load_cycle_config(ws, "cpu")
    users, _ = day_clicks(ws.dataset(), day)
    full = cycle.fit_retrieval_rerank(ws, ws.dataset(), day, cfg)
    assert full["retrieval_prior"]["n_users"] > 12
    monkeypatch.setattr(cycle, "RERANK_FIT_USERS", 12)
    capped = cycle.fit_retrieval_rerank(ws, ws.dataset(), day, cfg)
    assert 0 < capped["retrieval_prior"]["n_users"] <= 12 and len(users) > 12
    assert capped["retrieval_graph"]["n_users"] == capped["retrieval_prior"]["n_users"]
    assert capped != full
