"""Training task (model + losses) and snapshots of the upstream model.

A snapshot is an artifact `models/<task>/day=<D>/` holding `weights.pt` (the model's state_dict),
`train_state.pt` (optimiser state and the logQ estimator, for incremental steps) and a manifest with the
config, the feature spec (with numeric statistics of the training days), the days seen, the parent snapshot
and the lineage id. Training from scratch starts a new lineage; an incremental step keeps its parent's.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adslog.dataset import Dataset
from adslog.sequences import ActivityLog
from adslog.workspace import Workspace, version_name
from dermcore.artifact import make_manifest, publishing, read_manifest, set_latest, write_json_atomic
from dermcore.errors import DataError, DermError
from dermcore.progress import Progress, no_progress
from dermfeatures.batches import Inputs, training_batches
from dermfeatures.spec import FeatureSpec, build_feature_spec
from dermtrain.loop import resolve_device, run_epochs
from dermtrain.optim import TowerOptimizer
from dermtrain.parallel import DataParallel
from towers.config import Task, TowerConfig
from towers.export import MODEL_KIND, MODEL_SCHEMA_VERSION, Towers
from towers.losses import CandidateFrequency, multitask_bce, sampled_softmax_loss
from towers.model import DermModel

log = logging.getLogger(__name__)

#: the towers' folder of a workspace: WORK/models/<task>/day=<D>/ (snapshots; LATEST)
MODELS = "models"


def models_dir(ws: Workspace, task: str) -> Path:
    """WORK/models/<task>: the snapshots of the `task` upstream model (ctr, cvr)."""
    return ws.inside(MODELS, task)


class TrainTask(nn.Module):
    """The model plus its losses: BCE for CTR (all impressions) and CVR (clicked impressions, post-click
    label as known at the cutoff), and the logQ-corrected in-batch softmax on the task's positive pairs.

    For the CVR model, positives (conversions) are rare; every impression's ad in the (large) batch is a
    candidate, so each positive still meets batch_size - 1 real negatives (we use large batches, no buffer)."""

    def __init__(self, model: DermModel, cfg: TowerConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.freq = CandidateFrequency(cfg.id_buckets, cfg.logq_decay)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        u, a, logits = self.model(batch)
        click, conv = batch["click"], batch["conversion"]
        l_ctr, l_cvr = multitask_bce(logits, click, conv, batch.get("weight"))
        positive = (click if cfg.task is Task.CTR else conv) > 0
        if self.training:
            self.freq.update(batch["ad_bucket"])
        if positive.any() and cfg.weight_contrastive > 0:
            pos_index = positive.nonzero().squeeze(1)
            cand, cand_ids, buckets = a, batch["ad_id"], batch["ad_bucket"]
            extra: torch.Tensor | float = 0.0
            if "neg_ad_id" in batch:  # mixed negative sampling: uniform ads through the Pin tower
                extra = batch["neg_rate"]
                cand = torch.cat([a, self.model.pin_tower(batch, "neg_ad")])
                cand_ids = torch.cat([cand_ids, batch["neg_ad_id"]])
                buckets = torch.cat([buckets, batch["neg_ad_bucket"]])
            log_q = self.freq.log_q(buckets, extra) if cfg.logq else None
            l_con = sampled_softmax_loss(
                u[pos_index], cand, pos_index, cand_ids, log_q, self.model.temperature()
            )
        else:
            l_con = logits.sum() * 0.0
        total = cfg.weight_ctr * l_ctr + cfg.weight_cvr * l_cvr + cfg.weight_contrastive * l_con
        return total, {"ctr": l_ctr.item(), "cvr": l_cvr.item(), "contrastive": l_con.item()}


@dataclass
class Snapshot:
    task: TrainTask
    optimizer: TowerOptimizer
    spec: FeatureSpec
    config: TowerConfig
    manifest: dict[str, Any]
    path: Path | None

    @property
    def model(self) -> DermModel:
        return self.task.model

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def towers(self) -> Towers:
        """The user and Pin towers of this snapshot's model (the same modules, not copies), as the export
        presents them: what `towers.infer` embeds with while a snapshot is at hand (training, benchmarks)."""
        return Towers(
            self.config, self.spec, self.manifest, self.path, self.model.user_tower, self.model.pin_tower
        )


def new_snapshot(spec: FeatureSpec, cfg: TowerConfig, device: torch.device) -> Snapshot:
    torch.manual_seed(cfg.seed)
    model = DermModel(spec, cfg)
    task = TrainTask(model, cfg).to(device)
    opt = TowerOptimizer(
        task.model, lr=cfg.lr, weight_decay=cfg.weight_decay, sparse_optimizer=cfg.sparse_optimizer
    )
    return Snapshot(
        task, opt, spec, cfg, {"lineage": uuid.uuid4().hex, "days_seen": [], "parent": None}, None
    )


def load_snapshot(directory: Path, device: torch.device | str = "cpu", with_state: bool = True) -> Snapshot:
    """Load a snapshot to train on (the whole model, the training task and, `with_state`, the optimiser and
    logQ state); the manifest is validated before the weights are read. Inference reads only the towers it
    needs through `towers.export.load_towers`."""
    directory = Path(directory)
    m = read_manifest(directory, MODEL_KIND, MODEL_SCHEMA_VERSION)
    dev = torch.device(device)
    cfg = TowerConfig.from_json(m["config"])
    spec = FeatureSpec.from_json(m["feature_spec"])
    model = DermModel(spec, cfg)
    task = TrainTask(model, cfg)
    try:
        model.load_state_dict(torch.load(directory / "weights.pt", map_location="cpu", weights_only=True))
        opt = TowerOptimizer(
            model, lr=cfg.lr, weight_decay=cfg.weight_decay, sparse_optimizer=cfg.sparse_optimizer
        )
        task.to(dev)
        if with_state:
            state = torch.load(directory / "train_state.pt", map_location="cpu", weights_only=True)
            opt.load_state_dict(state["optimizer"])
            task.freq.load_state_dict(state["freq"])
    except (FileNotFoundError, RuntimeError, KeyError) as e:
        raise DataError(directory, f"unreadable model snapshot ({str(e).splitlines()[0]})") from None
    return Snapshot(task, opt, spec, cfg, m, directory)


def save_snapshot(
    snap: Snapshot, parent_dir: Path, day: int, stats: dict[str, Any], overwrite: bool = False
) -> dict:
    """Publish the snapshot as `parent_dir/day=<day>` and move LATEST to it."""
    target = Path(parent_dir) / version_name(day)
    m = make_manifest(
        MODEL_KIND,
        MODEL_SCHEMA_VERSION,
        task=snap.config.task.value,
        day=int(day),
        days_seen=list(snap.manifest.get("days_seen", [])),
        parent=snap.manifest.get("parent"),
        lineage=snap.manifest["lineage"],
        config=snap.config.to_json(),
        feature_spec=snap.spec.to_json(),
        dim=snap.config.dim,
        train_stats=stats,
    )
    m["model_version"] = f"{m['lineage'][:8]}-{m['artifact_id'][:8]}"
    with publishing(target, overwrite=overwrite) as tmp:
        torch.save(snap.task.model.state_dict(), tmp / "weights.pt")
        torch.save(
            {"optimizer": snap.optimizer.state_dict(), "freq": snap.task.freq.state_dict()},
            tmp / "train_state.pt",
        )
        write_json_atomic(tmp / "manifest.json", m)
    set_latest(parent_dir, target.name)
    snap.manifest = m
    snap.path = target
    return m


@torch.no_grad()
def init_output_bias(
    head: nn.Module, click: np.ndarray, conversion: np.ndarray, weight: np.ndarray | None = None
) -> None:
    """Start the (ctr, cvr) output bias at the logit of the training base rates (CVR: post-click; CTR weighted
    by `weight` when the negatives were downsampled), so the first steps are not spent learning the rate and
    rare-label probabilities start calibrated."""
    last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
    ctr = float(np.clip(np.average(click, weights=weight), 1e-4, 1 - 1e-4)) if len(click) else 0.5
    clicked = click > 0
    cvr = float(np.clip(conversion[clicked].mean(), 1e-4, 1 - 1e-4)) if clicked.any() else 0.5
    last.bias.copy_(torch.tensor([np.log(ctr / (1 - ctr)), np.log(cvr / (1 - cvr))], dtype=last.bias.dtype))


def train_towers(
    ds: Dataset,
    days: list[int],
    cfg: TowerConfig,
    out_dir: Path,
    parent: Path | None = None,
    device: str = "auto",
    progress: Progress = no_progress,
    overwrite: bool = False,
    parallel: DataParallel | None = None,
) -> dict[str, Any]:
    """Train from scratch over `days` (parent None) or one increment from the snapshot at `parent`, and
    publish the result as `out_dir/day=<max(days)>`. Returns the new snapshot's manifest.

    `parallel`: this process is one worker of a data-parallel group (`dermtrain.parallel`, launched by
    `dermdist.train`): it trains on its shard of the rows, and only worker 0 publishes (the others return
    `{"published": False, "train_stats": ...}`)."""
    if not days:
        raise DermError("no training days given")
    for d in days:
        ds.check_day(d)
    dev = resolve_device(device)
    last = max(days)
    if parent is None:
        spec = build_feature_spec(ds, days, cfg.id_buckets, cfg.id_bucket_factor)
        snap = new_snapshot(spec, cfg, dev)
        epochs = cfg.epochs_initial
    else:
        snap = load_snapshot(parent, dev)
        seen = snap.manifest["days_seen"]
        if seen and min(days) <= max(seen):
            raise DermError(
                f"{parent}: snapshot has already seen day {max(seen)}; an increment must be later"
            )
        snap.manifest = {
            "lineage": snap.manifest["lineage"],
            "days_seen": list(seen),
            "parent": snap.manifest["artifact_id"],
        }
        epochs = snap.config.epochs_incremental
    activity = ActivityLog.from_dataset(ds, last)
    inputs = Inputs(ds, snap.spec, activity, snap.config.seq_len)
    arrays = inputs.impressions(
        sorted(days),
        label_cutoff_ts=(last + 1) * 86400,
        rows=parallel.rows if parallel is not None else None,
        negative_rate=snap.config.negative_rate,
        seed=snap.config.seed + last,
    )
    if parent is None:
        init_output_bias(snap.model.interaction.head, arrays.click, arrays.conversion, arrays.weight)
    stats = run_epochs(
        snap.task,
        snap.optimizer,
        training_batches(inputs, arrays, snap.config.extra_negatives, snap.config.seed + last),
        len(arrays),
        epochs,
        snap.config.batch_size,
        dev,
        progress,
        seed=snap.config.seed + last,
        crash_detail=str(Path(out_dir) / version_name(last)),
        parallel=parallel,
    )
    stats["temperature"] = snap.model.temperature().item()
    stats["device"] = dev.type
    snap.manifest["days_seen"] = sorted(set(snap.manifest["days_seen"]) | set(days))
    log.info(
        "trained %s towers on days %s..%s: %s rows/s",
        cfg.task.value,
        min(days),
        last,
        stats["samples_per_second"],
    )
    if parallel is not None and not parallel.chief:
        return {"published": False, "train_stats": stats}
    return save_snapshot(snap, out_dir, last, stats, overwrite=overwrite)
