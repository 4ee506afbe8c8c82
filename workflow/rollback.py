"""Rollback and rejection of published versions.

`rollback(ws, to_day)` points LATEST of every family (model snapshots, embedding stores, index, ranker) back to
version `to_day` together, and moves the later versions (and the evaluations they produced) out of the live
tree into `WORK/rejected/`, so the next `derm daily` recomputes those days from the restored versions. Nothing
is deleted: a rejected version can be inspected, or moved back by hand.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from adgraph.graph import graph_dir
from adgraph.snapshot import KGE
from adslog.workspace import Workspace, version_name
from dermcore.artifact import LATEST, set_latest
from dermcore.errors import DataError
from embstore.store import EMBEDDINGS
from eval.evaluate import evals_dir
from index.versions import index_dir
from ranking.train import ranker_dir
from towers.train import MODELS

log = logging.getLogger(__name__)

REJECTED = "rejected"


def families(ws: Workspace) -> list[Path]:
    """Every versioned artifact family present in the workspace (with the KGE stage: the graph and each KGE
    model's versions too, so a rolled-back KGE version is never continued by the next increment)."""
    out = []
    for group in (MODELS, EMBEDDINGS, KGE):  # one family per task, store family or KGE model
        base = ws.inside(group)
        if base.exists():
            out += sorted(p for p in base.iterdir() if p.is_dir())
    out += [p for p in (index_dir(ws), ranker_dir(ws), graph_dir(ws)) if p.exists()]
    return out


def reject_version(ws: Workspace, parent: Path, day: int, reason: str) -> Path:
    """Move `parent/day=<day>` to WORK/rejected/... and point LATEST at the newest remaining version."""
    src = Path(parent) / version_name(day)
    dest = ws.inside(
        REJECTED, *Path(parent).relative_to(ws.root).parts, f"{version_name(day)}.{int(time.time())}"
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    # the pointer moves first, so LATEST never names a version that is gone (readers refuse such a pointer)
    remaining = [d for d in ws.published_days(parent) if d != day]
    if remaining:
        set_latest(parent, version_name(remaining[-1]))
    elif (Path(parent) / LATEST).exists():
        os.remove(Path(parent) / LATEST)
    os.replace(src, dest)
    (dest / "REJECTED").write_text(reason + "\n")
    log.warning("rejected %s: %s", src, reason)
    return dest


def rollback(ws: Workspace, to_day: int) -> dict[str, Any]:
    """Point every family's LATEST at `to_day` and move later versions to WORK/rejected/. Call under the lock."""
    fams = families(ws)
    if not fams:
        raise DataError(ws.root, "nothing is published in this workspace")
    missing = [str(f / version_name(to_day)) for f in fams if to_day not in ws.published_days(f)]
    if missing:
        raise DataError(missing[0], f"no published version of day {to_day} to roll back to")
    for f in fams:  # pointers first: readers move to the restored versions before anything is moved away
        set_latest(f, version_name(to_day))
    moved = []
    for f in fams:
        for d in ws.published_days(f):
            if d > to_day:
                moved.append(str(reject_version(ws, f, d, f"rolled back to {version_name(to_day)}")))
    # evaluations of days after to_day + 1 used versions that are now rolled back
    for p in sorted(evals_dir(ws).glob("day=*.json")) if evals_dir(ws).exists() else []:
        if int(p.stem[4:]) > to_day + 1:
            dest = ws.inside(REJECTED, "evals", f"{p.stem}.{int(time.time())}.json")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, dest)
            moved.append(str(dest))
    return {"to": to_day, "families": [str(f.relative_to(ws.root)) for f in fams], "moved": moved}
