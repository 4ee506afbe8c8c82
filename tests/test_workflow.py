"""End to end on the tiny demo: every stage publishes, the report has every key, a trained model beats chance,
reruns recompute nothing, and evaluation is point-in-time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adserving.two_stage import ServeConfig, TwoStage, query
from adslog.workspace import Workspace, version_name
from dermcore.artifact import read_json
from dermcore.errors import DermError, VersionMismatchError
from embstore.store import embeddings_dir, open_version
from eval.evaluate import eval_path, evaluate_day
from index.versions import index_dir
from ranking.train import ranker_dir
from retrieval.retrieve import Retriever
from towers.train import models_dir
from workflow.cycle import load_cycle_config, run_day
from workflow.demo import DemoConfig, run_demo


def _artifact_ids(work: Path) -> dict[str, str]:
    out = {}
    for m in sorted(work.rglob("manifest.json")):
        if "data" in m.relative_to(work).parts[:1]:
            continue
        out[str(m.relative_to(work))] = read_json(m)["artifact_id"]
    return out


def test_report_has_every_key(demo_ws: tuple[Path, dict]) -> None:
    work, summary = demo_ws
    doc = json.loads((work / "report.json").read_text())
    assert doc == summary["report"]
    for key in ("day", "embedding_day", "train_days", "versions", "retrieval", "ranking", "embeddings"):
        assert key in doc
    assert doc["embedding_day"] == doc["day"] - 1
    r = doc["retrieval"]
    for key in ("recall_at_k", "popularity_recall_at_k", "oracle_recall_at_k", "relevance_recall_at_k"):
        assert set(r[key]) == {"20", "100"}
        assert all(0.0 <= v <= 1.0 for v in r[key].values())
    assert r["n_users"] > 50 and 0 <= r["n_cold"] < r["n_users"]
    assert set(doc["ranking"]) >= {"roc_auc", "pr_auc", "oracle_roc_auc"}
    assert set(doc["embeddings"]["ctr"]) == {"user", "ad"}
    assert set(doc["versions"]) == {"embeddings", "index", "ranker"}
    assert (work / "report.md").read_text().startswith(f"# derm report: day {doc['day']}")


def test_trained_models_beat_chance(demo_ws: tuple[Path, dict]) -> None:
    doc = demo_ws[1]["report"]
    assert doc["ranking"]["roc_auc"] > 0.58
    assert (
        doc["ranking"]["oracle_roc_auc"] > doc["ranking"]["roc_auc"] - 0.02
        or doc["ranking"]["oracle_roc_auc"] > 0.7
    )
    # the true P(click) without the users' latent interests ranks worse than the full oracle, better than chance
    assert 0.5 < doc["ranking"]["nonpersonal_oracle_roc_auc"] < doc["ranking"]["oracle_roc_auc"]
    # random retrieval of 100 from the live ads would find ~100 / n_live of the clicked ads
    r = doc["retrieval"]
    assert r["recall_at_k"]["100"] > 3 * 100 / r["n_live_ads"]


def test_every_stage_published_each_day(demo_ws: tuple[Path, dict]) -> None:
    work, s = demo_ws
    ws = Workspace.open(work)
    published = s["train_days"] + s["daily_days"]
    assert ws.published_days(embeddings_dir(ws, "ctr")) == published
    assert ws.published_days(models_dir(ws, "ctr")) == [s["train_days"][-1], *s["daily_days"]]
    assert ws.published_days(index_dir(ws)) == [s["train_days"][-1], *s["daily_days"]]
    assert ws.published_days(ranker_dir(ws)) == [s["train_days"][-1], *s["daily_days"]]
    for d in s["daily_days"] + [s["eval_day"]]:
        assert eval_path(ws, d).exists()
    # back inference is marked, daily versions are not
    assert open_version(embeddings_dir(ws, "ctr"), s["train_days"][0]).manifest["back_inferred"] is True
    assert open_version(embeddings_dir(ws, "ctr"), s["daily_days"][-1]).manifest["back_inferred"] is False
    # no temp directory is left anywhere
    assert not [p for p in work.rglob(".tmp-*")]


def test_rerun_recomputes_nothing(demo_ws: tuple[Path, dict], demo_cfg: DemoConfig) -> None:
    work, _ = demo_ws
    before = _artifact_ids(work)
    again = run_demo(work, demo_cfg)
    assert _artifact_ids(work) == before
    assert "train_ctr" not in again["stage_seconds"] and "ranker" not in again["stage_seconds"]
    assert run_day(Workspace.open(work), again["daily_days"][0])["skipped"] is True


def test_eval_uses_only_versions_before_the_day(demo_ws: tuple[Path, dict]) -> None:
    work, s = demo_ws
    ws = Workspace.open(work)
    day = s["daily_days"][0]
    doc = evaluate_day(ws, day, slate_users=load_cycle_config(ws).slate_users)  # the cycle's sample
    assert doc["embedding_day"] == day - 1
    assert version_name(day - 1) in doc["versions"]["embeddings"]
    assert version_name(day - 1) in doc["versions"]["index"]
    assert version_name(day - 1) in doc["versions"]["ranker"]
    assert doc == read_json(eval_path(ws, day))


def test_query_two_stage(demo_ws: tuple[Path, dict]) -> None:
    work, s = demo_ws
    ws = Workspace.open(work)
    ts = TwoStage(ws)
    assert ts.day == s["eval_day"]
    user = int(ws.dataset().impressions(s["daily_days"][-1], ["user_id"]).column("user_id")[0].as_py())
    res = ts.query(user, ServeConfig(k=10, candidates=50, order="rank_score", max_per_advertiser=None))
    assert res["path"] == "ann" and res["user_id"] == user and res["day"] == s["eval_day"]
    assert len(res["results"]) == 10
    assert [r["rank"] for r in res["results"]] == list(range(1, 11))
    rank_scores = [r["rank_score"] for r in res["results"]]
    assert rank_scores == sorted(rank_scores, reverse=True)
    live = set(ws.dataset().live_ads(ts.day).tolist())
    assert all(r["ad_id"] in live for r in res["results"])
    assert len({r["ad_id"] for r in res["results"]}) == 10
    # an unknown user, when served, is answered by the cold-start path, still k results
    cold = query(ws, 123, ServeConfig(k=7, candidates=35, unknown_user="popular"))
    assert cold["path"] == "cold_start_popular" and len(cold["results"]) == 7


def test_retrieval_filters_to_live_ads_and_refuses_skew(demo_ws: tuple[Path, dict], tmp_path: Path) -> None:
    work, s = demo_ws
    ws = Workspace.open(work)
    day = s["eval_day"]
    r = Retriever(ws, day)
    users = r.store.ids("user")[:20]  # type: ignore[union-attr]
    c = r.retrieve(users, 30)
    live = ws.dataset().live_ads(day)
    assert np.isin(c.ids, live).all() and all(p == "ann" for p in c.path)
    excluded = c.ids[0, :5]
    c2 = r.retrieve(users[:1], 30, excluded_ids=excluded)
    assert not np.isin(c2.ids, excluded).any() and (c2.ids >= 0).all()
    # version skew: the index published for day-1 was built from another store version
    import shutil

    skew = tmp_path / "skew"
    shutil.copytree(work, skew)
    ws2 = Workspace(skew)
    shutil.rmtree(index_dir(ws2) / version_name(day - 1))
    shutil.copytree(index_dir(ws2) / version_name(day - 2), index_dir(ws2) / version_name(day - 1))
    with pytest.raises(VersionMismatchError, match="embedding_version"):
        Retriever(ws2, day)
    assert Retriever(ws2, day, allow_skew=True).index is not None
    # a half-moved cycle (store LATEST at day-1, index LATEST still at day-2) serves day-2 for both
    from dermcore.artifact import set_latest

    half = tmp_path / "half"
    shutil.copytree(work, half)
    ws3 = Workspace(half)
    set_latest(index_dir(ws3), version_name(day - 2))
    r3 = Retriever(ws3, day)
    assert r3.store is not None and r3.store.day == day - 2
    assert version_name(day - 2) in r3.versions["index"]


def test_nothing_published_is_an_error(tmp_path: Path, demo_ws: tuple[Path, dict]) -> None:
    work, s = demo_ws
    ws = Workspace.create(tmp_path / "empty", Workspace.open(work).data_path())
    with pytest.raises(DermError, match="nothing is published"):
        query(ws, 1)


def test_no_oracle_column_reaches_a_model(demo_ws: tuple[Path, dict]) -> None:
    """The synthetic data has oracle columns (p_click, p_conversion) and oracle factors; no model input may
    contain them: the feature specs stored with every snapshot name only id/categorical/numeric/dense columns."""
    work, _ = demo_ws
    ws = Workspace.open(work)
    ds = ws.dataset()
    oracle = {n for t in ds.columns.values() for n, c in t.items() if c.kind.value == "oracle"}
    assert oracle == {"p_click", "p_conversion"}
    specs = [read_json(p)["feature_spec"] for p in (work / "models").rglob("manifest.json")]
    specs += [read_json(p)["feature_spec"] for p in (work / "ranker").rglob("manifest.json")]
    assert len(specs) >= 2
    for spec in specs:
        names = {f["name"] for part in ("user", "ad", "context") for f in spec[part]}
        assert names and not names & oracle
        assert {f["kind"] for part in ("user", "ad", "context") for f in spec[part]} <= {
            "id",
            "categorical",
            "numeric",
            "dense_vector",
        }


def test_slate_users_is_one_workspace_setting(tmp_path: Path) -> None:
    """`slate_users` (eval's true-slate sample) lives in the cycle config: validated, saved, read back from the
    run config file, and 300 (the sample eval always drew) for a cycle.json written before the key. Every
    evaluation of a workspace uses it: `tests/test_cli.py::test_eval_json_matches_report` (the tests' demo
    samples 60) fails if `derm eval` does not."""
    from dermcore.errors import ConfigError
    from eval.evaluate import SLATE_USERS
    from workflow.cycle import CycleConfig
    from workflow.run_config import load_run_config

    assert CycleConfig().slate_users == SLATE_USERS == 300
    saved = CycleConfig(slate_users=7).to_json()
    assert saved["slate_users"] == 7 and CycleConfig.from_json(saved).slate_users == 7
    del saved["slate_users"]
    assert CycleConfig.from_json(saved).slate_users == SLATE_USERS
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError, match="slate_users must be an integer >= 0"):
            CycleConfig(slate_users=bad)  # type: ignore[arg-type]
    f = tmp_path / "run.toml"
    f.write_text("[cycle]\nslate_users = 0\n")
    assert load_run_config(f).cycle.slate_users == 0


def test_the_daily_export_builds_no_interaction_tower(
    ws_copy: tuple[Workspace, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cycle's embed step (`publish_embeddings`) reads only the two entity towers of the snapshot: with the
    interaction tower (so the whole model) impossible to build, it republishes the demo's store version of a
    daily day, vector for vector."""
    import towers.model
    from workflow.cycle import publish_embeddings

    ws, s = ws_copy
    day = s["daily_days"][-1]
    ref = open_version(embeddings_dir(ws, "ctr"), day)
    want = {e: (ref.ids(e).copy(), np.array(ref.vectors(e))) for e in ("user", "ad")}

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("the daily export built the interaction tower")

    monkeypatch.setattr(towers.model.InteractionTower, "__init__", refused)
    cfg = load_cycle_config(ws, "cpu")
    m = publish_embeddings(ws, ws.dataset(), "ctr", day, cfg, day, back_inferred=False, overwrite=True)
    assert m["artifact_id"] != ref.manifest["artifact_id"]  # really republished
    got = open_version(embeddings_dir(ws, "ctr"), day)
    for e, (ids, vecs) in want.items():
        np.testing.assert_array_equal(got.ids(e), ids)
        np.testing.assert_allclose(got.vectors(e), vecs, rtol=0, atol=1e-6)
