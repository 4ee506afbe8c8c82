"""Delta versions: an index version stored as its base version's files plus the change since that base.

A refresh that changes 1 % of the ads would otherwise rewrite and fsync the whole index (~400 MB for
1M x 64 under hnswlib) to publish the next version. A delta version directory instead holds

- the base version's index files, hard-linked (no byte copied; written once, read-only, never opened for
  writing again, so sharing the inode cannot modify an earlier version),
- `delta.npz`: the cumulative change from the base, `removed` int64[r] (base ids gone) and `upsert_ids`
  int64[m] / `upsert_vecs` float32[m, dim] (ids new since the base or whose vector moved), sorted by id,
- and in its manifest `storage: {kind: "delta", base_artifact_id, base_files, base_n_vectors, delta_file,
  delta_sha256, removed, upserts, delta_fraction}`.

Loading reads the base files and applies the delta with the same calls, in the same order, that the refresh
made before its recall self-check (hnswlib adds single-threaded), so a reader serves the index that passed
the gate. The delta is always taken against the base (a chain of length one): each refresh recomputes it
from the base, so every version directory is complete on its own and rollback, rejection or cleanup may move
or delete any other version. When the delta grows past `max_delta_fraction` of the base, the refresh writes
the updated index in full instead (a compaction), which becomes the base of the following versions.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dermcore.artifact import file_sha256
from dermcore.errors import DataError
from dermcore.safepath import is_plain
from index.types import AnnIndex

log = logging.getLogger(__name__)

DELTA_FILE = "delta.npz"
DIFF_CHUNK = 1 << 16  # rows per block when comparing vectors: bounds the temporary [chunk, dim] arrays


@dataclass(frozen=True)
class IndexDelta:
    """The change of a version from its base: removed base ids, and ids (re)added with their vectors."""

    removed: np.ndarray  # int64[r], sorted: base ids absent from the version
    upsert_ids: np.ndarray  # int64[m], sorted: ids added since the base, or base ids whose vector changed
    upsert_vecs: np.ndarray  # float32[m, dim], rows of upsert_ids

    @property
    def size(self) -> int:
        return int(self.removed.size + self.upsert_ids.size)


@dataclass(frozen=True)
class ChangeSet:
    """What changed between an earlier ad set and the new one (ids int64, sorted).

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


# --- diffs -----------------------------------------------------------------------------------------------


def _lookup(sorted_keys: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found bool[len(x)], pos int64[len(x)]): where each x sits in `sorted_keys` (pos valid where found)."""
    if sorted_keys.size == 0:
        return np.zeros(x.size, dtype=bool), np.zeros(x.size, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, x), sorted_keys.size - 1)
    return sorted_keys[pos] == x, pos


def _moved(
    old: np.ndarray, old_pos: np.ndarray, new: np.ndarray, new_pos: np.ndarray, tol: float
) -> np.ndarray:
    """bool[m]: max |old[old_pos[i]] - new[new_pos[i]]| > tol, in blocks (no [m, dim] temporary).

    Rows are first compared bit for bit (most ads keep their exact vector); only differing rows get the
    float comparison, which halves the cost of the 1M-row case.
    """
    out = np.zeros(old_pos.size, dtype=bool)
    word = np.uint64 if old.shape[1] % 2 == 0 else np.uint32
    for lo in range(0, old_pos.size, DIFF_CHUNK):
        hi = lo + DIFF_CHUNK
        a, b = old[old_pos[lo:hi]], new[new_pos[lo:hi]]
        differ = np.flatnonzero((a.view(word) != b.view(word)).any(axis=1))
        if differ.size:
            out[lo + differ] = np.abs(a[differ] - b[differ]).max(axis=1) > tol
    return out


def diff_sets(
    old_ids: np.ndarray, old_vecs: np.ndarray, ids: np.ndarray, vecs: np.ndarray, tol: float
) -> tuple[ChangeSet, np.ndarray, np.ndarray]:
    """Compare (old_ids int64[n0] any order, old_vecs float32[n0, dim]) with the new (ids, vecs).

    A common id is `replaced` when max |old - new| over its coordinates exceeds `tol`. Vectorised: one
    argsort of the new ids and one sorted lookup of the old ones. Also returns the new ids sorted and the
    permutation that sorts them (reused by `diff_from_base`).
    """
    order = np.argsort(ids, kind="stable")
    ids_sorted = ids[order]
    found, pos = _lookup(ids_sorted, old_ids)
    pos_old = np.flatnonzero(found)
    pos_new = order[pos[found]]
    moved = _moved(old_vecs, pos_old, vecs, pos_new, tol)
    in_old = np.zeros(ids.size, dtype=bool)
    in_old[pos_new] = True
    added_pos = np.flatnonzero(~in_old)
    replaced_pos = pos_new[moved]
    changes = ChangeSet(
        added=np.sort(ids[added_pos]),
        removed=np.sort(old_ids[~found]),
        replaced=np.sort(ids[replaced_pos]),
        upsert_pos=np.concatenate([added_pos, replaced_pos]).astype(np.int64),
        n_before=int(old_ids.size),
        n_after=int(ids.size),
    )
    return changes, ids_sorted, order


def diff_from_base(
    base: AnnIndex,
    base_delta: IndexDelta | None,
    n_previous: int,
    ids: np.ndarray,
    vecs: np.ndarray,
    tol: float,
) -> tuple[IndexDelta, ChangeSet, int]:
    """(the new set's delta from `base`, what changed since the previous version, how many of the delta's
    upserts replace a base entry).

    The previous version is `base` with `base_delta` applied (None: the base itself) and holds
    `n_previous` ads. The base's vectors are read once, in bulk (`base.items()`); the change since the
    previous version is derived from the base diff and the (small) previous delta, not by a second pass.
    """
    base_ids, base_vecs = base.items()
    vs_base, ids_sorted, order = diff_sets(base_ids, base_vecs, ids, vecs, tol)
    del base_vecs
    up = np.sort(ids[vs_base.upsert_pos])
    delta = IndexDelta(
        removed=vs_base.removed,
        upsert_ids=up,
        upsert_vecs=np.ascontiguousarray(vecs[order[np.searchsorted(ids_sorted, up)]]),
    )
    d = base_delta
    if d is None or d.size == 0:
        return delta, vs_base, int(vs_base.replaced.size)
    # the previous version differs from the base only on d.removed and d.upsert_ids (small sets)
    in_new_up, pos_up = _lookup(ids_sorted, d.upsert_ids)
    in_new_rm, _ = _lookup(ids_sorted, d.removed)
    added = np.union1d(vs_base.added[~_lookup(d.upsert_ids, vs_base.added)[0]], d.removed[in_new_rm])
    removed = np.union1d(vs_base.removed[~_lookup(d.removed, vs_base.removed)[0]], d.upsert_ids[~in_new_up])
    still = d.upsert_ids[in_new_up]
    moved = _moved(d.upsert_vecs, np.flatnonzero(in_new_up), vecs, order[pos_up[in_new_up]], tol)
    untouched = ~(_lookup(d.upsert_ids, vs_base.replaced)[0] | _lookup(d.removed, vs_base.replaced)[0])
    replaced = np.union1d(still[moved], vs_base.replaced[untouched])
    upsert = np.concatenate([added, replaced])
    changes = ChangeSet(
        added=added,
        removed=removed,
        replaced=replaced,
        upsert_pos=order[np.searchsorted(ids_sorted, upsert)].astype(np.int64),
        n_before=int(n_previous),
        n_after=int(ids.size),
    )
    return delta, changes, int(vs_base.replaced.size)


# --- applying, writing and reading deltas ----------------------------------------------------------------


def apply_delta(index: AnnIndex, delta: IndexDelta) -> None:
    """Turn the base `index` into the version: remove, then add (an id present is replaced), both sorted.

    The one sequence of calls both the refresh (before its self-check) and every reader make.
    """
    if delta.removed.size:
        index.remove(delta.removed)
    if delta.upsert_ids.size:
        index.add(delta.upsert_ids, delta.upsert_vecs)


def write_delta(directory: Path, delta: IndexDelta) -> dict[str, Any]:
    """Write `directory/delta.npz` (uncompressed, no pickle); returns {delta_file, delta_sha256, bytes}."""
    path = Path(directory) / DELTA_FILE
    with open(path, "wb") as f:
        np.savez(f, removed=delta.removed, upsert_ids=delta.upsert_ids, upsert_vecs=delta.upsert_vecs)
    os.chmod(path, 0o444)
    return {"delta_file": DELTA_FILE, "delta_sha256": file_sha256(path), "delta_bytes": path.stat().st_size}


def read_delta(directory: Path, storage: dict[str, Any], dim: int) -> IndexDelta:
    """Read and check the delta a manifest's `storage` names; DataError for a missing or corrupt file."""
    name = storage.get("delta_file")
    if not isinstance(name, str) or not is_plain(name):
        raise DataError(Path(directory) / "manifest.json", f"storage names no valid delta file ({name!r})")
    path = Path(directory) / name
    if not path.is_file():
        raise DataError(path, "delta file listed in the manifest is missing")
    if file_sha256(path) != storage.get("delta_sha256"):
        raise DataError(path, "delta file checksum does not match the manifest (corrupt or replaced)")
    try:
        with np.load(path, allow_pickle=False) as z:
            removed, up_ids, up_vecs = z["removed"], z["upsert_ids"], z["upsert_vecs"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(path, f"cannot read delta ({e})") from None
    if removed.dtype != np.int64 or up_ids.dtype != np.int64 or up_vecs.dtype != np.float32:
        raise DataError(path, "delta arrays must be int64 ids and float32 vectors")
    if removed.ndim != 1 or up_ids.ndim != 1 or up_vecs.shape != (up_ids.size, dim):
        raise DataError(path, f"delta shapes {removed.shape}, {up_ids.shape}, {up_vecs.shape} (dim {dim})")
    for arr, what in ((removed, "removed"), (up_ids, "upsert_ids")):
        if arr.size > 1 and not (arr[1:] > arr[:-1]).all():
            raise DataError(path, f"delta {what} are not sorted and unique")
    if removed.size != storage.get("removed") or up_ids.size != storage.get("upserts"):
        raise DataError(path, "delta sizes do not match the manifest")
    return IndexDelta(removed=removed, upsert_ids=up_ids, upsert_vecs=up_vecs)


def link_files(src: Path, dst: Path, names: list[str]) -> str:
    """Hard-link `src/<name>` into `dst` for each name (copy where the filesystem refuses links).

    Returns "hardlink" or "copy". The linked files are never opened for writing again: every version writes
    new files into a new directory, so the shared inode stays the base version's bytes.
    """
    how = "hardlink"
    for name in names:
        s, d = Path(src) / name, Path(dst) / name
        if not s.is_file():
            raise DataError(s, "base index file listed in the manifest is missing")
        try:
            os.link(s, d)
        except OSError as e:
            log.warning("cannot hard-link %s (%s): copying it", s, e)
            shutil.copyfile(s, d)
            how = "copy"
    return how
