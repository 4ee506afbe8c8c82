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

from adslog.artifact import MANIFEST, make_manifest, publishing, read_manifest, write_json_atomic
from adslog.errors import DataError, DermError, VersionMismatchError
from index.base import (
    AnnIndex,
    Backend,
    IndexConfig,
    SearchParams,
    as_vectors,
    check_ids_vecs,
    check_k,
    index_class,
    make_index,
    recall_against_exact,
)

log = logging.getLogger(__name__)

KIND = "ann_index"
SCHEMA_VERSION = 1


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
) -> dict[str, Any]:
    """Build an index over (ids int64[n], vecs float32[n, dim]), self-check it, publish it at `out_dir`.

    The self-check is recall@k of the index against exact search on the original vectors for
    `self_check_queries` (float32[q, dim]) with `params`. Publication is atomic: on any failure an earlier
    artifact at `out_dir` is left whole. Returns the manifest written.
    """
    out_dir = Path(out_dir)
    if not isinstance(upstream, dict):
        raise DermError("upstream must be a dict, e.g. {'embedding_version': ..., 'lineage': ...}")
    k = check_k(k)
    params = params or SearchParams()
    ids, vecs = check_ids_vecs(ids, vecs, config.dim)
    queries = None
    if self_check_queries is not None:
        queries = as_vectors(self_check_queries, config.dim, "self-check queries", check_norm=False)
    with publishing(out_dir, overwrite=overwrite) as tmp:
        index = make_index(config)
        t0 = time.perf_counter()
        index.build(ids, vecs)
        build_seconds = time.perf_counter() - t0
        self_check = None
        if queries is not None and queries.shape[0]:
            recall = recall_against_exact(index, queries, k, params, ad_ids=ids, ad_vecs=vecs)
            self_check = {"k": k, "n_queries": int(queries.shape[0]), "recall": recall}
            log.info("self-check recall@%d = %.4f over %d queries", k, recall, queries.shape[0])
        index.save(tmp)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
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
            search_params=params.to_json(),
            self_check=self_check,
            upstream=dict(upstream),
            config=config.to_json(),
            backend_version=_backend_version(config.backend),
            files=files,
        )
        write_json_atomic(tmp / MANIFEST, manifest)
    log.info(
        "published %s index %r (%d vectors) at %s", config.backend.value, config.spec, index.ntotal, out_dir
    )
    return manifest


def load_index_artifact(
    directory: Path,
    expect_upstream: dict[str, Any] | None = None,
    device: str = "cpu",
) -> tuple[AnnIndex, dict[str, Any]]:
    """Validate `directory/manifest.json`, check upstream versions, then load the index.

    Raises DataError for a missing/corrupt/mismatched artifact and VersionMismatchError when a key of
    `expect_upstream` differs from the manifest's `upstream`. Returns (index, manifest).
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
        if not (directory / name).is_file():
            raise DataError(directory / name, "index file listed in the manifest is missing")
    index: AnnIndex = index_class(Backend(config.backend)).load(directory, config)
    if index.ntotal != m["n_vectors"]:
        raise DataError(path, f"manifest says {m['n_vectors']} vectors, index holds {index.ntotal}")
    return index, m


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
