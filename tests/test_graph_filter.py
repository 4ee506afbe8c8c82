"""retrieval.graph_filter: the co-click graph filter against a dense reference, and the blend's fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adslog.workspace import Workspace
from dermcore.errors import ConfigError, DataError
from eval.evaluate import day_clicks, eval_path
from index.versions import index_dir
from retrieval import graph_filter as graph_module
from retrieval.graph_filter import (
    DEFAULT_GAMMAS,
    CoClickGraph,
    GraphConfig,
    blend,
    candidate_inner,
    fit_gamma,
    graph_from_record,
    union,
)
from retrieval.prior import PriorConfig, prior_scores, top_k
from retrieval.retrieve import Retriever
from workflow.cycle import CycleConfig


def _clicks(seed: int = 0, n_users: int = 40, n_ads: int = 25, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n).astype(np.int64) * 7 + 3  # sparse, non-contiguous ids
    ads = (rng.zipf(1.6, n) % n_ads).astype(np.int64) * 11 + 100
    return users, ads


def _dense_reference(
    users: np.ndarray, ads: np.ndarray, rank: int, w: float, history: np.ndarray
) -> np.ndarray:
    """GF-CF written out densely: r R~^T R~ + w r D^-1/2 V V^T D^1/2, divided by its row maximum."""
    u_ids, ui = np.unique(users, return_inverse=True)
    a_ids, ai = np.unique(ads, return_inverse=True)
    r = np.zeros((len(u_ids), len(a_ids)))
    r[ui, ai] = 1.0
    du, da = r.sum(1), r.sum(0)
    rt = r / np.sqrt(du)[:, None] / np.sqrt(da)[None, :]
    _, _, vt = np.linalg.svd(rt, full_matrices=False)
    v = vt[:rank]
    row = np.isin(a_ids, history).astype(float)
    g = row @ rt.T @ rt + w * ((row / np.sqrt(da)) @ v.T @ v) * np.sqrt(da)
    return g / g.max()


def test_scores_match_the_dense_filter_for_graph_users_and_new_users() -> None:
    users, ads = _clicks()
    graph = CoClickGraph.fit(users, ads, rank=5, ideal_weight=0.3)
    assert graph.rank == 5
    member = ads[users == users[0]]  # a user of the graph: their own clicks
    stranger = np.array([ads[3], ads[10], 99_999])  # a user the graph never saw, one ad outside the graph
    got = graph.scores([member, stranger])
    for row, hist in enumerate([member, stranger]):
        ref = _dense_reference(users, ads, 5, 0.3, hist)
        np.testing.assert_allclose(got[row], ref, rtol=1e-4, atol=1e-5)
    assert got.max(axis=1) == pytest.approx([1.0, 1.0])


def test_repeats_count_once_and_the_fit_is_deterministic() -> None:
    users, ads = _clicks(1)
    once = CoClickGraph.fit(users, ads, rank=4).scores([ads[:5]])
    twice = CoClickGraph.fit(np.r_[users, users], np.r_[ads, ads], rank=4).scores([ads[:5]])
    np.testing.assert_array_equal(once, twice)


def test_a_user_without_clicks_scores_zero_and_the_empty_graph_is_harmless() -> None:
    users, ads = _clicks(2)
    graph = CoClickGraph.fit(users, ads, rank=3)
    assert not graph.scores([np.zeros(0, np.int64), np.array([123_456])]).any()
    empty = CoClickGraph.fit(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert empty.scores([np.array([1, 2])]).shape == (1, 0)
    assert (empty.top(empty.scores([np.array([1])]), 3) == -1).all()
    assert not empty.at(empty.scores([np.array([1])]), np.array([[1, -1]])).any()


def test_rank_is_capped_by_the_smaller_side() -> None:
    graph = CoClickGraph.fit(np.array([1, 1, 2, 3]), np.array([10, 11, 10, 12]), rank=256)
    assert graph.rank == 2  # 3 users x 3 ads: at most 2 singular vectors for ARPACK


def test_top_skips_excluded_and_not_allowed_ads_and_pads() -> None:
    users = np.array([1, 1, 2, 2, 3], np.int64)
    ads = np.array([10, 11, 11, 12, 13], np.int64)
    graph = CoClickGraph.fit(users, ads, rank=0)
    s = graph.scores([np.array([11])])
    # one hop through the users who clicked 11: 11 itself first, then 10 (user 1) and 12 (user 2), tied and
    # ordered by id; 13 shares no user with 11
    assert graph.top(s, 4).tolist() == [[11, 10, 12, -1]]
    assert graph.top(s, 4, excluded=[np.array([11])]).tolist() == [[10, 12, -1, -1]]
    assert graph.top(s, 4, allowed=np.array([12, 13])).tolist() == [[12, -1, -1, -1]]
    at = graph.at(s, np.array([[12, -1, 999, 11]]))
    assert at[0, 1] == 0 and at[0, 2] == 0 and at[0, 3] == 1.0 and 0 < at[0, 0] < 1


def test_union_keeps_the_first_of_each_id() -> None:
    got = union(np.array([[5, 3, -1]]), np.array([[3, 7, 5]]))
    assert got.tolist() == [[5, 3, -1, -1, 7, -1]]


def test_candidate_inner_in_chunks_is_the_gathered_inner_product(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    vecs, table = rng.normal(size=(11, 4)).astype(np.float32), rng.normal(size=(9, 4)).astype(np.float32)
    pos = rng.integers(0, 9, size=(11, 5))
    want = np.array([[vecs[i] @ table[j] for j in row] for i, row in enumerate(pos)], np.float32)
    np.testing.assert_allclose(candidate_inner(vecs, table, pos), want, rtol=1e-5)
    monkeypatch.setattr(graph_module, "GRAPH_CHUNK", 3 * 5 * 4)  # 3 rows per chunk, the last one short
    np.testing.assert_allclose(candidate_inner(vecs, table, pos), want, rtol=1e-5)
    assert candidate_inner(vecs[:0], table, pos[:0]).shape == (0, 5)


def test_fit_gamma_follows_the_signal_and_keeps_zero_on_ties() -> None:
    rng = np.random.default_rng(0)
    n, c = 200, 30
    ids = np.tile(np.arange(c, dtype=np.int64), (n, 1))
    scores = rng.normal(0, 0.1, (n, c)).astype(np.float32)
    relevant = [np.array([rng.integers(0, c)]) for _ in range(n)]
    marks = np.zeros((n, c), np.float32)
    for u, r in enumerate(relevant):
        marks[u, r] = 1.0
    fit = fit_gamma(ids, scores, marks, relevant, k=3)
    assert fit.config.gamma > 0 and fit.recall_chosen == 1.0 and fit.recall_without_graph < 0.3
    flat = fit_gamma(ids, scores, np.zeros((n, c), np.float32), relevant, k=3)
    assert flat.config.gamma == 0.0  # the graph says nothing: every gamma ties, the smallest wins
    assert flat.to_json()["config"]["gamma"] == 0.0
    with pytest.raises(ValueError, match="hold 0"):
        fit_gamma(ids, scores, marks, relevant, k=3, gammas=(0.5, 1.0))
    np.testing.assert_allclose(blend(scores, marks, 2.0), scores + 2.0 * marks)


def test_config_checks_and_round_trip() -> None:
    cfg = GraphConfig(gamma=1, window=7, rank=64, ideal_weight=0.0, depth=2)
    assert GraphConfig.from_json(cfg.to_json()) == cfg and isinstance(cfg.gamma, float)
    for bad in ({"gamma": -0.1}, {"gamma": float("nan")}, {"window": 0}, {"rank": -1}, {"depth": 0}):
        with pytest.raises(ConfigError):
            GraphConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown"):
        GraphConfig.from_json({"gamma": 1.0, "beta": 2})


def _brute_force(r: Retriever, users: np.ndarray, k: int, gamma: float) -> np.ndarray:
    """Top k over every live ad with a vector by u . p + beta x log share + gamma x graph score."""
    assert r.store is not None and r.graph_filter is not None
    live = r.live
    vecs, found = r.store.lookup("ad", live)
    live, vecs = live[found], vecs[found]
    u, _ = r.user_embeddings(users)
    ids = np.broadcast_to(live, (len(users), len(live)))
    base = (u @ vecs.T).astype(np.float32)
    if r.prior is not None and r.log_prior is not None:
        base = prior_scores(ids, base, r.log_prior.at(ids), r.prior.beta)
    g = r.graph_filter.at(r.graph_filter.scores(r.graph_histories(users)), ids)
    return top_k(ids, blend(base, g, gamma), k)[0]


def test_retriever_blends_the_graph_over_the_candidate_union(demo_ws: tuple[Path, dict]) -> None:
    work, s = demo_ws
    ws = Workspace.open(work)
    day = s["eval_day"]
    plain = Retriever(ws, day, prior=None, graph=None)
    users = plain.store.ids("user")[:40]  # type: ignore[union-attr]
    base = plain.retrieve(users, 30)
    # gamma 0 through the graph path: the union holds the ANN's top, so the (exact) index's order comes back
    zero = Retriever(ws, day, prior=None, graph=GraphConfig(gamma=0.0)).retrieve(users, 30)
    assert np.array_equal(zero.ids, base.ids)
    n_live = len(plain.live)
    for prior in (None, PriorConfig(beta=0.05)):
        for gamma in (0.3, 3.0):
            r = Retriever(ws, day, prior=prior, graph=GraphConfig(gamma=gamma))
            c = r.retrieve(users, 30)
            assert c.ids.dtype == np.int64 and (c.ids >= 0).all() and np.isin(c.ids, r.live).all()
            assert all(len(set(row)) == 30 for row in c.ids.tolist())
            assert np.all(np.diff(c.scores, axis=1) <= 1e-6)
            assert not np.array_equal(c.ids, base.ids)  # the graph moved something
            # with a union deep enough to hold every live ad, the served top k is the brute-force one
            deep = Retriever(ws, day, prior=prior, graph=GraphConfig(gamma=gamma, depth=n_live // 30 + 1))
            assert np.array_equal(deep.retrieve(users, 30).ids, _brute_force(deep, users, 30, gamma))
    # users without clicks in the window: the graph adds nothing to them
    r = Retriever(ws, day, prior=None, graph=GraphConfig(gamma=3.0))
    every = plain.store.ids("user")  # type: ignore[union-attr]
    quiet = np.array([u for u in every if len(r.graph_histories(np.array([u]))[0]) == 0], np.int64)[:20]
    assert len(quiet) > 0
    assert np.array_equal(r.retrieve(quiet, 30).ids, plain.retrieve(quiet, 30).ids)
    excluded = base.ids[0, :5]
    ex = r.retrieve(users[:2], 30, excluded_ids=excluded)
    assert not np.isin(ex.ids, excluded).any() and (ex.ids >= 0).all()


def test_graph_candidates_in_chunks_equal_one_pass(
    demo_ws: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    work, s = demo_ws
    r = Retriever(
        Workspace.open(work), s["eval_day"], prior=PriorConfig(beta=0.05), graph=GraphConfig(gamma=1.0)
    )
    users = r.store.ids("user")[:50]  # type: ignore[union-attr]
    one = r.retrieve(users, 20)
    assert r.graph_filter is not None
    monkeypatch.setattr(graph_module, "GRAPH_CHUNK", 7 * len(r.graph_filter.ads))  # 7 users per chunk
    chunked = r.retrieve(users, 20)
    assert np.array_equal(one.ids, chunked.ids)
    np.testing.assert_allclose(one.scores, chunked.scores, rtol=1e-5)  # BLAS blocks differ with the batch


def test_the_cycle_fits_gamma_and_serving_applies_it(demo_ws: tuple[Path, dict]) -> None:
    """The cycle records the graph's fit in each index version after the first; Retriever applies it by
    default, and the fit's recall is what serving with it gives on the fit's day."""
    work, s = demo_ws
    ws = Workspace.open(work)
    day = s["eval_day"]
    r = Retriever(ws, day)
    rec = r.index_manifest["upstream"]["retrieval_graph"]
    cfg = GraphConfig.from_json(rec["config"])
    assert (
        rec["validation"] == f"day {r.store.day}"
        and rec["recall_at_k_chosen"] >= rec["recall_at_k_without_graph"]
    )  # type: ignore[union-attr]
    assert r.graph == (cfg if cfg.gamma > 0 else None)
    doc = json.loads(eval_path(ws, day).read_text())
    assert doc["retrieval"]["graph"] == (cfg.to_json() if cfg.gamma > 0 else None)
    first = min(ws.published_days(index_dir(ws)))
    m = json.loads((index_dir(ws) / f"day={first}" / "manifest.json").read_text())
    assert "retrieval_graph" not in m["upstream"]
    # fit on the eval day's clicks; serving with the chosen gamma reproduces the fit's recall
    users, relevant = day_clicks(ws.dataset(), day)
    fitter = Retriever(ws, day, graph=GraphConfig())
    fit = fitter.fit_graph(users, relevant, 20)
    assert fit.config.gamma in DEFAULT_GAMMAS and fit.recall_chosen == max(fit.recall_at_k.values())
    served = Retriever(ws, day, graph=fit.config)
    _, found = served.user_embeddings(users)
    c = served.retrieve(users[found], 20)
    rel = [relevant[j] for j in np.flatnonzero(found)]
    got = np.mean([len(np.intersect1d(row, x)) / len(x) for row, x in zip(c.ids, rel, strict=True)])
    assert got == pytest.approx(fit.recall_chosen, abs=1e-9)


def test_old_cycle_config_has_no_graph_and_bad_records_are_data_errors(tmp_path: Path) -> None:
    cfg = CycleConfig()
    old = cfg.to_json()
    del old["retrieval_graph"], old["graph_window"]
    assert CycleConfig.from_json(old).retrieval_graph is False
    assert CycleConfig.from_json(cfg.to_json()) == cfg
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="graph_window"):
            CycleConfig(graph_window=bad)  # type: ignore[arg-type]
    for rec in ({"config": {"gamma": -1}}, {"cfg": {}}, [1]):
        with pytest.raises(DataError, match="retrieval_graph"):
            graph_from_record(rec, tmp_path / "manifest.json")
    assert graph_from_record(None, tmp_path) is None


def test_fit_cached_returns_the_same_graph_for_the_same_clicks_only() -> None:
    users, ads = _clicks(3)
    a = CoClickGraph.fit_cached(users, ads, rank=4)
    assert CoClickGraph.fit_cached(users.copy(), ads.copy(), rank=4) is a
    assert CoClickGraph.fit_cached(users, ads, rank=3) is not a
    b = CoClickGraph.fit_cached(users[:-1], ads[:-1], rank=4)
    assert b is not a
    np.testing.assert_array_equal(
        b.scores([ads[:3]]), CoClickGraph.fit(users[:-1], ads[:-1], 4).scores([ads[:3]])
    )


def test_randomized_vectors_span_the_top_singular_subspace() -> None:
    """On a sparse matrix with a clear gap after the top 8 singular values, the randomized block method finds
    the subspace ARPACK finds (the graph's ARPACK start is used below `EXACT_SVD_MAX`)."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    from retrieval.graph_filter import randomized_right_vectors

    rng = np.random.default_rng(0)
    m, n, k = 3000, 800, 8
    dense = (rng.standard_normal((m, k)) * np.arange(k, 0, -1) * 3) @ rng.standard_normal((k, n))
    mask = rng.random((m, n)) < 0.3
    a = sp.csr_matrix(np.where(mask, dense + rng.standard_normal((m, n)), 0.0))
    _, s, vt = svds(a, k=k, v0=np.full(n, 1 / np.sqrt(n)))
    vr = randomized_right_vectors(a, k, oversample=16, power_iters=8).astype(np.float64)
    assert vr.shape == (k, n)
    np.testing.assert_allclose(vr @ vr.T, np.eye(k), atol=1e-4)  # orthonormal
    overlap = np.linalg.norm(vt @ vr.T) ** 2  # k when the subspaces agree
    assert overlap > k - 0.01
    # descending singular values: |A v_i| decreases
    sv = np.linalg.norm(a @ vr.T, axis=0)
    assert (np.diff(sv) <= 1e-3 * sv[0]).all()
    np.testing.assert_array_equal(vr, randomized_right_vectors(a, k, oversample=16, power_iters=8))


def test_large_graphs_use_the_randomized_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above `EXACT_SVD_MAX` rows on its smaller side the graph's low-pass part comes from the randomized block
    method; on a connected graph with a spectral gap it scores like the ARPACK graph."""
    import scipy.sparse as sp

    import retrieval.graph_filter as gf

    rng = np.random.default_rng(3)
    users = rng.integers(0, 400, 6000)
    ads = (users % 4) * 30 + rng.integers(0, 30, 6000)  # four communities of 30 ads,
    ads = np.where(rng.random(6000) < 0.05, rng.integers(0, 120, 6000), ads)  # joined by 5 % of the clicks
    assert gf.n_components(sp.csr_matrix((np.ones(6000), (users, ads)))) == 1
    exact = gf.CoClickGraph.fit(users, ads, rank=4)
    monkeypatch.setattr(gf, "EXACT_SVD_MAX", 10)
    approx = gf.CoClickGraph.fit(users, ads, rank=4)
    hist = [ads[users == u] for u in range(0, 400, 7)]
    np.testing.assert_allclose(approx.scores(hist), exact.scores(hist), atol=2e-3)
    assert not np.array_equal(approx._out, exact._out)  # another basis of the same subspace


def test_fragmented_graphs_use_the_randomized_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A click graph with at least `rank` connected components (each gives singular value 1, so the top ones
    repeat) gets the randomized block method below `EXACT_SVD_MAX` too; one with fewer keeps ARPACK."""
    import scipy.sparse as sp

    import retrieval.graph_filter as gf

    rng = np.random.default_rng(4)
    users = rng.integers(0, 600, 4000)
    ads = (users % 40) * 5 + rng.integers(0, 5, 4000)  # 40 separate communities of 15 users and 5 ads
    r = sp.csr_matrix(
        (np.ones(4000), (np.unique(users, return_inverse=True)[1], np.unique(ads, return_inverse=True)[1]))
    )
    assert gf.n_components(r) == 40

    def no_arpack(*args: object, **kwargs: object) -> None:
        raise AssertionError("ARPACK called")

    monkeypatch.setattr(gf, "svds", no_arpack)
    g = gf.CoClickGraph.fit(users, ads, rank=32)  # 40 components >= 32
    assert g.rank == 32
    hist = [ads[users == u] for u in range(0, 600, 11)]
    assert np.isfinite(g.scores(hist)).all()
    with pytest.raises(AssertionError, match="ARPACK called"):
        gf.CoClickGraph.fit(users, ads, rank=48)  # 40 components < 48: ARPACK
