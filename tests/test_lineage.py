"""Lineage gates: a new tower lineage never mixes silently with the old one's store, index or ranker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from adserving.two_stage import TwoStage
from adslog.workspace import Workspace, version_name
from cli import main
from dermcore.errors import QualityGateError, VersionMismatchError
from embstore.aggregate import AggregationConfig
from embstore.store import StoreGates, embeddings_dir, open_version, publish_day
from ranking.train import ranker_dir
from towers.train import models_dir
from workflow.cycle import run_day
from workflow.lineage import LineageError, check_retrain
from workflow.rollback import rollback

runner = CliRunner()


def _tree(ws: Workspace) -> dict[str, bytes]:
    return {
        str(p.relative_to(ws.root)): p.read_bytes()
        for p in sorted(ws.root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_retrain_over_a_serving_version_is_refused(ws_copy: tuple[Workspace, dict]) -> None:
    """The probe's case: `train --overwrite --seed 1` replaced models/ctr/day=D in place and the next daily
    mixed lineages. Now refused before anything is written."""
    ws, s = ws_copy
    boot = s["train_days"][-1]
    before = _tree(ws)
    first = s["train_days"][0]
    r = runner.invoke(
        main,
        ["train", "--work", str(ws.root), "--first-day", str(first), "--last-day", str(boot), "--seed", "1"]
        + ["--overwrite"],
    )
    assert r.exit_code == 1 and r.stdout == ""
    mdir = models_dir(ws, "ctr") / version_name(boot)
    assert r.stderr.startswith(f"Error: {mdir}: published, and ")
    assert r.stderr.endswith(
        "a retrain would replace a serving lineage in place: train into a new workspace\n"
    )
    assert _tree(ws) == before  # cycle.json included: nothing was saved
    later = s["daily_days"][-1]
    with pytest.raises(LineageError, match=rf"roll back first \(`derm rollback --to {later - 1}`\)"):
        check_retrain(ws, "ctr", later)


def test_daily_refuses_a_day_whose_model_and_store_lineages_differ(ws_copy: tuple[Workspace, dict]) -> None:
    ws, s = ws_copy
    d1, d2 = s["daily_days"][-2:]
    rollback(ws, d1)  # d2's versions move aside; a model trained from scratch at d2 is a new lineage
    r = runner.invoke(
        main,
        ["train", "--work", str(ws.root), "--first-day", str(d2), "--last-day", str(d2)]
        + ["--epochs", "1"],  # any new lineage is refused: one epoch on one day makes one
    )
    assert r.exit_code == 0, r.stderr
    new_lineage = json.loads(r.stdout.split("lineage: ")[1].split("\n")[0].join(['"', '"']))
    before = _tree(ws)
    with pytest.raises(LineageError) as e:
        run_day(ws, d2 + 1)
    msg = str(e.value)
    mdir = models_dir(ws, "ctr") / version_name(d2)
    assert msg.startswith(f"{mdir}: model lineage {new_lineage[:8]} differs from the serving store ")
    assert f"roll back to the old lineage (`derm rollback --to {d1}`)" in msg
    assert _tree(ws) == before  # refused before anything was trained or written


def test_ranker_never_reads_embeddings_of_another_lineage(ws_copy: tuple[Workspace, dict]) -> None:
    ws, s = ws_copy
    day = s["eval_day"]
    ts = TwoStage(ws, day=day)
    user = int(ts.retriever.store.ids("user")[0])  # type: ignore[union-attr]
    assert ts.query(user)["results"]
    store = embeddings_dir(ws, "ctr") / version_name(ws.version_before(embeddings_dir(ws, "ctr"), day))
    lineage = open_version(embeddings_dir(ws, "ctr"), int(store.name[4:])).lineage
    rdir = ranker_dir(ws) / version_name(ws.version_before(ranker_dir(ws), day))
    m = json.loads((rdir / "manifest.json").read_text())
    m["embedding_lineages"] = {"ctr": ["f" * 32]}  # as if trained on a space the stores no longer hold
    (rdir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(VersionMismatchError, match="retrain the ranker from scratch"):
        TwoStage(ws, day=day).query(user)
    for args in (["query", "--user", str(user)], ["eval"]):
        r = runner.invoke(main, [*args, "--work", str(ws.root)])
        assert r.exit_code == 1
        assert r.stderr.startswith(
            f"Error: {store}: embedding lineage {lineage[:8]}, but the ranker {rdir} was trained on lineage ffffffff"
        )


def test_old_rankers_lineage_is_resolved_from_their_embedding_versions(
    ws_copy: tuple[Workspace, dict],
) -> None:
    from ranking.train import embedding_lineages

    ws, s = ws_copy
    rdir = ranker_dir(ws) / version_name(ws.latest_day(ranker_dir(ws)))
    m = json.loads((rdir / "manifest.json").read_text())
    recorded = {t: set(v) for t, v in m["embedding_lineages"].items()}
    del m["embedding_lineages"]  # a ranker written before the field existed
    assert embedding_lineages(ws, m) == recorded and recorded["ctr"]


def test_coverage_gate_compares_with_the_serving_version_across_lineages(tmp_path: Path) -> None:
    agg = {"user": AggregationConfig(), "ad": AggregationConfig()}
    old = {"dim": 2, "lineage": "L1", "model_version": "m", "artifact_id": "a"}
    new = {**old, "lineage": "L2", "artifact_id": "b"}
    v = np.array([[1.0, 0.0]], np.float32)
    daily = {"user": (np.array([10]), v), "ad": (np.array([20]), v)}
    active = {"user": np.array([10]), "ad": np.array([20])}
    publish_day(tmp_path, "ctr", 1, old, daily, None, agg, active)
    publish_day(tmp_path, "ctr", 2, old, daily, open_version(tmp_path, 1), agg, active)
    # a new lineage starts an empty pool: coverage 0.0 against the serving version's 1.0 is refused
    with pytest.raises(QualityGateError, match=r"user coverage fell from 1.000 to 0.000"):
        publish_day(
            tmp_path, "ctr", 3, new, daily, open_version(tmp_path, 2), agg, active, gates=StoreGates(0.2)
        )
    assert not (tmp_path / "day=3").exists()
