"""Training, saving and scoring of the downstream ranker.

Point-in-time rule: for impressions of day d, the DERM embeddings come from the newest store version published
*before* d (`Workspace.version_before`), never from version d itself, in training and in evaluation alike.
Probabilities are calibrated by construction: the ranker trains with plain BCE on every impression (no negative
downsampling), and the manifest reports predicted vs observed rates on the training days.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adslog.artifact import make_manifest, publishing, read_manifest, set_latest, write_json_atomic
from adslog.dataset import Dataset
from adslog.errors import DataError, DermError
from adslog.progress import Progress, no_progress
from adslog.sequences import ActivityLog
from adslog.workspace import Workspace, version_name
from embstore.store import StoreVersion, open_version
from ranking.model import Ranker, RankerConfig
from towers.batches import ImpressionArrays, Inputs, to_device
from towers.features import FeatureSpec, build_feature_spec
from towers.optim import TowerOptimizer
from towers.train import init_output_bias, resolve_device, run_epochs

log = logging.getLogger(__name__)

RANKER_KIND = "ranker"
RANKER_SCHEMA_VERSION = 1


class RankerTask(nn.Module):
    def __init__(self, ranker: Ranker) -> None:
        super().__init__()
        self.ranker = ranker

    def forward(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.ranker(b)
        l_ctr = F.binary_cross_entropy_with_logits(logits[:, 0], b["click"])
        clicked = b["click"] > 0
        l_cvr = (
            F.binary_cross_entropy_with_logits(logits[clicked, 1], b["conversion"][clicked])
            if clicked.any()
            else logits.sum() * 0.0
        )
        return l_ctr + l_cvr, {"ctr": l_ctr.item(), "cvr": l_cvr.item()}


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


class DermLookup:
    """DERM embeddings for impressions, point-in-time: rows of day d read the store version before d."""

    def __init__(self, ws: Workspace, inputs: tuple[str, ...]) -> None:
        self.ws = ws
        self.inputs = inputs
        self.used: dict[str, set[str]] = {}
        self._versions: dict[tuple[str, int], StoreVersion | None] = {}

    def version(self, task: str, day: int) -> StoreVersion | None:
        key = (task, day)
        if key not in self._versions:
            d = self.ws.version_before(self.ws.embeddings_dir(task), day)
            self._versions[key] = None if d is None else open_version(self.ws.embeddings_dir(task), d)
        return self._versions[key]

    def features(self, a: ImpressionArrays, dim: int) -> dict[str, np.ndarray]:
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
                self.used.setdefault(name, set()).add(v.version)
                rows = np.nonzero(a.day == day)[0]
                vv, ff = v.lookup(entity, ids[rows])
                vecs[rows], found[rows] = vv, ff
            out[f"derm_{name}"], out[f"derm_{name}_found"] = vecs, found
        return out


def attach(
    batch: dict[str, torch.Tensor], derm: dict[str, np.ndarray], idx: np.ndarray | None
) -> dict[str, torch.Tensor]:
    for k, v in derm.items():
        batch[k] = torch.from_numpy(v if idx is None else v[idx])
    return batch


def _derm_dim(ws: Workspace, inputs: tuple[str, ...]) -> int:
    for name in inputs:
        task = name.split("-")[0]
        d = ws.latest_day(ws.embeddings_dir(task))
        if d is not None:
            return int(open_version(ws.embeddings_dir(task), d).manifest["dim"])
    return 64


def load_ranker(directory: Path, device: torch.device | str = "cpu") -> RankerSnapshot:
    m = read_manifest(Path(directory), RANKER_KIND, RANKER_SCHEMA_VERSION)
    cfg = RankerConfig.from_json(m["config"])
    spec = FeatureSpec.from_json(m["feature_spec"])
    ranker = Ranker(spec, cfg, int(m["derm_dim"]))
    try:
        ranker.load_state_dict(
            torch.load(Path(directory) / "weights.pt", map_location="cpu", weights_only=True)
        )
        ranker.to(torch.device(device))
        opt = TowerOptimizer(ranker, lr=cfg.lr)
        opt.load_state_dict(
            torch.load(Path(directory) / "optimizer.pt", map_location="cpu", weights_only=True)
        )
    except (FileNotFoundError, RuntimeError, KeyError) as e:
        raise DataError(directory, f"unreadable ranker snapshot ({str(e).splitlines()[0]})") from None
    ranker.eval()
    return RankerSnapshot(ranker, opt, spec, cfg, m)


@torch.no_grad()
def score(
    snap: RankerSnapshot,
    inputs: Inputs,
    a: ImpressionArrays,
    derm: dict[str, np.ndarray],
    reference_context: bool = False,
    batch: int = 16384,
) -> tuple[np.ndarray, np.ndarray]:
    """(p_ctr float32[n], p_cvr float32[n]) for impressions `a`; with `reference_context` position is fixed to
    the reference slot (serving)."""
    dev = next(snap.ranker.parameters()).device
    snap.ranker.eval()
    p = np.zeros((len(a), 2), np.float32)
    for s in range(0, len(a), batch):
        idx = np.arange(s, min(s + batch, len(a)))
        b = attach(inputs.impression_batch(a.take(idx), reference_context), derm, idx)
        p[idx] = torch.sigmoid(snap.ranker(to_device(b, dev))).float().cpu().numpy()
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


def train_ranker(
    ws: Workspace,
    ds: Dataset,
    days: list[int],
    cfg: RankerConfig,
    parent: Path | None = None,
    device: str = "auto",
    progress: Progress = no_progress,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train from scratch over `days` or fine-tune the snapshot at `parent` on them; publish
    `ranker/day=<max(days)>` and move LATEST. Returns the manifest."""
    if not days:
        raise DermError("no ranker training days given")
    for d in days:
        ds.check_day(d)
    dev = resolve_device(device)
    last = max(days)
    if parent is None:
        torch.manual_seed(cfg.seed)
        spec = build_feature_spec(ds, days, cfg.id_buckets)
        derm_dim = _derm_dim(ws, cfg.derm_inputs)
        ranker = Ranker(spec, cfg, derm_dim).to(dev)
        snap = RankerSnapshot(ranker, TowerOptimizer(ranker, lr=cfg.lr), spec, cfg, {})
        lineage, days_seen, parent_id, epochs = uuid.uuid4().hex, [], None, cfg.epochs_initial
    else:
        snap = load_ranker(parent, dev)
        cfg = snap.config
        derm_dim = int(snap.manifest["derm_dim"])
        lineage, days_seen, parent_id = (
            snap.manifest["lineage"],
            snap.manifest["days_seen"],
            snap.manifest["artifact_id"],
        )
        epochs = cfg.epochs_incremental
    inputs = Inputs(ds, snap.spec, ActivityLog.from_dataset(ds, last), cfg.seq_len)
    arrays = inputs.impressions(sorted(days), label_cutoff_ts=(last + 1) * 86400)
    lookup = DermLookup(ws, cfg.derm_inputs)
    derm = lookup.features(arrays, derm_dim)
    if parent is None:
        init_output_bias(snap.ranker.mlp, arrays.click, arrays.conversion)
    task = RankerTask(snap.ranker)
    stats = run_epochs(
        task,
        snap.optimizer,
        lambda idx: attach(inputs.impression_batch(arrays.take(idx)), derm, idx),
        len(arrays),
        epochs,
        cfg.batch_size,
        dev,
        progress,
        seed=cfg.seed + last,
    )
    p_ctr, _ = score(snap, inputs, arrays, derm)
    stats["calibration_ctr"] = calibration(p_ctr, arrays.click)
    m = make_manifest(
        RANKER_KIND,
        RANKER_SCHEMA_VERSION,
        day=int(last),
        days_seen=sorted(set(days_seen) | set(days)),
        lineage=lineage,
        parent=parent_id,
        config=cfg.to_json(),
        feature_spec=snap.spec.to_json(),
        derm_dim=derm_dim,
        embedding_versions={k: sorted(v) for k, v in lookup.used.items()},
        train_stats=stats,
    )
    target = ws.ranker_dir / version_name(last)
    with publishing(target, overwrite=overwrite) as tmp:
        torch.save(snap.ranker.state_dict(), tmp / "weights.pt")
        torch.save(snap.optimizer.state_dict(), tmp / "optimizer.pt")
        write_json_atomic(tmp / "manifest.json", m)
    set_latest(ws.ranker_dir, target.name)
    log.info("ranker trained on days %s..%s (%s rows)", min(days), last, len(arrays))
    return m
