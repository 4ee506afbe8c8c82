"""Negative downsampling (`Inputs.impressions(negative_rate=...)`, `TowerConfig` / `RankerConfig.negative_rate`)
and the weighted, chunked logistic solver it relies on."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from adslog.sequences import ActivityLog
from adslog.workspace import Workspace
from dermcore.errors import ConfigError
from dermfeatures.batches import Inputs
from dermfeatures.spec import build_feature_spec
from dermtrain.logistic import lbfgs_logistic
from dermtrain.parallel import DataParallel
from ranking.model import RankerConfig
from ranking.train import train_ranker, uniform_rows
from ranking.wide import touched_rows
from towers.config import TowerConfig
from towers.losses import multitask_bce


def _inputs(work: Path) -> tuple[Inputs, int]:
    ws = Workspace(work)
    ds = ws.dataset()
    day = ds.days()[-1]
    return Inputs(ds, build_feature_spec(ds, [day], 1024), ActivityLog.from_dataset(ds, day), 5), day


def test_downsampling_keeps_positives_and_weights_negatives(demo_ws: tuple[Path, dict]) -> None:
    inputs, day = _inputs(demo_ws[0])
    whole = inputs.impressions([day], label_cutoff_ts=(day + 1) * 86400)
    assert (whole.weight == 1).all()
    part = inputs.impressions([day], label_cutoff_ts=(day + 1) * 86400, negative_rate=0.25, seed=3)
    pos_whole = (whole.click > 0) | (whole.conversion > 0)
    pos = (part.click > 0) | (part.conversion > 0)
    # every positive kept (same count, same rows in order), negatives thinned to about a quarter
    assert pos.sum() == pos_whole.sum() > 0
    np.testing.assert_array_equal(part.ts[pos], whole.ts[pos_whole])
    n_neg, kept = int((~pos_whole).sum()), int((~pos).sum())
    assert abs(kept - 0.25 * n_neg) < 4 * np.sqrt(n_neg * 0.25 * 0.75)
    np.testing.assert_array_equal(part.weight, np.where(pos, 1.0, 4.0).astype(np.float32))
    # the weighted click rate estimates the day's (not the downsampled rows' inflated rate)
    full_rate = whole.click.mean()
    assert part.click.mean() > 2 * full_rate
    assert abs(np.average(part.click, weights=part.weight) - full_rate) < 0.15 * full_rate
    # the same seed draws the same rows; another seed others
    again = inputs.impressions([day], label_cutoff_ts=(day + 1) * 86400, negative_rate=0.25, seed=3)
    np.testing.assert_array_equal(again.ts, part.ts)
    other = inputs.impressions([day], label_cutoff_ts=(day + 1) * 86400, negative_rate=0.25, seed=4)
    assert len(other) != len(part) or not np.array_equal(other.ts, part.ts)
    # data-parallel shards are taken after the draw: the workers' rows are the downsampled rows, split
    shards = [inputs.impressions([day], None, DataParallel(r, 2).rows, 0.25, 3) for r in range(2)]
    np.testing.assert_array_equal(shards[0].ts, part.ts[0::2])
    np.testing.assert_array_equal(shards[1].weight, part.weight[1::2])
    with pytest.raises(ValueError, match="negative_rate"):
        inputs.impressions([day], negative_rate=0.0)


def test_weighted_bce_is_the_replicated_rows_mean() -> None:
    """A row of weight 3 counts as three copies of it in the CTR loss; the CVR loss is unweighted."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 2, generator=g)
    click = torch.tensor([1.0, 0, 0, 1, 0, 0])
    conv = torch.tensor([1.0, 0, 0, 0, 0, 0])
    w = torch.tensor([1.0, 3, 1, 1, 2, 1])
    rep = torch.repeat_interleave(torch.arange(6), w.long())
    ctr_w, cvr_w = multitask_bce(logits, click, conv, w)
    ctr_r, _ = multitask_bce(logits[rep], click[rep], conv[rep])
    _, cvr = multitask_bce(logits, click, conv)
    assert torch.allclose(ctr_w, ctr_r) and torch.allclose(cvr_w, cvr)
    assert not torch.allclose(ctr_w, multitask_bce(logits, click, conv)[0])


def _problem(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 300, (n, 4), generator=g)
    true = torch.randn(300, generator=g)
    y = (torch.rand(n, generator=g) < torch.sigmoid(true[x].sum(1) - 3.5)).double()
    return x, y, torch.randn(n, 2, generator=g)


def test_chunked_solver_matches_one_chunk() -> None:
    x, y, dense = _problem(5000, 0)
    w0 = torch.zeros(300, dtype=torch.float64)
    one = lbfgs_logistic(x, y, w0, -3.0, 1e-3, 200, dense, chunk=1 << 20)
    many = lbfgs_logistic(x.int(), y, w0, -3.0, 1e-3, 200, dense, chunk=37)
    assert torch.allclose(one[0], many[0], atol=1e-8) and abs(one[1] - many[1]) < 1e-8
    assert torch.allclose(one[3], many[3], atol=1e-8)


def test_touched_rows_is_unique_with_inverse() -> None:
    keys = torch.randint(0, 1000, (5000, 7), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    uniq, inv = touched_rows(keys, 1000, chunk=333)
    want_uniq, want_inv = torch.unique(keys.long(), return_inverse=True)
    assert inv.dtype == torch.int32 and torch.equal(uniq, want_uniq) and torch.equal(inv.long(), want_inv)


def test_downsampled_ranker_stays_calibrated(tmp_path: Path, demo_ws: tuple[Path, dict]) -> None:
    """A ranker trained on a fifth of the negatives (weight 5) predicts the day's click rate, not the kept rows'
    (about 4x higher): the deep part's CTR loss is weighted and the wide part is fitted on every row (fitted on
    the kept rows, weighted, the one-hot ids of users with few impressions overshot: mean prediction 3x the
    observed rate on a synthetic day)."""
    work, summary = demo_ws
    days = summary["train_days"][-2:]
    ws = Workspace.open(tmp_path / "ws", work / "data")
    shutil.copytree(work / "embeddings", ws.root / "embeddings")
    cfg = RankerConfig(token_dim=8, hidden=(16,), batch_size=512, lr=5e-3, negative_rate=0.2)
    m = train_ranker(ws, ws.dataset(), days, cfg, device="cpu")
    st = m["train_stats"]
    assert st["negative_rate"] == 0.2 and st["rows"] < 0.5 * st["calibration_rows"]
    assert m["wide_fit"]["rows"] == st["calibration_rows"]  # the wide part read every row
    c = st["calibration_ctr"]
    assert abs(c["predicted"] - c["observed"]) < 0.2 * c["observed"], c


def test_uniform_rows_and_config_checks() -> None:
    np.testing.assert_array_equal(uniform_rows(10, 0)(7), np.arange(7))
    r = uniform_rows(10, 0)(1000)
    assert len(r) == 10 and len(set(r)) == 10 and (np.diff(r) > 0).all()
    np.testing.assert_array_equal(r, uniform_rows(10, 0)(1000))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="negative_rate"):
            TowerConfig(negative_rate=bad)
        with pytest.raises(ConfigError, match="negative_rate"):
            RankerConfig(negative_rate=bad)
    assert TowerConfig.from_json({k: v for k, v in TowerConfig().to_json().items() if k != "negative_rate"})
