"""ANN backends behind one protocol: every backend/spec against exact search, filters, mutation, artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dermcore.errors import DataError, DermError, VersionMismatchError
from index import (
    AnnIndex,
    Backend,
    IndexConfig,
    SearchParams,
    build_index_artifact,
    exact_search,
    load_index_artifact,
    make_index,
    recall_against_exact,
)

N, DIM, NQ, K = 5000, 32, 200, 10


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    """faiss's OpenMP threads cost more than they give on tiny data (k-means on 5k points: 1 s -> 0.2 s)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(rng: np.random.Generator, n: int, centers: np.ndarray) -> np.ndarray:
    """Points around planted cluster centres, so neighbourhoods are local and ANN is non-trivial."""
    assign = rng.integers(0, centers.shape[0], n)
    return _normalise(centers[assign] + 0.2 * rng.standard_normal((n, DIM)))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)
    centers = _normalise(rng.standard_normal((50, DIM)))
    vecs = _clustered(rng, N, centers)
    queries = _clustered(rng, NQ, centers)
    ids = (10**12 + 7 * np.arange(N)).astype(np.int64)  # explicit, sparse, large: never row positions
    return ids, vecs, queries


CASES = {
    "faiss-Flat": (IndexConfig(Backend.FAISS, "Flat", DIM), None),
    "faiss-IVF64": (IndexConfig(Backend.FAISS, "IVF64,Flat", DIM), SearchParams(nprobe=16)),
    "faiss-HNSW32": (IndexConfig(Backend.FAISS, "HNSW32,Flat", DIM), SearchParams(ef=64)),
    "hnswlib": (IndexConfig(Backend.HNSWLIB, "M16,efc200", DIM), SearchParams(ef=64)),
}


@pytest.fixture(params=list(CASES), scope="module")
def case(request: pytest.FixtureRequest, data) -> tuple[IndexConfig, SearchParams | None, AnnIndex]:
    """A built index per backend/spec, shared by read-only tests (mutating tests build their own)."""
    config, params = CASES[request.param]
    ids, vecs, _ = data
    index = make_index(config)
    index.build(ids, vecs)
    return config, params, index


def _fresh(config: IndexConfig, data) -> AnnIndex:
    ids, vecs, _ = data
    index = make_index(config)
    index.build(ids, vecs)
    return index


def test_protocol_and_ids(case, data):
    config, params, index = case
    ids, _, queries = data
    assert isinstance(index, AnnIndex)
    assert index.ntotal == N
    np.testing.assert_array_equal(np.sort(index.ids()), ids)
    got_ids, got_scores = index.search(queries, K, params)
    assert got_ids.dtype == np.int64 and got_scores.dtype == np.float32
    assert got_ids.shape == got_scores.shape == (NQ, K)
    assert np.isin(got_ids, ids).all()
    assert (np.diff(got_scores, axis=1) <= 1e-6).all(), "scores are best first, higher = better"
    # a vector finds itself first with score ~1 (cosine), on every backend
    self_ids, self_scores = index.search(data[1][:20], 1, params)
    np.testing.assert_array_equal(self_ids[:, 0], ids[:20])
    np.testing.assert_allclose(self_scores[:, 0], 1.0, atol=1e-5)


def test_recall_against_exact(case, data):
    config, params, index = case
    ids, vecs, queries = data
    ex_ids, ex_scores = exact_search(ids, vecs, queries, K)
    got_ids, got_scores = index.search(queries, K, params)
    recall = recall_against_exact(index, queries, K, params, ad_ids=ids, ad_vecs=vecs)
    if config.spec == "Flat":
        np.testing.assert_array_equal(got_ids, ex_ids)
        np.testing.assert_allclose(got_scores, ex_scores, atol=1e-5)
        assert recall == 1.0
    assert recall >= 0.95, f"{config.backend.value} {config.spec}: recall@{K} {recall:.3f}"
    # reconstructed vectors as ground truth give the same answer for exact-storage specs
    assert recall_against_exact(index, queries, K, params) == pytest.approx(recall, abs=1e-9)


def test_recall_tolerates_ties():
    """Two ads with the same vector: returning either one at the k-th place is a hit, a worse ad is not."""
    vecs = np.eye(4, DIM, dtype=np.float32)
    vecs = np.vstack([vecs, vecs[:1]])  # ad 50 duplicates ad 10
    ad_ids = np.array([10, 20, 30, 40, 50], dtype=np.int64)
    query = vecs[:1]

    class Fixed:
        config = IndexConfig(dim=DIM)

        def __init__(self, row: list[int]) -> None:
            self.row = np.array([row], dtype=np.int64)

        def search(self, queries, k, params=None, allowed_ids=None, excluded_ids=None):
            return self.row, np.zeros(self.row.shape, np.float32)

    ex_ids, _ = exact_search(ad_ids, vecs, query, 1)
    other = 50 if ex_ids[0, 0] == 10 else 10
    assert recall_against_exact(Fixed([other]), query, 1, ad_ids=ad_ids, ad_vecs=vecs) == 1.0
    assert recall_against_exact(Fixed([20]), query, 1, ad_ids=ad_ids, ad_vecs=vecs) == 0.0
    assert recall_against_exact(Fixed([10, -1]), query, 2, ad_ids=ad_ids, ad_vecs=vecs) == 0.5


def test_recall_is_not_trivially_one(data):
    """The data must make ANN work: IVF with nprobe=1 misses neighbours across list boundaries."""
    ids, vecs, queries = data
    index = make_index(IndexConfig(Backend.FAISS, "IVF64,Flat", DIM))
    index.build(ids, vecs)
    assert recall_against_exact(index, queries, K, SearchParams(nprobe=1)) < 0.9


def test_save_load_round_trip(case, data, tmp_path):
    config, params, index = case
    _, _, queries = data
    index.save(tmp_path)
    loaded = type(index).load(tmp_path, config)
    assert loaded.ntotal == index.ntotal
    a = index.search(queries, K, params)
    b = loaded.search(queries, K, params)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("n_allowed", [15, 300, 4000])
def test_allowed_ids(case, data, n_allowed):
    config, params, index = case
    ids, vecs, queries = data
    rng = np.random.default_rng(n_allowed)
    allowed = rng.choice(ids, n_allowed, replace=False)
    got_ids, got_scores = index.search(queries, K, params, allowed_ids=allowed)
    assert np.isin(got_ids, allowed).all(), "an ineligible id was returned"
    assert (got_ids >= 0).all(), "k results must come back when >= k ids are eligible"
    assert (np.unique(got_ids[0]).size == K) and np.isfinite(got_scores).all()
    ex_ids, _ = exact_search(ids, vecs, queries, K, allowed_ids=allowed)
    overlap = np.mean([np.intersect1d(a, b).size / K for a, b in zip(got_ids, ex_ids, strict=True)])
    assert overlap >= 0.9


def test_allowed_fewer_than_k_pads(case, data):
    config, params, index = case
    ids, _, queries = data
    allowed = ids[[3, 500, 4999]]
    got_ids, got_scores = index.search(queries[:5], K, params, allowed_ids=allowed)
    assert (np.sort(got_ids[:, :3], axis=1) == np.sort(allowed)).all()
    assert (got_ids[:, 3:] == -1).all() and np.isneginf(got_scores[:, 3:]).all()


def test_excluded_ids(case, data):
    config, params, index = case
    ids, _, queries = data
    plain, _ = index.search(queries, K, params)
    excluded = np.unique(plain[:, :5])  # the best five of every query
    got_ids, _ = index.search(queries, K, params, excluded_ids=excluded)
    assert not np.isin(got_ids, excluded).any()
    assert (got_ids >= 0).all()
    # combined: allowed minus excluded
    allowed = ids[:40]
    got_ids, _ = index.search(queries, K, params, allowed_ids=allowed, excluded_ids=allowed[:35])
    assert np.isin(got_ids[:, :5], allowed[35:]).all() and (got_ids[:, 5:] == -1).all()


def test_k_greater_than_ntotal_pads(case, data):
    config, params, _ = case
    ids, vecs, queries = data
    small = make_index(config if "IVF" not in config.spec else IndexConfig(Backend.FAISS, "IVF4,Flat", DIM))
    small.build(ids[:200], vecs[:200])
    got_ids, got_scores = small.search(queries[:3], 250, params if "IVF" not in config.spec else None)
    assert got_ids.shape == (3, 250)
    for row_ids, row_scores in zip(got_ids, got_scores, strict=True):
        np.testing.assert_array_equal(np.sort(row_ids[:200]), ids[:200])
        assert (row_ids[200:] == -1).all() and np.isneginf(row_scores[200:]).all()


def test_add_remove_replace(case, data, tmp_path):
    config, params, _ = case
    ids, vecs, queries = data
    index = _fresh(config, data)
    removed = ids[:100]
    assert index.remove(np.concatenate([removed, [5, 6]])) == 100  # unknown ids are ignored
    assert index.ntotal == N - 100
    assert not np.isin(index.ids(), removed).any()
    got_ids, _ = index.search(vecs[:100], K, params)
    assert not np.isin(got_ids, removed).any()
    assert (got_ids >= 0).all()
    got_ids, _ = index.search(queries, K, params, allowed_ids=ids[:115])
    assert np.isin(got_ids, ids[100:115]).all() and (got_ids >= 0).all()

    # replace: id ids[500] moves to where vecs[2000] is; re-add a removed id with a new vector
    new_vec = _normalise(vecs[2000:2001] + 1e-3)
    index.add(ids[[500, 7]], np.vstack([new_vec, vecs[3000:3001]]))
    assert index.ntotal == N - 100 + 1
    top, top_scores = index.search(new_vec, 3, params)
    assert ids[500] in top[0, :2] and top_scores[0, 0] > 0.999
    top, _ = index.search(vecs[500:501], 5, params)
    assert ids[500] not in top[0], "the old vector of a replaced id must be gone"
    top, _ = index.search(vecs[3000:3001], 2, params)
    assert set(top[0]) == {ids[7], ids[3000]}
    np.testing.assert_allclose(index.get_vectors(ids[[500]]), new_vec, atol=1e-6)

    # brand-new ids
    extra_ids = np.array([2**40 + 1, 2**40 + 2], dtype=np.int64)
    extra = _normalise(np.random.default_rng(9).standard_normal((2, DIM)))
    index.add(extra_ids, extra)
    top, _ = index.search(extra, 1, params)
    np.testing.assert_array_equal(top[:, 0], extra_ids)
    assert index.ntotal == N - 100 + 3

    # removals (tombstones for faiss IVF/HNSW, deletion marks for hnswlib) survive save/load
    index.save(tmp_path)
    loaded = type(index).load(tmp_path, config)
    assert loaded.ntotal == index.ntotal
    np.testing.assert_array_equal(np.sort(loaded.ids()), np.sort(index.ids()))
    np.testing.assert_array_equal(loaded.search(queries, K, params)[0], index.search(queries, K, params)[0])
    loaded.add(ids[[8]], vecs[[8]])  # a removed id comes back after a reload
    assert loaded.search(vecs[[8]], 1, params)[0][0, 0] == ids[8]


def test_bad_inputs_raise(case, data):
    config, params, index = case
    ids, vecs, queries = data
    with pytest.raises(DermError, match="dim mismatch: index dim is 32, got vectors of dim 16"):
        index.search(queries[:, :16], K, params)
    bad = queries[:4].copy()
    bad[2, 5] = np.nan
    with pytest.raises(DermError, match="NaN"):
        index.search(bad, K, params)
    fresh = make_index(config)
    with pytest.raises(DermError, match="L2-normalised"):
        fresh.build(ids, vecs * 2.0)
    nan_vecs = vecs.copy()
    nan_vecs[7, 0] = np.nan
    with pytest.raises(DermError, match="NaN"):
        fresh.build(ids, nan_vecs)
    with pytest.raises(DermError, match="ids must be >= 0"):
        fresh.build(np.array([-5, 1]), vecs[:2])
    with pytest.raises(DermError, match="unique"):
        fresh.build(np.array([1, 1]), vecs[:2])
    with pytest.raises(DermError, match="k must be a positive int"):
        index.search(queries, 0)


def test_refine_spec_filters_by_post_filter(data):
    """IndexRefineFlat ignores a top-level IDSelector in faiss: the backend must post-filter instead."""
    ids, vecs, queries = data
    index = make_index(IndexConfig(Backend.FAISS, "IVF16,PQ8x4,RFlat", DIM))
    index.build(ids, vecs)
    for n_allowed in (15, 2000):
        allowed = np.random.default_rng(n_allowed).choice(ids, n_allowed, replace=False)
        got, _ = index.search(queries, K, SearchParams(nprobe=16), allowed_ids=allowed)
        assert np.isin(got, allowed).all() and (got >= 0).all()
    assert index.remove(ids[:50]) == 50
    got, _ = index.search(vecs[:50], K, SearchParams(nprobe=16))
    assert not np.isin(got, ids[:50]).any() and (got >= 0).all()


def test_hnswlib_filter_callback_path(data, monkeypatch):
    """Mid-selectivity filters use hnswlib's filter callback; results stay eligible and complete."""
    from index import hnsw_backend

    monkeypatch.setattr(hnsw_backend, "EXACT_FILTER_MAX", 10)
    ids, vecs, queries = data
    index = _fresh(CASES["hnswlib"][0], data)
    allowed = np.random.default_rng(3).choice(ids, 400, replace=False)  # 8%: callback path
    got, _ = index.search(queries[:20], K, allowed_ids=allowed)
    assert np.isin(got, allowed).all() and (got >= 0).all()
    allowed = ids[:30]  # too few for the graph to find 10 through the callback: exact fallback fills them
    got, _ = index.search(queries[:20], K, allowed_ids=allowed)
    assert np.isin(got, allowed).all() and (got >= 0).all()


def test_hnswlib_short_results_are_filled(data):
    """hnswlib raises when deletions leave it unable to fill k columns; we retry and fill rows exactly."""
    ids, vecs, queries = data
    index = make_index(IndexConfig(Backend.HNSWLIB, "M4,efc10,ef10", DIM))
    index.build(ids[:2000], vecs[:2000])
    index.remove(ids[:2000:2][:900])
    got, scores = index.search(queries[:5], 1100)
    for row in got:
        np.testing.assert_array_equal(np.sort(row), np.sort(index.ids()))
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_config_validation():
    with pytest.raises(DermError, match="only 'ip'"):
        IndexConfig(metric="l2")
    with pytest.raises(DermError, match="unknown index backend"):
        IndexConfig(backend="annoy")
    with pytest.raises(DermError, match="unknown device"):
        IndexConfig(device="tpu")
    with pytest.raises(DermError, match="dim"):
        IndexConfig(dim=0)
    with pytest.raises(DermError, match="nprobe"):
        SearchParams(nprobe=0)
    with pytest.raises(DermError, match="bad hnswlib spec"):
        make_index(IndexConfig(Backend.HNSWLIB, "IVF64,Flat"))
    with pytest.raises(DermError, match="invalid faiss spec"):
        make_index(IndexConfig(spec="Bogus12")).build(np.array([1]), np.eye(1, 64, dtype=np.float32))
    with pytest.raises(DermError, match="no GPU"):
        make_index(IndexConfig(device="cuda"))
    assert IndexConfig.from_json(IndexConfig(Backend.HNSWLIB, "HNSW32").to_json()).backend is Backend.HNSWLIB


# --- artifacts ---------------------------------------------------------------------------------------------

UPSTREAM = {"embedding_version": "2024-05-01", "lineage": "towers@abc123"}


@pytest.mark.parametrize("name", ["faiss-HNSW32", "hnswlib"])
def test_artifact_round_trip(data, tmp_path, name):
    config, params = CASES[name]
    ids, vecs, queries = data
    out = tmp_path / "idx"
    manifest = build_index_artifact(out, ids, vecs, config, UPSTREAM, queries[:50], k=K, params=params)
    on_disk = json.loads((out / "manifest.json").read_text())
    payload = on_disk.pop("payload")  # added by `publishing`: every file but the manifest, sized and hashed
    assert on_disk == json.loads(json.dumps(manifest))
    assert set(payload) == set(manifest["files"]) and all(len(r["sha256"]) == 64 for r in payload.values())
    for key in ("backend", "spec", "dim", "metric", "n_vectors", "build_seconds", "search_params", "config"):
        assert key in manifest
    assert manifest["kind"] == "ann_index" and manifest["schema_version"] == 2
    assert manifest["storage"] == {"kind": "full"}
    assert manifest["normalised"] is True and manifest["n_vectors"] == N and manifest["dim"] == DIM
    assert manifest["backend"] == config.backend.value and manifest["spec"] == config.spec
    assert manifest["upstream"] == UPSTREAM
    assert manifest["self_check"]["k"] == K and manifest["self_check"]["n_queries"] == 50
    assert 0.95 <= manifest["self_check"]["recall"] <= 1.0
    assert "faiss" in manifest["library_versions"] or "hnswlib" in manifest["library_versions"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]

    loaded, m2 = load_index_artifact(out, expect_upstream={"embedding_version": "2024-05-01"})
    assert m2["artifact_id"] == manifest["artifact_id"] and loaded.config == config
    np.testing.assert_array_equal(np.sort(loaded.ids()), ids)
    recall = recall_against_exact(loaded, queries[:50], K, params, ad_ids=ids, ad_vecs=vecs)
    assert recall == pytest.approx(manifest["self_check"]["recall"], abs=1e-9)
    assert manifest["backend_version"] not in ("", "unknown")


def test_artifact_upstream_mismatch(data, tmp_path):
    ids, vecs, _ = data
    build_index_artifact(tmp_path / "idx", ids[:500], vecs[:500], CASES["faiss-Flat"][0], UPSTREAM)
    with pytest.raises(VersionMismatchError) as e:
        load_index_artifact(tmp_path / "idx", expect_upstream={"embedding_version": "2024-05-02"})
    msg = str(e.value)
    assert "\n" not in msg and "'2024-05-01'" in msg and "'2024-05-02'" in msg
    with pytest.raises(DataError, match="already exists"):
        build_index_artifact(tmp_path / "idx", ids[:500], vecs[:500], CASES["faiss-Flat"][0], UPSTREAM)


def test_failed_build_leaves_previous_artifact(data, tmp_path):
    ids, vecs, queries = data
    out = tmp_path / "idx"
    first = build_index_artifact(out, ids[:500], vecs[:500], CASES["faiss-Flat"][0], UPSTREAM)
    # training IVF4096 on 500 vectors fails inside the publishing context
    with pytest.raises(DermError, match="cannot train"):
        build_index_artifact(
            out, ids[:500], vecs[:500], IndexConfig(spec="IVF4096,Flat", dim=DIM), UPSTREAM, overwrite=True
        )
    index, m = load_index_artifact(out)
    assert m["artifact_id"] == first["artifact_id"] and index.ntotal == 500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    # overwrite with a good build replaces it
    second = build_index_artifact(out, ids, vecs, CASES["faiss-Flat"][0], UPSTREAM, overwrite=True)
    assert load_index_artifact(out)[1]["artifact_id"] == second["artifact_id"] != first["artifact_id"]


def test_load_rejects_corrupt_manifest(data, tmp_path: Path):
    ids, vecs, _ = data
    out = tmp_path / "idx"
    build_index_artifact(out, ids[:100], vecs[:100], CASES["faiss-Flat"][0], UPSTREAM)
    m = json.loads((out / "manifest.json").read_text())
    m["kind"] = "embeddings"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="expected an artifact of kind 'ann_index'"):
        load_index_artifact(out)
    with pytest.raises(DataError, match="no such ann_index artifact"):
        load_index_artifact(tmp_path / "missing")
