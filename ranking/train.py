"""Training, saving and scoring of the downstream ranker.

Point-in-time rule: for impressions of day d, the DERM embeddings come from the newest store version published
*before* d (`Workspace.version_before`), never from version d itself, in training, validation, evaluation and
serving alike (`DermLookup`).

Calibration: the ranker trains with BCE on every impression (CTR head) and every clicked impression (CVR
head, post-click). With negative downsampling (`RankerConfig.negative_rate` < 1) the kept negatives carry
weight 1 / rate in the deep part's CTR loss and the wide part is fitted on every row, so the probabilities still
need no correction; the output biases start at the (weighted) base rates and the manifest reports predicted vs observed rates on the training
days and on the validation day, over every row (a uniform sample of at most `CALIBRATION_ROWS` rows on larger
days).

Early stopping (`RankerConfig.early_stopping`, from-scratch training only): the last of the training days is
held out as the validation day; after each epoch the validation loss (CTR BCE + post-click CVR BCE) is
measured, training stops after `patience` epochs without improvement, and the best epoch's weights are kept.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adslog.dataset import Dataset
from adslog.sequences import ActivityLog
from adslog.workspace import Workspace, version_day, version_name
from dermcore.artifact import make_manifest, publishing, read_manifest, set_latest, write_json_atomic
from dermcore.errors import ConfigError, DataError, DermError, VersionMismatchError
from dermcore.progress import Progress, no_progress
from dermfeatures.batches import ImpressionArrays, Inputs, to_device
from dermfeatures.onehot import dataset_fields
from dermfeatures.spec import FeatureSpec, build_feature_spec
from dermtrain.loop import EarlyStopping, resolve_device, run_epochs
from dermtrain.optim import TowerOptimizer
from dermtrain.parallel import DataParallel
from embstore.store import StoreVersion, embeddings_dir, open_version
from ranking.kge import KGELookup, kge_dim
from ranking.model import Ranker, RankerConfig
from ranking.wide import WIDE_REFIT_ITERS, fit_wide_part
from towers.losses import multitask_bce

log = logging.getLogger(__name__)

RANKER_KIND = "ranker"
# 1: MLP ranker (foundation); 2: mixture of DCNv2 experts with a sequence transformer (issue 6)
RANKER_SCHEMA_VERSION = 2
#: the ranker's folder of a workspace: WORK/ranker/day=<D>/ (ranker snapshots; LATEST)
RANKER = "ranker"


def ranker_dir(ws: Workspace) -> Path:
    """WORK/ranker: the downstream ranker's snapshots."""
    return ws.inside(RANKER)


def losses(
    logits: torch.Tensor, click: torch.Tensor, conversion: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """(total, ctr BCE over all rows, cvr BCE over clicked rows): logits (B, 2), labels float32 (B,); `weight`
    (B,): the rows' weights in the CTR loss (`towers.losses.multitask_bce`)."""
    l_ctr, l_cvr = multitask_bce(logits, click, conversion, weight)
    return l_ctr + l_cvr, l_ctr, l_cvr


class RankerTask(nn.Module):
    def __init__(self, ranker: Ranker) -> None:
        super().__init__()
        self.ranker = ranker

    def forward(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        total, l_ctr, l_cvr = losses(self.ranker(b), b["click"], b["conversion"], b.get("weight"))
        return total, {"ctr": l_ctr.item(), "cvr": l_cvr.item()}


@dataclass
class RankerSnapshot:
    ranker: Ranker
    optimizer: TowerOptimizer
    spec: FeatureSpec
    config: RankerConfig
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return f"ranker:{version_name(self.manifest['day'])}:{self.manifest['artifact_id'][:8]}"


def ranker_optimizer(ranker: Ranker, cfg: RankerConfig) -> TowerOptimizer:
    """A sparse Adam (`cfg.sparse_optimizer`) for the sparse id tables, Adam for the rest; the wide part at
    `cfg.wide_lr` and the KGE ID tables at `cfg.kge_lr` when set."""
    prefix: dict[str, float] = {}
    if cfg.wide_lr is not None and ranker.wide is not None:
        prefix["wide."] = cfg.wide_lr
    if cfg.kge_lr is not None and ranker.kge_tables is not None:
        prefix["kge_tables."] = cfg.kge_lr
    return TowerOptimizer(ranker, lr=cfg.lr, prefix_lr=prefix or None, sparse_optimizer=cfg.sparse_optimizer)


def ranker_spec(ds: Dataset, days: list[int], cfg: RankerConfig, bucket_factor: int = 2) -> FeatureSpec:
    """The feature spec of a ranker trained from scratch on `days`: `build_feature_spec`, plus the log's one-hot
    fields and crosses (`dermfeatures.onehot.dataset_fields`) when its wide part reads them
    (`cfg.wide_features` "onehot")."""
    spec = build_feature_spec(ds, days, cfg.id_buckets, bucket_factor)
    if cfg.wide_buckets and cfg.wide_features == "onehot":
        spec = replace(spec, onehot=dataset_fields(ds))
    return spec


def new_snapshot(
    spec: FeatureSpec,
    cfg: RankerConfig,
    derm_dim: int,
    device: torch.device,
    kge_dim: int = 0,
    kge_init: StoreVersion | None = None,
) -> RankerSnapshot:
    """A fresh ranker; with `cfg.kge_finetune` its KGE ID tables start from store version `kge_init` (every
    entity it holds, unit-norm vectors)."""
    torch.manual_seed(cfg.seed)
    sizes = None
    if cfg.kge_finetune:
        if kge_init is None:
            raise DermError(
                f"kge_finetune: no {cfg.kge_family} store version to initialise the ID tables from"
            )
        sizes = {e: len(kge_init.ids(e)) for e in cfg.kge_inputs}
    ranker = Ranker(spec, cfg, derm_dim, kge_dim, sizes)
    if ranker.kge_tables is not None and kge_init is not None:
        ranker.kge_tables.init_from(
            {
                e: (torch.from_numpy(kge_init.ids(e).copy()), torch.from_numpy(kge_init.vectors(e).copy()))
                for e in cfg.kge_inputs
            }
        )
    ranker = ranker.to(device)
    m: dict[str, Any] = {"kge_dim": ranker.kge_dim}
    if sizes is not None and kge_init is not None:
        m.update(kge_table_sizes=sizes, kge_init_version=kge_init.version, kge_init_lineage=kge_init.lineage)
    return RankerSnapshot(ranker, ranker_optimizer(ranker, cfg), spec, cfg, m)


def kge_lookup(
    ws: Workspace, ds: Dataset, cfg: RankerConfig, ranker: dict[str, Any] | None
) -> KGELookup | None:
    """The KGE features a ranker with `cfg` reads (None without `cfg.kge_family`). `ranker`: the manifest of a
    trained ranker, whose recorded KGE lineages the lookup then enforces."""
    if cfg.kge_family is None:
        return None
    n = cfg.kge_neighbours if cfg.kge_attention else 0
    return KGELookup(ws, ds, cfg.kge_family, cfg.kge_inputs, n, ranker, cfg.wide_dense)


def ranker_kge_features(
    ws: Workspace, ds: Dataset, snap: RankerSnapshot, a: ImpressionArrays
) -> dict[str, np.ndarray]:
    """The KGE arrays a trained ranker scores impressions `a` with (empty without KGE inputs); refuses a KGE
    store version of a lineage the ranker was not trained on (VersionMismatchError)."""
    lookup = kge_lookup(ws, ds, snap.config, snap.manifest)
    return {} if lookup is None else lookup.features(a, int(snap.manifest.get("kge_dim", 0)))


class DermLookup:
    """DERM embeddings for impressions, point-in-time: rows of day d read the store version before d.
    `used` records, per input, the store versions actually read (named in the ranker's manifest)."""

    def __init__(
        self,
        ws: Workspace,
        inputs: tuple[str, ...],
        ranker: dict[str, Any] | None = None,
        sources: dict[str, StoreVersion] | None = None,
    ) -> None:
        """`ranker`: the manifest of the ranker these features are for. Its embeddings must come from the
        lineages it was trained on: a store of another lineage (a retrain from scratch, another embedding
        space) is a VersionMismatchError naming both, never silently read. `sources`: task -> a store
        version read from elsewhere (an online feature store), used where it is the version the workspace
        would give (the same day); the lineage check applies to it too."""
        self.ws = ws
        self.sources = dict(sources or {})
        self.inputs = inputs
        self.used: dict[str, set[str]] = {}
        self.lineages: dict[str, set[str]] = {}
        self._expect = embedding_lineages(ws, ranker) if ranker is not None else {}
        self._ranker_dir = (ranker_dir(ws) / version_name(int(ranker["day"]))) if ranker is not None else None
        self._versions: dict[tuple[str, int], StoreVersion | None] = {}

    def version(self, task: str, day: int) -> StoreVersion | None:
        key = (task, day)
        if key not in self._versions:
            d = self.ws.version_before(embeddings_dir(self.ws, task), day)
            src = self.sources.get(task)
            if d is not None and src is not None and src.day == d:
                v: StoreVersion | None = src
            else:
                v = None if d is None else open_version(embeddings_dir(self.ws, task), d)
            want = self._expect.get(task)
            if v is not None and want and v.lineage not in want:
                raise VersionMismatchError(
                    f"{v.dir}: embedding lineage {v.lineage[:8]}, but the ranker {self._ranker_dir} was trained on "
                    f"lineage {', '.join(sorted(x[:8] for x in want))}: retrain the ranker from scratch "
                    "(`derm ranker train`) or roll back (`derm rollback`)"
                )
            if v is not None:
                self.lineages.setdefault(task, set()).add(v.lineage)
            self._versions[key] = v
        return self._versions[key]

    def features(self, a: ImpressionArrays, dim: int) -> dict[str, np.ndarray]:
        """`derm_<input>` float32[n, dim] and `derm_<input>_found` float32[n] for every input."""
        out: dict[str, np.ndarray] = {}
        for name in self.inputs:
            task, entity = name.split("-")
            vecs = np.zeros((len(a), dim), np.float32)
            found = np.zeros(len(a), np.float32)
            ids = a.user_id if entity == "user" else a.ad_id
            for day in np.unique(a.day):
                v = self.version(task, int(day))
                if v is None:
                    continue
                if int(v.manifest["dim"]) != dim:
                    raise DataError(v.dir, f"store dim {v.manifest['dim']} but the ranker reads dim {dim}")
                self.used.setdefault(name, set()).add(v.version)
                rows = np.nonzero(a.day == day)[0]
                vv, ff = v.lookup(entity, ids[rows])
                vecs[rows], found[rows] = vv, ff
            out[f"derm_{name}"], out[f"derm_{name}_found"] = vecs, found
        return out


def embedding_lineages(ws: Workspace, ranker: dict[str, Any]) -> dict[str, set[str]]:
    """task -> the embedding lineages a ranker was trained on: its manifest's `embedding_lineages`, or for a
    ranker written before that field, the lineages of the store versions its `embedding_versions` name
    (`task:day=D:<artifact id prefix>`) where they are still published."""
    rec = ranker.get("embedding_lineages")
    if isinstance(rec, dict):
        return {str(t): set(v) for t, v in rec.items()}
    out: dict[str, set[str]] = {}
    for names in (ranker.get("embedding_versions") or {}).values():
        for name in names:
            task, vname, aid = str(name).split(":")
            d = embeddings_dir(ws, task) / vname
            if (d / "manifest.json").is_file():
                v = open_version(embeddings_dir(ws, task), version_day(vname))
                if v.manifest["artifact_id"].startswith(aid):
                    out.setdefault(task, set()).add(v.lineage)
    return out


def attach(
    batch: dict[str, torch.Tensor], derm: dict[str, np.ndarray], idx: np.ndarray | None
) -> dict[str, torch.Tensor]:
    for k, v in derm.items():
        batch[k] = torch.from_numpy(v if idx is None else v[idx])
    return batch


@dataclass
class RankerRows:
    """Impressions (n rows) with their DERM (and KGE) features: what the ranker trains on or scores. `derm`
    is either the features of every row (a benchmark looks all four DERM inputs up once and shares them
    across arms) or a function that looks them up for a batch's rows (`train_ranker`: a day's features are
    never all in memory; at 1M impressions the two default inputs alone are 512 MB)."""

    inputs: Inputs
    arrays: ImpressionArrays
    derm: dict[str, np.ndarray] | Callable[[ImpressionArrays], dict[str, np.ndarray]]

    def __len__(self) -> int:
        return len(self.arrays)

    def batch(self, idx: np.ndarray, reference_context: bool = False) -> dict[str, torch.Tensor]:
        a = self.arrays.take(idx)
        if callable(self.derm):
            return attach(self.inputs.impression_batch(a, reference_context), self.derm(a), None)
        return attach(self.inputs.impression_batch(a, reference_context), self.derm, idx)


Features = Callable[[ImpressionArrays], dict[str, np.ndarray]]


def feature_fn(
    derm: DermLookup,
    kge: KGELookup | None,
    derm_dim: int,
    kge_dim: int,
    check: ImpressionArrays | None = None,
) -> Features:
    """The DERM (and KGE) features of a batch's impressions, looked up when `RankerRows` asks for a batch
    (`train_ranker`, eval's scoring of a day): a day's features are never all in memory (at 1M impressions
    the two default DERM inputs alone are 512 MB). With `check`, one row of each of its days is looked up
    first, so a store version of the wrong dim or lineage fails before any training or scoring."""

    def features(a: ImpressionArrays) -> dict[str, np.ndarray]:
        feats = derm.features(a, derm_dim)
        if kge is not None:
            feats.update(kge.features(a, kge_dim))
        return feats

    if check is not None:
        features(check.take(np.unique(check.day, return_index=True)[1]))
    return features


def _derm_dim(ws: Workspace, inputs: tuple[str, ...]) -> int:
    for name in inputs:
        task = name.split("-")[0]
        d = ws.latest_day(embeddings_dir(ws, task))
        if d is not None:
            return int(open_version(embeddings_dir(ws, task), d).manifest["dim"])
    return 64


def load_ranker(directory: Path, device: torch.device | str = "cpu") -> RankerSnapshot:
    m = read_manifest(Path(directory), RANKER_KIND, RANKER_SCHEMA_VERSION)
    if m["schema_version"] < RANKER_SCHEMA_VERSION:
        raise DataError(
            Path(directory) / "manifest.json",
            f"ranker schema_version {m['schema_version']} (the MLP ranker) is no longer loadable; this build "
            f"reads schema_version {RANKER_SCHEMA_VERSION} (mixture of DCNv2 experts): retrain with "
            "`derm ranker train`",
        )
    try:
        cfg = RankerConfig.from_json(m["config"])
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(Path(directory) / "manifest.json", f"invalid ranker config ({e})") from None
    spec = FeatureSpec.from_json(m["feature_spec"])
    try:
        ranker = Ranker(spec, cfg, int(m["derm_dim"]), int(m.get("kge_dim", 0)), m.get("kge_table_sizes"))
    except ConfigError as e:
        raise DataError(Path(directory) / "manifest.json", f"invalid ranker ({e})") from None
    try:
        ranker.load_state_dict(
            torch.load(Path(directory) / "weights.pt", map_location="cpu", weights_only=True)
        )
        ranker.to(torch.device(device))
        opt = ranker_optimizer(ranker, cfg)
        opt.load_state_dict(
            torch.load(Path(directory) / "optimizer.pt", map_location="cpu", weights_only=True)
        )
    except (FileNotFoundError, RuntimeError, KeyError) as e:
        raise DataError(directory, f"unreadable ranker snapshot ({str(e).splitlines()[0]})") from None
    ranker.eval()
    return RankerSnapshot(ranker, opt, spec, cfg, m)


@torch.no_grad()
def predict(
    ranker: Ranker, rows: RankerRows, reference_context: bool = False, batch: int = 16384
) -> np.ndarray:
    """Probabilities float32[n, 2] = (p_ctr, p_cvr) of `rows`."""
    dev = next(ranker.parameters()).device
    ranker.eval()
    p = np.zeros((len(rows), 2), np.float32)
    for s in range(0, len(rows), batch):
        idx = np.arange(s, min(s + batch, len(rows)))
        p[idx] = (
            torch.sigmoid(ranker(to_device(rows.batch(idx, reference_context), dev))).float().cpu().numpy()
        )
    return p


def score(
    snap: RankerSnapshot,
    inputs: Inputs,
    a: ImpressionArrays,
    derm: dict[str, np.ndarray] | Features,
    reference_context: bool = False,
    batch: int = 16384,
) -> tuple[np.ndarray, np.ndarray]:
    """(p_ctr float32[n], p_cvr float32[n]) for impressions `a` with their features `derm` (every row's, or
    `feature_fn`'s per-batch lookup); with `reference_context` position is fixed to the reference slot
    (serving)."""
    p = predict(snap.ranker, RankerRows(inputs, a, derm), reference_context, batch)
    return p[:, 0], p[:, 1]


def calibration(pred: np.ndarray, label: np.ndarray, buckets: int = 10) -> dict[str, Any]:
    """Predicted vs observed rate overall and by predicted-probability decile."""
    if len(pred) == 0:
        return {"predicted": None, "observed": None, "buckets": []}
    edges = np.quantile(pred, np.linspace(0, 1, buckets + 1))
    which = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, buckets - 1)
    rows = []
    for b in range(buckets):
        sel = which == b
        if sel.any():
            rows.append(
                {
                    "predicted": float(pred[sel].mean()),
                    "observed": float(label[sel].mean()),
                    "n": int(sel.sum()),
                }
            )
    return {"predicted": float(pred.mean()), "observed": float(label.mean()), "buckets": rows}


#: the calibration report of a ranker's training (and validation) days reads a uniform sample of at most this
#: many of their rows (all of them on smaller days, ~13,000 rows per decile above): its cost stays flat as the
#: days grow (scoring every training row cost as much as the day's evaluation: ~46 s per million rows on one
#: core)
CALIBRATION_ROWS = 1 << 17


def uniform_rows(cap: int, seed: int) -> Callable[[int], np.ndarray]:
    """`rows(n)` for `Inputs.impressions`: every row when n <= cap, else `cap` rows drawn uniformly without
    replacement (a generator seeded with `seed`), in their dataset order."""

    def rows(n: int) -> np.ndarray:
        if n <= cap:
            return np.arange(n)
        return np.sort(np.random.default_rng((seed, 0x63616C)).choice(n, cap, replace=False))

    return rows


def calibration_report(p: np.ndarray, a: ImpressionArrays) -> dict[str, Any]:
    """CTR calibration over all rows and CVR calibration over clicked rows; p float32[n, 2]."""
    clicked = a.click > 0
    return {
        "calibration_ctr": calibration(p[:, 0], a.click),
        "calibration_cvr": calibration(p[clicked, 1], a.conversion[clicked]),
    }


@torch.no_grad()
def validation_loss(ranker: Ranker, rows: RankerRows) -> float:
    """CTR BCE over all rows + post-click CVR BCE over clicked rows, at the model's probabilities."""
    p = torch.from_numpy(predict(ranker, rows)).double().clamp(1e-7, 1 - 1e-7)
    logits = torch.log(p / (1 - p))
    click = torch.from_numpy(rows.arrays.click).double()
    conv = torch.from_numpy(rows.arrays.conversion).double()
    return float(losses(logits, click, conv)[0])


def fit(
    snap: RankerSnapshot,
    train: RankerRows,
    val: RankerRows | None,
    epochs: int,
    device: torch.device,
    progress: Progress = no_progress,
    seed: int = 0,
    parallel: DataParallel | None = None,
) -> dict[str, Any]:
    """Train `snap` in place for up to `epochs` shuffled passes over `train` (`dermtrain.loop.run_epochs`, the
    towers' loop: the learning rate decays linearly to 10 % over the planned steps); with `val`, stop after
    `config.patience` epochs without a lower validation loss and keep the best epoch's weights and optimiser
    state (`dermtrain.loop.EarlyStopping`). Returns loss history, epochs run, the best epoch and throughput.

    `parallel`: this process is one worker of a data-parallel group (`dermtrain.parallel`): `train` is its
    shard, the config's batch size is the global batch and the ranker steps under DDP. Every worker scores the
    whole `val` with the same weights, so all take the same early-stopping decision."""
    stop = None
    if val is not None:
        stop = EarlyStopping(
            snap.ranker, snap.optimizer, lambda: validation_loss(snap.ranker, val), snap.config.patience
        )
    st = run_epochs(
        RankerTask(snap.ranker),
        snap.optimizer,
        train.batch,
        len(train),
        epochs,
        snap.config.batch_size,
        device,
        progress,
        seed=seed,
        crash_detail=None,
        parallel=parallel,
        on_epoch_end=stop,
        label="train ranker",
        what="ranker training",
    )
    if stop is not None:
        stop.restore()
    out: dict[str, Any] = {
        "epochs": st["epochs"],
        "max_epochs": epochs,
        "best_epoch": stop.best_epoch if stop is not None and stop.best_epoch is not None else st["epochs"],
        "rows": st["rows"],
        "seconds": st["seconds"],
        "samples_per_second": st["samples_per_second"],
        "loss_by_epoch": st["loss_by_epoch"],
        "validation_loss_by_epoch": stop.history if stop is not None else [],
    }
    if "data_parallel" in st:
        out["data_parallel"] = st["data_parallel"]
    return out


@dataclass(frozen=True)
class FittedWide:
    """A wide part fitted by `ranking.wide.fit_wide_part` (its state_dict and record), to start other rankers
    of the same feature spec, `wide_buckets` and training rows with (the fit is deterministic and reads no seed,
    no DERM or KGE input: a benchmark fits it once for all its arms and seeds)."""

    state: dict[str, torch.Tensor]
    record: dict[str, Any]
    spec: dict[str, Any]
    days: tuple[int, ...]
    label_cutoff_ts: int
    #: the KGE family and relations of its dense columns (`RankerConfig.kge_scores`); () without any
    dense: tuple[str, ...] = ()


def start_ranker(
    snap: RankerSnapshot,
    inputs: Inputs,
    train: RankerRows,
    days: list[int],
    label_cutoff_ts: int,
    fitted: FittedWide | None = None,
    kge: KGELookup | None = None,
) -> dict[str, Any] | None:
    """A fresh ranker's start before its first epoch (`train_ranker` and the benchmarks: one path). Each
    head's output bias starts at its training base rate (CVR: post-click); with `wide_fit` "regression" the
    wide part is then fitted on the impressions of `days` (labels as known at `label_cutoff_ts`), its KGE
    score columns read through `kge` (`RankerConfig.kge_scores`), and the deep logits set to 0
    (`ranking.wide.fit_wide_part`). `fitted`: a wide part already fitted on the same days, spec and dense
    columns, copied instead of refitted (ConfigError when any differs). Returns the wide fit's record (None
    without a fitted wide part)."""
    clicked = train.arrays.click > 0
    snap.ranker.init_output_bias(
        float(np.average(train.arrays.click, weights=train.arrays.weight)) if len(train) else 0.5,
        float(train.arrays.conversion[clicked].mean()) if clicked.any() else 0.5,
    )
    wide = snap.ranker.wide
    if snap.config.wide_fit != "regression" or wide is None:
        return None
    if fitted is None:
        dense = kge.score_features if kge is not None else None
        return fit_wide_part(snap.ranker, inputs, days, label_cutoff_ts, dense=dense)
    if (fitted.spec, fitted.days, fitted.label_cutoff_ts, fitted.dense) != (
        snap.spec.to_json(),
        tuple(sorted(days)),
        int(label_cutoff_ts),
        dense_columns(snap.config),
    ):
        raise ConfigError(
            "the fitted wide part was fitted on another feature spec, days, label cutoff or dense columns"
        )
    wide.load_state_dict(fitted.state)
    snap.ranker.zero_deep_output()
    return dict(fitted.record)


def continue_ranker(
    snap: RankerSnapshot,
    inputs: Inputs,
    days_seen: list[int],
    label_cutoff_ts: int,
    prior: list[float] | tuple[float, float] | None,
    kge: KGELookup | None = None,
) -> dict[str, Any] | None:
    """A daily increment's step before its epochs (`train_ranker` and the benchmarks: one path): with
    `wide_fit` "regression" the wide part is refitted, warm-started for `WIDE_REFIT_ITERS` iterations, on the
    impressions of the last `wide_window` days of `days_seen` (every day the lineage has trained on, this
    increment's included; labels as known at `label_cutoff_ts`) under `prior`, the summed-loss L2 the first
    fit recorded (its record's "prior"). Returns the refit's record (None without a fitted wide part)."""
    if snap.config.wide_fit != "regression" or snap.ranker.wide is None:
        return None
    last = max(days_seen)
    window = [d for d in sorted(days_seen) if d > last - snap.config.wide_window]
    return fit_wide_part(
        snap.ranker,
        inputs,
        window,
        label_cutoff_ts,
        (float(prior[0]), float(prior[1])) if prior else None,
        True,
        WIDE_REFIT_ITERS,
        dense=kge.score_features if kge is not None else None,
    )


def fitted_wide(
    snap: RankerSnapshot, record: dict[str, Any] | None, label_cutoff_ts: int
) -> FittedWide | None:
    """The wide part `start_ranker` fitted in `snap` (its returned `record`; None when it fitted none), to
    start others with."""
    if record is None or snap.ranker.wide is None:
        return None
    state = {k: v.detach().clone() for k, v in snap.ranker.wide.state_dict().items()}
    return FittedWide(
        state,
        dict(record),
        snap.spec.to_json(),
        tuple(record["days"]),
        int(label_cutoff_ts),
        dense_columns(snap.config),
    )


def dense_columns(cfg: RankerConfig) -> tuple[str, ...]:
    """The wide part's dense columns of a config: the KGE family, then its score relations; () without any."""
    return (cfg.kge_family or "", *cfg.wide_dense) if cfg.wide_dense else ()


def kge_record(snap: RankerSnapshot, kge: KGELookup | None) -> dict[str, Any]:
    """The KGE fields of a ranker manifest: dim, table sizes and the version they started from, and every KGE
    store version (and lineage) read, this run's and its parents' (a fine-tune must stay on them)."""
    m = snap.manifest
    out: dict[str, Any] = {"kge_dim": snap.ranker.kge_dim}
    for key in ("kge_table_sizes", "kge_init_version", "kge_init_lineage"):
        if key in m:
            out[key] = m[key]
    if kge is not None:
        versions = set(m.get("kge_versions") or []) | kge.used
        lineages = set(m.get("kge_lineages") or []) | kge.lineages
        if "kge_init_lineage" in m:
            lineages.add(m["kge_init_lineage"])
        out["kge_versions"] = sorted(versions)
        out["kge_lineages"] = sorted(lineages)
    return out


def train_ranker(
    ws: Workspace,
    ds: Dataset,
    days: list[int],
    cfg: RankerConfig,
    parent: Path | None = None,
    device: str = "auto",
    progress: Progress = no_progress,
    overwrite: bool = False,
    parallel: DataParallel | None = None,
) -> dict[str, Any]:
    """Train from scratch over `days` (with early stopping: on all but the last, validated on the last) or
    fine-tune the snapshot at `parent` on them; publish `ranker/day=<max(days)>` and move LATEST. Returns
    the manifest, which names the embedding store versions the ranker consumed.

    `parallel`: this process is one worker of a data-parallel group (`dermtrain.parallel`, launched by
    `dermdist.train`): it trains on its shard of the training rows, and only worker 0 publishes (the others
    return `{"published": False, "train_stats": ...}`)."""
    if not days:
        raise DermError("no ranker training days given")
    for d in days:
        ds.check_day(d)
    days = sorted(set(days))
    dev = resolve_device(device)
    last = days[-1]
    if parent is None:
        val_days = days[-1:] if cfg.early_stopping else []
        if cfg.early_stopping and len(days) < 2:
            raise DermError("early stopping holds out the last training day: give at least two days")
        train_days = days[: len(days) - len(val_days)]
        spec = ranker_spec(ds, train_days, cfg)
        kge_init = None
        if cfg.kge_finetune and cfg.kge_family is not None:
            # point-in-time: the tables start from the version that served the first training day
            kd = ws.version_before(embeddings_dir(ws, cfg.kge_family), train_days[0])
            if kd is None:
                raise DermError(
                    f"kge_finetune: no {cfg.kge_family} store version before day {train_days[0]} to start the ID "
                    "tables from (enable kge in the cycle config, or train the ranker on later days)"
                )
            kge_init = open_version(embeddings_dir(ws, cfg.kge_family), kd)
        snap = new_snapshot(
            spec, cfg, _derm_dim(ws, cfg.derm_inputs), dev, kge_dim(ws, cfg.kge_family), kge_init
        )
        lineage, days_seen, parent_id, epochs = uuid.uuid4().hex, [], None, cfg.epochs_initial
    else:
        snap = load_ranker(parent, dev)
        cfg = snap.config
        train_days, val_days = days, []
        lineage, days_seen, parent_id = (
            snap.manifest["lineage"],
            snap.manifest["days_seen"],
            snap.manifest["artifact_id"],
        )
        epochs = cfg.epochs_incremental
    derm_dim = snap.ranker.derm_dim
    inputs = Inputs(ds, snap.spec, ActivityLog.from_dataset(ds, last), cfg.seq_len)
    # a fine-tune reads embeddings of its parent's lineages only (VersionMismatchError otherwise)
    lookup = DermLookup(ws, cfg.derm_inputs, snap.manifest if parent is not None else None)
    kge = kge_lookup(ws, ds, cfg, snap.manifest if parent is not None else None)
    k_dim = snap.ranker.kge_dim
    cutoff = (last + 1) * 86400  # labels as known at the end of the last day (delayed conversions)

    def rows(ds_days: list[int], shard: bool, rate: float = 1.0) -> RankerRows:
        keep = parallel.rows if parallel is not None and shard else None
        a = inputs.impressions(ds_days, cutoff, keep, negative_rate=rate, seed=cfg.seed + last)
        return RankerRows(inputs, a, feature_fn(lookup, kge, derm_dim, k_dim, check=a))

    def sample(ds_days: list[int]) -> RankerRows:
        """At most CALIBRATION_ROWS of every row of `ds_days` (not downsampled), for the calibration report."""
        a = inputs.impressions(ds_days, cutoff, uniform_rows(CALIBRATION_ROWS, cfg.seed + last))
        return RankerRows(inputs, a, feature_fn(lookup, kge, derm_dim, k_dim))

    train = rows(train_days, shard=True, rate=cfg.negative_rate)
    val = rows(val_days, shard=False) if val_days else None
    wide_rec = None
    if parent is None:
        # every worker of a data-parallel group fits the wide part on all rows (the fit is deterministic)
        wide_rec = start_ranker(snap, inputs, train, train_days, cutoff, kge=kge)
    else:
        prior = (snap.manifest.get("wide_fit") or {}).get("prior")
        wide_rec = continue_ranker(snap, inputs, sorted(set(days_seen) | set(days)), cutoff, prior, kge)
    stats = fit(snap, train, val, epochs, dev, progress, seed=cfg.seed + last, parallel=parallel)
    calib = sample(train_days)
    stats.update(calibration_report(predict(snap.ranker, calib), calib.arrays))
    stats["calibration_rows"] = len(calib)
    stats["negative_rate"] = cfg.negative_rate
    stats["device"] = dev.type
    if val is not None:
        calib = sample(val_days)
        stats["validation"] = {
            "days": val_days,
            "rows": len(val),
            "calibration_rows": len(calib),
            **calibration_report(predict(snap.ranker, calib), calib.arrays),
        }
    m = make_manifest(
        RANKER_KIND,
        RANKER_SCHEMA_VERSION,
        day=int(last),
        days_seen=sorted(set(days_seen) | set(days)),
        train_days=train_days,
        validation_days=val_days,
        lineage=lineage,
        parent=parent_id,
        config=cfg.to_json(),
        feature_spec=snap.spec.to_json(),
        derm_dim=derm_dim,
        embedding_versions={k: sorted(v) for k, v in lookup.used.items()},
        embedding_lineages={k: sorted(v) for k, v in lookup.lineages.items()},
        **kge_record(snap, kge),
        **({"wide_fit": wide_rec} if wide_rec is not None else {}),
        train_stats=stats,
    )
    if parallel is not None and not parallel.chief:
        return {"published": False, "train_stats": stats}
    target = ranker_dir(ws) / version_name(last)
    with publishing(target, overwrite=overwrite) as tmp:
        torch.save(snap.ranker.state_dict(), tmp / "weights.pt")
        torch.save(snap.optimizer.state_dict(), tmp / "optimizer.pt")
        write_json_atomic(tmp / "manifest.json", m)
    set_latest(ranker_dir(ws), target.name)
    log.info("ranker trained on days %s..%s (%s rows)", min(days), last, len(train))
    return m
