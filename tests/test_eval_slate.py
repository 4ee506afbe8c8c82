"""eval.slate: the true value of each ordering, on the tiny demo (synthetic data has the truth)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adserving.two_stage import TwoStage
from adslog.oracle import Oracle
from adslog.workspace import Workspace
from eval.slate import SYSTEMS, slate_value


@pytest.fixture(scope="module")
def slate(demo_ws: tuple[Path, dict]) -> tuple[TwoStage, Oracle, np.ndarray, dict]:
    work, s = demo_ws
    ws = Workspace.open(work)
    day = int(s["eval_day"])
    ts = TwoStage(ws, day=day)
    oracle = Oracle.load(ws.data_path())
    shown = np.unique(ws.dataset().impressions(day, ["user_id"]).column("user_id").to_numpy())[:60]
    return ts, oracle, shown, slate_value(ts, oracle, shown, ks=(5, 20), n_boot=100)


def test_oracles_bound_every_system(slate: tuple[TwoStage, Oracle, np.ndarray, dict]) -> None:
    _, _, users, out = slate
    assert out["n_users"] == len(users) and sum(out["paths"].values()) == len(users)
    for k in ("k5", "k20"):
        for sec in (out[k], out[k]["revenue"]):
            for s in ("retrieval", "two_stage", "served"):
                assert 0 < sec[s] <= sec["oracle_candidates"] + 1e-9 <= sec["oracle"] + 2e-9
            assert sec["fraction_of_oracle"]["oracle"] == 1.0
            lo, hi = sec["two_stage_minus_retrieval_ci"]
            assert lo <= sec["two_stage_minus_retrieval"] <= hi
    assert out["k20"]["oracle"] > out["k5"]["oracle"]  # more slots, more expected clicks


def test_retrieval_value_is_the_truth_summed_over_its_first_k(
    slate: tuple[TwoStage, Oracle, np.ndarray, dict],
) -> None:
    ts, oracle, users, out = slate
    total = 0.0
    for u in users.tolist():
        ids, _, _ = ts.candidates(u, 500)
        total += float(oracle.p_click(u, ids[:5], ts.day).astype(np.float64).sum())
    assert out["k5"]["retrieval"] == pytest.approx(total / len(users), rel=1e-9)
    assert set(SYSTEMS) <= set(out["k5"])


def test_eval_document_carries_the_slate_on_synthetic_data(demo_ws: tuple[Path, dict]) -> None:
    from eval.evaluate import evaluate_day
    from workflow.report import summary_table

    work, s = demo_ws
    doc = evaluate_day(Workspace.open(work), int(s["eval_day"]), slate_users=40)
    sl = doc["slate"]
    assert sl["n_users"] == 40 and sl["sample"].startswith("40 of the ")
    assert sl["k50"]["oracle"] >= sl["k50"]["oracle_candidates"] >= sl["k50"]["two_stage"] > 0
    assert any(line.startswith("| true clicks per user, top 50:") for line in summary_table(doc))
    assert "slate" not in evaluate_day(Workspace.open(work), int(s["eval_day"]), slate_users=0)


@pytest.fixture(scope="module")
def day_docs(demo_ws: tuple[Path, dict]) -> tuple[Workspace, int, dict[str, Any], Any]:
    """(the demo workspace, its eval day, that day's eval document without caps reached, evaluate_day)."""
    from eval.evaluate import evaluate_day

    work, s = demo_ws
    ws = Workspace.open(work)
    day = int(s["eval_day"])
    return ws, day, evaluate_day(ws, day, slate_users=0), evaluate_day


def test_oracle_figures_rest_on_a_seeded_sample_above_the_cap(day_docs: tuple) -> None:
    """Eval's oracle top k (users x live ads) runs on at most `oracle_users` clicked users: below the cap the
    document is unchanged, above it the oracle figures are those of the recorded seeded sample."""
    from eval.evaluate import group_by_user, oracle_sample, oracle_topk
    from eval.metrics import recall_at_k
    from retrieval.retrieve import Retriever

    ws, day, full, evaluate_day = day_docs
    assert "oracle_sample" not in full["retrieval"]
    capped = evaluate_day(ws, day, slate_users=0, oracle_users=25)
    r = capped["retrieval"]
    assert r["oracle_sample"] == {"n_users": 25, "of": full["retrieval"]["n_users"], "seed": day}
    # the model's own figures do not depend on the cap
    assert r["recall_at_k"] == full["retrieval"]["recall_at_k"]
    ds = ws.dataset()
    imp = ds.impressions(day, ["user_id", "ad_id", "click"])
    click = imp.column("click").to_numpy() == 1
    users, relevant = group_by_user(
        imp.column("user_id").to_numpy()[click], imp.column("ad_id").to_numpy()[click]
    )
    idx = oracle_sample(len(users), 25, day)
    assert idx is not None and len(idx) == 25
    top = oracle_topk(ds.root, users[idx], Retriever(ws, day, ds).live, day, 100)
    assert top is not None
    assert r["oracle_recall_at_k"]["100"] == pytest.approx(recall_at_k(top, [relevant[i] for i in idx], 100))
    assert r["oracle_recall_at_k"]["100"] != pytest.approx(full["retrieval"]["oracle_recall_at_k"]["100"])


def test_retrieval_figures_rest_on_a_seeded_sample_above_the_cap(day_docs: tuple) -> None:
    """Eval's retrieval (every live ad scored with the co-click graph per user) runs on at most
    `retrieval_users` clicked users: the sample is recorded, the per-surface figures read only its users'
    clicks, and the ranking figures do not depend on it."""
    from eval.evaluate import group_by_user, oracle_sample

    ws, day, full, evaluate_day = day_docs
    assert "retrieval_sample" not in full["retrieval"]
    r_full = full["retrieval"]
    capped = evaluate_day(ws, day, slate_users=0, retrieval_users=30)
    r = capped["retrieval"]
    assert r["retrieval_sample"] == {"n_users": 30, "of": r_full["n_users"], "seed": day + 1}
    assert r["n_users"] == 30 and r["n_clicks"] == r_full["n_clicks"]
    assert capped["ranking"]["roc_auc"] == full["ranking"]["roc_auc"]
    imp = ws.dataset().impressions(day, ["user_id", "ad_id", "click"])
    click = imp.column("click").to_numpy() == 1
    uid = imp.column("user_id").to_numpy()[click]
    users, _ = group_by_user(uid, imp.column("ad_id").to_numpy()[click])
    idx = oracle_sample(len(users), 30, day + 1)
    assert idx is not None
    sampled_clicks = int(np.isin(uid, users[idx]).sum())
    assert sum(v["n_clicks"] for v in r["by_surface"].values()) == sampled_clicks < r_full["n_clicks"]


def test_ranking_figures_rest_on_a_seeded_sample_above_the_cap(day_docs: tuple) -> None:
    """The ranker's figures are scored on at most `ranking_rows` impressions (a recorded seeded sample); the
    retrieval and embedding figures still read the whole day."""
    ws, day, full, evaluate_day = day_docs
    assert "ranking_sample" not in full["ranking"]
    capped = evaluate_day(ws, day, slate_users=0, ranking_rows=800)
    n = full["ranking"]["n_impressions"]
    assert capped["ranking"]["ranking_sample"] == {"n_impressions": 800, "of": n, "seed": day + 2}
    assert capped["ranking"]["n_impressions"] == 800 < n
    assert sum(v["n_impressions"] for v in capped["ranking"]["by_surface"].values()) == 800
    assert capped["ranking"]["roc_auc"] != full["ranking"]["roc_auc"]
    assert capped["retrieval"] == full["retrieval"] and capped["embeddings"] == full["embeddings"]
    with pytest.raises(ValueError, match="ranking_rows"):
        evaluate_day(ws, day, slate_users=0, ranking_rows=0)
