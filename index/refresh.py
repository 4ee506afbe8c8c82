"""Daily refresh: publish the next index version by updating the previous one in place, or by rebuilding.

The new version always goes into a NEW directory through `adslog.artifact.publishing`; the in-place path
loads the previous version's files into memory, applies the day's changes there and writes the result, so
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
  after each model increment, so this is its usual case), or when faiss IVF tombstones (removed entries kept
  until a rebuild, skipped by searches) would exceed `max_tombstone_fraction` of the stored entries;
- otherwise update in place.

Every version's manifest records what happened: `refresh: {mode, reason, added, removed, replaced,
changed_fraction, parent, seconds}` (`seconds` from the start of the refresh to the manifest, self-check and
save included; the final fsync and rename are not, as they happen after the manifest is written).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from adslog.artifact import publishing, read_manifest
from adslog.errors import DataError, DermError
from index.artifact import (
    KIND,
    SCHEMA_VERSION,
    _check_queries,
    build_index_artifact,
    load_index_artifact,
    write_index_version,
)
from index.base import AnnIndex, IndexConfig, SearchParams, check_ids_vecs, check_k

log = logging.getLogger(__name__)

DIFF_CHUNK = 1 << 16  # rows per block when comparing vectors: bounds the temporary [chunk, dim] arrays


class RefreshMode(StrEnum):
    AUTO = "auto"
    IN_PLACE = "in_place"
    REBUILD = "rebuild"


@dataclass(frozen=True)
class RefreshConfig:
    """How `refresh_index_artifact` chooses between an in-place update and a rebuild."""

    mode: RefreshMode = RefreshMode.AUTO
    max_changed_fraction: float = 0.10
    max_tombstone_fraction: float = 0.25
    vector_tol: float = 1e-6

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", RefreshMode(self.mode))
        except ValueError:
            choices = ", ".join(m.value for m in RefreshMode)
            raise DermError(f"unknown refresh mode {self.mode!r} (choose from {choices})") from None
        for name in ("max_changed_fraction", "max_tombstone_fraction"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise DermError(f"{name} must be in [0, 1], got {v!r}")
        if not isinstance(self.vector_tol, int | float) or self.vector_tol < 0:
            raise DermError(f"vector_tol must be >= 0, got {self.vector_tol!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "max_changed_fraction": self.max_changed_fraction,
            "max_tombstone_fraction": self.max_tombstone_fraction,
            "vector_tol": self.vector_tol,
        }


@dataclass(frozen=True)
class ChangeSet:
    """What changed between the previous index and the new ad set (ids int64, sorted).

    `upsert_pos` int64[m]: rows of the new (ids, vecs) to add in place: the added and the replaced ids.
    """

    added: np.ndarray
    removed: np.ndarray
    replaced: np.ndarray
    upsert_pos: np.ndarray
    n_before: int
    n_after: int

    @property
    def n_changed(self) -> int:
        return int(self.added.size + self.removed.size + self.replaced.size)

    @property
    def fraction(self) -> float:
        """Changed ads over the larger of the two sets (0 for two empty sets)."""
        return self.n_changed / max(self.n_before, self.n_after, 1)

    def counts(self) -> dict[str, Any]:
        return {
            "added": int(self.added.size),
            "removed": int(self.removed.size),
            "replaced": int(self.replaced.size),
            "changed_fraction": round(self.fraction, 6),
        }


def diff_against_index(index: AnnIndex, ids: np.ndarray, vecs: np.ndarray, tol: float = 1e-6) -> ChangeSet:
    """Compare the new ad set (ids int64[n], vecs float32[n, dim]) with what `index` stores.

    A common id is `replaced` when max |old - new| over its coordinates exceeds `tol`. Vectorised: one
    sorted intersection and a blocked comparison (no Python loop over ids).
    """
    old_ids = np.asarray(index.ids(), dtype=np.int64)
    common, pos_new, _ = np.intersect1d(ids, old_ids, assume_unique=True, return_indices=True)
    added_mask = np.ones(ids.size, dtype=bool)
    added_mask[pos_new] = False
    removed = np.setdiff1d(old_ids, common, assume_unique=True)
    moved = np.zeros(common.size, dtype=bool)
    for lo in range(0, common.size, DIFF_CHUNK):
        hi = lo + DIFF_CHUNK
        old = index.get_vectors(common[lo:hi])
        np.subtract(old, vecs[pos_new[lo:hi]], out=old)
        moved[lo:hi] = np.abs(old, out=old).max(axis=1) > tol
    upsert = np.concatenate([np.flatnonzero(added_mask), pos_new[moved]])
    return ChangeSet(
        added=np.sort(ids[added_mask]),
        removed=removed,
        replaced=common[moved],
        upsert_pos=upsert.astype(np.int64),
        n_before=int(old_ids.size),
        n_after=int(ids.size),
    )


def choose_mode(cfg: RefreshConfig, index: AnnIndex, changes: ChangeSet) -> tuple[RefreshMode, str]:
    """(mode, reason) for updating `index` (a compatible previous version) by `changes`."""
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
    tomb = index.tombstone_fraction_after(
        changes.removed.size + changes.replaced.size, changes.added.size + changes.replaced.size
    )
    if tomb > cfg.max_tombstone_fraction:
        return (
            RefreshMode.REBUILD,
            f"removed entries kept as tombstones would reach {tomb:.1%} of the index "
            f"(more than {cfg.max_tombstone_fraction:.0%})",
        )
    return RefreshMode.IN_PLACE, f"{changes.fraction:.2%} of ads changed"


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
    the manifest written, whose `refresh` records the mode, the reason, the change counts and the parent.
    """
    t0 = time.perf_counter()
    cfg = refresh or RefreshConfig()
    ids, vecs = check_ids_vecs(ids, vecs, config.dim)
    queries = _check_queries(self_check_queries, config.dim)
    k = check_k(k)
    record: dict[str, Any] = {"parent": None, "added": None, "removed": None, "replaced": None}
    previous: AnnIndex | None = None
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
        previous, prev_m, reason = _load_compatible(Path(previous_dir), config, upstream)
        if prev_m is not None:
            record["parent"] = prev_m.get("artifact_id")
            params = params or _inherited_params(prev_m, config)
        if previous is None and cfg.mode is RefreshMode.IN_PLACE:
            raise DermError(f"cannot refresh in place: {reason}")
    mode = RefreshMode.REBUILD
    if previous is not None:
        changes = diff_against_index(previous, ids, vecs, cfg.vector_tol)
        record.update(changes.counts())
        mode, reason = choose_mode(cfg, previous, changes)
    record["reason"] = reason
    if mode is RefreshMode.REBUILD:
        previous = None  # free the previous version's memory before building the new one
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
            refresh={**record, "mode": RefreshMode.REBUILD.value},
            started=t0,
            min_recall=min_recall,
        )
    assert previous is not None
    log.info(
        "index refresh: in place (%s): +%d -%d ~%d",
        reason,
        changes.added.size,
        changes.removed.size,
        changes.replaced.size,
    )
    with publishing(Path(out_dir), overwrite=overwrite) as tmp:
        t_update = time.perf_counter()
        gone = np.concatenate([changes.removed, changes.replaced])
        if gone.size:
            previous.remove(gone)
        if changes.upsert_pos.size:
            previous.add(ids[changes.upsert_pos], vecs[changes.upsert_pos])
        if params is not None:
            previous.set_default_params(params)
        update_seconds = time.perf_counter() - t_update
        if previous.ntotal != ids.size:
            raise DermError(f"in-place refresh left {previous.ntotal} vectors, expected {ids.size}")
        manifest = write_index_version(
            tmp,
            previous,
            ids,
            vecs,
            upstream,
            queries,
            k,
            update_seconds,
            {**record, "mode": RefreshMode.IN_PLACE.value},
            started=t0,
            min_recall=min_recall,
        )
    log.info("published in-place refresh at %s (%d vectors)", out_dir, ids.size)
    return manifest


def _load_compatible(
    previous_dir: Path, config: IndexConfig, upstream: dict[str, Any]
) -> tuple[AnnIndex | None, dict[str, Any] | None, str]:
    """(previous index, its manifest, reason) — index None when it cannot be the base of an update."""
    try:
        prev_m = read_manifest(previous_dir, KIND, SCHEMA_VERSION)
    except DataError as e:
        return None, None, f"previous version unreadable ({e})"
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
            f"index changed from {prev_m.get('backend')} {prev_m.get('spec')!r} (dim {prev_m.get('dim')}) "
            f"to {config.backend.value} {config.spec!r} (dim {config.dim})",
        )
    prev_lineage = (prev_m.get("upstream") or {}).get("lineage")
    if "lineage" in upstream and prev_lineage != upstream["lineage"]:
        return (
            None,
            prev_m,
            f"lineage changed from {prev_lineage!r} to {upstream['lineage']!r}: a new embedding space",
        )
    try:
        index, loaded_m = load_index_artifact(previous_dir, device=config.device)
    except DermError as e:
        return None, prev_m, f"previous version unreadable ({e})"
    return index, loaded_m, ""


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
