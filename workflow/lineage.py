"""Lineage gates: a new tower lineage never mixes silently with the artifacts of the old one.

A tower model trained from scratch starts a new lineage: a new embedding space. Every artifact downstream of
it (the embedding store's pool, the ANN index, the ranker that reads DERM embeddings) is only meaningful
within one lineage. Two rules, applied by the daily cycle and the manual commands alike:

- `check_retrain`: a retrain never replaces a published model version in place once anything was made from
  it (a store version names it as `model_artifact`): roll back first, or train into a new workspace.
- `check_cycle_lineage`: the daily cycle refuses a day whose parent model and serving store come from
  different lineages, naming what must be rebuilt, instead of pooling new vectors into an old space (or
  starting an empty pool that a coverage gate would no longer compare with the serving one); and a day whose
  parent ranker was trained on another embedding lineage than the serving store's, before anything is
  trained or written (the ranker increment would refuse it only after the towers, store and index moved on).

The ranker's own check (its recorded embedding lineages against the stores it reads) lives in
`ranking.train.DermLookup`, so training, evaluation and serving all apply it.
"""

from __future__ import annotations

from pathlib import Path

from adslog.workspace import Workspace, version_name
from dermcore.artifact import read_json, read_manifest
from dermcore.errors import VersionMismatchError
from embstore.store import StoreVersion, embeddings_dir, open_version
from ranking.train import RANKER_KIND, RANKER_SCHEMA_VERSION, embedding_lineages, ranker_dir
from towers.train import MODEL_KIND, MODEL_SCHEMA_VERSION, models_dir


class LineageError(VersionMismatchError):
    """Artifacts of two tower lineages would be mixed, or a published lineage replaced in place."""


def model_dependents(ws: Workspace, task: str, day: int) -> list[Path]:
    """Store versions of `task` made from the published model version `day` (empty when none is)."""
    mdir = models_dir(ws, task) / version_name(day)
    if not (mdir / "manifest.json").is_file():
        return []
    aid = read_manifest(mdir, MODEL_KIND, MODEL_SCHEMA_VERSION)["artifact_id"]
    sdir = embeddings_dir(ws, task)
    # the manifests alone say which model each version came from: no need to open (and hash) every version
    return [
        sdir / version_name(d)
        for d in ws.published_days(sdir)
        if read_json(sdir / version_name(d) / "manifest.json").get("model_artifact") == aid
    ]


def check_retrain(ws: Workspace, task: str, day: int) -> None:
    """Refuse to replace published model version `day` of `task` once a store version was made from it."""
    deps = model_dependents(ws, task, day)
    if deps:
        earlier = [d for d in ws.published_days(models_dir(ws, task)) if d < day]
        how = (
            f"roll back first (`derm rollback --to {earlier[-1]}`)"
            if earlier
            else "train into a new workspace"
        )
        raise LineageError(
            f"{models_dir(ws, task) / version_name(day)}: published, and {len(deps)} embedding store versions "
            f"(first {deps[0]}) were made from it; a retrain would replace a serving lineage in place: {how}"
        )


def check_cycle_lineage(ws: Workspace, day: int, tasks: tuple[str, ...]) -> None:
    """Refuse a daily cycle for `day` whose parent model (the newest before `day`) and serving store version
    come from different lineages, or whose parent ranker was trained on another embedding lineage."""
    stores: dict[str, StoreVersion] = {}
    for task in tasks:
        mday = ws.version_before(models_dir(ws, task), day)
        sday = ws.version_before(embeddings_dir(ws, task), day)
        if mday is None or sday is None:
            continue
        mdir = models_dir(ws, task) / version_name(mday)
        model_lineage = str(read_manifest(mdir, MODEL_KIND, MODEL_SCHEMA_VERSION)["lineage"])
        store = stores[task] = open_version(embeddings_dir(ws, task), sday)
        if store.lineage != model_lineage:
            raise LineageError(
                f"{mdir}: model lineage {model_lineage[:8]} differs from the serving store {store.dir} (lineage "
                f"{store.lineage[:8]}): its store pool, index and ranker must be rebuilt from the new model "
                f"(`derm embed --from <first> --to {mday}`, `derm index build`, `derm ranker train`), or roll "
                f"back to the old lineage (`derm rollback --to {sday}`)"
            )
    _check_ranker_lineage(ws, day, stores)


def _check_ranker_lineage(ws: Workspace, day: int, stores: dict[str, StoreVersion]) -> None:
    rday = ws.version_before(ranker_dir(ws), day)
    if rday is None:
        return
    rdir = ranker_dir(ws) / version_name(rday)
    recorded = embedding_lineages(ws, read_manifest(rdir, RANKER_KIND, RANKER_SCHEMA_VERSION, verify="size"))
    for task, want in recorded.items():
        store = stores.get(task)
        if store is not None and want and store.lineage not in want:
            raise LineageError(
                f"{store.dir}: embedding lineage {store.lineage[:8]}, but the ranker {rdir} was trained on "
                f"lineage {', '.join(sorted(x[:8] for x in want))}: retrain the ranker from scratch "
                "(`derm ranker train`) or roll back (`derm rollback`)"
            )
