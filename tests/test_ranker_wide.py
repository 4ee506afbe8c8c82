"""The wide part fitted like the one-hot regression (`ranking.wide`, `RankerConfig.wide_fit = "regression"`)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from adslog.dataset import Dataset
from adslog.sequences import ActivityLog
from adslog.synth import SynthConfig
from adslog.workspace import Workspace, version_name
from dermcore.errors import ConfigError
from dermfeatures.batches import ImpressionArrays, Inputs
from dermfeatures.onehot import ADS_FIELDS, dataset_fields, fields_keys
from dermfeatures.spec import FeatureSpec, Field
from eval.baselines import fit_logistic, read_rows
from ranking.model import Ranker, RankerConfig, WidePart
from ranking.train import load_ranker, new_snapshot, ranker_dir, ranker_spec, train_ranker
from ranking.wide import WIDE_L2, fit_column, fit_wide_part, wide_keys

torch.set_num_threads(1)

TINY = SynthConfig(n_users=400, n_ads=300, n_advertisers=30, n_days=4, impressions_per_day=6_000, seed=4)


@pytest.fixture(scope="module")
def synth(synth_data: Any) -> Dataset:
    return synth_data(TINY, "ranker_wide")


def _scores(ranker: Ranker, inputs: Inputs, a: ImpressionArrays) -> np.ndarray:
    """The ranker's CTR logits of impressions `a` through its forward pass (DERM inputs absent)."""
    b = inputs.impression_batch(a)
    for k in ranker.cfg.derm_inputs:
        b[f"derm_{k}"], b[f"derm_{k}_found"] = torch.zeros(len(b["click"]), 16), torch.zeros(len(b["click"]))
    with torch.no_grad():
        return ranker(b)[:, 0].double().numpy()


def test_onehot_keys_are_the_regressions_columns(synth: Dataset) -> None:
    """`Inputs.onehot_keys` (the wide part's input) are the regression's keys of the same rows (`read_rows`,
    the same fields): the ids, the users' / ads' columns and the logged context; at serving (reference
    context) only the position changes, to slot 0."""
    days = synth.days()
    cfg = RankerConfig(token_dim=8, seq_len=5)
    spec = ranker_spec(synth, days[:2], cfg)
    assert spec.onehot == ADS_FIELDS == dataset_fields(synth)
    inputs = Inputs(synth, spec, ActivityLog.from_dataset(synth, days[2]), 5)
    a = inputs.impressions([days[2]])
    want = fields_keys(read_rows(synth, [days[2]], ADS_FIELDS), ADS_FIELDS)
    np.testing.assert_array_equal(inputs.onehot_keys(a), want)
    ref = inputs.onehot_keys(a, reference_context=True)
    pos = ADS_FIELDS.index(("position",))
    assert (ref[:, pos] == 0).all() and (want[:, pos] > 0).any()
    np.testing.assert_array_equal(np.delete(ref, pos, 1), np.delete(want, pos, 1))
    b = inputs.impression_batch(a.take(np.arange(7)), reference_context=True)
    np.testing.assert_array_equal(b["onehot"].numpy(), ref[:7])


def test_wide_part_alone_is_the_regression(synth: Dataset) -> None:
    """The fitted wide part (`wide_features` "onehot", the default) reproduces `eval.baselines.fit_logistic` at
    the same L2 on the same rows: the ranker's logits on a later day (deep part 0) are the regression's to
    1e-4, when no two of the features share a bucket. The spec's own features (`wide_features` "spec") are
    another model: its logits differ by far more."""
    days = synth.days()
    train, test = days[:3], days[3]
    rows = read_rows(synth, train, ADS_FIELDS)
    l2 = 3e-4
    ref = fit_logistic(rows, ADS_FIELDS, l2)
    want = ref.logits(read_rows(synth, [test], ADS_FIELDS))
    cutoff = (train[-1] + 1) * 86400
    prior = (l2 * len(rows["click"]), 1.0)
    got = {}
    for features in ("onehot", "spec"):
        cfg = RankerConfig(token_dim=8, hidden=(8,), seq_len=5, wide_buckets=1 << 20, wide_features=features)
        spec = ranker_spec(synth, train, cfg)
        ranker = new_snapshot(spec, cfg, 16, torch.device("cpu")).ranker
        inputs = Inputs(synth, spec, ActivityLog.from_dataset(synth, test), cfg.seq_len)
        fit_wide_part(ranker, inputs, train, cutoff, prior)
        assert ranker.wide is not None
        if features == "onehot":  # the premise: one bucket per feature
            k = wide_keys(inputs, inputs.impressions(train), ranker.wide.keys)
            assert len(torch.unique(k)) == ref.n_features
        got[features] = _scores(ranker, inputs, inputs.impressions([test]))
    np.testing.assert_allclose(got["onehot"], want, atol=1e-4)
    assert float(np.abs(got["spec"] - want).max()) > 0.05


def test_onehot_wide_part_hashes_each_field_apart() -> None:
    """The same key in two fields lands in two rows; keys are deterministic and in range; a spec without
    one-hot fields cannot build a one-hot wide part (nor the reverse)."""
    spec = FeatureSpec(
        user=(Field("user_id", "id", 64),),
        ad=(Field("ad_id", "id", 64), Field("category", "categorical", 5)),
        context=(),
        id_buckets=64,
        ad_category="category",
        onehot=(("user_id",), ("ad_id",)),
    )
    wide = WidePart(spec, 1 << 20, 2, onehot=True)
    k = torch.arange(1000).repeat(2, 1).T  # (1000, 2): the same key in both fields
    rows = wide.keys({"onehot": k})
    assert rows.shape == (1000, 2) and int(rows.min()) >= 0 and int(rows.max()) < 1 << 20
    assert torch.equal(rows, wide.keys({"onehot": k.clone()}))
    assert len(torch.unique(rows)) > 1990  # 2,000 features, ~2 expected collisions in 2^20 rows
    with pytest.raises(ConfigError, match="one-hot"):
        WidePart(spec, 64, 2, onehot=False)
    with pytest.raises(ConfigError, match="one-hot"):
        WidePart(replace(spec, onehot=()), 64, 2, onehot=True)


def test_dataset_fields_of_another_log(synth: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log not made by the built-in generator gets every id / categorical column of the users, ads and
    impressions, and the user / context categoricals x the ad category."""
    monkeypatch.setitem(synth.manifest, "source", {"generator": "import"})
    fields = dataset_fields(synth)
    assert fields[:2] == (("user_id",), ("ad_id",))
    singles = {f[0] for f in fields if len(f) == 1}
    assert {
        "advertiser_id",
        "campaign_id",
        "category",
        "region",
        "age_bucket",
        "surface",
        "position",
    } <= singles
    crosses = {f for f in fields if len(f) == 2}
    assert {("region", "category"), ("age_bucket", "category"), ("surface", "category")} <= crosses
    assert all(f[1] == "category" for f in crosses)


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
    spec = ranker_spec(ds, days, cfg)
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
    parent = ranker_dir(ws) / version_name(days[-2])
    m2 = train_ranker(ws, ds, [days[-1]], cfg, parent, device="cpu", overwrite=True)
    assert m2["wide_fit"]["days"] == days[-2:]  # the window: 2 days
    # the parent's prior (L2 on the summed loss), at the window's rows
    assert m2["wide_fit"]["prior"] == pytest.approx(m["wide_fit"]["prior"])
    assert m2["wide_fit"]["l2"][0] == pytest.approx(m["wide_fit"]["prior"][0] / m2["wide_fit"]["rows"])
    snap = load_ranker(ranker_dir(ws) / version_name(days[-1]))
    assert snap.ranker.wide is not None and snap.ranker.wide.intercept is not None
    assert math.isfinite(float(snap.ranker.wide.intercept[0])) and float(snap.ranker.wide.intercept[0]) < -1


def test_wide_fit_config() -> None:
    with pytest.raises(ValueError, match="wide_fit"):
        RankerConfig(wide_fit="sgd")
    with pytest.raises(ValueError, match="wide_window"):
        RankerConfig(wide_window=0)
    with pytest.raises(ValueError, match="wide_features"):
        RankerConfig(wide_features="all")
    old = {
        k: v
        for k, v in RankerConfig().to_json().items()
        if k not in ("wide_fit", "wide_window", "wide_features")
    }
    # rankers before the options: Adam with the deep part, no intercept in their state, the spec's features
    assert RankerConfig.from_json(old).wide_fit == "adam"
    assert RankerConfig.from_json(old).wide_features == "spec"
    spec = FeatureSpec(
        user=(Field("user_id", "id", 64),),
        ad=(Field("ad_id", "id", 64), Field("category", "categorical", 5)),
        context=(Field("surface", "categorical", 4),),
        id_buckets=64,
        ad_category="category",
        seq_ad_buckets=64,
        seq_adv_buckets=64,
        onehot=(("ad_id",), ("surface", "category")),
    )
    cfg = RankerConfig(token_dim=8, seq_len=5, wide_buckets=1 << 10)
    adam = Ranker(spec, replace(cfg, wide_fit="adam"), 8)
    fitted = Ranker(spec, cfg, 8)
    assert "wide.intercept" not in adam.state_dict() and "wide.intercept" in fitted.state_dict()
    assert adam.wide.table.weight.requires_grad and not fitted.wide.table.weight.requires_grad  # type: ignore[union-attr]
    assert RankerConfig().wide_fit == "regression" and RankerConfig().wide_features == "onehot"
