"""The workspace: one directory holding every artifact of a deployment.

    WORK/workspace.json                 the dataset's absolute path (so later commands may omit --data)
    WORK/<folder>/...                   each stage's artifacts, in the folder the stage itself names
                                        through `Workspace.inside` (the README's architecture section
                                        lists them)
    WORK/.lock                          flock held by the process running a cycle; the kernel releases it when
                                        the process dies, so a lock of a dead process is taken over at once

The workspace knows no later stage: it binds the dataset, resolves paths inside WORK (refusing symbolic links
and unsafe names), picks versions (`day=<D>` directories, LATEST pointers) and holds the lock. Version
directories are named `day=<D>`: the artifact made from data up to and including day D, which serves day D + 1.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from adslog.dataset import Dataset
from dermcore.artifact import clean_tmp, get_latest, read_json, write_json_atomic
from dermcore.errors import DataError, DermError
from dermcore.safepath import check_component, check_no_symlinks

log = logging.getLogger(__name__)

WORKSPACE_FILE = "workspace.json"
WORKSPACE_SCHEMA_VERSION = 1


def version_name(day: int) -> str:
    return f"day={int(day)}"


def version_day(name: str) -> int:
    if not name.startswith("day="):
        raise ValueError(f"not a version name: {name!r}")
    return int(name[4:])


class Workspace:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    # -- creation / opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, data: str | Path) -> Workspace:
        """Create (or reuse) a workspace bound to the dataset at `data`."""
        ws = cls(root)
        ds_path = Path(data).resolve()
        Dataset.open(ds_path, check_files=False)
        ws.root.mkdir(parents=True, exist_ok=True)
        f = ws.root / WORKSPACE_FILE
        if f.exists():
            bound = ws.data_path()
            if bound != ds_path:
                raise DataError(f, f"workspace is bound to dataset {bound}, not {ds_path}")
            return ws
        write_json_atomic(
            f, {"kind": "workspace", "schema_version": WORKSPACE_SCHEMA_VERSION, "data": str(ds_path)}
        )
        return ws

    @classmethod
    def open(cls, root: str | Path, data: str | Path | None = None) -> Workspace:
        """Open an existing workspace; with `data` given, create it when missing."""
        ws = cls(root)
        if not (ws.root / WORKSPACE_FILE).exists():
            if data is not None:
                return cls.create(root, data)
            if not ws.root.exists():
                raise DataError(
                    ws.root, "workspace does not exist (create one: `derm run --data DATA --work WORK`)"
                )
            raise DataError(ws.root / WORKSPACE_FILE, "not a derm workspace (no workspace.json); pass --data")
        if data is not None and Path(data).resolve() != ws.data_path():
            raise DataError(
                ws.root / WORKSPACE_FILE,
                f"workspace is bound to {ws.data_path()}, not {Path(data).resolve()}",
            )
        return ws

    def data_path(self) -> Path:
        f = self.root / WORKSPACE_FILE
        obj = read_json(f)
        if not isinstance(obj, dict) or obj.get("kind") != "workspace" or "data" not in obj:
            raise DataError(f, "corrupt workspace file")
        return Path(obj["data"])

    def dataset(self) -> Dataset:
        return Dataset.open(self.data_path())

    # -- layout -------------------------------------------------------------------------------------------
    # Every artifact directory is reached through `inside`: a symbolic link planted in the workspace (say
    # `index -> /var/www`) is refused rather than followed, so no write of derm lands outside WORK. Each
    # stage names its own folder through it; the workspace knows none of them.
    def inside(self, *parts: str) -> Path:
        for p in parts:
            check_component(p, self.root)
        return check_no_symlinks(self.root, self.root.joinpath(*parts))

    def latest_day(self, parent: Path) -> int | None:
        name = get_latest(parent)
        return None if name is None else version_day(name)

    def published_days(self, parent: Path) -> list[int]:
        """Days with a complete (manifest present) version below `parent`, ascending."""
        if not parent.exists():
            return []
        days = []
        for p in parent.iterdir():
            if p.is_dir() and p.name.startswith("day=") and (p / "manifest.json").exists():
                days.append(version_day(p.name))
        return sorted(days)

    def version_before(self, parent: Path, day: int) -> int | None:
        """The newest published version strictly before `day` that is not after LATEST (rollback aware)."""
        latest = self.latest_day(parent)
        cands = [d for d in self.published_days(parent) if d < day and (latest is None or d <= latest)]
        return cands[-1] if cands else None

    def serving_version(self, parents: list[Path], day: int, *, warn: bool = True) -> int | None:
        """The newest version strictly before `day` that is published in *every* family in `parents` and not
        after any family's LATEST. A daily cycle moves the LATEST pointers one family at a time; readers that
        pick their versions with this rule never see a half-moved cycle (a new store with yesterday's index),
        so a cycle killed or refused by a quality gate midway leaves yesterday's versions serving together.
        `warn=False` skips the warning about families ahead (a poller asking every few seconds)."""
        common: set[int] | None = None
        newest: dict[str, int] = {}
        for parent in parents:
            latest = self.latest_day(parent)
            days = {d for d in self.published_days(parent) if d < day and (latest is None or d <= latest)}
            if days:
                newest[str(Path(parent).relative_to(self.root))] = max(days)
            common = days if common is None else common & days
        chosen = max(common) if common else None
        ahead = {k: v for k, v in newest.items() if chosen is not None and v > chosen}
        if ahead and warn:  # a cycle stopped between two families: serve the older pair, and say so
            log.warning(
                "serving day %d with versions of day %d: %s are newer but not published in every family",
                day, chosen, ", ".join(f"{k}/day={v}" for k, v in sorted(ahead.items())),
            )  # fmt: skip
        return chosen

    # -- concurrency --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for a writing cycle. Leftover temp directories of a killed run are cleaned on entry."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DermError(f"{self.root}: another derm process is working in this workspace") from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            clean_tmp(self.root)
            yield
        finally:
            os.close(fd)
