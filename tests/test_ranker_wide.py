"""The wide part fitted like the one-hot regression (`ranking.wide`, `RankerConfig.wide_fit = "regression"`)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from adslog.sequences import ActivityLog
from adslog.workspace import Workspace, version_name
from dermfeatures.batches import Inputs
from dermfeatures.spec import FeatureSpec, Field, build_feature_spec
from eval.baselines import fit_logistic
from ranking.model import Ranker, RankerConfig
from ranking.train import load_ranker, new_snapshot, train_ranker
from ranking.wide import WIDE_L2, fit_column, fit_wide_part, wide_keys

torch.set_num_threads(1)


def test_fit_column_is_the_one_hot_regression() -> None:
    """Over keys that never collide, the hashed fit is `eval.baselines.fit_logistic` on the same fields: same
    objective, same minimiser (weights, intercept and logits within 1e-5)."""
    rng = np.random.default_rng(0)
    n = 3000
    cols = {"a": rng.integers(0, 20, n), "b": rng.integers(0, 6, n)}
    true = rng.normal(0, 1, (20, 6))
    cols["click"] = (rng.random(n) < 1 / (1 + np.exp(2.0 - true[cols["a"], cols["b"]]))).astype(np.float64)
    fields = (("a",), ("b",), ("a", "b"))
    ref = fit_logistic(cols, fields, l2=1e-3)
    # one bucket per (field, value): a at 0..19, b at 100..105, the cross at 1000 + 6 a + b
    keys = torch.from_numpy(np.stack([cols["a"], 100 + cols["b"], 1000 + 6 * cols["a"] + cols["b"]], 1))
    col = fit_column(keys, cols["click"], 1e-3, buckets=2000)
    logit = col.weight[keys].sum(1).numpy() + col.bias
    np.testing.assert_allclose(logit, ref.logits(cols), atol=1e-5)
    assert abs(col.bias - ref.bias) < 1e-5 and col.converged
    # a value of a seen field: its weight; untouched buckets stay 0
    assert abs(float(col.weight[100 + 3]) - ref.weights[20 + 3]) < 1e-5
    assert float(col.weight[200:1000].abs().max()) == 0.0
    # the penalty matters: a much larger l2 shrinks every weight
    strong = fit_column(keys, cols["click"], 1.0, buckets=2000)
    assert float(strong.weight.abs().max()) < 0.2 * float(col.weight.abs().max())


def test_dense_columns_are_fitted_with_the_one_hot_features() -> None:
    """A real-valued column beside hashed one-hot keys: its planted weight is recovered, a column of noise
    gets ~0, and with no dense columns the fit is the one-hot regression alone (no dense weights)."""
    rng = np.random.default_rng(1)
    n = 20000
    a = rng.integers(0, 10, n)
    x = rng.normal(0, 1, n)
    noise = rng.normal(0, 1, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(-1.0 + 0.3 * (a - 4.5) / 3 + 1.5 * x)))).astype(np.float64)
    keys = torch.from_numpy(a[:, None].astype(np.int64))
    dense = torch.from_numpy(np.stack([x, noise], 1))
    col = fit_column(keys, y, 1e-6, buckets=16, dense=dense)
    assert col.converged and col.dense.shape == (2,)
    assert abs(float(col.dense[0]) - 1.5) < 0.1 and abs(float(col.dense[1])) < 0.05
    plain = fit_column(keys, y, 1e-6, buckets=16)
    assert plain.dense.shape == (0,)
    z_dense = col.weight[keys].sum(1) + col.bias + dense @ col.dense
    z_plain = plain.weight[keys].sum(1) + plain.bias
    loss = torch.nn.functional.binary_cross_entropy_with_logits
    yt = torch.from_numpy(y)
    assert float(loss(z_dense, yt)) < float(loss(z_plain, yt)) - 0.05


def test_fitted_wide_part_starts_the_ranker_as_the_regression(demo_ws: tuple[Path, dict]) -> None:
    """After `fit_wide_part` the ranker's logits are the fitted wide part's, intercept included (deep part 0;
    that the fit is the regression is the test above); an optimiser step
    moves the deep part and leaves the fitted table alone; a warm refit on the same rows stays at the optimum."""
    work, summary = demo_ws
    ws = Workspace.open(work)
    ds = ws.dataset()
    days = summary["train_days"][-2:]
    cfg = RankerConfig(token_dim=8, hidden=(16,), id_buckets=1 << 12, wide_buckets=1 << 14, seq_len=5)
    spec = build_feature_spec(ds, days, cfg.id_buckets)
    snap = new_snapshot(spec, cfg, 16, torch.device("cpu"))
    ranker = snap.ranker
    assert ranker.wide is not None and ranker.wide.intercept is not None
    inputs = Inputs(ds, spec, ActivityLog.from_dataset(ds, days[-1]), cfg.seq_len)
    cutoff = (days[-1] + 1) * 86400
    rec = fit_wide_part(ranker, inputs, days, cutoff, prior=(0.3, 0.3))  # the L2 grid: the test below
    assert rec["l2"][0] == pytest.approx(0.3 / rec["rows"]) and "ctr_validation_roc_auc_by_l2" not in rec
    a = inputs.impressions(days, label_cutoff_ts=cutoff)
    idx = np.arange(0, len(a), 7)[:512]
    keys = wide_keys(inputs, a.take(idx), ranker.wide.keys)
    b = inputs.impression_batch(a.take(idx))
    for k in ("derm_ctr-user", "derm_ctr-ad"):
        b[k], b[k + "_found"] = torch.zeros(len(idx), 16), torch.zeros(len(idx))
    with torch.no_grad():
        logits = ranker(b)
    want = ranker.wide.table.weight[keys].sum(1) + ranker.wide.intercept
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)  # the deep logits are 0
    assert float(ranker.wide.table.weight[:, 0].abs().max()) > 0.1 and float(ranker.wide.intercept[0]) < -2
    table = ranker.wide.table.weight.detach().clone()
    ranker.train()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(ranker(b)[:, 0], b["click"])
    snap.optimizer.zero_grad()
    loss.backward()
    snap.optimizer.step()
    assert torch.equal(ranker.wide.table.weight, table)
    with torch.no_grad():
        assert float((ranker(b) - logits).abs().max()) > 1e-4  # the deep part moved
    fit_wide_part(ranker, inputs, days, cutoff, tuple(rec["prior"]), warm=True, max_iter=20)
    assert float((ranker.wide.table.weight - table).abs().max()) < 1e-3


def test_daily_fine_tune_refits_the_wide_part_on_the_window(
    ws_copy: tuple[Workspace, dict],
) -> None:
    """Bootstrap: the wide part is fitted on the window (L2 chosen on the last day, recorded); a fine-tune refits
    it on the days seen within `wide_window` with the parent's prior."""
    ws, summary = ws_copy
    ds = ws.dataset()
    days = summary["train_days"]
    cfg = RankerConfig(token_dim=8, hidden=(16,), batch_size=512, seq_len=5, wide_window=2)
    m = train_ranker(ws, ds, days[-3:-1], cfg, device="cpu", overwrite=True)
    assert m["wide_fit"]["days"] == days[-3:-1] and len(m["wide_fit"]["l2"]) == 2
    by_l2 = m["wide_fit"]["ctr_validation_roc_auc_by_l2"]
    assert set(by_l2) == {repr(x) for x in WIDE_L2} and repr(m["wide_fit"]["l2"][0]) in by_l2
    assert by_l2[repr(m["wide_fit"]["l2"][0])] == max(by_l2.values()) > 0.55
    assert m["wide_fit"]["prior"][0] == pytest.approx(m["wide_fit"]["l2"][0] * m["wide_fit"]["rows"])
    parent = ws.ranker_dir / version_name(days[-2])
    m2 = train_ranker(ws, ds, [days[-1]], cfg, parent, device="cpu", overwrite=True)
    assert m2["wide_fit"]["days"] == days[-2:]  # the window: 2 days
    # the parent's prior (L2 on the summed loss), at the window's rows
    assert m2["wide_fit"]["prior"] == pytest.approx(m["wide_fit"]["prior"])
    assert m2["wide_fit"]["l2"][0] == pytest.approx(m["wide_fit"]["prior"][0] / m2["wide_fit"]["rows"])
    snap = load_ranker(ws.ranker_dir / version_name(days[-1]))
    assert snap.ranker.wide is not None and snap.ranker.wide.intercept is not None
    assert math.isfinite(float(snap.ranker.wide.intercept[0])) and float(snap.ranker.wide.intercept[0]) < -1


def test_wide_fit_config() -> None:
    with pytest.raises(ValueError, match="wide_fit"):
        RankerConfig(wide_fit="sgd")
    with pytest.raises(ValueError, match="wide_window"):
        RankerConfig(wide_window=0)
    old = {k: v for k, v in RankerConfig().to_json().items() if k not in ("wide_fit", "wide_window")}
    # rankers before the option: Adam with the deep part, no intercept in their state
    assert RankerConfig.from_json(old).wide_fit == "adam"
    spec = FeatureSpec(
        user=(Field("user_id", "id", 64),),
        ad=(Field("ad_id", "id", 64), Field("category", "categorical", 5)),
        context=(Field("surface", "categorical", 4),),
        id_buckets=64,
        ad_category="category",
        seq_ad_buckets=64,
        seq_adv_buckets=64,
    )
    cfg = RankerConfig(token_dim=8, seq_len=5, wide_buckets=1 << 10)
    adam = Ranker(spec, replace(cfg, wide_fit="adam"), 8)
    fitted = Ranker(spec, cfg, 8)
    assert "wide.intercept" not in adam.state_dict() and "wide.intercept" in fitted.state_dict()
    assert adam.wide.table.weight.requires_grad and not fitted.wide.table.weight.requires_grad  # type: ignore[union-attr]
    assert RankerConfig().wide_fit == "regression"
