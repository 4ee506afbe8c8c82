"""Delta versions (index.delta): base files hard-linked plus the change since the base, replayed on load."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from adslog.workspace import Workspace, version_name
from dermcore.artifact import set_latest
from dermcore.errors import DataError
from index import Backend, IndexConfig, SearchParams, build_index_artifact, load_index_artifact, make_index
from index.delta import DELTA_FILE
from index.refresh import RefreshConfig, RefreshMode, Storage, diff_against_index, refresh_index_artifact
from index.synthetic import ClusteredConfig, ClusteredData
from index.versions import index_dir
from workflow.rollback import rollback

N, DIM, K = 3000, 16, 10
CASES = {
    "faiss-IVF32": (IndexConfig(Backend.FAISS, "IVF32,Flat", DIM), SearchParams(nprobe=8)),
    "hnswlib": (IndexConfig(Backend.HNSWLIB, "M16,efc100", DIM), SearchParams(ef=32)),
    "faiss-Flat": (IndexConfig(Backend.FAISS, "Flat", DIM), None),
}
IN_PLACE = RefreshConfig(mode=RefreshMode.IN_PLACE)


@pytest.fixture(scope="module")
def data() -> ClusteredData:
    return ClusteredData(ClusteredConfig(n=N, dim=DIM, n_clusters=100, ad_noise=1.0, query_noise=1.0, seed=5))


def _up(v: int) -> dict[str, str]:
    return {"embedding_version": f"v{v}", "lineage": "L"}


def _next_day(data: ClusteredData, ids: np.ndarray, vecs: np.ndarray, day: int, n_each: int = 15):
    """The ad set of the next day: n_each removed, n_each with a new vector, n_each new ids."""
    rng = np.random.default_rng(day)
    pick = rng.permutation(ids.size)[: 2 * n_each]
    removed, replaced = pick[:n_each], pick[n_each:]
    vecs = vecs.copy()
    vecs[replaced] = data.new_vectors(n_each, seed=100 + day)
    keep = np.ones(ids.size, dtype=bool)
    keep[removed] = False
    new_ids = ids.max() + 1 + np.arange(n_each, dtype=np.int64)
    ids1 = np.concatenate([ids[keep], new_ids])
    vecs1 = np.vstack([vecs[keep], data.new_vectors(n_each, seed=200 + day)])
    return ids1, vecs1, ids[removed]


def _same_results(a, b, queries: np.ndarray) -> None:
    ra, rb = a.search(queries, K), b.search(queries, K)
    np.testing.assert_array_equal(ra[0], rb[0])
    np.testing.assert_array_equal(ra[1], rb[1])
    np.testing.assert_array_equal(np.sort(a.ids()), np.sort(b.ids()))


@pytest.mark.parametrize("name", list(CASES))
def test_delta_chain_loads_what_the_full_write_holds(data, tmp_path, name):
    """Three daily deltas over one base: each loads to exactly the index the same update written in full
    holds (same ids, same results, bit for bit), removed ids never come back, and the base is shared."""
    config, params = CASES[name]
    queries = data.queries(60)
    build_index_artifact(tmp_path / "v0", data.ids, data.vecs, config, _up(0), params=params)
    base_bytes = {p.name: p.read_bytes() for p in (tmp_path / "v0").iterdir()}
    ids, vecs = data.ids, data.vecs
    gone: list[np.ndarray] = []
    for day in (1, 2, 3):
        ids, vecs, removed = _next_day(data, ids, vecs, day)
        gone.append(removed)
        m = refresh_index_artifact(
            tmp_path / f"v{day - 1}", tmp_path / f"v{day}", ids, vecs, config, _up(day), IN_PLACE, queries, K
        )
        full = refresh_index_artifact(
            tmp_path / f"v{day - 1}",
            tmp_path / f"f{day}",
            ids,
            vecs,
            config,
            _up(day),
            RefreshConfig(mode=RefreshMode.IN_PLACE, storage=Storage.FULL),
            queries,
            K,
        )
        assert m["refresh"]["mode"] == "in_place" and m["refresh"]["storage"] == "delta"
        assert (m["refresh"]["added"], m["refresh"]["removed"], m["refresh"]["replaced"]) == (15, 15, 15)
        st = m["storage"]
        assert (
            st["kind"] == "delta"
            and st["base_artifact_id"]
            == json.loads((tmp_path / "v0" / "manifest.json").read_text())["artifact_id"]
        )
        # cumulative from the base: ids gone since day 0; ids new since day 0 or with a moved vector
        in_base = np.isin(ids, data.ids)
        moved = (vecs[in_base] != data.vecs[np.searchsorted(data.ids, ids[in_base])]).any(axis=1)
        assert st["removed"] == int((~np.isin(data.ids, ids)).sum())
        assert st["upserts"] == int((~in_base).sum() + moved.sum())
        assert full["storage"] == {"kind": "full"} and full["refresh"]["storage"] == "full"
        assert m["self_check"]["recall"] == full["self_check"]["recall"]
        delta_idx, _ = load_index_artifact(tmp_path / f"v{day}")
        full_idx, _ = load_index_artifact(tmp_path / f"f{day}")
        _same_results(delta_idx, full_idx, queries)
        _same_results(
            delta_idx, load_index_artifact(tmp_path / f"v{day}")[0], queries
        )  # replay is repeatable
        np.testing.assert_array_equal(np.sort(delta_idx.ids()), np.sort(ids))
        all_gone = np.concatenate(gone)
        got, _ = delta_idx.search(np.vstack([data.vecs[np.isin(data.ids, all_gone)], queries]), K)
        assert not np.isin(got, all_gone).any(), "a removed id came back"
        for f in st["base_files"]:  # hard links to the base's files: no byte copied
            assert os.path.samefile(tmp_path / f"v{day}" / f, tmp_path / "v0" / f)
        if config.spec == "Flat":  # exact: equals a fresh build over the day's ads
            fresh = make_index(config)
            fresh.build(ids, vecs)
            _same_results(delta_idx, fresh, queries)
    assert {p.name: p.read_bytes() for p in (tmp_path / "v0").iterdir()} == base_bytes


def test_change_counts_against_a_delta_parent_match_a_direct_diff(data, tmp_path):
    """The change since the previous (delta) version, derived from the base diff, equals a direct diff."""
    config, params = CASES["hnswlib"]
    build_index_artifact(tmp_path / "v0", data.ids, data.vecs, config, _up(0), params=params)
    ids1, vecs1, _ = _next_day(data, data.ids, data.vecs, 1)
    refresh_index_artifact(tmp_path / "v0", tmp_path / "v1", ids1, vecs1, config, _up(1), IN_PLACE)
    # day 2: re-adds two ids removed on day 1, moves two vectors changed on day 1 again, adds/removes others
    ids2, vecs2, _ = _next_day(data, ids1, vecs1, 2)
    back = np.setdiff1d(data.ids, ids1)[:2]
    ids2 = np.concatenate([ids2, back])
    vecs2 = np.vstack([vecs2, data.new_vectors(2, seed=77)])
    m = refresh_index_artifact(tmp_path / "v1", tmp_path / "v2", ids2, vecs2, config, _up(2), IN_PLACE)
    direct = diff_against_index(load_index_artifact(tmp_path / "v1")[0], ids2, vecs2)
    assert {k: m["refresh"][k] for k in ("added", "removed", "replaced")} == {
        k: v for k, v in direct.counts().items() if k != "changed_fraction"
    }
    index, _ = load_index_artifact(tmp_path / "v2")
    np.testing.assert_allclose(index.get_vectors(back), vecs2[-2:], atol=1e-6)  # re-added with new vectors


def test_compaction_starts_a_new_base(data, tmp_path):
    config, params = CASES["faiss-IVF32"]
    build_index_artifact(tmp_path / "v0", data.ids, data.vecs, config, _up(0), params=params)
    cfg = RefreshConfig(max_delta_fraction=0.02)  # a day changes 1.5 %: the second day's delta is 3 %
    ids, vecs, _ = _next_day(data, data.ids, data.vecs, 1)
    m1 = refresh_index_artifact(tmp_path / "v0", tmp_path / "v1", ids, vecs, config, _up(1), cfg)
    assert m1["refresh"]["storage"] == "delta"
    ids, vecs, _ = _next_day(data, ids, vecs, 2)
    m2 = refresh_index_artifact(tmp_path / "v1", tmp_path / "v2", ids, vecs, config, _up(2), cfg)
    assert m2["refresh"]["mode"] == "in_place" and m2["refresh"]["storage"] == "full"
    assert m2["refresh"]["storage_reason"].startswith("compaction: the delta would hold 3.0% of the base")
    assert m2["storage"] == {"kind": "full"} and DELTA_FILE not in m2["files"]
    ids, vecs, _ = _next_day(data, ids, vecs, 3)
    m3 = refresh_index_artifact(tmp_path / "v2", tmp_path / "v3", ids, vecs, config, _up(3), cfg)
    assert m3["storage"]["base_artifact_id"] == m2["artifact_id"] and m3["storage"]["upserts"] == 30
    index, _ = load_index_artifact(tmp_path / "v3")
    np.testing.assert_array_equal(np.sort(index.ids()), np.sort(ids))


def test_rollback_past_delta_versions_and_a_deleted_base(data, tmp_path):
    """Every delta version is complete on its own: rollback moves later versions away, and deleting the
    base's own directory leaves the delta versions loadable (their hard links keep the bytes)."""
    config, params = CASES["hnswlib"]
    ws = Workspace(tmp_path / "work")
    queries = data.queries(40)
    build_index_artifact(index_dir(ws) / version_name(0), data.ids, data.vecs, config, _up(0), params=params)
    set_latest(index_dir(ws), version_name(0))
    ids, vecs = data.ids, data.vecs
    sets = {0: (ids, vecs)}
    for day in (1, 2, 3):
        ids, vecs, _ = _next_day(data, ids, vecs, day)
        sets[day] = (ids, vecs)
        prev = index_dir(ws) / version_name(ws.version_before(index_dir(ws), day))
        m = refresh_index_artifact(prev, index_dir(ws) / version_name(day), ids, vecs, config, _up(day))
        assert m["refresh"]["storage"] == "delta"
        set_latest(index_dir(ws), version_name(day))
    before = load_index_artifact(index_dir(ws) / version_name(1))[0].search(queries, K)
    out = rollback(ws, 1)
    assert ws.published_days(index_dir(ws)) == [0, 1] and len(out["moved"]) == 2
    index, m = load_index_artifact(index_dir(ws) / version_name(1))
    np.testing.assert_array_equal(index.search(queries, K)[0], before[0])
    # the next day is published again from day 1 (a delta version): its delta is still against day 0
    ids2, vecs2 = sets[2]
    m2 = refresh_index_artifact(
        index_dir(ws) / version_name(1), index_dir(ws) / version_name(2), ids2, vecs2, config, _up(2)
    )
    assert m2["storage"]["base_artifact_id"] == m["storage"]["base_artifact_id"]
    # rejected delta versions stay loadable where rollback moved them
    rejected = sorted((ws.root / "rejected" / "index").iterdir())
    assert len(rejected) == 2 and load_index_artifact(rejected[-1])[0].ntotal == sets[3][0].size
    shutil.rmtree(index_dir(ws) / version_name(0))  # the base's own directory is gone
    for day in (1, 2):
        index, _ = load_index_artifact(index_dir(ws) / version_name(day))
        np.testing.assert_array_equal(np.sort(index.ids()), np.sort(sets[day][0]))
    ids3, vecs3 = sets[3]
    m3 = refresh_index_artifact(
        index_dir(ws) / version_name(2), index_dir(ws) / version_name(3), ids3, vecs3, config, _up(3)
    )
    assert m3["refresh"]["mode"] == "in_place" and m3["storage"]["kind"] == "delta"


def test_missing_or_corrupt_delta_is_a_clear_error(data, tmp_path):
    config, params = CASES["faiss-IVF32"]
    build_index_artifact(tmp_path / "v0", data.ids, data.vecs, config, _up(0), params=params)
    ids, vecs, _ = _next_day(data, data.ids, data.vecs, 1)
    refresh_index_artifact(tmp_path / "v0", tmp_path / "v1", ids, vecs, config, _up(1), IN_PLACE)
    shutil.copytree(tmp_path / "v1", tmp_path / "bad")
    delta = tmp_path / "bad" / DELTA_FILE
    raw = bytearray(delta.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    delta.unlink()  # replace, never write into, a published file (it may be a hard link)
    delta.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="delta.npz: sha256 differs from the manifest"):
        load_index_artifact(tmp_path / "bad")
    delta.unlink()
    with pytest.raises(DataError, match="delta.npz: file listed in the manifest is missing"):
        load_index_artifact(tmp_path / "bad")
    shutil.copy(tmp_path / "v1" / DELTA_FILE, delta)
    (tmp_path / "bad" / "index.faiss").unlink()  # the hard-linked base file
    with pytest.raises(DataError, match="index.faiss: file listed in the manifest is missing"):
        load_index_artifact(tmp_path / "bad")
    # a refresh from an unreadable previous version rebuilds, and says why
    m = refresh_index_artifact(tmp_path / "bad", tmp_path / "v2", ids, vecs, config, _up(2))
    assert m["refresh"]["mode"] == "rebuild" and "previous version unreadable" in m["refresh"]["reason"]
    # a manifest whose delta sizes disagree with the file is refused
    m1 = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    m1["storage"]["upserts"] += 1
    shutil.copytree(tmp_path / "v1", tmp_path / "sizes")
    (tmp_path / "sizes" / "manifest.json").unlink()
    (tmp_path / "sizes" / "manifest.json").write_text(json.dumps(m1))
    with pytest.raises(DataError, match="delta sizes do not match the manifest"):
        load_index_artifact(tmp_path / "sizes")
    # the index's own delta checksum still guards a version whose manifest has no payload record (older)
    m1 = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    del m1["payload"]
    shutil.copytree(tmp_path / "v1", tmp_path / "old")
    (tmp_path / "old" / "manifest.json").unlink()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(m1))
    old_delta = tmp_path / "old" / DELTA_FILE
    old_delta.unlink()
    old_delta.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="delta file checksum does not match the manifest"):
        load_index_artifact(tmp_path / "old")


def test_schema_1_full_version_still_loads(data, tmp_path):
    """Manifests written before `storage` existed (schema 1) are full versions."""
    config, params = CASES["hnswlib"]
    build_index_artifact(tmp_path / "v0", data.ids, data.vecs, config, _up(0), params=params)
    path = tmp_path / "v0" / "manifest.json"
    m = json.loads(path.read_text())
    m["schema_version"] = 1
    del m["storage"]
    path.unlink()
    path.write_text(json.dumps(m))
    index, _ = load_index_artifact(tmp_path / "v0")
    assert index.ntotal == N
    ids, vecs, _ = _next_day(data, data.ids, data.vecs, 1)
    m1 = refresh_index_artifact(tmp_path / "v0", tmp_path / "v1", ids, vecs, config, _up(1))
    assert m1["storage"]["kind"] == "delta" and m1["storage"]["base_artifact_id"] == m["artifact_id"]


def test_hnswlib_tombstones_count_and_trigger_a_rebuild(data, tmp_path):
    """New hnswlib ids are new elements; removed ones stay as tombstones until the limit asks for a rebuild."""
    config, params = CASES["hnswlib"]
    index = make_index(config)
    index.build(data.ids, data.vecs)
    index.remove(data.ids[:100])
    index.add(data.ids[:20], data.vecs[:20])  # revived in place: no longer tombstones
    index.add(data.ids.max() + 1 + np.arange(50), data.new_vectors(50, seed=3))
    assert index.tombstones == 80 and index.ntotal == N - 80 + 50  # type: ignore[attr-defined]
    assert index.tombstone_fraction_after(10, 5, 5) == pytest.approx(90 / (N + 50 + 5))
    build_index_artifact(tmp_path / "v0", data.ids, data.vecs, config, _up(0), params=params)
    ids, vecs, _ = _next_day(data, data.ids, data.vecs, 1, n_each=100)
    cfg = RefreshConfig(max_changed_fraction=0.5, max_tombstone_fraction=0.02)
    m = refresh_index_artifact(tmp_path / "v0", tmp_path / "v1", ids, vecs, config, _up(1), cfg)
    assert m["refresh"]["mode"] == "rebuild" and "tombstones would reach 3.2%" in m["refresh"]["reason"]
