"""towers: the DHEN backbone, both tower backbones, TowerConfig, snapshots (resume and new ids), point-in-time
sequence features, accidental hits in the training task, the export that builds only the towers it needs, and
that no oracle column reaches a model."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from adslog.dataset import Dataset
from adslog.schema import ColumnKind
from adslog.sequences import CLICK, CONVERSION, OFFSITE, ActivityLog
from adslog.synth import SynthConfig, generate
from dermcore.errors import ConfigError, DataError, DermError
from dermfeatures.batches import Inputs, training_batches
from dermfeatures.spec import FeatureSpec, Field, build_feature_spec
from dermtrain.loop import run_epochs
from dermtrain.optim import TowerOptimizer
from towers.config import Backbone, DhenModule, TowerConfig
from towers.dhen import DhenBackbone, DhenLayer, MaskNetModule
from towers.export import load_towers
from towers.infer import embed_ads, embed_users
from towers.model import DermModel, EntityTower, InteractionTower
from towers.train import TrainTask, load_snapshot, new_snapshot, save_snapshot, train_towers

CPU = torch.device("cpu")
SMALL = TowerConfig(
    dim=16, token_dim=8, hidden=(32,), dhen_hidden=16, batch_size=128, epochs_initial=1, epochs_incremental=1
)
PAIRS = [
    (DhenModule.MASKNET, DhenModule.TRANSFORMER),
    (DhenModule.MASKNET, DhenModule.MLP),
    (DhenModule.TRANSFORMER, DhenModule.MLP),
]


# ---------------------------------------------------------------- DHEN layers


@pytest.mark.parametrize("modules", PAIRS)
def test_dhen_layer_maps_btc_to_btc(modules: tuple[DhenModule, DhenModule]) -> None:
    torch.manual_seed(0)
    layer = DhenLayer(5, 8, replace(SMALL, dhen_modules=modules))
    x = torch.randn(3, 5, 8)
    y = layer(x)
    assert y.shape == (3, 5, 8) and y.dtype == torch.float32
    # every output token is layer-normalised over C (default affine: weight 1, bias 0)
    assert torch.allclose(y.mean(-1), torch.zeros(3, 5), atol=1e-5)
    assert torch.allclose(y.var(-1, unbiased=False), torch.ones(3, 5), atol=1e-3)
    y.sum().backward()  # every module is on the gradient path
    for m in layer.branches:
        assert all(p.grad is not None for p in m.parameters())


def test_dhen_layer_is_norm_of_ensemble_plus_residual() -> None:
    torch.manual_seed(0)
    layer = DhenLayer(4, 8, SMALL)
    x = torch.randn(6, 4, 8)
    with torch.no_grad():
        # ensemble silenced: what is left is LayerNorm(x), the residual through the normalisation
        layer.combine.weight.zero_()
        layer.combine.bias.zero_()
        assert torch.allclose(layer(x), torch.nn.functional.layer_norm(x, (8,)), atol=1e-6)
        # ensemble on: the output is LayerNorm(combine(concat(M1(x), M2(x))) + x) and differs from LN(x)
        torch.nn.init.normal_(layer.combine.weight)
        ens = layer.combine(torch.cat([m(x) for m in layer.branches], dim=-1))
        assert ens.shape == (6, 4, 8)
        assert torch.allclose(layer(x), torch.nn.functional.layer_norm(ens + x, (8,)), atol=1e-5)
        assert not torch.allclose(layer(x), torch.nn.functional.layer_norm(x, (8,)), atol=1e-2)


def test_masknet_mask_is_instance_guided() -> None:
    torch.manual_seed(0)
    m = MaskNetModule(4, 8, 16)
    x = torch.randn(2, 4, 8)
    with torch.no_grad():
        mask = m.instance_mask(x)
        assert mask.shape == (2, 4, 8)
        # two instances get two different masks
        assert (mask[0] - mask[1]).abs().max() > 1e-3
        # changing token 3 of instance 0 changes the mask of its token 0 (the mask reads the whole instance) ...
        x2 = x.clone()
        x2[0, 3] += 1.0
        mask2 = m.instance_mask(x2)
        assert (mask2[0, 0] - mask[0, 0]).abs().max() > 1e-4
        # ... and nothing of instance 1 (no mixing across the batch)
        assert torch.equal(mask2[1], mask[1])
        assert torch.allclose(m(x)[1:], m(x[1:]), atol=1e-6)


def test_backbone_emits_dim_over_c_tokens_flattened() -> None:
    cfg = replace(SMALL, dim=24, token_dim=8)  # T_out = 3
    bb = DhenBackbone(5, cfg)
    assert bb.to_output.mix.out_features == 3
    assert bb(torch.randn(7, 5, 8)).shape == (7, 24)
    assert len(bb.layers) == cfg.dhen_layers


# ---------------------------------------------------------------- TowerConfig


def test_config_json_round_trip_and_old_manifests() -> None:
    cfg = TowerConfig(dhen_modules=(DhenModule.TRANSFORMER, DhenModule.MLP), dhen_layers=3, dhen_heads=4)
    d = cfg.to_json()
    assert d["backbone"] == "dhen" and d["dhen_modules"] == ["transformer", "mlp"]
    assert TowerConfig.from_json(d) == cfg
    assert TowerConfig(**d) == cfg  # JSON spellings are accepted by the constructor too
    # a manifest written before the DHEN backbone existed: its weights are the MLP towers'
    old = {k: v for k, v in TowerConfig().to_json().items() if k != "backbone" and not k.startswith("dhen_")}
    loaded = TowerConfig.from_json(old)
    assert loaded.backbone is Backbone.MLP
    assert loaded.dhen_layers == TowerConfig().dhen_layers
    assert TowerConfig().backbone is Backbone.DHEN


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"dim": 20, "token_dim": 8}, "multiple of token_dim"),
        ({"dhen_layers": 0}, "dhen_layers"),
        ({"dhen_modules": ("masknet",)}, "two modules"),
        ({"dhen_heads": 3}, "must divide token_dim"),
        ({"dhen_modules": ("masknet", "dcn")}, "dcn"),
        ({"backbone": "resnet"}, "resnet"),
        ({"embedding_init_std": 0.0}, "embedding_init_std"),
    ],
)
def test_config_validation(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TowerConfig(**kw)


def test_mlp_backbone_does_not_need_a_token_multiple() -> None:
    assert TowerConfig(backbone=Backbone.MLP, dim=20, token_dim=8).dim == 20


# ---------------------------------------------------------------- towers on a hand-built spec

SPEC = FeatureSpec(
    user=(
        Field("user_id", "id", 64),
        Field("age", "categorical", 5),
        Field("score", "numeric", 1),
        Field("u_vec", "dense_vector", 4),
    ),
    ad=(
        Field("ad_id", "id", 64),
        Field("category", "categorical", 6),
        Field("price", "numeric", 1),
        Field("content", "dense_vector", 4),
    ),
    context=(Field("surface", "categorical", 4),),
    id_buckets=64,
    ad_category="category",
    seq_ad_buckets=64,
    seq_adv_buckets=32,
)


def hand_batch(b: int, seed: int = 0, seq_len: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ad_id = torch.randint(1, 10**6, (b,), generator=g)
    return {
        "user_cat": torch.stack(
            [torch.randint(1, 64, (b,), generator=g), torch.randint(0, 5, (b,), generator=g)], 1
        ),
        "user_num": torch.randn(b, 1, generator=g),
        "user_dense": torch.randn(b, 4, generator=g),
        "seq_ad": torch.randint(0, 64, (b, seq_len), generator=g),
        "seq_adv": torch.randint(0, 32, (b, seq_len), generator=g),
        "seq_cat": torch.randint(0, 6, (b, seq_len), generator=g),
        "seq_kind": torch.randint(0, 4, (b, seq_len), generator=g),
        "seq_dense": torch.randn(b, seq_len, 4, generator=g),
        "ad_cat": torch.stack(
            [torch.randint(1, 64, (b,), generator=g), torch.randint(0, 6, (b,), generator=g)], 1
        ),
        "ad_num": torch.randn(b, 1, generator=g),
        "ad_dense": torch.randn(b, 4, generator=g),
        "ctx": torch.randint(0, 4, (b, 1), generator=g),
        "click": torch.ones(b),
        "conversion": torch.zeros(b),
        "ad_id": ad_id,
        "ad_bucket": ad_id % 64,
    }


@pytest.mark.parametrize("backbone", [Backbone.DHEN, Backbone.MLP])
def test_embeddings_are_unit_norm(backbone: Backbone) -> None:
    torch.manual_seed(0)
    model = DermModel(SPEC, replace(SMALL, backbone=backbone)).eval()
    b = hand_batch(33)
    with torch.no_grad():
        u, a, logits = model(b)
    assert u.shape == a.shape == (33, 16) and logits.shape == (33, 2)
    assert torch.allclose(u.norm(dim=1), torch.ones(33), atol=1e-5)
    assert torch.allclose(a.norm(dim=1), torch.ones(33), atol=1e-5)
    assert u.std(0).mean() > 1e-3  # not a constant vector
    # user tower: 2 cat tokens + numerics + dense + the sequence; Pin tower: no sequence (embeddable at launch)
    assert model.user_tower.n_tokens == 5 and model.pin_tower.n_tokens == 4
    assert model.pin_tower.sequence is None
    if backbone is Backbone.DHEN:
        assert isinstance(model.user_tower.backbone, DhenBackbone)
    else:  # the foundation's MLP towers, parameter names unchanged, so their old snapshots still load
        assert not any(isinstance(m, DhenLayer) for m in model.modules())
        names = {k for k in model.state_dict() if k.startswith("user_tower.backbone.")}
        assert names == {f"user_tower.backbone.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
        assert model.state_dict()["user_tower.backbone.0.weight"].shape == (32, 5 * 8)


def test_embedding_init_std_sets_the_id_tables_and_keeps_padding_zero() -> None:
    torch.manual_seed(0)
    default = DermModel(SPEC, SMALL)
    small = DermModel(SPEC, replace(SMALL, embedding_init_std=0.05))
    tables = [(n, m) for n, m in small.named_modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
    assert tables  # the hashed id tables (fields and sequence) are the sparse ones
    for name, t in tables:
        w = t.weight.detach()
        assert torch.all(w[0] == 0), name  # padding row
        assert 0.03 < float(w[1:].std()) < 0.07, name
        ref = dict(default.named_modules())[name].weight.detach()
        assert 0.8 < float(ref[1:].std()) < 1.2, name  # torch's N(0, 1) without the option


@pytest.mark.parametrize("learn", [True, False])
def test_temperature_is_trained_unless_fixed(learn: bool) -> None:
    torch.manual_seed(0)
    cfg = replace(SMALL, learn_temperature=learn, temperature_init=0.2)
    task = TrainTask(DermModel(SPEC, cfg), cfg)
    opt = TowerOptimizer(task.model, lr=0.05)
    for seed in range(3):
        _step(task, opt, hand_batch(16, seed=seed))
    tau = float(task.model.temperature().detach())
    if learn:
        assert tau != pytest.approx(0.2, abs=1e-4)
    else:
        assert tau == pytest.approx(0.2, abs=1e-7)
        assert TowerConfig.from_json(cfg.to_json()).learn_temperature is False


@pytest.mark.parametrize("sparse", [True, False])
def test_sparse_embeddings_choose_the_optimiser(sparse: bool) -> None:
    """sparse_embeddings: sparse id tables under SparseAdam, or dense tables under Adam, whose moments keep moving
    a row on the steps after it was used (SparseAdam touches only the rows of the batch)."""
    torch.manual_seed(0)
    cfg = replace(SMALL, sparse_embeddings=sparse)
    task = TrainTask(DermModel(SPEC, cfg), cfg)
    towers = (task.model.user_tower, task.model.pin_tower)
    tables = [t for tower in towers for t in tower.fields.cats]
    seq = task.model.user_tower.sequence
    assert seq is not None
    tables += [seq.ad, seq.adv]
    assert all(t.sparse is sparse for t in tables)
    opt = TowerOptimizer(task.model, lr=0.05)
    assert (opt.sparse is not None) is sparse
    user_ids = task.model.user_tower.fields.cats[0].weight
    b1, b2 = hand_batch(16, seed=1), hand_batch(16, seed=2)
    b2["user_cat"][:, 0] = 1  # the second step uses user row 1 only
    seen = next(int(u) for u in b1["user_cat"][:, 0] if int(u) != 1)  # a row of the first step only
    _step(task, opt, b1)
    row = user_ids[seen].detach().clone()
    _step(task, opt, b2)
    assert (
        torch.equal(row, user_ids[seen].detach()) is sparse
    )  # Adam's momentum moves it, SparseAdam does not
    assert TowerConfig.from_json(cfg.to_json()).sparse_embeddings is sparse


def test_pin_tower_ignores_engagement_inputs() -> None:
    torch.manual_seed(0)
    model = DermModel(SPEC, SMALL).eval()
    b, other = hand_batch(8, seed=1), hand_batch(8, seed=2)
    for k in ("user_cat", "user_num", "user_dense", "seq_ad", "seq_adv", "seq_cat", "seq_kind", "seq_dense"):
        b2 = {**b, k: other[k]}
        with torch.no_grad():
            assert torch.equal(model.pin_tower(b, "ad"), model.pin_tower(b2, "ad"))


def test_training_task_masks_accidental_hits() -> None:
    """Every row clicked the same ad: each positive's other columns are accidental hits, all masked, so the
    contrastive loss is exactly 0. The same rows with distinct ad ids (identical features, so identical Pin
    embeddings) are real negatives: log(B)."""
    torch.manual_seed(0)
    task = TrainTask(DermModel(SPEC, SMALL), SMALL).eval()
    b = hand_batch(6)
    for k in ("ad_cat", "ad_num", "ad_dense"):
        b[k] = b[k][:1].expand_as(b[k]).clone()
    same = {**b, "ad_id": torch.full((6,), 42), "ad_bucket": torch.full((6,), 42)}
    distinct = {**b, "ad_id": torch.arange(6) + 100, "ad_bucket": torch.full((6,), 42)}
    with torch.no_grad():
        _, parts_same = task(same)
        _, parts_distinct = task(distinct)
    assert parts_same["contrastive"] == pytest.approx(0.0, abs=1e-6)
    assert parts_distinct["contrastive"] == pytest.approx(math.log(6), abs=1e-5)


# ---------------------------------------------------------------- on a tiny synthetic dataset


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("towers") / "data"
    generate(
        SynthConfig(n_users=400, n_ads=240, n_advertisers=40, n_days=4, impressions_per_day=2500, seed=3),
        path,
    )
    return path


def _step(snap_task: TrainTask, opt: TowerOptimizer, batch: dict[str, torch.Tensor]) -> None:
    snap_task.train()
    loss, _ = snap_task(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    snap_task.eval()


def test_snapshot_resumes_with_the_same_loss_and_optimizer_state(tiny_ds: Path, tmp_path: Path) -> None:
    ds = Dataset.open(tiny_ds)
    days = ds.days()
    spec = build_feature_spec(ds, days[:1], SMALL.id_buckets)
    snap = new_snapshot(spec, SMALL, CPU)
    inputs = Inputs(ds, spec, ActivityLog.from_dataset(ds, days[1]), SMALL.seq_len)
    arrays = inputs.impressions(days[:1])
    run_epochs(
        snap.task, snap.optimizer, lambda i: inputs.impression_batch(arrays.take(i)), len(arrays), 1, 128, CPU
    )
    save_snapshot(snap, tmp_path / "models", days[0], {})
    loaded = load_snapshot(tmp_path / "models" / f"day={days[0]}")
    loaded.task.eval()  # eval: the logQ estimate is not updated by the loss evaluation itself
    batch = inputs.impression_batch(inputs.impressions(days[1:2]).take(np.arange(256)))
    with torch.no_grad():
        before, after = snap.task(batch)[0].item(), loaded.task(batch)[0].item()
    assert after == pytest.approx(before, abs=1e-6)
    assert torch.equal(loaded.task.freq.counts, snap.task.freq.counts)
    # one more step on both: identical only if the optimiser state (Adam moments, step counts) was resumed
    fresh = load_snapshot(tmp_path / "models" / f"day={days[0]}", with_state=False)
    fresh.task.freq.load_state_dict(snap.task.freq.state_dict())  # only the optimiser state differs
    for s in (snap, loaded, fresh):
        _step(s.task, s.optimizer, batch)
    with torch.no_grad():
        l_snap, l_loaded, l_fresh = (s.task(batch)[0].item() for s in (snap, loaded, fresh))
    assert l_loaded == pytest.approx(l_snap, abs=1e-5)
    assert abs(l_fresh - l_snap) > 1e-4  # a fresh optimiser takes a different step: the check can fail


def test_incremental_step_learns_ids_first_seen_after_the_snapshot(tiny_ds: Path, tmp_path: Path) -> None:
    ds = Dataset.open(tiny_ds)
    days = ds.days()
    out = tmp_path / "models"
    m0 = train_towers(ds, days[:2], SMALL, out, device="cpu")
    m1 = train_towers(ds, [days[2]], SMALL, out, parent=out / f"day={days[1]}", device="cpu")
    assert m1["lineage"] == m0["lineage"] and m1["parent"] == m0["artifact_id"]
    assert m1["days_seen"] == days[:3]
    old_users = np.unique(ds.impressions(days[:2], ["user_id"]).column("user_id").to_numpy())
    day_users = np.unique(ds.impressions(days[2], ["user_id"]).column("user_id").to_numpy())
    new_users = np.setdiff1d(day_users, old_users).astype(np.int64)
    assert len(new_users) > 10  # the synthetic log brings users in over the period
    parent, child = load_snapshot(out / f"day={days[1]}"), load_snapshot(out / f"day={days[2]}")
    # the new users' hashed id rows were trained by the increment
    key = next(j for j, f in enumerate(child.spec.cats("user")) if f.name == "user_id")
    inputs = Inputs(ds, child.spec, ActivityLog.from_dataset(ds, days[2]), SMALL.seq_len)
    rows = inputs.users.rows(new_users)[0][:, key]
    w0, w1 = (
        s.model.user_tower.fields.cats[key].state_dict()["weight"][torch.from_numpy(rows)]
        for s in (parent, child)
    )
    assert ((w1 - w0).abs().sum(1) > 0).float().mean() > 0.9
    ts = np.full(len(new_users), (days[2] + 1) * 86400, np.int64)
    u = embed_users(child.towers, inputs, new_users, ts)
    assert np.isfinite(u).all() and np.allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-5)
    # an ad id nobody has ever seen is embedded from its (absent) features and its own hash bucket
    a = embed_ads(child.towers, inputs, np.array([10**15 + 7, 10**15 + 9], np.int64))
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5) and not np.allclose(a[0], a[1])


def test_the_export_builds_only_the_tower_it_needs(
    tiny_ds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchrec's model / train task / export split: `load_towers` builds the towers asked for and nothing else
    (not the other tower, not the interaction tower, no training task), with the parameters the whole model
    holds, so they embed exactly as the training snapshot does."""
    ds = Dataset.open(tiny_ds)
    days = ds.days()
    train_towers(ds, days[:1], SMALL, tmp_path / "models", device="cpu")
    sdir = tmp_path / "models" / f"day={days[0]}"
    full = load_snapshot(sdir, with_state=False)
    built: list[str] = []
    entity_init = EntityTower.__init__

    def counted(self: EntityTower, spec: FeatureSpec, entity: str, cfg: TowerConfig) -> None:
        built.append(entity)
        entity_init(self, spec, entity, cfg)

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("the export built the interaction tower")

    monkeypatch.setattr(EntityTower, "__init__", counted)
    monkeypatch.setattr(InteractionTower, "__init__", refused)
    user_only = load_towers(sdir, ("user",))
    assert built == ["user"] and user_only.ad is None
    ad_only = load_towers(sdir, ("ad",))
    assert built == ["user", "ad"] and ad_only.user is None
    meta = load_towers(sdir, ())  # the manifest, config and spec only
    assert built == ["user", "ad"] and meta.user is None and meta.ad is None
    monkeypatch.undo()
    assert user_only.model_version == meta.model_version == full.model_version
    for got, ref in ((user_only.user, full.model.user_tower), (ad_only.ad, full.model.pin_tower)):
        assert got is not None
        sd, want = got.state_dict(), ref.state_dict()
        assert sd.keys() == want.keys() and all(torch.equal(sd[k], want[k]) for k in sd)
    inputs = Inputs(ds, full.spec, ActivityLog.from_dataset(ds, days[1]), SMALL.seq_len)
    users = np.unique(ds.impressions(days[1], ["user_id"]).column("user_id").to_numpy()).astype(np.int64)
    ts = np.full(len(users), (days[1] + 1) * 86400, np.int64)
    ads = ds.live_ads(days[1])
    u = embed_users(user_only, inputs, users, ts)
    np.testing.assert_array_equal(u, embed_users(full.towers, inputs, users, ts))
    np.testing.assert_array_equal(embed_ads(ad_only, inputs, ads), embed_ads(full.towers, inputs, ads))
    assert np.abs(u[0] - u[1]).max() > 1e-3  # real vectors, not a constant
    with pytest.raises(DermError, match="the ad tower was not loaded"):
        embed_ads(user_only, inputs, ads)
    with pytest.raises(DermError, match="towers to load"):
        load_towers(sdir, ("interaction",))
    (sdir / "weights.pt").write_bytes(b"\0" * (sdir / "weights.pt").stat().st_size)  # same size, other bytes
    with pytest.raises(DataError, match="differs from the manifest"):
        load_towers(sdir, ("user",))  # the manifest's payload record is checked before any weight is read


def test_sequence_features_use_no_event_at_or_after_the_impression(tiny_ds: Path) -> None:
    """A hand-made activity log puts, for each impression, one event 1 s before it and three at or after it
    (its own ts, 5 s later, an offsite conversion at ts); the batch must equal the one built from the allowed
    event alone, and so must the user embedding."""
    ds = Dataset.open(tiny_ds)
    days = ds.days()
    spec = build_feature_spec(ds, days[:2], SMALL.id_buckets)
    probe = Inputs(ds, spec, ActivityLog.from_dataset(ds, days[0]), SMALL.seq_len)
    a = probe.impressions([days[1]])
    _, first = np.unique(a.user_id, return_index=True)
    a = a.take(first[:64])  # one impression per user
    n = len(a)
    ads = probe.ads.ids
    ok_ad, leak_ad = ads[1], ads[2]
    allowed = (a.user_id, a.ts - 1, np.full(n, CLICK), np.full(n, ok_ad), np.full(n, 7))
    leaks = [
        (a.user_id, a.ts, np.full(n, CLICK), np.full(n, leak_ad), np.full(n, 8)),
        (a.user_id, a.ts + 5, np.full(n, CONVERSION), np.full(n, leak_ad), np.full(n, 8)),
        (a.user_id, a.ts, np.full(n, OFFSITE), np.full(n, -1), np.full(n, 9)),
    ]

    def log(parts: list[tuple[np.ndarray, ...]]) -> ActivityLog:
        u, t, k, ad, adv = (np.concatenate(c) for c in zip(*parts, strict=True))
        return ActivityLog(u.astype(np.int64), t.astype(np.int64), k.astype(np.int8), ad, adv)

    clean = Inputs(ds, spec, log([allowed]), SMALL.seq_len).impression_batch(a)
    leaky = Inputs(ds, spec, log([allowed, *leaks]), SMALL.seq_len).impression_batch(a)
    assert (clean["seq_kind"] > 0).sum(1).tolist() == [1] * n  # the allowed event is there
    for k in clean:
        assert torch.equal(clean[k], leaky[k]), k
    # the check can fail: one second later the events at ts are visible
    later = Inputs(ds, spec, log([allowed, *leaks]), SMALL.seq_len).user_batch(a.user_id, a.ts + 1)
    assert (later["seq_kind"] > 0).sum(1).tolist() == [3] * n
    torch.manual_seed(0)
    model = DermModel(spec, SMALL).eval()
    with torch.no_grad():
        assert torch.equal(model.user_tower(clean, "user"), model.user_tower(leaky, "user"))
        assert not torch.equal(model.user_tower(clean, "user"), model.user_tower(later, "user"))


def test_no_oracle_column_reaches_a_model(tiny_ds: Path, tmp_path: Path) -> None:
    ds = Dataset.open(tiny_ds)
    days = ds.days()
    oracle = {
        c
        for t, cols in ds.manifest["tables"].items()
        for c, meta in cols["columns"].items()
        if meta["kind"] == ColumnKind.ORACLE.value
    }
    assert {"p_click", "p_conversion"} <= oracle
    spec = build_feature_spec(ds, days[:2], SMALL.id_buckets)
    names = {f.name for f in (*spec.user, *spec.ad, *spec.context)}
    assert not names & oracle
    assert not any(o in str(spec.to_json()) for o in oracle)
    # a copy of the dataset whose oracle columns hold other values gives the same batches
    copy = tmp_path / "data"
    shutil.copytree(tiny_ds, copy)
    rng = np.random.default_rng(0)
    for part in sorted((copy / "impressions").glob("day=*/*.parquet")):
        t = pq.read_table(part)
        for c in oracle & set(t.column_names):
            i = t.column_names.index(c)
            t = t.set_column(i, c, pa.array(rng.random(t.num_rows).astype(np.float32)))
        pq.write_table(t, part)
    m = json.loads((copy / "manifest.json").read_text())
    del m["payload"]  # the rewritten files no longer match the payload record; this copy is edited by design
    (copy / "manifest.json").write_text(json.dumps(m))
    ds2 = Dataset.open(copy, check_files=False)
    assert not np.allclose(
        ds.impressions(days[1], ["p_click"]).column("p_click").to_numpy(),
        ds2.impressions(days[1], ["p_click"]).column("p_click").to_numpy(),
    )
    b1, b2 = (
        Inputs(d, spec, ActivityLog.from_dataset(d, days[1]), SMALL.seq_len).impression_batch(
            Inputs(d, spec, ActivityLog.from_dataset(d, days[1]), SMALL.seq_len).impressions([days[1]])
        )
        for d in (ds, ds2)
    )
    assert not set(b1) & oracle
    for k in b1:
        assert torch.equal(b1[k], b2[k]), k
    # the feature loader itself refuses oracle columns
    with pytest.raises(Exception, match="oracle"):
        ds.feature_columns("impressions", [ColumnKind.ORACLE])


def test_id_bucket_factor_sizes_the_id_tables() -> None:
    from dermfeatures.spec import id_bucket_count

    assert id_bucket_count(29_858, 1 << 17) == 65_536  # 2x, next power of two
    assert id_bucket_count(29_858, 1 << 20, factor=8) == 262_144
    assert id_bucket_count(29_858, 1 << 17, factor=8) == 1 << 17  # the cap still holds
    assert id_bucket_count(10, 1 << 17) == 1024  # the floor
    with pytest.raises(ValueError, match="id_bucket_factor"):
        TowerConfig(id_bucket_factor=0)


# ---------------------------------------------------------------- sum backbone, mixed negative sampling


def test_sum_backbone_is_the_normalised_sum_of_the_tokens() -> None:
    with pytest.raises(ConfigError, match="token_dim"):
        TowerConfig(backbone=Backbone.SUM, dim=16, token_dim=8)
    torch.manual_seed(0)
    model = DermModel(SPEC, replace(SMALL, backbone=Backbone.SUM, dim=8)).eval()
    b = hand_batch(7)
    with torch.no_grad():
        u, a, _ = model(b)
        toks = model.pin_tower.tokens(b, "ad")
    assert toks.shape == (7, 4, 8)
    assert torch.allclose(a, torch.nn.functional.normalize(toks.sum(1), dim=-1), atol=1e-6)
    assert not any(p.numel() for p in model.user_tower.backbone.parameters())
    assert u.shape == (7, 8)


def test_training_batches_draw_uniform_negatives_from_the_training_ads(tiny_ds: Path) -> None:
    ds = Dataset.open(tiny_ds)
    days = ds.days()
    spec = build_feature_spec(ds, days[:1], SMALL.id_buckets)
    inputs = Inputs(ds, spec, ActivityLog.from_dataset(ds, days[0]), SMALL.seq_len)
    arrays = inputs.impressions(days[:1])
    pool = np.unique(arrays.ad_id)
    idx = np.arange(64)
    plain = training_batches(inputs, arrays, 0, 3)(idx)
    assert not any(k.startswith("neg_") for k in plain)
    make = training_batches(inputs, arrays, 300, 3)
    b1, b2 = make(idx), make(idx)
    ids = b1["neg_ad_id"].numpy()
    assert len(ids) == 300 and np.isin(ids, pool).all()
    assert not np.array_equal(ids, b2["neg_ad_id"].numpy())  # a fresh draw per batch
    assert np.array_equal(ids, training_batches(inputs, arrays, 300, 3)(idx)["neg_ad_id"].numpy())  # seeded
    assert b1["neg_rate"].item() == pytest.approx(300 / len(pool))
    assert torch.equal(b1["neg_ad_cat"], inputs.ad_batch(ids)["ad_cat"])
    for k in ("ad_cat", "user_cat", "click"):
        assert torch.equal(b1[k], plain[k])


def test_mixed_negatives_join_the_softmax_with_one_log_q(tiny_ds: Path) -> None:
    """The contrastive loss with extra negatives equals the softmax written out by hand over the batch's ads
    and the drawn ones, each column corrected by log(in-batch estimate + draws / pool)."""
    ds = Dataset.open(tiny_ds)
    days = ds.days()
    cfg = replace(SMALL, weight_ctr=0.0, weight_cvr=0.0, extra_negatives=50)
    spec = build_feature_spec(ds, days[:1], cfg.id_buckets)
    snap = new_snapshot(spec, cfg, CPU)
    inputs = Inputs(ds, spec, ActivityLog.from_dataset(ds, days[0]), cfg.seq_len)
    arrays = inputs.impressions(days[:1])
    b = training_batches(inputs, arrays, 50, 0)(np.arange(128))
    task = snap.task
    task.freq.update(b["ad_bucket"])  # a prior estimate; eval mode leaves it unchanged in the forward
    task.eval()
    with torch.no_grad():
        loss, parts = task(b)
        u = task.model.user_tower(b, "user")
        cand = torch.cat([task.model.pin_tower(b, "ad"), task.model.pin_tower(b, "neg_ad")])
        ids = torch.cat([b["ad_id"], b["neg_ad_id"]])
        buckets = torch.cat([b["ad_bucket"], b["neg_ad_bucket"]])
        q = task.freq.counts[buckets] / task.freq.batches + 50 / len(np.unique(arrays.ad_id))
        pos = (b["click"] > 0).nonzero().squeeze(1)
        logits = u[pos] @ cand.T / cfg.temperature_init - q.log().float()
        total = 0.0
        for r, p in enumerate(pos.tolist()):
            keep = (ids != ids[p]) | (torch.arange(len(ids)) == p)
            row = logits[r][keep]
            total += (torch.logsumexp(row, 0) - logits[r, p]).item()
    assert len(pos) > 0 and cand.shape[0] == 178
    assert parts["contrastive"] == pytest.approx(total / len(pos), rel=1e-4)
    assert loss.item() == pytest.approx(total / len(pos), rel=1e-4)
