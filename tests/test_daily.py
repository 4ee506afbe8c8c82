"""The daily cycle's guarantees: quality gates refuse bad days and keep yesterday live, rollback restores
earlier versions together, and a SIGKILL at any point loses nothing and a rerun completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from adslog.workspace import Workspace, version_name
from cli import main
from dermcore.artifact import get_latest, read_json
from dermcore.errors import QualityGateError
from embstore.aggregate import AggregationConfig
from embstore.store import StoreGates, embeddings_dir, open_version, publish_day
from eval.evaluate import eval_path
from index.versions import index_dir
from retrieval.retrieve import Retriever
from towers.train import models_dir
from workflow import cycle
from workflow.cycle import load_cycle_config, run_day
from workflow.rollback import families, rollback

ROOT = Path(__file__).resolve().parents[1]


def _manifests(ws: Workspace) -> dict[str, str]:
    return {
        str(p.relative_to(ws.root)): read_json(p)["artifact_id"]
        for p in ws.root.rglob("manifest.json")
        if "rejected" not in p.parts and ".tmp-" not in str(p)
    }


def _latest(ws: Workspace) -> dict[str, str | None]:
    return {str(f.relative_to(ws.root)): get_latest(f) for f in families(ws)}


def test_nan_day_is_refused_and_yesterday_stays_live(ws_copy: tuple[Workspace, dict], monkeypatch) -> None:
    ws, s = ws_copy
    day, yesterday = s["eval_day"], s["daily_days"][-1]
    real = cycle.embed_day

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        out.user_vecs[3] = np.nan
        return out

    monkeypatch.setattr(cycle, "embed_day", poisoned)
    with pytest.raises(QualityGateError, match=r"1 embeddings contain NaN or inf; not published"):
        run_day(ws, day)
    assert get_latest(embeddings_dir(ws, "ctr")) == version_name(yesterday)
    assert not (embeddings_dir(ws, "ctr") / version_name(day)).exists()
    assert Retriever(ws, day + 1).store.day == yesterday  # type: ignore[union-attr]


def test_coverage_drop_is_refused(tmp_path: Path) -> None:
    agg = {"user": AggregationConfig(), "ad": AggregationConfig()}
    model = {"dim": 2, "lineage": "L", "model_version": "m", "artifact_id": "a"}
    v = np.array([[1.0, 0.0]], np.float32)
    daily = {"user": (np.array([10]), v), "ad": (np.array([20]), v)}
    publish_day(tmp_path, "ctr", 1, model, daily, None, agg, {"user": np.array([10]), "ad": np.array([20])})
    publish_day(
        tmp_path,
        "ctr",
        2,
        model,
        daily,
        open_version(tmp_path, 1),
        agg,
        {"user": np.array([10]), "ad": np.array([20])},
    )
    assert open_version(tmp_path, 2).manifest["stats"]["user"]["coverage"] == 1.0
    # day 3: the active users are all new, so coverage falls from 1.0 to 0.0
    with pytest.raises(
        QualityGateError, match=r"user coverage fell from 1.000 to 0.000, more than the allowed 0.200"
    ):
        publish_day(
            tmp_path,
            "ctr",
            3,
            model,
            daily,
            open_version(tmp_path, 2),
            agg,
            {"user": np.array([11, 12]), "ad": np.array([20])},
            gates=StoreGates(0.2),
        )
    assert not (tmp_path / "day=3").exists() and get_latest(tmp_path) == "day=2"
    publish_day(
        tmp_path,
        "ctr",
        3,
        model,
        daily,
        open_version(tmp_path, 2),
        agg,
        {"user": np.array([11, 12]), "ad": np.array([20])},
        gates=StoreGates(1.0),
    )


def test_low_index_recall_is_refused(ws_copy: tuple[Workspace, dict], monkeypatch, caplog) -> None:
    import index.artifact

    ws, s = ws_copy
    day, yesterday = s["eval_day"], s["daily_days"][-1]
    monkeypatch.setattr(index.artifact, "recall_against_exact", lambda *a, **k: 0.5)
    with pytest.raises(
        QualityGateError, match=r"self-check recall@\d+ 0.5000 is under the threshold 0.9; not published"
    ):
        run_day(ws, day)
    # the index was refused before its rename: never published, no temporary directory left behind
    assert not (index_dir(ws) / version_name(day)).exists()
    assert not list(index_dir(ws).glob(".tmp-*"))
    assert get_latest(index_dir(ws)) == version_name(yesterday)
    # the store moved on to `day`, the index did not: readers keep serving yesterday's pair
    assert get_latest(embeddings_dir(ws, "ctr")) == version_name(day)
    with caplog.at_level("WARNING", logger="adslog.workspace"):
        r = Retriever(ws, day + 1)
    assert r.store.day == yesterday and version_name(yesterday) in r.versions["index"]  # type: ignore[union-attr]
    # the fallback to yesterday's pair is logged, naming the newer version that is not served
    assert (
        f"serving day {day + 1} with versions of day {yesterday}: embeddings/ctr/day={day} are newer"
        in caplog.text
    )
    # once the index is healthy again, the rerun publishes the day without recomputing the store
    store_id = read_json(embeddings_dir(ws, "ctr") / version_name(day) / "manifest.json")["artifact_id"]
    monkeypatch.undo()
    run_day(ws, day, load_cycle_config(ws, "cpu"))
    assert get_latest(index_dir(ws)) == version_name(day)
    assert (
        read_json(embeddings_dir(ws, "ctr") / version_name(day) / "manifest.json")["artifact_id"] == store_id
    )


def test_rollback_restores_earlier_versions_together(ws_copy: tuple[Workspace, dict]) -> None:
    ws, s = ws_copy
    first, second = s["daily_days"][0], s["daily_days"][-1]
    assert first < second
    out = rollback(ws, first)
    assert set(_latest(ws).values()) == {version_name(first)}
    for f in families(ws):
        assert max(ws.published_days(f)) == first
    assert not eval_path(ws, s["eval_day"]).exists() and eval_path(ws, second).exists()
    assert any("rejected" in m for m in out["moved"])
    r = Retriever(ws, first + 1)
    assert r.store.day == first  # type: ignore[union-attr]
    # the next daily recomputes the rolled-back day from the restored versions
    res = run_day(ws, second, load_cycle_config(ws, "cpu"))
    assert res["skipped"] is False
    assert set(_latest(ws).values()) == {version_name(second)}
    with pytest.raises(Exception, match="no published version of day 3"):
        rollback(ws, 3)


def _daily(ws: Workspace, day: int, crash_at: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DERM_CRASH_AT"}
    if crash_at:
        env["DERM_CRASH_AT"] = crash_at
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "daily",
            "--work",
            str(ws.root),
            "--day",
            str(day),
            "--device",
            "cpu",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sigkill_during_training_and_publish_then_rerun(ws_copy: tuple[Workspace, dict]) -> None:
    ws, s = ws_copy
    day = s["eval_day"]
    before, latest_before = _manifests(ws), _latest(ws)

    r = _daily(ws, day, "train")  # killed after the first optimiser step of the increment
    assert r.returncode == -9, r.stderr
    for k, v in before.items():
        assert _manifests(ws)[k] == v  # every published version intact and unchanged
    assert _latest(ws) == latest_before

    r = _daily(ws, day, "publish:embeddings")  # killed with the store version written but not yet renamed
    assert r.returncode == -9, r.stderr
    assert list(embeddings_dir(ws, "ctr").glob(".tmp-*"))  # the half-published version is only a temp dir
    model_id = read_json(models_dir(ws, "ctr") / version_name(day) / "manifest.json")["artifact_id"]
    for k, v in before.items():
        assert _manifests(ws)[k] == v
    assert get_latest(embeddings_dir(ws, "ctr")) == latest_before["embeddings/ctr"]
    assert Retriever(ws, day + 1).store.day == day - 1  # type: ignore[union-attr]

    # the rerun takes the dead process's lock, cleans up and completes (the same command, in this process: only
    # the runs killed need an interpreter of their own)
    r = CliRunner().invoke(
        main, ["daily", "--work", str(ws.root), "--day", str(day), "--device", "cpu", "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["days"][0]["skipped"] is False
    assert not [p for p in ws.root.rglob(".tmp-*")]
    assert read_json(models_dir(ws, "ctr") / version_name(day) / "manifest.json")["artifact_id"] == model_id
    assert set(_latest(ws).values()) == {version_name(day)}
    for k, v in before.items():
        assert _manifests(ws)[k] == v
