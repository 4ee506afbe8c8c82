"""The downstream ranker: mixture-of-experts gates, DCNv2 cross layers checked against hand-computed values,
the DERM projection, point-in-time DERM inputs, early stopping with calibrated outputs, weights that matter,
and the schema-version error for old ranker artifacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from adslog.sequences import ActivityLog
from adslog.workspace import Workspace, version_name
from dermcore.errors import DataError
from dermfeatures.batches import ImpressionArrays, Inputs
from dermfeatures.spec import FeatureSpec, Field
from embstore.aggregate import AggregationConfig, Heuristic
from embstore.store import embeddings_dir, open_version, publish_day
from ranking.model import DERM_INPUTS, CrossLayer, CrossNetwork, MMoE, Ranker, RankerConfig
from ranking.train import DermLookup, load_ranker, ranker_optimizer, score, train_ranker

torch.set_num_threads(1)


ONEHOT = (("user_id",), ("ad_id",), ("category",), ("surface", "category"))


def _spec(onehot: bool = True) -> FeatureSpec:
    """A small spec; with `onehot` it names one-hot fields (the wide part's default features, `_batch`'s
    `onehot` keys)."""
    return FeatureSpec(
        user=(Field("user_id", "id", 64), Field("age", "numeric", 1)),
        ad=(
            Field("ad_id", "id", 64),
            Field("category", "categorical", 5),
            Field("price", "numeric", 1),
            Field("content", "dense_vector", 4),
        ),
        context=(Field("surface", "categorical", 4), Field("position", "categorical", 9)),
        id_buckets=64,
        ad_category="category",
        seq_ad_buckets=64,
        seq_adv_buckets=64,
        onehot=ONEHOT if onehot else (),
    )


def _batch(n: int, derm_dim: int, seq_len: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 3, (n, seq_len), generator=g)
    kind[0] = 0  # a user with no activity at all: every slot padded
    b = {
        "user_cat": torch.randint(1, 64, (n, 1), generator=g),
        "user_num": torch.randn(n, 1, generator=g),
        "user_dense": torch.zeros(n, 0),
        "ad_cat": torch.stack(
            [torch.randint(1, 64, (n,), generator=g), torch.randint(1, 5, (n,), generator=g)], 1
        ),
        "ad_num": torch.randn(n, 1, generator=g),
        "ad_dense": torch.randn(n, 4, generator=g),
        "seq_ad": torch.randint(1, 64, (n, seq_len), generator=g) * (kind > 0),
        "seq_adv": torch.randint(1, 64, (n, seq_len), generator=g) * (kind > 0),
        "seq_cat": torch.randint(1, 5, (n, seq_len), generator=g) * (kind > 0),
        "seq_kind": kind,
        "seq_dense": torch.randn(n, seq_len, 4, generator=g),
        "ctx": torch.ones(n, 2, dtype=torch.int64),
        "onehot": torch.randint(0, 50, (n, len(ONEHOT)), generator=g),
    }
    for name in DERM_INPUTS:
        b[f"derm_{name}"] = torch.nn.functional.normalize(torch.randn(n, derm_dim, generator=g), dim=1)
        b[f"derm_{name}_found"] = torch.ones(n)
    return b


def test_moe_gates_are_one_softmax_per_task_and_row() -> None:
    torch.manual_seed(0)
    moe = MMoE(d=6, n_tasks=2, n_experts=3, layers=2, rank=None)
    x = torch.randn(5, 6)
    g = moe.gate_weights(x)
    assert g.shape == (5, 2, 3)
    assert torch.all(g >= 0)
    torch.testing.assert_close(g.sum(-1), torch.ones(5, 2))
    assert not torch.allclose(g[:, 0], g[:, 1])  # each task has its own gate
    out = moe(x)
    assert out.shape == (5, 2, 6)
    experts = torch.stack([e(x) for e in moe.experts], dim=1)  # (5, 3, 6)
    for t in range(2):
        torch.testing.assert_close(out[:, t], (g[:, t, :, None] * experts).sum(1))


def test_cross_layer_matches_hand_computed_value() -> None:
    layer = CrossLayer(2)
    assert layer.w is not None and layer.u is None and layer.v is None
    with torch.no_grad():
        layer.w.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        layer.w.bias.copy_(torch.tensor([0.5, -1.0]))
    x0 = torch.tensor([[1.0, 2.0]])
    xl = torch.tensor([[0.5, -1.0]])
    # W xl = [-1.5, -2.5]; + b = [-1.0, -3.5]; x0 * that = [-1.0, -7.0]; + xl = [-0.5, -8.0]
    torch.testing.assert_close(layer(x0, xl), torch.tensor([[-0.5, -8.0]]))
    # a two-layer network starts from x_l = x_0 and feeds x_0 to both layers:
    # layer 1: W x0 = [5, 11]; + b = [5.5, 10]; x0 * that = [5.5, 20]; + x0 = x1 = [6.5, 22]
    # layer 2: W x1 = [50.5, 107.5]; + b = [51, 106.5]; x0 * that = [51, 213]; + x1 = [57.5, 235]
    net = CrossNetwork(2, 2)
    for lyr in net.layers:
        lyr.load_state_dict(layer.state_dict())
    torch.testing.assert_close(net(x0), torch.tensor([[57.5, 235.0]]))


def test_low_rank_cross_layer_value_and_shapes() -> None:
    layer = CrossLayer(2, rank=1)
    v, u = layer.v, layer.u
    assert v is not None and u is not None and layer.w is None
    with torch.no_grad():
        v.weight.copy_(torch.tensor([[1.0, 1.0]]))  # V^T: 2 -> 1
        u.weight.copy_(torch.tensor([[2.0], [-1.0]]))  # U: 1 -> 2
        u.bias.copy_(torch.tensor([0.0, 1.0]))
    x0 = torch.tensor([[1.0, 2.0]])
    xl = torch.tensor([[0.5, -1.0]])
    # V^T xl = -0.5; U (-0.5) + b = [-1.0, 1.5]; x0 * that = [-1.0, 3.0]; + xl = [-0.5, 2.0]
    torch.testing.assert_close(layer(x0, xl), torch.tensor([[-0.5, 2.0]]))
    big = CrossLayer(10, rank=3)
    assert big.v is not None and big.u is not None
    assert big.v.weight.shape == (3, 10) and big.u.weight.shape == (10, 3)
    assert big(torch.randn(4, 10), torch.randn(4, 10)).shape == (4, 10)
    n_low = sum(p.numel() for p in big.parameters())
    n_full = sum(p.numel() for p in CrossLayer(10).parameters())
    assert n_low == 2 * 10 * 3 + 10 < n_full == 10 * 10 + 10


@pytest.mark.parametrize("projection", [None, 16])
def test_projection_sets_the_dcn_input_width(projection: int | None) -> None:
    spec, c, dim = _spec(), 8, 32
    cfg = RankerConfig(
        derm_inputs=DERM_INPUTS, token_dim=c, hidden=(8,), derm_projection=projection, seq_len=5
    )
    ranker = Ranker(spec, cfg, dim)
    tokens = (
        2 + 4 + 1 + 2
    ) * c  # user: id + numerics; ad: id, category, numerics, content; sequence; context
    derm = 4 * dim if projection is None else projection
    assert ranker.input_width == tokens + derm + 4 + 2  # + found flags + one dot per upstream model
    expert = ranker.mmoe.experts[0]
    assert isinstance(expert, CrossNetwork)
    first = expert.layers[0]
    assert isinstance(first, CrossLayer) and first.v is not None
    assert first.v.weight.shape == (cfg.cross_rank, ranker.input_width)
    logits = ranker(_batch(6, dim))
    assert logits.shape == (6, 2) and torch.isfinite(logits).all()
    assert ranker.concat(_batch(6, dim)).shape == (6, ranker.input_width)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown DERM inputs"):
        RankerConfig(derm_inputs=("ctr-item",))
    with pytest.raises(ValueError, match="divisible"):
        RankerConfig(token_dim=6, seq_heads=4)
    with pytest.raises(ValueError, match="derm_projection"):
        RankerConfig(derm_projection=0)
    with pytest.raises(ValueError, match="embedding_init_std"):
        RankerConfig(embedding_init_std=0.0)
    cfg = RankerConfig(derm_inputs=("cvr-user",), cross_rank=None, derm_projection=64)
    assert RankerConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    # a config written before the option existed meant torch's N(0, 1) start
    old = {k: v for k, v in cfg.to_json().items() if k != "embedding_init_std"}
    assert RankerConfig.from_json(old).embedding_init_std is None


@pytest.mark.parametrize("std", [None, 0.01])
def test_embedding_init_std_sets_every_id_table(std: float | None) -> None:
    """User / ad field tables, the sequence's ad and advertiser tables and the context tables start at
    N(0, std) (padding rows at 0); None keeps torch's N(0, 1)."""
    ranker = Ranker(_spec(), RankerConfig(token_dim=8, embedding_init_std=std, seq_len=5), 16)
    tables = [*ranker.user.cats, *ranker.ad.cats, ranker.sequence.ad, ranker.sequence.adv, *ranker.ctx]
    assert len(tables) == 7
    for t in tables:
        w = t.weight.detach()
        rows = w[1:] if t.padding_idx == 0 else w
        expected = 1.0 if std is None else std
        assert 0.7 * expected < float(rows.std()) < 1.3 * expected
        if t.padding_idx == 0:
            assert float(w[0].abs().max()) == 0.0


def test_wide_part_features_and_learning() -> None:
    """The wide part with the spec's features (`wide_features` "spec", rankers before the one-hot fields): one
    feature per user / ad categorical and context field plus the crosses (user categorical and context x ad
    categorical, ids excluded); it starts at 0 (adds nothing) and, trained alone on a label that depends only
    on one cross, learns it."""
    spec, dim = _spec(onehot=False), 16
    cfg = RankerConfig(token_dim=8, seq_len=5, wide_buckets=1 << 12, wide_fit="adam", wide_features="spec")
    ranker = Ranker(spec, cfg, dim)
    wide = ranker.wide
    assert (
        wide is not None
        and Ranker(spec, RankerConfig(token_dim=8, seq_len=5, wide_buckets=0), dim).wide is None
    )
    b = _batch(64, dim)
    keys = wide.keys(b)
    # singles: user_id, ad_id, category, surface, position; crosses: (surface, position) x category
    assert keys.shape == (64, 5 + 2) and int(keys.min()) >= 0 and int(keys.max()) < 1 << 12
    assert torch.equal(keys, wide.keys(b))  # deterministic
    # the same category under another surface is another cross feature, the single feature stays
    b2 = dict(b, ctx=b["ctx"] * 2)
    k2 = wide.keys(b2)
    assert torch.equal(keys[:, 2], k2[:, 2]) and not torch.equal(keys[:, 5], k2[:, 5])
    assert float(wide(b).detach().abs().max()) == 0.0  # starts at 0
    # the label is the cross (surface 1 or 2) x (category 1): only the wide part can learn it alone
    g = torch.Generator().manual_seed(1)
    n = 512
    b = _batch(n, dim, seed=2)
    b["ctx"] = torch.stack([torch.randint(1, 3, (n,), generator=g), torch.ones(n, dtype=torch.long)], 1)
    y = ((b["ctx"][:, 0] == 1) == (b["ad_cat"][:, 1] == 1)).float()
    opt = torch.optim.Adam(wide.parameters(), lr=0.1)
    for _ in range(100):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(wide(b)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_wide_config_validation_and_old_configs() -> None:
    with pytest.raises(ValueError, match="wide_buckets"):
        RankerConfig(wide_buckets=1)
    cfg = RankerConfig(wide_buckets=1 << 10)
    assert RankerConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    old = {k: v for k, v in cfg.to_json().items() if k not in ("wide_buckets", "wide_lr")}
    assert RankerConfig.from_json(old).wide_buckets == 0  # rankers before the option had no wide part
    with pytest.raises(ValueError, match="wide_lr"):
        RankerConfig(wide_lr=0.0)
    # the wide part learns at its own rate, in its own Adam group, decayed with the rest
    cfg = RankerConfig(token_dim=8, seq_len=5, wide_buckets=1 << 10, wide_lr=0.05, lr=0.002, wide_fit="adam")
    ranker = Ranker(_spec(), cfg, 16)
    opt = ranker_optimizer(ranker, cfg)
    groups = opt.dense.param_groups
    assert len(groups) == 2 and groups[1]["lr"] == 0.05 and groups[0]["lr"] == 0.002
    assert groups[1]["params"] == [ranker.wide.table.weight]  # type: ignore[union-attr]
    opt.set_lr_scale(0.5)
    assert groups[1]["lr"] == 0.025 and groups[0]["lr"] == 0.001
    assert len(ranker_optimizer(ranker, RankerConfig(wide_buckets=1 << 10)).dense.param_groups) == 1


def _unit(n: int, dim: int, value: float) -> np.ndarray:
    v = np.full((n, dim), value, np.float32)
    v[:, 0] += np.arange(n)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_point_in_time_version_d_never_serves_day_d(tmp_path: Path, demo_ws: tuple[Path, dict]) -> None:
    """Store versions 10 and 11 hold different vectors; rows of day 11 read version 10, rows of day 12 read
    version 11, and rows of day 10 (no version before) read nothing."""
    ws = Workspace.open(tmp_path / "ws", demo_ws[0] / "data")
    sdir = embeddings_dir(ws, "ctr")
    users = np.array([3, 5, 7], np.int64)
    prev = None
    model = {"dim": 4, "lineage": "L", "model_version": "m", "artifact_id": "a" * 32}
    for day, val in ((10, 1.0), (11, -1.0)):
        daily = {"user": (users, _unit(3, 4, val)), "ad": (users, _unit(3, 4, val))}
        agg = AggregationConfig(Heuristic.ACC)
        publish_day(
            sdir, "ctr", day, model, daily, prev, {"user": agg, "ad": agg}, {"user": users, "ad": users}
        )
        prev = open_version(sdir, day)
    n = 9
    a = ImpressionArrays(
        user_id=np.tile(users, 3),
        ad_id=np.tile(users, 3),
        ts=np.repeat([10, 11, 12], 3) * 86400 + 100,
        day=np.repeat([10, 11, 12], 3).astype(np.int32),
        click=np.zeros(n, np.float32),
        conversion=np.zeros(n, np.float32),
        ctx=np.ones((n, 2), np.int64),
        ctx_ref=np.ones((n, 2), np.int64),
    )
    lookup = DermLookup(ws, ("ctr-user",))
    f = lookup.features(a, 4)
    vec, found = f["derm_ctr-user"], f["derm_ctr-user_found"]
    np.testing.assert_array_equal(found, [0, 0, 0, 1, 1, 1, 1, 1, 1])
    assert not vec[:3].any()
    np.testing.assert_allclose(vec[3:6], _unit(3, 4, 1.0), atol=1e-6)  # day 11 <- version 10
    np.testing.assert_allclose(vec[6:9], _unit(3, 4, -1.0), atol=1e-6)  # day 12 <- version 11
    assert lookup.used == {"ctr-user": {open_version(sdir, 10).version, open_version(sdir, 11).version}}


def test_trained_ranker_consumed_only_earlier_versions(demo_ws: tuple[Path, dict]) -> None:
    """The bootstrap ranker trained on days a..b names versions a..b-1 of the store (never b)."""
    work, summary = demo_ws
    days = summary["train_days"]
    m = json.loads((work / "ranker" / version_name(days[-1]) / "manifest.json").read_text())
    ws = Workspace.open(work)
    want = {open_version(embeddings_dir(ws, "ctr"), d).version for d in days[:-1]}
    for name in m["config"]["derm_inputs"]:
        assert set(m["embedding_versions"][name]) == want


def test_early_stopping_and_calibration(tmp_path: Path, demo_ws: tuple[Path, dict]) -> None:
    work, summary = demo_ws
    days = summary["train_days"][-2:]
    ws = Workspace.open(tmp_path / "ws", work / "data")
    shutil.copytree(work / "embeddings", ws.root / "embeddings")
    cfg = RankerConfig(
        token_dim=8, hidden=(16,), batch_size=512, lr=5e-3, epochs_initial=3, early_stopping=True
    )
    m = train_ranker(ws, ws.dataset(), days, cfg, device="cpu")
    st = m["train_stats"]
    assert m["train_days"] == days[:1] and m["validation_days"] == days[1:]
    assert st["validation"]["days"] == days[1:] and st["validation"]["rows"] > 1000
    assert 1 <= st["best_epoch"] <= st["epochs"] <= 3
    assert len(st["validation_loss_by_epoch"]) == st["epochs"]
    vl = st["validation_loss_by_epoch"]
    assert vl[st["best_epoch"] - 1] == min(vl)
    assert st["epochs"] == 3 or st["epochs"] == st["best_epoch"] + cfg.patience
    # CTR on the held-out day; CVR on the training day: the validation day's conversion labels are those known
    # at its end, so late conversions of its clicks are missing, and it holds ~17 conversions (observed rate
    # 0.076 there vs 0.119 on the training day, whose clicks had a day longer to convert)
    for c in (st["validation"]["calibration_ctr"], st["calibration_cvr"]):
        assert abs(c["predicted"] - c["observed"]) < 0.35 * c["observed"], c
    assert all(version_name(days[1]) not in v for vs in m["embedding_versions"].values() for v in vs)


def test_ranker_weights_change_scores_and_old_schema_fails(
    tmp_path: Path, demo_ws: tuple[Path, dict]
) -> None:
    work, summary = demo_ws
    day = summary["train_days"][-1]
    ws = Workspace.open(work)
    snap = load_ranker(work / "ranker" / version_name(day))
    ds = ws.dataset()
    inputs = Inputs(ds, snap.spec, ActivityLog.from_dataset(ds, day), snap.config.seq_len)
    a = inputs.impressions([day])
    a = a.take(np.arange(min(len(a), 2000)))
    derm = DermLookup(ws, snap.config.derm_inputs).features(a, snap.ranker.derm_dim)
    p1, c1 = score(snap, inputs, a, derm)
    assert np.isfinite(p1).all() and np.isfinite(c1).all()
    with torch.no_grad():
        for p in snap.ranker.mmoe.parameters():
            p.add_(0.5 * torch.randn_like(p))
    p2, _ = score(snap, inputs, a, derm)
    assert np.abs(p1 - p2).max() > 1e-3
    assert not np.array_equal(np.argsort(p1), np.argsort(p2))

    old = tmp_path / version_name(day)
    shutil.copytree(work / "ranker" / version_name(day), old)
    m = json.loads((old / "manifest.json").read_text())
    m["schema_version"] = 1
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="schema_version 1 .* no longer loadable"):
        load_ranker(old)
