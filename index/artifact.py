"""An ANN index as an artifact: a directory with `manifest.json` (kind "ann_index") and the backend's files.

The manifest names the upstream embedding version the index was built from; loading with `expect_upstream`
refuses an index built from another version (queries from model B against ads from model A are an error,
not a silent mix).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from dermcore.artifact import MANIFEST, make_manifest, publishing, read_manifest, write_json_atomic
from dermcore.errors import DataError, DermError, QualityGateError, VersionMismatchError
from dermcore.safepath import check_component
from index.backends import index_class, make_index
from index.boundary import as_vectors, check_ids_vecs, check_k
from index.delta import IndexDelta, apply_delta, link_files, read_delta, write_delta
from index.exact import recall_against_exact
from index.types import AnnIndex, Backend, IndexConfig, SearchParams

log = logging.getLogger(__name__)

KIND = "ann_index"
# 2: `storage` {kind: "full" | "delta", ...}; a delta version holds its base's files plus `delta.npz` (see
# index.delta). Schema-1 manifests (no `storage`) are full versions and still load.
SCHEMA_VERSION = 2
INDEX_FILE_MODE = 0o444  # index files are never opened for writing again (delta versions hard-link them)


def build_index_artifact(
    out_dir: Path,
    ids: np.ndarray,
    vecs: np.ndarray,
    config: IndexConfig,
    upstream: dict[str, Any],
    self_check_queries: np.ndarray | None = None,
    k: int = 100,
    params: SearchParams | None = None,
    overwrite: bool = False,
    refresh: dict[str, Any] | None = None,
    started: float | None = None,
    min_recall: float | None = None,
) -> dict[str, Any]:
    """Build an index over (ids int64[n], vecs float32[n, dim]), self-check it, publish it at `out_dir`.

    `params` become the index's query-time defaults (recorded, resolved, in the manifest's `search_params`;
    `load_index_artifact` applies them, and any search may pass others). The self-check is recall@k of the
    index against exact search on the original vectors for `self_check_queries` (float32[q, dim]) with those
    defaults. `refresh` is the record of how this version came about (see `index.refresh`); its `seconds`
    count from `started` (a `time.perf_counter()` value, default: the start of the build). Publication is
    atomic: on any failure an earlier artifact at `out_dir` is left whole. A self-check recall under
    `min_recall` is a QualityGateError raised before the rename: the version is never published. Returns the
    manifest written.
    """
    if not isinstance(upstream, dict):
        raise DermError("upstream must be a dict, e.g. {'embedding_version': ..., 'lineage': ...}")
    ids, vecs = check_ids_vecs(ids, vecs, config.dim)
    queries = _check_queries(self_check_queries, config.dim)
    k = check_k(k)
    with publishing(Path(out_dir), overwrite=overwrite) as tmp:
        index = make_index(config)
        t0 = time.perf_counter()
        started = t0 if started is None else started
        index.build(ids, vecs)
        build_seconds = time.perf_counter() - t0
        if params is not None:
            index.set_default_params(params)
        if refresh is not None:
            refresh = {**refresh, "mode": "rebuild"}
        manifest = write_index_version(
            tmp, index, ids, vecs, upstream, queries, k, build_seconds, refresh, started, min_recall
        )
    log.info(
        "published %s index %r (%d vectors) at %s", config.backend.value, config.spec, index.ntotal, out_dir
    )
    return manifest


def write_index_version(
    tmp: Path,
    index: AnnIndex,
    ids: np.ndarray,
    vecs: np.ndarray,
    upstream: dict[str, Any],
    queries: np.ndarray | None,
    k: int,
    build_seconds: float,
    refresh: dict[str, Any] | None,
    started: float | None = None,
    min_recall: float | None = None,
    delta: tuple[Path, dict[str, Any], IndexDelta] | None = None,
) -> dict[str, Any]:
    """Self-check `index` against exact search over (ids, vecs), save it and its manifest into `tmp`.

    Called inside `publishing(...)`: the caller's context fsyncs and moves `tmp` into place. The refresh
    record's `seconds` run from `started` to now (after the save), when both are given. With `delta`
    (base version directory, {base_artifact_id, base_files, base_n_vectors}, the delta from that base), the
    version is stored as the base's files, hard-linked, plus the delta, instead of the whole index: `index`
    must be that base with the delta applied (see index.delta).
    """
    config = index.config
    self_check = None
    if queries is not None and queries.shape[0] and ids.size:
        t0 = time.perf_counter()
        kk = min(k, int(ids.size))
        recall = recall_against_exact(index, queries, kk, None, ad_ids=ids, ad_vecs=vecs)
        self_check = {
            "k": kk,
            "n_queries": int(queries.shape[0]),
            "recall": recall,
            "seconds": round(time.perf_counter() - t0, 4),
        }
        log.info("self-check recall@%d = %.4f over %d queries", kk, recall, queries.shape[0])
        if min_recall is not None and recall < min_recall:
            # quality gate: raised inside `publishing`, so the temporary directory is dropped unpublished
            raise QualityGateError(
                f"{tmp.parent}: self-check recall@{kk} {recall:.4f} is under the threshold {min_recall}; "
                "not published"
            )
    storage: dict[str, Any]
    if delta is None:
        index.save(tmp)
        for p in tmp.iterdir():
            p.chmod(INDEX_FILE_MODE)
        storage = {"kind": "full"}
    else:
        base_dir, base, change = delta
        linked = link_files(base_dir, tmp, list(base["base_files"]))
        storage = {
            "kind": "delta",
            **base,
            **write_delta(tmp, change),
            "removed": int(change.removed.size),
            "upserts": int(change.upsert_ids.size),
            "delta_fraction": round(change.size / max(int(base["base_n_vectors"]), 1), 6),
            "base_link": linked,
        }
    files = sorted(p.name for p in tmp.iterdir() if p.is_file())
    if refresh is not None and started is not None:
        refresh = {**refresh, "seconds": round(time.perf_counter() - started, 4)}
    manifest = make_manifest(
        KIND,
        SCHEMA_VERSION,
        backend=config.backend.value,
        spec=config.spec,
        dim=config.dim,
        metric=config.metric,
        normalised=True,
        n_vectors=int(index.ntotal),
        build_seconds=round(build_seconds, 4),
        search_params=index.default_params().to_json(),
        self_check=self_check,
        upstream=dict(upstream),
        config=config.to_json(),
        backend_version=_backend_version(config.backend),
        refresh=refresh,
        storage=storage,
        files=files,
    )
    write_json_atomic(tmp / MANIFEST, manifest)
    return manifest


def _check_queries(queries: np.ndarray | None, dim: int) -> np.ndarray | None:
    if queries is None:
        return None
    return as_vectors(queries, dim, "self-check queries", check_norm=False)


def load_index_artifact(
    directory: Path,
    expect_upstream: dict[str, Any] | None = None,
    device: str = "cpu",
) -> tuple[AnnIndex, dict[str, Any]]:
    """Validate `directory/manifest.json`, check upstream versions, then load the index.

    A delta version is loaded as its base files with the delta applied (index.delta). Raises DataError for
    a missing/corrupt/mismatched artifact and VersionMismatchError when a key of `expect_upstream` differs
    from the manifest's `upstream`. Returns (index, manifest).
    """
    index, m, delta = load_index_base(directory, expect_upstream, device)
    if delta is not None:
        apply_delta(index, delta)
        _check_count(Path(directory), index, m["n_vectors"], "vectors after applying its delta")
    return index, m


def load_index_base(
    directory: Path,
    expect_upstream: dict[str, Any] | None = None,
    device: str = "cpu",
) -> tuple[AnnIndex, dict[str, Any], IndexDelta | None]:
    """(the index as stored in its files, the manifest, the delta still to apply: None for a full version).

    What a refresh starts from: a delta version's base, which the next version's delta is taken against.
    The delta file is read and checked (checksum, shapes) before the base is loaded.
    """
    directory = Path(directory)
    m = read_manifest(directory, KIND, SCHEMA_VERSION)
    path = directory / MANIFEST
    for key in ("backend", "spec", "dim", "metric", "normalised", "n_vectors", "upstream", "config", "files"):
        if key not in m:
            raise DataError(path, f"manifest lacks {key!r}")
    if m["normalised"] is not True:
        raise DataError(path, "index was not built on L2-normalised vectors")
    if not isinstance(m["upstream"], dict):
        raise DataError(path, "manifest 'upstream' is not an object")
    if expect_upstream:
        for key, expected in expect_upstream.items():
            actual = m["upstream"].get(key)
            if actual != expected:
                raise VersionMismatchError(
                    f"{directory}: index built from {key}={actual!r}, but {key}={expected!r} was expected"
                )
    try:
        config = IndexConfig.from_json(m["config"])
        config = dataclasses.replace(config, device=device)
    except (DermError, TypeError) as e:
        raise DataError(path, f"invalid index config ({e})") from None
    if (config.backend.value, config.spec, config.dim) != (m["backend"], m["spec"], m["dim"]):
        raise DataError(path, "manifest backend/spec/dim disagree with its config")
    for name in m["files"]:
        check_component(name, path)  # a manifest lists file names inside the version, never paths
        if not (directory / name).is_file():
            raise DataError(directory / name, "index file listed in the manifest is missing")
    storage = m.get("storage") or {"kind": "full"}  # schema 1: always full
    delta: IndexDelta | None = None
    n_stored = m["n_vectors"]
    if storage.get("kind") == "delta":
        if not isinstance(storage.get("base_n_vectors"), int):
            raise DataError(path, "delta storage lacks base_n_vectors")
        delta = read_delta(directory, storage, config.dim)
        n_stored = storage["base_n_vectors"]
    elif storage.get("kind") != "full":
        raise DataError(path, f"unknown index storage kind {storage.get('kind')!r}")
    index: AnnIndex = index_class(Backend(config.backend)).load(directory, config)
    _check_count(directory, index, n_stored, "vectors in its index files")
    _apply_search_params(directory, index, m)
    return index, m, delta


def _check_count(directory: Path, index: AnnIndex, expected: int, what: str) -> None:
    if index.ntotal != expected:
        raise DataError(directory / MANIFEST, f"manifest says {expected} {what}, index holds {index.ntotal}")


def _apply_search_params(directory: Path, index: AnnIndex, m: dict[str, Any]) -> None:
    sp = m.get("search_params")
    if isinstance(sp, dict):
        try:
            index.set_default_params(SearchParams(ef=sp.get("ef"), nprobe=sp.get("nprobe")))
        except DermError as e:
            raise DataError(directory / MANIFEST, f"invalid search_params ({e})") from None


def _backend_version(backend: Backend) -> str:
    """The installed version of the backend library (hnswlib has no `__version__`, so ask its metadata)."""
    from importlib import metadata

    for dist in (
        ("faiss-cpu", "faiss-gpu", "faiss") if backend is Backend.FAISS else ("hnswlib", "chroma-hnswlib")
    ):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"
