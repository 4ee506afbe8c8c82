"""The upstream model's own heads on a day's impressions: how well the interaction tower of the snapshot published
before `day` predicts that day's clicks (and, post-click, conversions) with the logged context.

This measures the towers, not the downstream ranker: the issue's `upstream_ctr_roc_auc`. The snapshot is the one
the daily cycle published before `day` (never one that trained on `day`), so the figure is out of time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from adslog.sequences import ActivityLog
from adslog.workspace import Workspace, version_name
from dermcore.errors import DermError
from dermfeatures.batches import ImpressionArrays, Inputs, to_device
from eval.metrics import pr_auc, roc_auc
from towers.train import Snapshot, load_snapshot, models_dir


@torch.no_grad()
def head_probabilities(snap: Snapshot, inputs: Inputs, a: ImpressionArrays, batch: int = 16384) -> np.ndarray:
    """float32[n, 2]: the interaction tower's (p_ctr, p_cvr) for impressions `a` with their logged context."""
    model = snap.model.eval()
    dev = next(model.parameters()).device
    p = np.zeros((len(a), 2), np.float32)
    for s in range(0, len(a), batch):
        idx = np.arange(s, min(s + batch, len(a)))
        _, _, logits = model(to_device(inputs.impression_batch(a.take(idx), False), dev))
        p[idx] = torch.sigmoid(logits).float().cpu().numpy()
    return p


def upstream_heads(ws: Workspace, day: int, task: str = "ctr") -> dict[str, Any]:
    """{"model_version", "model_day", "n_impressions", "ctr_roc_auc", "ctr_pr_auc", "cvr_roc_auc", "cvr_pr_auc"
    (post-click; None without both classes), "predicted_ctr", "observed_ctr"} of the `task` model published
    before `day`, on that day's impressions."""
    ds = ws.dataset()
    day = ds.check_day(day)
    mdir = models_dir(ws, task)
    mday = ws.version_before(mdir, day)
    if mday is None:
        raise DermError(f"{mdir}: no {task} model published before day {day}")
    snap = load_snapshot(mdir / version_name(mday), "cpu", with_state=False)
    inputs = Inputs(ds, snap.spec, ActivityLog.from_dataset(ds, day), snap.config.seq_len)
    a = inputs.impressions([day])
    p = head_probabilities(snap, inputs, a)
    clicked = a.click > 0
    conv = a.conversion[clicked]
    return {
        "model_version": snap.model_version,
        "model_day": int(mday),
        "n_impressions": int(len(a)),
        "ctr_roc_auc": roc_auc(p[:, 0], a.click),
        "ctr_pr_auc": pr_auc(p[:, 0], a.click),
        "cvr_roc_auc": roc_auc(p[clicked, 1], conv),
        "cvr_pr_auc": pr_auc(p[clicked, 1], conv),
        "predicted_ctr": float(p[:, 0].mean()) if len(a) else None,
        "observed_ctr": float(a.click.mean()) if len(a) else None,
    }
