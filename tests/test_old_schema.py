"""Artifacts written by older schema versions (tiny committed fixtures, `tests/fixtures/make_old_schema.py`)
load, or are refused with a message that says how to migrate (CONVENTIONS 17)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from adslog.workspace import Workspace
from dermcore.errors import DataError
from embstore.store import StoreVersion
from index import exact_search, load_index_artifact
from ranking.train import load_ranker
from towers.config import Backbone
from workflow.cycle import CYCLE_FILE, CycleConfig, load_cycle_config

OLD = Path(__file__).resolve().parent / "fixtures" / "old_schema"


def test_store_v1_with_one_aggregation_object_loads() -> None:
    store = StoreVersion(OLD / "store_v1")
    m = store.manifest
    assert m["schema_version"] == 1 and "storage_dtype" not in m and "payload" not in m
    assert set(m["aggregation"]) == {"heuristic", "weight", "ttl_days"}  # one object, not per entity
    ads, vecs = store.ids("ad"), store.vectors("ad")
    assert ads.dtype == np.int64 and ads.tolist() == list(range(500, 520))
    assert vecs.dtype == np.float32 and vecs.shape == (20, 8)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert store.ids("user").tolist() == list(range(100, 112))
    assert store.day == 3 and store.lineage == "0" * 32


def test_index_v1_loads_as_a_full_version_and_searches_exactly() -> None:
    index, m = load_index_artifact(OLD / "index_v1")
    assert m["schema_version"] == 1 and "storage" not in m and "search_params" not in m
    store = StoreVersion(OLD / "store_v1")
    ids, vecs = store.ids("ad"), store.vectors("ad")
    assert index.ntotal == 20 and sorted(index.ids().tolist()) == ids.tolist()
    got_ids, got_scores = index.search(vecs[:5], 3)
    want_ids, want_scores = exact_search(ids, vecs, vecs[:5], 3)
    assert (got_ids == want_ids).all() and got_ids[:, 0].tolist() == ids[:5].tolist()
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)


def test_a_newer_index_schema_is_refused_with_an_upgrade_hint() -> None:
    with pytest.raises(DataError) as e:
        load_index_artifact(OLD / "index_v3")
    assert str(e.value) == (
        f"{OLD / 'index_v3' / 'manifest.json'}: unsupported schema_version 3 (this build reads 1..2); "
        "written by a newer derm: upgrade derm to read it"
    )


def test_ranker_v1_is_refused_with_how_to_retrain() -> None:
    with pytest.raises(DataError) as e:
        load_ranker(OLD / "ranker_v1")
    assert str(e.value) == (
        f"{OLD / 'ranker_v1' / 'manifest.json'}: ranker schema_version 1 (the MLP ranker) is no longer loadable; "
        "this build reads schema_version 2 (mixture of DCNv2 experts): retrain with `derm ranker train`"
    )


def test_cycle_json_of_the_first_release_loads_with_the_documented_defaults(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "w")
    ws.root.mkdir()
    shutil.copy(OLD / "cycle_v1.json", ws.root / CYCLE_FILE)
    old = json.loads((OLD / "cycle_v1.json").read_text())
    cfg = load_cycle_config(ws)
    # keys absent from the old file take the defaults CHANGELOG names for old workspaces
    assert cfg.retrieval_prior is False  # old workspaces served the ANN order
    assert cfg.engine.value == "local" and cfg.ray_actors is None
    assert cfg.min_index_recall == 0.9 and cfg.store_float16 is False and cfg.popularity_window == 7
    assert cfg.gates.max_coverage_drop == CycleConfig().gates.max_coverage_drop
    assert cfg.index.seed == 0 and cfg.index.spec == "HNSW32,Flat"
    assert cfg.towers.backbone is Backbone.MLP  # weights of that time are the MLP towers'
    assert cfg.ranker.wide_buckets == 0 and cfg.ranker.embedding_init_std is None
    # what it did say is kept
    assert cfg.towers.dim == old["towers"]["dim"] and cfg.ranker.lr == old["ranker"]["lr"]
    # and saving it writes today's complete form, which loads back to the same config
    assert CycleConfig.from_json(cfg.to_json()) == cfg


def test_fixtures_stay_tiny() -> None:
    total = sum(f.stat().st_size for f in OLD.rglob("*") if f.is_file())
    assert 0 < total < 64 * 1024
