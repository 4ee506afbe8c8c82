"""Daily refresh (in place vs rebuild, recorded), query-time defaults, tuning, concurrent readers, fast path."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from dermcore.artifact import get_latest, set_latest
from dermcore.errors import DermError
from index import Backend, IndexConfig, SearchParams, build_index_artifact, load_index_artifact, make_index
from index.refresh import RefreshConfig, RefreshMode, diff_against_index, refresh_index_artifact
from index.synthetic import ClusteredConfig, ClusteredData, normalise
from index.tune import tune

N, DIM, K = 3000, 16, 10
UP0 = {"embedding_version": "v0", "lineage": "L"}
UP1 = {"embedding_version": "v1", "lineage": "L"}

CASES = {
    "faiss-Flat": (IndexConfig(Backend.FAISS, "Flat", DIM), None, "rebuild"),
    "faiss-IVF32": (IndexConfig(Backend.FAISS, "IVF32,Flat", DIM), SearchParams(nprobe=32), "in_place"),
    "faiss-HNSW16": (IndexConfig(Backend.FAISS, "HNSW16,Flat", DIM), SearchParams(ef=64), "rebuild"),
    "hnswlib": (IndexConfig(Backend.HNSWLIB, "M16,efc100", DIM), SearchParams(ef=64), "in_place"),
}


@pytest.fixture(scope="module")
def data() -> ClusteredData:
    return ClusteredData(ClusteredConfig(n=N, dim=DIM, n_clusters=200, ad_noise=1.0, query_noise=1.0, seed=3))


def _changed(data: ClusteredData, n_each: int = 20):
    """Version 1: the first n_each ids removed, the next n_each with new vectors, n_each new ids."""
    removed = data.ids[:n_each]
    replaced = data.ids[n_each : 2 * n_each]
    new_ids = data.ids.max() + 1 + np.arange(n_each, dtype=np.int64)
    ids = np.concatenate([data.ids[n_each:], new_ids])
    vecs = np.concatenate([data.vecs[n_each:], data.new_vectors(n_each, seed=5)])
    vecs[:n_each] = data.new_vectors(n_each, seed=6)  # rows of `replaced`
    return ids, vecs, removed, replaced, new_ids


@pytest.mark.parametrize("name", list(CASES))
def test_refresh_adds_removes_replaces(data, tmp_path, name):
    config, params, auto_mode = CASES[name]
    build_index_artifact(tmp_path / "v0", data.ids, data.vecs, config, UP0, params=params)
    before = {p.name: p.read_bytes() for p in (tmp_path / "v0").iterdir()}
    ids, vecs, removed, replaced, new_ids = _changed(data)
    queries = data.queries(50)
    m = refresh_index_artifact(tmp_path / "v0", tmp_path / "v1", ids, vecs, config, UP1, None, queries, K)
    r = m["refresh"]
    assert r["mode"] == auto_mode
    assert (r["added"], r["removed"], r["replaced"]) == (20, 20, 20)
    assert r["parent"] == load_index_artifact(tmp_path / "v0")[1]["artifact_id"]
    assert r["changed_fraction"] == pytest.approx(60 / N) and r["seconds"] > 0 and r["reason"]
    modes = [auto_mode] if auto_mode == "in_place" or name == "faiss-HNSW16" else [auto_mode, "in_place"]
    for mode in modes:
        out = tmp_path / f"v1-{mode}"
        m = refresh_index_artifact(
            tmp_path / "v0", out, ids, vecs, config, UP1, RefreshConfig(mode=RefreshMode(mode)), queries, K
        )
        assert m["refresh"]["mode"] == mode and m["n_vectors"] == ids.size
        assert m["search_params"] == load_index_artifact(tmp_path / "v0")[1]["search_params"]  # inherited
        index, _ = load_index_artifact(out)
        np.testing.assert_array_equal(np.sort(index.ids()), np.sort(ids))
        got, _ = index.search(np.vstack([data.vecs[:40], queries]), K)
        assert not np.isin(got, removed).any(), "a removed id came back"
        new_rows = vecs[-20:]
        top, _ = index.search(new_rows, 1)
        np.testing.assert_array_equal(top[:, 0], new_ids)  # new ids findable
        top, scores = index.search(vecs[:20], 1)
        np.testing.assert_array_equal(top[:, 0], replaced)  # replaced vectors found at their new position
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
        np.testing.assert_allclose(index.get_vectors(replaced), vecs[:20], atol=1e-6)
        assert m["self_check"]["recall"] >= 0.95
        if config.spec == "Flat":
            fresh = make_index(config)
            fresh.build(ids, vecs)
            for a, b in zip(fresh.search(queries, K), index.search(queries, K), strict=True):
                np.testing.assert_array_equal(a, b)
    after = {p.name: p.read_bytes() for p in (tmp_path / "v0").iterdir()}
    assert after == before, "the previous version directory must never be modified"


def test_mode_thresholds_and_reasons(data, tmp_path):
    config, params, _ = CASES["hnswlib"]
    build_index_artifact(tmp_path / "v0", data.ids, data.vecs, config, UP0, params=params)
    # 20 % of vectors moved: above max_changed_fraction -> rebuild
    vecs = data.vecs.copy()
    vecs[: N // 5] = data.new_vectors(N // 5, seed=9)
    m = refresh_index_artifact(tmp_path / "v0", tmp_path / "a", data.ids, vecs, config, UP1)
    assert m["refresh"]["mode"] == "rebuild" and "20.0% of ads changed" in m["refresh"]["reason"]
    assert m["refresh"]["replaced"] == N // 5
    # same vectors within tolerance: nothing changed, in place
    jitter = normalise(data.vecs + 1e-8)
    m = refresh_index_artifact(tmp_path / "v0", tmp_path / "b", data.ids, jitter, config, UP1)
    assert m["refresh"]["mode"] == "in_place" and m["refresh"]["replaced"] == 0
    # a new lineage is a new embedding space: rebuild
    m = refresh_index_artifact(
        tmp_path / "v0", tmp_path / "c", data.ids, data.vecs, config, {"lineage": "other"}
    )
    assert m["refresh"]["mode"] == "rebuild" and "lineage changed" in m["refresh"]["reason"]
    # another spec: rebuild; no previous version: rebuild
    other = IndexConfig(Backend.HNSWLIB, "M8,efc50", DIM)
    m = refresh_index_artifact(tmp_path / "v0", tmp_path / "d", data.ids, data.vecs, other, UP1)
    assert m["refresh"]["mode"] == "rebuild" and "index changed" in m["refresh"]["reason"]
    m = refresh_index_artifact(None, tmp_path / "e", data.ids, data.vecs, config, UP1)
    assert m["refresh"] == {
        **m["refresh"],
        "mode": "rebuild",
        "reason": "no previous index version",
        "parent": None,
        "added": N,
    }
    with pytest.raises(DermError, match="cannot refresh in place: no previous index version"):
        refresh_index_artifact(
            None, tmp_path / "f", data.ids, data.vecs, config, UP1, RefreshConfig(mode="in_place")
        )


def test_cannot_remove_means_rebuild(data, tmp_path):
    config, params, _ = CASES["faiss-HNSW16"]
    build_index_artifact(tmp_path / "v0", data.ids, data.vecs, config, UP0, params=params)
    ids, vecs, *_ = _changed(data)
    with pytest.raises(DermError, match="cannot refresh in place: faiss HNSW graphs cannot remove vectors"):
        refresh_index_artifact(
            tmp_path / "v0", tmp_path / "v1", ids, vecs, config, UP1, RefreshConfig(mode="in_place")
        )
    assert not (tmp_path / "v1").exists()
    refine = IndexConfig(Backend.FAISS, "IVF8,PQ4x4,RFlat", DIM)
    build_index_artifact(tmp_path / "r0", data.ids, data.vecs, refine, UP0)
    m = refresh_index_artifact(tmp_path / "r0", tmp_path / "r1", ids, vecs, refine, UP1)
    assert m["refresh"]["mode"] == "rebuild" and "refine" in m["refresh"]["reason"]


def test_ivf_tombstones_trigger_rebuild(data, tmp_path):
    config, params, _ = CASES["faiss-IVF32"]
    build_index_artifact(tmp_path / "v0", data.ids, data.vecs, config, UP0, params=params)
    ids, vecs, *_ = _changed(data, n_each=100)  # 300 of 3000 changed; 200 entries become tombstones
    cfg = RefreshConfig(max_changed_fraction=0.5, max_tombstone_fraction=0.05)
    m = refresh_index_artifact(tmp_path / "v0", tmp_path / "v1", ids, vecs, config, UP1, cfg)
    assert m["refresh"]["mode"] == "rebuild" and "tombstones" in m["refresh"]["reason"]
    cfg = RefreshConfig(max_changed_fraction=0.5, max_tombstone_fraction=0.10)
    m = refresh_index_artifact(tmp_path / "v0", tmp_path / "v2", ids, vecs, config, UP1, cfg)
    assert m["refresh"]["mode"] == "in_place"
    assert load_index_artifact(tmp_path / "v2")[0].tombstones == 200  # type: ignore[attr-defined]


def test_diff_against_index(data):
    index = make_index(CASES["hnswlib"][0])
    index.build(data.ids, data.vecs)
    ids, vecs, removed, replaced, new_ids = _changed(data)
    ch = diff_against_index(index, ids, vecs)
    np.testing.assert_array_equal(ch.removed, removed)
    np.testing.assert_array_equal(ch.replaced, replaced)
    np.testing.assert_array_equal(ch.added, new_ids)
    np.testing.assert_array_equal(np.sort(ids[ch.upsert_pos]), np.sort(np.concatenate([replaced, new_ids])))
    assert ch.fraction == pytest.approx(60 / N)


def test_refresh_config_validation():
    with pytest.raises(DermError, match="unknown refresh mode"):
        RefreshConfig(mode="sometimes")
    with pytest.raises(DermError, match="max_changed_fraction"):
        RefreshConfig(max_changed_fraction=1.5)
    with pytest.raises(DermError, match="vector_tol"):
        RefreshConfig(vector_tol=-1)


def test_concurrent_readers_see_whole_versions(data, tmp_path):
    """Queries through LATEST + load_index_artifact while refreshes publish: every answer is one version's."""
    config = CASES["hnswlib"][0]
    direction = normalise(np.ones((1, DIM), np.float32))
    rng = np.random.default_rng(0)

    def markers(v: int) -> tuple[np.ndarray, np.ndarray]:
        ids = 10**8 * (v + 1) + np.arange(K, dtype=np.int64)
        return ids, normalise(direction + 0.01 * rng.standard_normal((K, DIM)).astype(np.float32))

    base_ids, base_vecs = data.ids[:1000], data.vecs[:1000]
    m_ids, m_vecs = markers(0)
    build_index_artifact(
        tmp_path / "v0", np.concatenate([base_ids, m_ids]), np.vstack([base_vecs, m_vecs]), config, UP0
    )
    set_latest(tmp_path, "v0")
    done = threading.Event()
    errors: list[str] = []
    seen: set[int] = set()

    def reader() -> None:
        while not done.is_set():
            try:
                name = get_latest(tmp_path)
                index, m = load_index_artifact(tmp_path / str(name))
                v = int(m["upstream"]["embedding_version"][1:])
                got, _ = index.search(direction, K)
                if set(got[0].tolist()) != set(markers_ids[v].tolist()):
                    errors.append(f"{name}: answer mixes versions: {sorted(set(got[0].tolist()))[:3]}")
                seen.add(v)
            except Exception as e:  # noqa: BLE001 - any failure of a reader is the finding
                errors.append(f"{type(e).__name__}: {e}")

    markers_ids = {0: m_ids}
    t = threading.Thread(target=reader)
    t.start()
    try:
        for v in range(1, 6):
            m_ids, m_vecs = markers(v)
            markers_ids[v] = m_ids
            m = refresh_index_artifact(
                tmp_path / f"v{v - 1}",
                tmp_path / f"v{v}",
                np.concatenate([base_ids, m_ids]),
                np.vstack([base_vecs, m_vecs]),
                config,
                {"embedding_version": f"v{v}", "lineage": "L"},
            )
            assert m["refresh"]["mode"] == "in_place"  # 20 of 1010 changed
            set_latest(tmp_path, f"v{v}")
    finally:
        done.set()
        t.join(timeout=30)
    assert not errors, errors[:3]
    assert len(seen) >= 2, "the reader should have seen more than one version"


# --- query-time defaults, tuning, fast path ---------------------------------------------------------------


def test_search_params_recorded_and_applied(data, tmp_path):
    config = CASES["faiss-IVF32"][0]
    m = build_index_artifact(tmp_path / "v0", data.ids, data.vecs, config, UP0, params=SearchParams(nprobe=2))
    assert m["search_params"] == {"ef": None, "nprobe": 2}
    index, _ = load_index_artifact(tmp_path / "v0")
    q = data.queries(30)
    assert index.default_params() == SearchParams(nprobe=2)
    a = index.search(q, K)
    b = index.search(q, K, SearchParams(nprobe=2))
    c = index.search(q, K, SearchParams(nprobe=32))  # any other value without a rebuild
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    m = refresh_index_artifact(
        tmp_path / "v0", tmp_path / "v1", data.ids, data.vecs, config, UP1, params=SearchParams(nprobe=8)
    )
    assert m["search_params"]["nprobe"] == 8
    hn = build_index_artifact(tmp_path / "h", data.ids, data.vecs, CASES["hnswlib"][0], UP0)
    assert hn["search_params"] == {"ef": 64, "nprobe": None}  # the spec's default ef, resolved
    with pytest.raises(DermError, match="nprobe does not apply"):
        load_index_artifact(tmp_path / "h")[0].set_default_params(SearchParams(nprobe=3))


@pytest.mark.parametrize("name", ["faiss-Flat", "faiss-IVF32", "faiss-HNSW16", "hnswlib"])
def test_tune_sweeps_the_knob(data, name):
    config, _, _ = CASES[name]
    index = make_index(config)
    index.build(data.ids, data.vecs)
    q = data.queries(100)
    points = tune(index, q, K, repeats=1)
    knob = {"Flat": None, "IVF32,Flat": "nprobe"}.get(config.spec, "ef")
    assert {p.knob for p in points} == {knob}
    assert all(p.qps > 0 and 0.0 <= p.recall_at_k <= 1.0 for p in points)
    if knob is None:
        assert len(points) == 1 and points[0].recall_at_k == 1.0
        return
    recalls = [p.recall_at_k for p in points]
    assert recalls[-1] >= 0.98 and recalls[-1] >= recalls[0]
    if knob == "nprobe":
        assert points[0].value == 1 and recalls[0] < 0.9  # the sweep spans a real trade-off
        assert points[-1].value == 32 and recalls[-1] == 1.0  # every list probed: exact


@pytest.mark.parametrize("name", list(CASES))
def test_fast_path_matches_general_path(data, name):
    """The unfiltered fast path returns exactly what the general (validating, padding) path returns."""
    config, params, _ = CASES[name]
    index = make_index(config)
    index.build(data.ids, data.vecs)
    q = data.queries(40)
    fast = index.search(q, K, params)
    general = index.search(q.astype(np.float64), K, params)  # float64 input skips the fast path
    np.testing.assert_array_equal(fast[0], general[0])
    np.testing.assert_allclose(fast[1], general[1], atol=1e-6)
    assert fast[0].dtype == np.int64 and fast[1].dtype == np.float32
    bad = q.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DermError, match="NaN"):
        index.search(bad, K, params)
    big = index.search(q[:2], N + 5, params)  # k > ntotal: padded by the general path
    assert (big[0][:, N:] == -1).all()


def test_artifact_without_search_params_loads(data, tmp_path: Path):
    """Schema-1 manifests written before query defaults were recorded (all None) still load."""
    import json

    config = CASES["faiss-IVF32"][0]
    build_index_artifact(tmp_path / "v0", data.ids, data.vecs, config, UP0)
    path = tmp_path / "v0" / "manifest.json"
    m = json.loads(path.read_text())
    m["search_params"] = {"ef": None, "nprobe": None}
    del m["refresh"]
    path.write_text(json.dumps(m))
    index, _ = load_index_artifact(tmp_path / "v0")
    assert index.default_params().nprobe == 1  # faiss's own default


def test_fast_path_passes_params_only_when_they_differ(data):
    """Params equal to the index's own efSearch / nprobe are not passed to faiss; other values still apply."""
    q = data.queries(30)
    for config, knob, default, other in (
        (IndexConfig(Backend.FAISS, "HNSW16,Flat", DIM), "ef", 16, 64),
        (IndexConfig(Backend.FAISS, "IVF32,Flat", DIM), "nprobe", 2, 32),
    ):
        index = make_index(config)
        index.build(data.ids, data.vecs)
        index.set_default_params(SearchParams(**{knob: default}))
        for params, k in (({knob: default}, K), ({knob: default}, 4 * K), ({knob: other}, K), (None, 4 * K)):
            sp = None if params is None else SearchParams(**params)
            fast = index.search(q, k, sp)
            general = index.search(q.astype(np.float64), k, sp)  # float64 skips the fast path
            np.testing.assert_array_equal(fast[0], general[0])
        low, high = index.search(q, K)[0], index.search(q, K, SearchParams(**{knob: other}))[0]
        assert not np.array_equal(low, high)  # the other value really changed the search
        bad = q.copy()
        bad[1, 0] = np.inf
        with pytest.raises(DermError, match="NaN or inf"):
            index.search(bad, K)
