"""Daily refresh: publish the next index version by updating the previous one in place, or by rebuilding.

The new version always goes into a NEW directory through `dermcore.artifact.publishing`; the in-place path
loads the previous version's base files into memory, applies the change there and writes the result, so
the previous directory is never modified and queries reading it keep answering while the refresh runs.

"Changed" ads are the ids new in the store version (`added`), ids gone from it (`removed`) and ids whose
vector moved by more than `vector_tol` in any coordinate (`replaced`); the previous vectors are read back
from the previous index itself, so no other artifact is needed. The choice (`RefreshMode.AUTO`):

- rebuild when there is no readable previous version, or it was built with another backend/spec/dim, or
  from another lineage (a retrain from scratch is a new embedding space);
- rebuild when the index type cannot update in place (faiss HNSW and refine indices cannot remove vectors;
  compressed codes cannot tell a changed vector from quantisation error);
- rebuild for faiss `Flat`: a build is a plain copy of the vectors, no dearer than loading and updating;
- rebuild when more than `max_changed_fraction` of the ads changed (the daily cycle re-embeds every live ad
  after each model increment, so this is its usual case), or when tombstones (removed entries kept until a
  rebuild and skipped by searches: faiss IVF, hnswlib) would exceed `max_tombstone_fraction` of the index;
- otherwise update in place.

An in-place version is stored (`storage`) as a delta (index.delta: the base's files hard-linked plus the
change since that base, so ~1 % of the ads are written instead of the whole index) unless that delta would
exceed `max_delta_fraction` of the base: then the updated index is written in full (a compaction), and it
becomes the base of the next versions. The update always starts from the base: the previous version's own
delta is folded into the new one, so a version never needs another directory to load.

Every version's manifest records what happened: `refresh: {mode, storage, reason, storage_reason, added,
removed, replaced, changed_fraction, parent, seconds}` (`seconds` from the start of the refresh to the
manifest, self-check and save included; the final fsync and rename are not, as they happen after the
manifest is written).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from dermcore.artifact import publishing, read_manifest
from dermcore.errors import DataError, DermError
from index.artifact import (
    KIND,
    SCHEMA_VERSION,
    _check_queries,
    build_index_artifact,
    load_index_base,
    write_index_version,
)
from index.boundary import check_ids_vecs, check_k
from index.delta import ChangeSet, IndexDelta, apply_delta, diff_from_base, diff_sets
from index.types import AnnIndex, IndexConfig, SearchParams

log = logging.getLogger(__name__)


class RefreshMode(StrEnum):
    AUTO = "auto"
    IN_PLACE = "in_place"
    REBUILD = "rebuild"


class Storage(StrEnum):
    """How an in-place version is written: `auto` (delta unless it outgrew `max_delta_fraction`), `delta`
    (always: base files hard-linked plus the change), `full` (always the whole updated index: a compaction)."""

    AUTO = "auto"
    DELTA = "delta"
    FULL = "full"


@dataclass(frozen=True)
class RefreshConfig:
    """How `refresh_index_artifact` chooses between an in-place update and a rebuild, and how it stores it."""

    mode: RefreshMode = RefreshMode.AUTO
    max_changed_fraction: float = 0.10
    max_tombstone_fraction: float = 0.25
    vector_tol: float = 1e-6
    storage: Storage = Storage.AUTO
    # a delta over this share of the base is compacted: readers replay the delta on every load
    max_delta_fraction: float = 0.05

    def __post_init__(self) -> None:
        for name, enum in (("mode", RefreshMode), ("storage", Storage)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                choices = ", ".join(m.value for m in enum)
                raise DermError(
                    f"unknown refresh {name} {getattr(self, name)!r} (choose from {choices})"
                ) from None
        for name in ("max_changed_fraction", "max_tombstone_fraction", "max_delta_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise DermError(f"{name} must be in [0, 1], got {v!r}")
        if not isinstance(self.vector_tol, int | float) or self.vector_tol < 0:
            raise DermError(f"vector_tol must be >= 0, got {self.vector_tol!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "max_changed_fraction": self.max_changed_fraction,
            "max_tombstone_fraction": self.max_tombstone_fraction,
            "vector_tol": self.vector_tol,
            "storage": self.storage.value,
            "max_delta_fraction": self.max_delta_fraction,
        }


def diff_against_index(index: AnnIndex, ids: np.ndarray, vecs: np.ndarray, tol: float = 1e-6) -> ChangeSet:
    """Compare the new ad set (ids int64[n], vecs float32[n, dim]) with what `index` stores.

    A common id is `replaced` when max |old - new| over its coordinates exceeds `tol`; the stored vectors
    are read in bulk (`index.items()`), the comparison is vectorised and blocked.
    """
    old_ids, old_vecs = index.items()
    return diff_sets(old_ids, old_vecs, ids, vecs, tol)[0]


def choose_mode(cfg: RefreshConfig, index: AnnIndex, changes: ChangeSet) -> tuple[RefreshMode, str]:
    """(mode, reason) for updating `index` (a compatible previous version's base) by `changes`."""
    blocker = index.in_place_blocker()
    if blocker is not None:
        if cfg.mode is RefreshMode.IN_PLACE:
            raise DermError(f"cannot refresh in place: {blocker}")
        return RefreshMode.REBUILD, blocker
    if cfg.mode is RefreshMode.IN_PLACE:
        return RefreshMode.IN_PLACE, "requested"
    if index.config.spec == "Flat":
        return (
            RefreshMode.REBUILD,
            "faiss Flat: a rebuild is a plain copy of the vectors, no dearer than an update",
        )
    if changes.fraction > cfg.max_changed_fraction:
        return (
            RefreshMode.REBUILD,
            f"{changes.fraction:.1%} of ads changed (more than {cfg.max_changed_fraction:.0%})",
        )
    return RefreshMode.IN_PLACE, f"{changes.fraction:.2%} of ads changed"


def choose_storage(cfg: RefreshConfig, delta: IndexDelta, n_base: int) -> tuple[Storage, str]:
    """(delta or full, reason) for writing an in-place version whose change from its base is `delta`."""
    frac = delta.size / max(n_base, 1)
    if cfg.storage is not Storage.AUTO:
        return cfg.storage, "requested"
    if frac > cfg.max_delta_fraction:
        return (
            Storage.FULL,
            f"compaction: the delta would hold {frac:.1%} of the base (more than {cfg.max_delta_fraction:.0%})",
        )
    return Storage.DELTA, f"delta of {frac:.2%} of the base over hard-linked base files"


def _tombstone_reason(cfg: RefreshConfig, index: AnnIndex, delta: IndexDelta, n_replaced: int) -> str | None:
    """Why the update must become a rebuild: tombstones (faiss IVF: removed and replaced entries; hnswlib:
    removed elements) over `max_tombstone_fraction` of the stored entries (None: fine). `n_replaced` of the
    delta's upserts replace a base entry; the others are new."""
    n_new = delta.upsert_ids.size - n_replaced
    tomb = index.tombstone_fraction_after(delta.removed.size, n_replaced, n_new)
    if tomb > cfg.max_tombstone_fraction:
        return (
            f"removed entries kept as tombstones would reach {tomb:.1%} of the index "
            f"(more than {cfg.max_tombstone_fraction:.0%})"
        )
    return None


def refresh_index_artifact(
    previous_dir: Path | None,
    out_dir: Path,
    ids: np.ndarray,
    vecs: np.ndarray,
    config: IndexConfig,
    upstream: dict[str, Any],
    refresh: RefreshConfig | None = None,
    self_check_queries: np.ndarray | None = None,
    k: int = 100,
    params: SearchParams | None = None,
    overwrite: bool = False,
    min_recall: float | None = None,
) -> dict[str, Any]:
    """Publish at `out_dir` the index over (ids int64[n], vecs float32[n, dim]), from `previous_dir`.

    The previous version (None: there is none) is updated in place or rebuilt, as `refresh` says (see the
    module docstring). `params` become the query-time defaults; None keeps the previous version's. Returns
    the manifest written, whose `refresh` records the mode, the storage, the reasons, the change counts
    (against the previous version) and the parent.
    """
    t0 = time.perf_counter()
    cfg = refresh or RefreshConfig()
    ids, vecs = check_ids_vecs(ids, vecs, config.dim)
    queries = _check_queries(self_check_queries, config.dim)
    k = check_k(k)
    record: dict[str, Any] = {"parent": None, "added": None, "removed": None, "replaced": None}
    base: AnnIndex | None = None
    prev_m: dict[str, Any] | None = None
    reason = "requested"
    if previous_dir is None or not (Path(previous_dir) / "manifest.json").exists():
        reason = "no previous index version"
        if cfg.mode is RefreshMode.IN_PLACE:
            raise DermError(f"cannot refresh in place: {reason}")
        record.update(added=int(ids.size), removed=0, replaced=0)
    elif cfg.mode is RefreshMode.REBUILD:
        parent_m = read_manifest(Path(previous_dir), KIND, SCHEMA_VERSION)
        record["parent"] = parent_m.get("artifact_id")
        params = params or _inherited_params(parent_m, config)
    else:
        base, prev_m, prev_delta, reason = _load_compatible(Path(previous_dir), config, upstream)
        if prev_m is not None:
            record["parent"] = prev_m.get("artifact_id")
            params = params or _inherited_params(prev_m, config)
        if base is None and cfg.mode is RefreshMode.IN_PLACE:
            raise DermError(f"cannot refresh in place: {reason}")
    mode = RefreshMode.REBUILD
    if base is not None:
        assert prev_m is not None
        n_base = base.ntotal
        delta, changes, n_replaced = diff_from_base(
            base, prev_delta, int(prev_m["n_vectors"]), ids, vecs, cfg.vector_tol
        )
        record.update(changes.counts())
        mode, reason = choose_mode(cfg, base, changes)
        if mode is RefreshMode.IN_PLACE:
            tomb = _tombstone_reason(cfg, base, delta, n_replaced)
            if tomb is not None and cfg.mode is RefreshMode.AUTO:
                mode, reason = RefreshMode.REBUILD, tomb
    record["reason"] = reason
    if mode is RefreshMode.REBUILD:
        base = None  # free the previous version's memory before building the new one
        log.info("index refresh: rebuild (%s)", reason)
        return build_index_artifact(
            out_dir,
            ids,
            vecs,
            config,
            upstream,
            queries,
            k,
            params,
            overwrite,
            refresh={**record, "mode": RefreshMode.REBUILD.value, "storage": Storage.FULL.value},
            started=t0,
            min_recall=min_recall,
        )
    assert base is not None and prev_m is not None and previous_dir is not None
    storage, storage_reason = choose_storage(cfg, delta, n_base)
    log.info(
        "index refresh: in place (%s; %s): +%d -%d ~%d",
        reason,
        storage_reason,
        changes.added.size,
        changes.removed.size,
        changes.replaced.size,
    )
    with publishing(Path(out_dir), overwrite=overwrite) as tmp:
        t_update = time.perf_counter()
        apply_delta(base, delta)  # what every reader of a delta version replays: same calls, same order
        if params is not None:
            base.set_default_params(params)
        update_seconds = time.perf_counter() - t_update
        if base.ntotal != ids.size:
            raise DermError(f"in-place refresh left {base.ntotal} vectors, expected {ids.size}")
        stored_as = None
        if storage is Storage.DELTA:
            stored_as = (Path(previous_dir), _base_of(prev_m, n_base), delta)
        manifest = write_index_version(
            tmp,
            base,
            ids,
            vecs,
            upstream,
            queries,
            k,
            update_seconds,
            {
                **record,
                "mode": RefreshMode.IN_PLACE.value,
                "storage": storage.value,
                "storage_reason": storage_reason,
            },
            started=t0,
            min_recall=min_recall,
            delta=stored_as,
        )
    log.info("published in-place refresh at %s (%d vectors, %s)", out_dir, ids.size, storage.value)
    return manifest


def _base_of(prev_m: dict[str, Any], n_base: int) -> dict[str, Any]:
    """{base_artifact_id, base_files, base_n_vectors} of the base a version over `prev_m` shares."""
    st = prev_m.get("storage") or {"kind": "full"}
    if st.get("kind") == "delta":
        return {k: st[k] for k in ("base_artifact_id", "base_files", "base_n_vectors")}
    return {
        "base_artifact_id": prev_m["artifact_id"],
        "base_files": list(prev_m["files"]),
        "base_n_vectors": n_base,
    }


def _load_compatible(
    previous_dir: Path, config: IndexConfig, upstream: dict[str, Any]
) -> tuple[AnnIndex | None, dict[str, Any] | None, IndexDelta | None, str]:
    """(previous version's base index, its manifest, its delta, reason): index None when it cannot be updated."""
    try:
        prev_m = read_manifest(previous_dir, KIND, SCHEMA_VERSION)
    except DataError as e:
        return None, None, None, f"previous version unreadable ({e})"
    same = (prev_m.get("backend"), prev_m.get("spec"), prev_m.get("dim"), prev_m.get("metric")) == (
        config.backend.value,
        config.spec,
        config.dim,
        config.metric,
    )
    if not same:
        return (
            None,
            prev_m,
            None,
            f"index changed from {prev_m.get('backend')} {prev_m.get('spec')!r} (dim {prev_m.get('dim')}) "
            f"to {config.backend.value} {config.spec!r} (dim {config.dim})",
        )
    prev_lineage = (prev_m.get("upstream") or {}).get("lineage")
    if "lineage" in upstream and prev_lineage != upstream["lineage"]:
        return (
            None,
            prev_m,
            None,
            f"lineage changed from {prev_lineage!r} to {upstream['lineage']!r}: a new embedding space",
        )
    try:
        index, loaded_m, delta = load_index_base(previous_dir, device=config.device)
    except DermError as e:
        return None, prev_m, None, f"previous version unreadable ({e})"
    return index, loaded_m, delta, ""


def _inherited_params(prev_m: dict[str, Any], config: IndexConfig) -> SearchParams | None:
    """The previous version's query defaults, when it had the same backend and spec (else library defaults)."""
    sp = prev_m.get("search_params")
    if not isinstance(sp, dict) or (prev_m.get("backend"), prev_m.get("spec")) != (
        config.backend.value,
        config.spec,
    ):
        return None
    try:
        return SearchParams(ef=sp.get("ef"), nprobe=sp.get("nprobe"))
    except DermError:
        return None
