"""Which versions a workspace serves. The versions of a day are chosen by `Workspace.serving_version` (the
newest day published in every family asked for, not after any LATEST), which stays with the workspace
because retrieval and the online store pick their versions by the same rule; the served store version is the
newest one live in both the store and the index (`served_store_day`): `derm query`'s day and what `derm
publish` and the daily cycle's last step put into the online feature store."""

from __future__ import annotations

from typing import Any

from adslog.workspace import Workspace, version_name
from dermcore.errors import DataError, DermError
from embstore.online import OnlineStore, OnlineStoreConfig, store_meta
from embstore.store import embeddings_dir, open_version
from index.versions import index_dir


def served_store_day(ws: Workspace, task: str = "ctr") -> int | None:
    """The day of the store version of `task` the workspace serves: the newest live in both the store and the
    index (the store's LATEST when no index is published); None when no store version is."""
    sdir = embeddings_dir(ws, task)
    d = ws.serving_version([sdir, index_dir(ws)], 2**31 - 1)
    return d if d is not None else ws.latest_day(sdir)


def serving_day(ws: Workspace) -> int:
    """The day a workspace serves: the day after the newest version live in both the store and the index."""
    d = served_store_day(ws)
    if d is None:
        raise DermError(
            f"{ws.root}: nothing is published in this workspace (run `derm run --data DATA --work WORK` on a dataset, or `derm daily`)"
        )
    return d + 1


def publish_workspace(
    ws: Workspace,
    config: OnlineStoreConfig,
    day: int | None = None,
    task: str = "ctr",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Publish store version `day` of `task` (default: the version the workspace serves, `served_store_day`)
    to the online store and make it live. The one path for `derm publish` and the daily cycle's publish step."""
    sdir = embeddings_dir(ws, task)
    if day is None:
        day = served_store_day(ws, task)
        if day is None:
            raise DataError(sdir, "no store version is published (run `derm daily` or `derm demo`)")
    elif day not in ws.published_days(sdir):
        raise DataError(sdir / version_name(day), "no such published store version")
    store = open_version(sdir, day)
    online = OnlineStore(config)
    try:
        return online.publish(
            store_meta(store),
            store.ids("user"),
            store.vectors("user"),
            store.ids("ad"),
            store.vectors("ad"),
            overwrite=overwrite,
        )
    finally:
        online.close()
