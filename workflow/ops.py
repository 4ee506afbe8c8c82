"""One function per manual operation: each takes the workspace and one frozen options object and returns a
result object whose `to_json()` is the command's `--json` document. `cli.py` only parses options into these
objects, calls the function and prints the result; the daily cycle (`workflow.cycle`) publishes through the
same stage functions (`publish_embeddings`, `publish_index`, `train_ranker`, `run_days`), so a gate, lineage
check or lock added to a stage holds on the manual path and the cycle alike.

    train_models     towers from scratch on a window (`derm train`)
    embed_days       store versions of days the newest snapshot covers (`derm embed`)
    build_index      an index version, rebuilt or refreshed, through the cycle's gate (`derm index build|refresh`)
    train_ranker_op  the ranker from scratch (`derm ranker train`)
    run_daily        the daily cycle over a day or a range (`derm daily`)
    evaluate         a day's eval document, optionally with the report (`derm eval`)
    run_own          a user's own dataset end to end (`derm run`, `workflow.run.run_dataset`)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from adslog.dataset import Dataset
from adslog.workspace import Workspace, version_name
from dermcore.errors import DermError
from dermcore.progress import Progress, no_progress
from dermdist.config import Engine
from embstore.store import embeddings_dir
from eval.evaluate import SLATE_USERS, evaluate_day
from index import Backend, SearchParams
from index.refresh import RefreshConfig, RefreshMode
from index.versions import index_dir
from ranking.train import ranker_dir, train_ranker
from towers.config import Backbone
from towers.train import models_dir, train_towers
from workflow.cycle import (
    CYCLE_FILE,
    CycleConfig,
    load_cycle_config,
    publish_embeddings,
    publish_index,
    run_days,
    save_cycle_config,
    task_config,
)
from workflow.lineage import check_retrain
from workflow.run import run_dataset
from workflow.run_config import RunConfig, load_run_config

__all__ = [
    "DailyOptions",
    "DailyResult",
    "EmbedOptions",
    "EmbedResult",
    "EvalOptions",
    "IndexOptions",
    "IndexResult",
    "RankerOptions",
    "RankerResult",
    "RunOptions",
    "TrainOptions",
    "TrainResult",
    "build_index",
    "embed_days",
    "evaluate",
    "progress_marks",
    "resolve_run_config",
    "run_daily",
    "run_own",
    "train_models",
    "train_ranker_op",
]

log = logging.getLogger(__name__)


def day_span(days: list[int]) -> dict[str, int]:
    return {"first": days[0], "last": days[-1], "n": len(days)}


def day_range(ds: Dataset, first: int | None, last: int | None, default_last: int) -> list[int]:
    """Days first..last of `ds` (checked: DermError naming the dataset for a day it lacks or an empty range)."""
    a = ds.first_day if first is None else ds.check_day(first)
    b = default_last if last is None else ds.check_day(last)
    if b < a:
        raise DermError(f"{ds.root}: empty day range {a}..{b}")
    return list(range(a, b + 1))


# -- train --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainOptions:
    """`derm train`: towers from scratch on days first_day..last_day (default: the data's first 7 days)."""

    first_day: int | None = None
    last_day: int | None = None
    task: str = "ctr"
    epochs: int | None = None  # None: the cycle config's epochs_initial
    seed: int = 0
    backbone: str | None = None  # None: the workspace's, else dhen
    overwrite: bool = False
    device: str = "auto"


@dataclass(frozen=True)
class TrainResult:
    model: str
    model_version: str
    lineage: str
    days: dict[str, int]
    rows: int
    seconds: float
    samples_per_second: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _train_cycle(ws: Workspace, opts: TrainOptions) -> CycleConfig:
    """The cycle config `derm train` trains with and saves: the workspace's (or the defaults on a new one) with
    the backbone, task and seed of this training."""
    exists = (ws.root / CYCLE_FILE).exists()
    cycle = load_cycle_config(ws, opts.device) if exists else CycleConfig(device=opts.device)
    towers = replace(cycle.towers, seed=opts.seed)
    if opts.backbone is not None:
        towers = replace(towers, backbone=Backbone(opts.backbone))
    tasks = cycle.tasks if opts.task in cycle.tasks else (*cycle.tasks, opts.task)
    return replace(cycle, towers=towers, tasks=tasks)


def train_models(ws: Workspace, opts: TrainOptions, progress: Progress = no_progress) -> TrainResult:
    """Train the towers of `opts.task` from scratch and publish models/<task>/day=<last day>. The seed of a
    task is the one the daily cycle uses (`task_config`: seed + 1 for cvr). The workspace's cycle config
    records the backbone, tasks and seed (saved under the lock after training: the bootstrap of a workspace
    made by hand). `overwrite` is refused over a serving lineage (`check_retrain`)."""
    ds = ws.dataset()
    first = ds.first_day if opts.first_day is None else opts.first_day
    days = day_range(ds, first, opts.last_day, min(first + 6, ds.last_day))
    cycle = _train_cycle(ws, opts)
    cfg = task_config(cycle, opts.task)
    if opts.epochs:
        cfg = replace(cfg, epochs_initial=opts.epochs)
    with ws.lock():
        if opts.overwrite:
            check_retrain(ws, opts.task, days[-1])
        mdir = models_dir(ws, opts.task)
        m = train_towers(ds, days, cfg, mdir, device=opts.device, progress=progress, overwrite=opts.overwrite)
        save_cycle_config(ws, cycle)
    st = m["train_stats"]
    return TrainResult(
        str(mdir / version_name(m["day"])), m["model_version"], m["lineage"], day_span(days),
        st["rows"], st["seconds"], st["samples_per_second"],
    )  # fmt: skip


# -- embed --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbedOptions:
    """`derm embed`: one day, a range (back inference), or by default the newest snapshot's day."""

    day: int | None = None
    day_from: int | None = None
    day_to: int | None = None
    task: str = "ctr"
    overwrite: bool = False
    device: str = "auto"


@dataclass(frozen=True)
class EmbedResult:
    task: str
    versions: list[dict[str, Any]]  # {"day", "version", "stats", "back_inferred"} per published day

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "versions": self.versions}


def embed_days(ws: Workspace, opts: EmbedOptions, progress: Progress = no_progress) -> EmbedResult:
    """Publish the store versions of the requested days with the newest snapshot (the cycle's
    `publish_embeddings`); days before the snapshot's day are back inference, days after it are refused."""
    ds = ws.dataset()
    cfg = load_cycle_config(ws, opts.device)
    mdir = models_dir(ws, opts.task)
    mday = ws.latest_day(mdir)
    if mday is None:
        raise DermError(f"{mdir}: no {opts.task} model snapshot: run `derm train` first")
    if opts.day is not None:
        days = [ds.check_day(opts.day)]
    elif opts.day_from is not None or opts.day_to is not None:
        days = day_range(ds, opts.day_from, opts.day_to, mday)
    else:
        days = [mday]
    out = []
    with ws.lock():
        for i, d in enumerate(days):
            if d > mday:
                raise DermError(
                    f"{mdir}: no snapshot covers day {d} (latest is day {mday}); use `derm daily` to train forward"
                )
            m = publish_embeddings(
                ws, ds, opts.task, d, cfg, mday, back_inferred=d < mday, overwrite=opts.overwrite
            )
            out.append(
                {
                    "day": d,
                    "version": version_name(d),
                    "stats": m["stats"],
                    "back_inferred": m["back_inferred"],
                }
            )
            progress("embed", i + 1, len(days))
    return EmbedResult(opts.task, out)


# -- index --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexOptions:
    """`derm index build` (mode rebuild; backend / spec / nprobe / ef for this version only) and `derm index
    refresh` (mode auto | in_place | rebuild, the cycle's index config)."""

    day: int | None = None  # store version (default: the newest)
    mode: RefreshMode = RefreshMode.REBUILD
    backend: str | None = None
    spec: str | None = None
    nprobe: int | None = None
    ef: int | None = None
    overwrite: bool = False
    device: str = "auto"


@dataclass(frozen=True)
class IndexResult:
    index: str
    backend: str
    spec: str
    n_vectors: int
    build_seconds: float
    search_params: dict[str, Any] | None
    self_check: dict[str, Any] | None
    refresh: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def build_index(ws: Workspace, opts: IndexOptions) -> IndexResult:
    """Publish the index of a store version through the daily cycle's `publish_index` (the self-check gate,
    the retrieval prior). A backend or spec given here applies to this version only: the cycle config is not
    changed (a warning says how to make it the cycle's)."""
    cfg = load_cycle_config(ws, opts.device)
    cycle_index = (cfg.index.backend.value, cfg.index.spec)
    if opts.backend or opts.spec:
        b = Backend(opts.backend) if opts.backend else cfg.index.backend
        s = opts.spec or ("HNSW32" if b is Backend.HNSWLIB else "Flat")
        cfg = replace(cfg, index=replace(cfg.index, backend=b, spec=s))
    cfg = replace(cfg, index=replace(cfg.index, device=opts.device))
    day = opts.day if opts.day is not None else ws.latest_day(embeddings_dir(ws, "ctr"))
    if day is None:
        raise DermError(f"{embeddings_dir(ws, 'ctr')}: no embedding store version: run `derm embed` first")
    params = None
    if opts.ef is not None or opts.nprobe is not None:
        params = SearchParams(ef=opts.ef, nprobe=opts.nprobe)
    with ws.lock():
        m = publish_index(ws, day, cfg, opts.overwrite, RefreshConfig(mode=opts.mode), params)
    if opts.backend or opts.spec:
        name, spec = cfg.index.backend.value, cfg.index.spec
        log.warning(
            "this version uses %s %s; cycle.json is unchanged (the daily cycle keeps %s %s): "
            "`derm config set --work %s index.backend=%s index.spec=%s` makes it the cycle's",
            name, spec, *cycle_index, ws.root, name, spec,
        )  # fmt: skip
    return IndexResult(
        str(index_dir(ws) / version_name(day)), m["backend"], m["spec"], m["n_vectors"], m["build_seconds"],
        m.get("search_params"), m.get("self_check"), m.get("refresh"),
    )  # fmt: skip


# -- ranker -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RankerOptions:
    """`derm ranker train`: from scratch on first_day..last_day (default: the data's first day to the newest
    store version's day); epochs and seed override the cycle config's for this training only."""

    first_day: int | None = None
    last_day: int | None = None
    epochs: int | None = None
    seed: int | None = None
    overwrite: bool = False
    device: str = "auto"


@dataclass(frozen=True)
class RankerResult:
    ranker: str
    days: dict[str, int]
    rows: int
    seconds: float
    calibration_ctr: dict[str, float]
    calibration_cvr: dict[str, float]
    embedding_versions: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def train_ranker_op(ws: Workspace, opts: RankerOptions, progress: Progress = no_progress) -> RankerResult:
    """Train the ranker from scratch through the cycle's `train_ranker` (day d's rows read the store version
    published before d; the embedding versions and lineages it read are recorded in its manifest)."""
    ds = ws.dataset()
    rcfg = _ranker_config(ws, opts)
    sday = ws.latest_day(embeddings_dir(ws, "ctr"))
    days = day_range(ds, opts.first_day, opts.last_day, sday if sday is not None else ds.last_day)
    with ws.lock():
        m = train_ranker(ws, ds, days, rcfg, None, opts.device, progress, opts.overwrite)
    st = m["train_stats"]
    cal = {t: {k: st[f"calibration_{t}"][k] for k in ("predicted", "observed")} for t in ("ctr", "cvr")}
    return RankerResult(
        str(ranker_dir(ws) / version_name(m["day"])), day_span(days), st["rows"], st["seconds"], cal["ctr"],
        cal["cvr"], m["embedding_versions"],
    )  # fmt: skip


def _ranker_config(ws: Workspace, opts: RankerOptions) -> Any:
    rcfg = load_cycle_config(ws, opts.device).ranker
    if opts.epochs is not None:
        rcfg = replace(rcfg, epochs_initial=opts.epochs)
    if opts.seed is not None:
        rcfg = replace(rcfg, seed=opts.seed)
    return rcfg


def progress_marks(ws: Workspace, opts: TrainOptions | RankerOptions) -> dict[str, int]:
    """Epochs per training stage of `opts` ({"train": n} or {"train ranker": n}): a progress log writes one
    line per epoch with them. Reads the config only; nothing is trained or written."""
    if isinstance(opts, RankerOptions):
        return {"train ranker": _ranker_config(ws, opts).epochs_initial}
    if opts.epochs:
        return {"train": opts.epochs}
    exists = (ws.root / CYCLE_FILE).exists()
    return {"train": (load_cycle_config(ws).towers if exists else CycleConfig().towers).epochs_initial}


# -- daily --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DailyOptions:
    """`derm daily`: one day, or day_from..day_to; engine / address apply to this run only (never saved)."""

    day: int | None = None
    day_from: int | None = None
    day_to: int | None = None
    overwrite: bool = False
    device: str = "auto"
    engine: str | None = None
    address: str | None = None
    train_workers: int | None = None  # data-parallel training workers (needs the ray engine)


@dataclass(frozen=True)
class DailyResult:
    days: list[dict[str, Any]]  # {"day", "skipped", "stage_seconds", "recall_at_k", "roc_auc", "warnings"}

    def to_json(self) -> dict[str, Any]:
        return {"days": self.days}


def run_daily(ws: Workspace, opts: DailyOptions, progress: Progress = no_progress) -> DailyResult:
    """Run the daily cycle (`workflow.cycle.run_days`: eval, train, embed, index, ranker per day, every gate)."""
    ds = ws.dataset()
    if opts.day is not None:
        days = [ds.check_day(opts.day)]
    elif opts.day_from is not None and opts.day_to is not None:
        days = day_range(ds, opts.day_from, opts.day_to, opts.day_to)
    else:
        raise DermError("give --day D or --from D1 --to D2")
    cfg = load_cycle_config(ws, opts.device)
    if opts.engine is not None or opts.address is not None:
        engine = Engine(opts.engine) if opts.engine else cfg.engine
        cfg = replace(cfg, engine=engine, ray_address=opts.address)
    if cfg.ray_address is not None and cfg.engine is not Engine.RAY:
        raise DermError("--address needs the ray engine (--engine ray)")
    if opts.train_workers is not None:
        if cfg.engine is not Engine.RAY:
            raise DermError("--train-workers needs the ray engine (--engine ray)")
        cfg = replace(cfg, train_workers=opts.train_workers)  # ConfigError below 1
    results = run_days(ws, days, cfg, progress, opts.overwrite)
    return DailyResult([_day_row(r) for r in results])


def _day_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "day": r["day"],
        "skipped": r["skipped"],
        "stage_seconds": r["stage_seconds"],
        "recall_at_k": r["eval"]["retrieval"]["recall_at_k"],
        "roc_auc": r["eval"]["ranking"].get("roc_auc"),
        "warnings": r["eval"].get("warnings", []),
    }


# -- eval ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalOptions:
    """`derm eval`: a day (default: the data's last) with the versions published before it; with report_dir,
    also the report (report.md and its figures)."""

    day: int | None = None
    ks: tuple[int, ...] = (20, 100)
    report_dir: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise DermError("--k: give at least one K >= 1")


def evaluate(ws: Workspace, opts: EvalOptions, progress: Progress = no_progress) -> dict[str, Any]:
    """The `derm eval --json` document; with `report_dir` it gains `report`: {"dir", "files"}."""
    # the workspace's slate sample, so `derm eval` writes the document the cycle wrote for the day
    slate = load_cycle_config(ws).slate_users if (ws.root / CYCLE_FILE).exists() else SLATE_USERS
    doc = evaluate_day(ws, opts.day, opts.ks, progress, opts.device, slate_users=slate)
    if opts.report_dir is None:
        return doc
    from eval.report import write_report

    rep = write_report(ws, doc["day"], opts.report_dir, progress, doc=doc, device=opts.device)
    return {**doc, "report": {"dir": rep["dir"], "files": rep["files"]}}


# -- run (a user's own dataset) -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RunOptions:
    """`derm run`: the workspace, the dataset (needed on the first run), the bootstrap window and the config
    file (TOML or JSON; default: `RunConfig()`)."""

    work: str | None = None
    data: str | None = None
    train_periods: int | None = None
    config_file: str | None = None
    device: str = "auto"


def resolve_run_config(opts: RunOptions) -> RunConfig:
    """The config `derm run` runs with: the file's (or the defaults), with this run's device and window."""
    cfg = load_run_config(opts.config_file) if opts.config_file else RunConfig()
    if opts.device != "auto":
        cfg = replace(cfg, cycle=replace(cfg.cycle, device=opts.device))
    if opts.train_periods is not None:
        cfg = replace(cfg, train_periods=opts.train_periods)
    return cfg


def run_own(opts: RunOptions, progress: Progress = no_progress) -> dict[str, Any]:
    """`workflow.run.run_dataset` with the resolved config, after checking there is a workspace to run in."""
    cfg = resolve_run_config(opts)
    if opts.work is None:
        raise DermError("--work: give the workspace directory (and --data DATA on the first run)")
    if opts.data is None and not (Path(opts.work) / "workspace.json").exists():
        raise DermError(
            f"{Path(opts.work).resolve()}: not a derm workspace yet: give --data DATA (a dataset made by "
            "`derm data import ...`; check it with `derm data inspect DATA`)"
        )
    return run_dataset(opts.work, opts.data, cfg, progress)
