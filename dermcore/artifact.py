"""Artifacts on disk: directories with a validated `manifest.json`, published atomically.

Every artifact (dataset, model snapshot, embedding version, index, ranker) is a directory holding
`manifest.json`. A new version is written into a temporary directory beside its target, fsynced and moved
into place with `os.replace`; the `LATEST` pointer of its parent moves last. A crash at any point leaves the
previous version whole, and leftover temporary directories are removed by `clean_tmp`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dermcore.errors import DataError
from dermcore.faults import crash_point
from dermcore.safepath import check_component, resolve_under

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "LATEST"
TMP_PREFIX = ".tmp-"


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an artifact's bytes, recorded in every manifest."""
    out = {"python": platform.python_version()}
    for name in ("numpy", "pyarrow", "torch", "faiss", "hnswlib"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = str(getattr(mod, "__version__", "unknown"))
    return out


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file below `root`, then every directory, so a rename publishes durable bytes."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to `path` through a temporary file and `os.replace` (readers see old or new, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def json_default(o: Any) -> Any:
    """`json.dump(default=...)` for what derm's documents hold: numpy scalars and arrays, paths."""
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"corrupt JSON ({e})") from None


def make_manifest(kind: str, schema_version: int, **fields: Any) -> dict[str, Any]:
    """A manifest dict with the fields every artifact carries."""
    m: dict[str, Any] = {
        "kind": kind,
        "schema_version": schema_version,
        "created_unix": int(time.time()),
        "artifact_id": uuid.uuid4().hex,
        "library_versions": library_versions(),
    }
    m.update(fields)
    return m


def read_manifest(
    directory: Path, kind: str, max_schema_version: int, verify: str = "sha256"
) -> dict[str, Any]:
    """Read and validate `directory/manifest.json` before anything else in the directory is read, then check
    the payload files it lists (`verify_payload`; `verify="size"` checks sizes only, for large datasets)."""
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise DataError(directory, f"no such {kind} artifact directory")
    m = read_json(path)
    if not isinstance(m, dict):
        raise DataError(path, "manifest is not a JSON object")
    if m.get("kind") != kind:
        raise DataError(path, f"expected an artifact of kind {kind!r}, found {m.get('kind')!r}")
    v = m.get("schema_version")
    if not isinstance(v, int) or v < 1 or v > max_schema_version:
        hint = (
            "; written by a newer derm: upgrade derm to read it"
            if isinstance(v, int) and v > max_schema_version
            else ""
        )
        raise DataError(
            path, f"unsupported schema_version {v!r} (this build reads 1..{max_schema_version}){hint}"
        )
    verify_payload(Path(directory), m, verify)
    return m


# -- payload integrity ------------------------------------------------------------------------------------
# `publishing` records every payload file of a version (every file but the manifest) in the manifest as
# `payload: {relative path: {"bytes": n, "sha256": hex}}`. A process checks a version's files against that
# record the first time it opens the version (sha256 of every byte; sizes only where a caller asks, as
# `Dataset.open` does for large logs), so a corrupt, truncated or replaced file is a one-line error naming the
# file instead of garbage served. Versions written before the record existed carry none and are not checked.
PAYLOAD_KEY = "payload"
_verified: set[tuple[Any, str]] = set()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def payload_record(directory: Path) -> dict[str, dict[str, Any]]:
    """{relative posix path: {"bytes", "sha256"}} of every regular file below `directory` but the manifest."""
    out: dict[str, dict[str, Any]] = {}
    for dirpath, _dirs, files in os.walk(directory):
        for name in sorted(files):
            f = Path(dirpath) / name
            rel = f.relative_to(directory).as_posix()
            if rel == MANIFEST:
                continue
            out[rel] = {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
    return dict(sorted(out.items()))


def verify_payload(directory: Path, manifest: dict[str, Any], verify: str = "sha256") -> None:
    """Check the files a manifest's payload record lists: present, same size, same sha256 (`verify="size"`:
    sizes only). The hashes of a version are checked once per process for as long as none of its files was
    replaced or touched since (one stat per file on every open)."""
    payload = manifest.get(PAYLOAD_KEY)
    if payload is None:
        return
    mpath = Path(directory) / MANIFEST
    if not isinstance(payload, dict):
        raise DataError(mpath, "payload record is not an object")
    files: list[tuple[Path, dict[str, Any]]] = []
    stats = []
    for rel, rec in payload.items():
        f = resolve_under(directory, rel, mpath)
        if not isinstance(rec, dict) or not isinstance(rec.get("bytes"), int):
            raise DataError(mpath, f"payload record of {rel!r} is malformed")
        try:
            st = f.stat()
        except FileNotFoundError:
            raise DataError(f, "file listed in the manifest is missing") from None
        if st.st_size != rec["bytes"]:
            raise DataError(
                f, f"size {st.st_size} differs from the manifest's {rec['bytes']} (truncated or replaced)"
            )
        files.append((f, rec))
        stats.append((rel, st.st_ino, st.st_mtime_ns))
    key = (str(Path(directory).resolve()), str(manifest.get("artifact_id")), tuple(stats))
    if (key, "sha256") in _verified or (key, verify) in _verified:
        return
    if verify == "sha256":
        for f, rec in files:
            if file_sha256(f) != rec.get("sha256"):
                raise DataError(f, "sha256 differs from the manifest (corrupt or replaced file)")
    _verified.add((key, verify))


def _record_payload(tmp: Path) -> None:
    """Add the payload record to the manifest a caller wrote into `tmp` (called by `publishing`)."""
    mpath = tmp / MANIFEST
    m = read_json(mpath)
    m[PAYLOAD_KEY] = payload_record(tmp)
    write_json_atomic(mpath, m)


@contextlib.contextmanager
def publishing(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; on clean exit, fsync it and move it to `target` atomically.

    On an exception the temporary directory is removed and `target` is untouched. With `overwrite`, an
    existing `target` is swapped out and removed only after the new one is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        raise DataError(target, "is a symbolic link; derm publishes only real directories")
    if target.exists() and not overwrite:
        raise DataError(target, "already exists (pass overwrite to replace it)")
    tmp = target.parent / f"{TMP_PREFIX}{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    old: Path | None = None
    try:
        yield tmp
        if not (tmp / MANIFEST).exists():
            raise RuntimeError(f"artifact written to {target} has no {MANIFEST}")
        _record_payload(tmp)
        fsync_tree(tmp)
        crash_point("publish", str(target))
        if target.exists():
            old = target.parent / f"{TMP_PREFIX}old-{target.name}.{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old, target)  # the new version never arrived: put the previous one back
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def set_latest(parent: Path, name: str) -> None:
    """Point `parent/LATEST` at the child directory `name` (moved last, after the artifact is in place)."""
    check_component(name, Path(parent) / LATEST)
    if not (Path(parent) / name / MANIFEST).exists():
        raise DataError(Path(parent) / name, "cannot point LATEST at an unpublished artifact")
    write_json_atomic(Path(parent) / LATEST, {"name": name})


def get_latest(parent: Path) -> str | None:
    """The child directory `parent/LATEST` points at, or None when nothing was published."""
    p = Path(parent) / LATEST
    if not p.exists():
        return None
    obj = read_json(p)
    name = obj.get("name") if isinstance(obj, dict) else None
    if not isinstance(name, str):
        raise DataError(p, "corrupt LATEST pointer")
    check_component(name, p)  # a pointer is a sibling's name, never a path (`../x`, `/etc`)
    if not (Path(parent) / name / MANIFEST).is_file():
        # never fall back silently to some other version: the caller must see that the pointer is broken
        raise DataError(p, f"names {name!r}, which is not a published version (no {name}/{MANIFEST})")
    return name


def clean_tmp(root: Path) -> int:
    """Remove temporary directories and files left below `root` by a killed process; returns how many."""
    n = 0
    root = Path(root)
    if not root.exists():
        return 0
    for dirpath, dirs, files in os.walk(root):
        for name in list(dirs):
            if name.startswith(TMP_PREFIX):
                shutil.rmtree(os.path.join(dirpath, name), ignore_errors=True)
                dirs.remove(name)
                n += 1
        for name in files:
            if name.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(dirpath, name))
                n += 1
    if n:
        log.info("removed %d leftover temporary entries below %s", n, root)
    return n
