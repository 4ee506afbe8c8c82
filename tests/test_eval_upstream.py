"""The upstream heads' out-of-time evaluation (`eval.upstream.upstream_heads`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adslog.workspace import Workspace
from dermcore.errors import DermError
from eval.upstream import upstream_heads


def test_upstream_heads_score_the_last_day_with_the_previous_snapshot(demo_ws: tuple[Path, dict]) -> None:
    work, summary = demo_ws
    ws = Workspace.open(work)
    day = summary["eval_day"]
    doc = upstream_heads(ws, day)
    assert doc["model_day"] == day - 1  # the snapshot published before the day, never one trained on it
    assert doc["n_impressions"] > 1000
    # trained towers beat chance on clicks out of time, and predict a plausible base rate
    assert doc["ctr_roc_auc"] > 0.55
    assert 0.0 < doc["predicted_ctr"] < 0.2 and 0.0 < doc["observed_ctr"] < 0.2


def test_upstream_heads_need_a_model_before_the_day(demo_ws: tuple[Path, dict]) -> None:
    work, _ = demo_ws
    ws = Workspace.open(work)
    first = ws.dataset().first_day
    with pytest.raises(DermError, match="no ctr model published before day"):
        upstream_heads(ws, first)
