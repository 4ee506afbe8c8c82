"""Two-stage query: the JSON document, the eCPM order, the advertiser cap, ranker weights, cold start, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from click.testing import CliRunner

from adserving.auction import ECPM_SCALE, ecpm, select_top
from adserving.two_stage import ServeConfig, TwoStage, query
from adslog.workspace import Workspace
from cli import main
from dermcore.errors import DermError
from retrieval.cold_start import PEER_CATEGORIES, POPULAR, USER_CATEGORIES


@pytest.fixture(scope="module")
def ts(demo_ws: tuple[Path, dict]) -> TwoStage:
    return TwoStage(Workspace.open(demo_ws[0]))


def _ann_user(ts: TwoStage, i: int = 0) -> int:
    """A user with an embedding in the serving store version."""
    return int(ts.retriever.store.ids("user")[i])  # type: ignore[union-attr]


def _ads(ts: TwoStage) -> dict[int, tuple[int, float, int]]:
    t = ts.ds.ads(["ad_id", "advertiser_id", "bid", "objective"])
    cols = [t.column(c).to_pylist() for c in t.column_names]
    return {a: (adv, bid, obj) for a, adv, bid, obj in zip(*cols, strict=True)}


def test_query_json_keys_and_types(ts: TwoStage) -> None:
    user = _ann_user(ts)
    doc = ts.query(user, ServeConfig(k=12, candidates=60))
    assert set(doc) == {"user_id", "day", "path", "versions", "config", "n_candidates", "results"}
    assert doc["user_id"] == user and doc["day"] == ts.day and doc["path"] == "ann"
    assert set(doc["versions"]) == {"embeddings", "index", "ranker"}
    assert doc["versions"]["ranker"] == ts.ranker.version and doc["versions"]["ranker"].startswith(
        "ranker:day="
    )
    assert doc["config"]["k"] == 12 and doc["config"]["order"] == "ecpm" and doc["n_candidates"] == 60
    res = doc["results"]
    assert len(res) == 12 and [r["rank"] for r in res] == list(range(1, 13))
    keys = {
        "ad_id",
        "advertiser_id",
        "score",
        "rank_score",
        "p_ctr",
        "p_cvr",
        "bid",
        "objective",
        "ecpm",
        "rank",
    }
    live = set(ts.ds.live_ads(ts.day).tolist())
    for r in res:
        assert set(r) == keys
        assert all(type(r[k]) is int for k in ("ad_id", "advertiser_id", "objective", "rank"))
        assert all(type(r[k]) is float for k in ("score", "rank_score", "p_ctr", "p_cvr", "ecpm", "bid"))
        assert 0.0 < r["p_ctr"] < 1.0 and 0.0 < r["p_cvr"] < 1.0 and r["rank_score"] == r["p_ctr"]
        assert r["ad_id"] in live
    assert len({r["ad_id"] for r in res}) == 12
    json.dumps(doc)  # plain JSON types throughout


def test_ecpm_order_and_formula(ts: TwoStage) -> None:
    ads = _ads(ts)
    doc = ts.query(_ann_user(ts, 1), ServeConfig(k=80, candidates=80, max_per_advertiser=None))
    res = doc["results"]
    values = [r["ecpm"] for r in res]
    assert values == sorted(values, reverse=True) and len(res) == 80
    objectives = set()
    for r in res:
        adv, bid, obj = ads[r["ad_id"]]
        assert (r["advertiser_id"], r["objective"]) == (adv, obj) and r["bid"] == pytest.approx(bid)
        expected = ECPM_SCALE * bid * r["p_ctr"] * (r["p_cvr"] if obj == 1 else 1.0)
        assert r["ecpm"] == pytest.approx(expected, rel=1e-6)
        objectives.add(obj)
    assert objectives == {0, 1}  # both formulas were exercised
    # --order rank_score: by p_ctr alone, over the same candidates
    by_ctr = ts.query(
        _ann_user(ts, 1), ServeConfig(k=80, candidates=80, order="rank_score", max_per_advertiser=None)
    )
    p = [r["p_ctr"] for r in by_ctr["results"]]
    assert p == sorted(p, reverse=True)
    assert {r["ad_id"] for r in by_ctr["results"]} == {r["ad_id"] for r in res}
    assert [r["ad_id"] for r in by_ctr["results"]] != [r["ad_id"] for r in res]


def test_ecpm_function() -> None:
    v = ecpm(np.array([2.0, 2.0]), np.array([0.1, 0.1]), np.array([0.5, 0.5]), np.array([0, 1]))
    assert v.tolist() == pytest.approx([200.0, 100.0])


def _greedy(key: np.ndarray, ids: np.ndarray, adv: np.ndarray, k: int, cap: int) -> list[int]:
    out: list[int] = []
    count: dict[int, int] = {}
    for i in sorted(range(len(key)), key=lambda i: (-key[i], ids[i])):
        if count.get(int(adv[i]), 0) < cap:
            out.append(i)
            count[int(adv[i])] = count.get(int(adv[i]), 0) + 1
        if len(out) == k:
            break
    return out


def test_select_top_matches_greedy_cap() -> None:
    key = np.array([9.0, 8.0, 7.0, 7.0, 6.0, 5.0])
    ids = np.array([10, 11, 13, 12, 14, 15])
    adv = np.array([1, 1, 1, 2, 1, 3])
    # advertiser 1 holds the top 2 slots; its third ad (13) and fourth (14) are skipped; ties by id (12 < 13)
    assert select_top(key, ids, adv, 4, 2).tolist() == [0, 1, 3, 5]
    assert select_top(key, ids, adv, 4, None).tolist() == [0, 1, 3, 2]
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 60))
        key = rng.integers(0, 10, n).astype(float)
        ids = rng.permutation(1000)[:n]
        adv = rng.integers(0, 6, n)
        k, cap = int(rng.integers(1, 20)), int(rng.integers(1, 4))
        assert select_top(key, ids, adv, k, cap).tolist() == _greedy(key, ids, adv, k, cap)


def test_advertiser_cap_in_query(ts: TwoStage) -> None:
    user, n = _ann_user(ts, 2), 200
    full = ts.query(user, ServeConfig(k=n, candidates=n, max_per_advertiser=None))["results"]
    advertisers = [r["advertiser_id"] for r in full]
    assert len(set(advertisers)) >= 20 and max(advertisers.count(a) for a in set(advertisers)) > 1
    for cap in (1, 2):
        res = ts.query(user, ServeConfig(k=20, candidates=n, max_per_advertiser=cap))["results"]
        got = [r["advertiser_id"] for r in res]
        assert len(res) == 20 and max(got.count(a) for a in set(got)) <= cap
        # the capped list is the greedy walk down the uncapped eCPM order
        expected, count = [], dict[int, int]()
        for r in full:
            if count.get(r["advertiser_id"], 0) < cap and len(expected) < 20:
                expected.append(r["ad_id"])
                count[r["advertiser_id"]] = count.get(r["advertiser_id"], 0) + 1
        assert [r["ad_id"] for r in res] == expected
    # fewer advertisers than k: the cap holds and the list comes back short
    few = ts.query(user, ServeConfig(k=50, candidates=50, max_per_advertiser=1))["results"]
    cand_adv = {
        r["advertiser_id"]
        for r in ts.query(user, ServeConfig(k=50, candidates=50, max_per_advertiser=None))["results"]
    }
    assert len(few) == len(cand_adv) <= 50


def test_different_ranker_weights_reorder_results(ts: TwoStage) -> None:
    user = _ann_user(ts, 3)
    cfg = ServeConfig(k=20, candidates=100, order="rank_score", max_per_advertiser=None)
    before = ts.query(user, cfg)["results"]
    saved = {k: v.clone() for k, v in ts.ranker.ranker.state_dict().items()}
    try:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in ts.ranker.ranker.parameters():
                p.add_(0.5 * p.abs().mean().clamp(min=0.05) * torch.randn(p.shape, generator=gen))
        after = ts.query(user, cfg)["results"]
    finally:
        ts.ranker.ranker.load_state_dict(saved)
    assert [r["ad_id"] for r in after] != [r["ad_id"] for r in before]
    assert [r["p_ctr"] for r in after] != [r["p_ctr"] for r in before]
    assert ts.query(user, cfg)["results"] == before  # restored weights give the original answer


def test_live_search_equals_filtered_search(ts: TwoStage) -> None:
    """Retriever.search over-fetches unfiltered and drops ads not live today: the same answer as the backend's
    allow-list filter (the demo's index is exact), including rows that must fall back to the filter."""
    r = ts.retriever
    assert r.index is not None and len(r._dead) > 0  # the index holds ads that are no longer live
    vecs, found = r.user_embeddings(r.store.ids("user")[:40])  # type: ignore[union-attr]
    for k in (10, 200, len(r.live)):
        ids, scores = r.ann_search(vecs[found], k)
        want_ids, want_scores = r.index.search(vecs[found], k, allowed_ids=r.live)
        assert np.isin(ids[ids >= 0], r.live).all()
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-6)


def test_shared_sequence_forward_equals_plain_forward(ts: TwoStage) -> None:
    user = _ann_user(ts, 5)
    ids, _, _ = ts.candidates(user, 60)
    shared, plain = ts.rank(user, ids), ts.rank(user, ids, share_sequence=False)
    np.testing.assert_allclose(shared[0], plain[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(shared[1], plain[1], rtol=1e-5, atol=1e-7)
    assert len(np.unique(plain[0])) > 1  # the rows do differ (by ad), only the sequence token is shared


def _top_categories(cats: np.ndarray, n: int = 3) -> set[int]:
    c, counts = np.unique(cats, return_counts=True)
    return set(c[np.lexsort((c, -counts))][:n].tolist())


def test_eval_cold_start_is_servings(ts: TwoStage) -> None:
    """Offline eval answers users without an embedding exactly as the service does (issue 18): the batch
    Retriever.retrieve with the serving fallback gives TwoStage.candidates' ids and path for every cold user."""
    ds = ts.ds
    users = ds.users(["user_id"]).column("user_id").to_numpy()
    cold = np.setdiff1d(users, ts.retriever.store.ids("user"))[:25]  # type: ignore[union-attr]
    warm = np.array([_ann_user(ts, i) for i in range(3)])
    mixed = np.r_[warm, cold]
    got = ts.retriever.retrieve(mixed, 40, cold_start=ts.cold_start)
    assert got.path[:3] == ["ann"] * 3
    for row, user in enumerate(mixed.tolist()):
        ids, _, path = ts.candidates(user, 40)
        assert got.path[row] == path
        np.testing.assert_array_equal(got.ids[row], ids)
    # excluded ads never come back from the fallback
    excluded = got.ids[3, :5]
    again = ts.retriever.retrieve(cold[:1], 40, excluded, cold_start=ts.cold_start)
    assert not np.isin(again.ids, excluded).any() and (again.ids >= 0).all()


def test_cold_start_paths(demo_ws: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    ts = TwoStage(Workspace.open(demo_ws[0]), ServeConfig(peer_features=("region",)))
    assert ServeConfig().peer_features == ()  # off by default: peers' categories lost to popularity
    ds = ts.ds
    cat_of = dict(
        zip(
            *(ds.ads(["ad_id", "category"]).column(c).to_pylist() for c in ("ad_id", "category")), strict=True
        )
    )
    live_cat = np.array([cat_of[a] for a in ts.retriever.popular.tolist()])
    # a known user with no embedding and no activity: the categories of the region's clicks of the last 7 days
    users = ds.users(["user_id", "region"])
    no_emb = np.setdiff1d(users.column("user_id").to_numpy(), ts.retriever.store.ids("user"))  # type: ignore[union-attr]
    assert len(no_emb)
    user = int(no_emb[0])
    region = dict(zip(*(users.column(c).to_pylist() for c in ("user_id", "region")), strict=True))
    win = ds.impressions(list(range(max(ds.first_day, ts.day - 7), ts.day)), ["user_id", "ad_id", "click"])
    win = win.filter(pc.equal(win.column("click"), 1))
    peer = [
        cat_of[a]
        for u, a in zip(win.column("user_id").to_pylist(), win.column("ad_id").to_pylist(), strict=True)
        if region[u] == region[user]
    ]
    want = _top_categories(np.array(peer))
    n_in = int(np.isin(live_cat, list(want)).sum())
    ids, scores, path = ts.candidates(user, 50)
    assert path == PEER_CATEGORIES and len(ids) == 50
    assert all(cat_of[a] in want for a in ids[: min(n_in, 50)].tolist())
    doc = ts.query(user, ServeConfig(k=10, candidates=50))
    assert doc["path"] == PEER_CATEGORIES and len(doc["results"]) == 10
    e = [r["ecpm"] for r in doc["results"]]
    assert e == sorted(e, reverse=True)  # ranked the same way as the ANN path
    # an active user whose embedding is missing: the categories of the user's own clicks before the day (a user
    # with one click and no conversion: exactly that ad's category comes first)
    hist = ds.impressions(list(range(ds.first_day, ts.day)), ["user_id", "ad_id", "click", "conversion"])
    users_h, n_clicks = np.unique(
        hist.filter(pc.equal(hist.column("click"), 1)).column("user_id"), return_counts=True
    )
    converters = hist.filter(pc.equal(hist.column("conversion"), 1)).column("user_id").to_numpy()
    clicker = int(users_h[(n_clicks == 1) & ~np.isin(users_h, converters)][0])
    t = hist.filter(pc.and_(pc.equal(hist.column("click"), 1), pc.equal(hist.column("user_id"), clicker)))
    want = {cat_of[t.column("ad_id")[0].as_py()]}
    monkeypatch.setattr(
        ts.retriever, "user_embeddings", lambda u: (np.zeros((len(u), 1), np.float32), np.zeros(len(u), bool))
    )
    ids, _, path = ts.candidates(clicker, 30)
    assert path == USER_CATEGORIES
    n_in = int(np.isin(live_cat, list(want)).sum())
    assert n_in > 0 and all(cat_of[a] in want for a in ids[: min(n_in, 30)].tolist())
    monkeypatch.undo()
    # an id the users table does not have: an error by default, global popularity when configured
    with pytest.raises(DermError, match="user 123 is not in the dataset's users table"):
        ts.query(123, ServeConfig(k=5, candidates=20))
    doc = ts.query(123, ServeConfig(k=5, candidates=20, unknown_user="popular"))
    assert doc["path"] == POPULAR and len(doc["results"]) == 5
    assert {r["ad_id"] for r in doc["results"]} <= set(ts.retriever.popular[:20].tolist())


def _run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def test_cli_json_round_trip(demo_ws: tuple[Path, dict], ts: TwoStage) -> None:
    work = str(demo_ws[0])
    user = _ann_user(ts, 4)
    code, out, err = _run(
        "query", "--work", work, "--user", str(user), "--k", "7", "--candidates", "40", "--json"
    )
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc == query(Workspace.open(work), user, ServeConfig(k=7, candidates=40))
    code, out, _ = _run(
        "query",
        "--work",
        work,
        "--user",
        str(user),
        "--k",
        "7",
        "--candidates",
        "40",
        "--order",
        "rank_score",
        "--max-per-advertiser",
        "0",
    )
    assert code == 0 and out.splitlines()[0].startswith(
        f"user {user}, day {ts.day}, path ann, order rank_score"
    )
    assert len(out.splitlines()) == 2 + 7


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ("--user", "123"),
            "Error: user 123 is not in the dataset's users table (an unknown user; "
            "ServeConfig.unknown_user='popular' serves popular ads instead)",
        ),
        (("--k", "0"), "Error: Invalid value for '--k': 0 is not in the range 1<=x<=2147483647."),
        (("--k", "10", "--candidates", "5"), "Error: candidates (5) must be >= k (10)"),
        (
            ("--max-per-advertiser", "-1"),
            "Error: Invalid value for '--max-per-advertiser': -1 is not in the range 0<=x<=2147483647.",
        ),
    ],
)
def test_cli_bad_input(
    demo_ws: tuple[Path, dict], ts: TwoStage, extra: tuple[str, ...], message: str
) -> None:
    args = ["query", "--work", str(demo_ws[0]), "--user", str(_ann_user(ts)), *extra, "--json"]
    code, out, err = _run(*args)
    assert code == 1 and out == "" and err == message + "\n"
