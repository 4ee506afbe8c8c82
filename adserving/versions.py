"""Which day a workspace serves. The versions of that day are chosen by `Workspace.serving_version` (the
newest day published in every family asked for, not after any LATEST), which stays with the workspace
because retrieval and the online store pick their versions by the same rule."""

from __future__ import annotations

from adslog.workspace import Workspace
from dermcore.errors import DermError


def serving_day(ws: Workspace) -> int:
    """The day a workspace serves: the day after the newest version live in both the store and the index."""
    d = ws.serving_version([ws.embeddings_dir("ctr"), ws.index_dir], 2**31 - 1)
    if d is None:
        d = ws.latest_day(ws.embeddings_dir("ctr"))
    if d is None:
        raise DermError(
            f"{ws.root}: nothing is published in this workspace (run `derm run --data DATA --work WORK` on a dataset, or `derm daily`)"
        )
    return d + 1
