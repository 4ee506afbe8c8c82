"""KGE vectors as an embedding store family (adgraph.family) and the ranker's KGE options (ranking.kge):
publish and refuse, point-in-time lookups, each option trains, recorded versions are checked on load."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from adgraph.family import kge_family, publish_kge_family
from adgraph.graph import publish_graph
from adgraph.models import ModelKind, NodeType
from adgraph.snapshot import kge_dir, open_kge, train_kge
from adgraph.train import KGEConfig
from adslog.sequences import ActivityLog
from adslog.synth import SynthConfig, generate
from adslog.workspace import Workspace, version_name
from dermcore.errors import ConfigError, DataError, QualityGateError, VersionMismatchError
from dermfeatures.batches import Inputs
from embstore.store import embeddings_dir, open_version
from ranking.kge import KGELookup
from ranking.model import RankerConfig
from ranking.train import load_ranker, ranker_dir, ranker_kge_features, ranker_spec, train_ranker

DAY0 = 20_000
KCFG = KGEConfig(dim=8, epochs=2, incremental_epochs=1, batch_size=256, negatives=4)
FAMILY = kge_family(ModelKind.TRANSRA)
TINY_RANKER = RankerConfig(
    derm_inputs=(), token_dim=8, hidden=(8,), n_experts=1, cross_layers=1, cross_rank=4, seq_len=5,
    id_buckets=1 << 10, wide_buckets=0, batch_size=256, kge_family=FAMILY, kge_neighbours=4,
)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kger") / "data"
    generate(
        SynthConfig(
            n_users=300,
            n_ads=200,
            n_days=5,
            impressions_per_day=6000,
            n_advertisers=20,
            n_categories=6,
            seed=3,
        ),
        out,
    )
    return out


def _kge_days(ws: Workspace, days: range, model: ModelKind = ModelKind.TRANSRA) -> None:
    for d in days:
        publish_graph(ws, d)
        train_kge(ws, d, replace(KCFG, model=model))
        publish_kge_family(ws, d, model)


@pytest.fixture(scope="module")
def kws(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace with graph, KGE (TransRA) and store family versions of days 0..3."""
    ws = Workspace.create(tmp_path_factory.mktemp("kgw") / "work", data)
    _kge_days(ws, range(DAY0, DAY0 + 4))
    return ws


def test_family_publishes_unit_norm_vectors_of_the_kge_version(kws: Workspace) -> None:
    d = DAY0 + 2
    v = open_version(embeddings_dir(kws, FAMILY), d)
    kv = open_kge(kws, ModelKind.TRANSRA, d)
    assert v.manifest["entities"] == ["user", "ad", "advertiser"]
    assert v.manifest["model_version"] == kv.version and v.lineage == kv.lineage
    for e in ("user", "ad", "advertiser"):
        ids = v.ids(e)
        want, found = kv.lookup(NodeType(e), ids)
        assert found.all() and len(ids) == kv.model.index.count(NodeType(e)) > 0
        got = v.vectors(e)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        # the direction of the KGE vector, row for row (acc aggregation keeps the newest)
        np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)
        assert 0 < v.manifest["kge_norms"][e]["max"] <= 1.0 + 1e-5  # TransRA clamps norms to <= 1


def test_family_refuses_a_corrupt_kge_version_and_a_corrupt_store_file(data: Path, tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "work", data)
    publish_graph(ws, DAY0)
    train_kge(ws, DAY0, KCFG)
    w = kge_dir(ws, ModelKind.TRANSRA) / version_name(DAY0) / "weights.pt"
    good = w.read_bytes()
    w.write_bytes(good[:-10] + b"0123456789")
    with pytest.raises(DataError, match="checksum|unreadable|weights"):
        publish_kge_family(ws, DAY0)
    assert not (embeddings_dir(ws, FAMILY) / version_name(DAY0)).exists()  # nothing published
    w.write_bytes(good)
    publish_kge_family(ws, DAY0)
    f = embeddings_dir(ws, FAMILY) / version_name(DAY0) / "advertiser_vecs.npy"
    arr = np.load(f)
    arr[0] *= 3.0
    np.save(f, arr)
    with pytest.raises(DataError):
        open_version(embeddings_dir(ws, FAMILY), DAY0).lookup("advertiser", np.array([1], np.int64))


def test_store_gate_refuses_non_unit_vectors_of_any_family(kws: Workspace, tmp_path: Path) -> None:
    from embstore.aggregate import AggregationConfig
    from embstore.store import publish_day

    ids = np.array([1, 2], np.int64)
    vecs = np.array([[1.0, 0.0], [0.5, 0.0]], np.float32)
    mm = {"dim": 2, "lineage": "x", "model_version": "m", "artifact_id": "a" * 32}
    daily = {e: (ids, vecs) for e in ("user", "ad", "advertiser")}
    with pytest.raises(QualityGateError, match="not unit-norm"):
        publish_day(
            tmp_path / "f", "kge-transra", DAY0, mm, daily, None, {e: AggregationConfig() for e in daily}, {}
        )
    with pytest.raises(ConfigError, match="store entities"):
        publish_day(
            tmp_path / "f",
            "x",
            DAY0,
            mm,
            {"campaign": (ids, vecs)},
            None,
            {"campaign": AggregationConfig()},
            {},
        )
    assert not (tmp_path / "f").exists()


def test_lookup_is_point_in_time_and_reads_what_was_published(kws: Workspace) -> None:
    ds = kws.dataset()
    lk = KGELookup(kws, ds, FAMILY, ("user", "ad", "advertiser"), neighbours=4)
    inputs = Inputs(ds, _spec(kws), ActivityLog.from_dataset(ds, DAY0 + 3), 5)
    a = inputs.impressions([DAY0 + 2, DAY0 + 3])
    f = lk.features(a, 8)
    for d in (DAY0 + 2, DAY0 + 3):
        v = open_version(embeddings_dir(kws, FAMILY), d - 1)  # the version before the rows' day
        rows = np.flatnonzero(a.day == d)
        want, found = v.lookup("user", a.user_id[rows])
        np.testing.assert_array_equal(f["kge_user"][rows], want)
        np.testing.assert_array_equal(f["kge_user_found"][rows], found.astype(np.float32))
    assert lk.used == {open_version(embeddings_dir(kws, FAMILY), d).version for d in (DAY0 + 1, DAY0 + 2)}
    # neighbours: only edges of the graph version before the row's day (clicks strictly before the day)
    nb = f["kge_nb_ad_id"]
    assert nb.shape == (len(a), 4) and (nb >= 0).any()
    imp = ds.impressions(range(DAY0, DAY0 + 3), ["user_id", "ad_id", "click", "day"])
    clicked = {
        (u, x)
        for u, x, c in zip(
            imp.column("user_id").to_numpy(),
            imp.column("ad_id").to_numpy(),
            imp.column("click").to_numpy(),
            strict=True,
        )
        if c
    }
    rows = np.flatnonzero(a.day == DAY0 + 2)
    pairs = [(a.user_id[i], x) for i in rows for x in nb[i] if x >= 0]
    clicked_before = {
        (u, x)
        for u, x, c, dd in zip(
            imp.column("user_id").to_numpy(),
            imp.column("ad_id").to_numpy(),
            imp.column("click").to_numpy(),
            imp.column("day").to_numpy(),
            strict=True,
        )
        if c and dd < DAY0 + 2
    }
    assert pairs and set(pairs) <= clicked_before and clicked_before <= clicked


def _spec(ws: Workspace):  # noqa: ANN202
    from dermfeatures.spec import build_feature_spec

    return build_feature_spec(ws.dataset(), [DAY0 + 1, DAY0 + 2], 1 << 10)


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"kge_finetune": True, "kge_lr": 0.01},
        {"kge_finetune": True, "kge_attention": True},
    ],
    ids=["frozen", "finetune", "finetune_attention"],
)
def test_ranker_with_each_kge_option_trains_and_reloads(kws: Workspace, opts: dict) -> None:
    cfg = replace(TINY_RANKER, **opts)
    m = train_ranker(kws, kws.dataset(), [DAY0 + 1, DAY0 + 2], cfg, overwrite=True)
    snap = load_ranker(ranker_dir(kws) / version_name(DAY0 + 2))
    r = snap.ranker
    assert m["kge_dim"] == 8 and m["kge_lineages"] == [open_kge(kws, ModelKind.TRANSRA, DAY0).lineage]
    assert m["kge_versions"] and all(x.startswith(FAMILY) for x in m["kge_versions"])
    base = 8 * 3 + 3 + 1 + (8 + 2 if cfg.kge_attention else 0)
    plain = replace(cfg, kge_family=None, kge_finetune=False, kge_attention=False)
    from ranking.model import Ranker

    assert r.input_width - Ranker(snap.spec, plain, 0).input_width == base
    ds = kws.dataset()
    inputs = Inputs(ds, snap.spec, ActivityLog.from_dataset(ds, DAY0 + 3), cfg.seq_len)
    a = inputs.impressions([DAY0 + 3])
    feats = ranker_kge_features(kws, ds, snap, a)
    b = inputs.impression_batch(a.take(np.arange(50)))
    for k, v in feats.items():
        b[k] = torch.from_numpy(v[:50])
    with torch.no_grad():
        out = r(b)
    assert out.shape == (50, 2) and torch.isfinite(out).all()
    assert m["train_stats"]["loss_by_epoch"][0]["loss"] > 0
    if cfg.kge_finetune:
        # the tables started from the version serving the first training day, and training moved them
        v0 = open_version(embeddings_dir(kws, FAMILY), DAY0)
        assert m["kge_init_version"] == v0.version
        t = r.kge_tables
        assert t is not None
        np.testing.assert_array_equal(t.ids_ad.numpy(), v0.ids("ad"))
        moved = (t.emb["ad"].weight[1:].detach().numpy() - v0.vectors("ad")).any(axis=1).mean()
        assert moved > 0.05


def test_ranker_refuses_a_kge_store_of_another_lineage(data: Path, tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "work", data)
    _kge_days(ws, range(DAY0, DAY0 + 3))
    train_ranker(
        ws, ws.dataset(), [DAY0 + 1, DAY0 + 2], replace(TINY_RANKER, kge_finetune=True, kge_attention=True)
    )
    snap = load_ranker(ranker_dir(ws) / version_name(DAY0 + 2))
    # a retrain of the KGE model from scratch starts a new lineage; the family's next version carries it
    publish_graph(ws, DAY0 + 3)
    train_kge(ws, DAY0 + 3, KCFG, scratch=True)
    publish_kge_family(ws, DAY0 + 3)
    ds = ws.dataset()
    inputs = Inputs(ds, snap.spec, ActivityLog.from_dataset(ds, DAY0 + 4), TINY_RANKER.seq_len)
    with pytest.raises(VersionMismatchError, match="KGE lineage"):
        ranker_kge_features(ws, ds, snap, inputs.impressions([DAY0 + 4]))
    with pytest.raises(VersionMismatchError, match="KGE lineage"):  # nor may a fine-tune continue on it
        train_ranker(ws, ds, [DAY0 + 4], TINY_RANKER, parent=ranker_dir(ws) / version_name(DAY0 + 2))
    # a manifest whose recorded table sizes do not match its weights is refused on load
    d = ranker_dir(ws) / version_name(DAY0 + 2)
    m = json.loads((d / "manifest.json").read_text())
    m["kge_table_sizes"]["ad"] += 1
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError):
        load_ranker(d)


def test_kge_config_validation() -> None:
    with pytest.raises(ConfigError, match="not a KGE store family"):
        RankerConfig(kge_family="ctr")
    with pytest.raises(ConfigError, match="need a kge_family"):
        RankerConfig(kge_finetune=True)
    with pytest.raises(ConfigError, match="kge_attention needs"):
        RankerConfig(kge_family=FAMILY, kge_attention=True)
    with pytest.raises(ConfigError, match="kge_attention needs"):
        RankerConfig(kge_family=FAMILY, kge_finetune=True, kge_attention=True, kge_inputs=("user",))
    with pytest.raises(ConfigError, match="kge_inputs"):
        RankerConfig(kge_family=FAMILY, kge_inputs=("category",))
    c = RankerConfig(kge_family=FAMILY, kge_finetune=True, kge_attention=True, kge_lr=0.05)
    assert RankerConfig.from_json(json.loads(json.dumps(c.to_json()))) == c


def test_finetuned_tables_start_from_the_published_vectors(kws: Workspace) -> None:
    from ranking.train import new_snapshot

    v = open_version(embeddings_dir(kws, FAMILY), DAY0 + 1)
    cfg = replace(TINY_RANKER, kge_finetune=True, kge_attention=True)
    snap = new_snapshot(_spec(kws), cfg, 0, torch.device("cpu"), 8, v)
    t = snap.ranker.kge_tables
    assert t is not None and snap.manifest["kge_init_version"] == v.version
    for e in ("user", "ad", "advertiser"):
        ids = v.ids(e)
        got, found = t(e, torch.from_numpy(ids[:50].copy()))
        assert found.all()
        np.testing.assert_array_equal(got.detach().numpy(), v.vectors(e)[:50])
    unknown, found = t("ad", torch.tensor([-1, 7], dtype=torch.long))
    assert not found.any() and not unknown.detach().numpy().any()


@pytest.mark.slow
def test_demo_with_kge_runs_and_query_names_the_kge_version(tmp_path: Path) -> None:
    from adserving.two_stage import ServeConfig, query
    from workflow.cycle import load_cycle_config
    from workflow.demo import DemoConfig, run_demo

    cfg = DemoConfig.tiny().with_kge()
    s = run_demo(tmp_path / "demo", cfg)
    ws = Workspace.open(tmp_path / "demo")
    assert load_cycle_config(ws).kge.enabled
    days = ws.dataset().days()
    fam = embeddings_dir(ws, FAMILY)
    assert ws.published_days(fam) == days[:-1]  # every bootstrap and daily day, none of the eval day
    r = load_ranker(ranker_dir(ws) / version_name(days[-2]))
    assert r.config.kge_attention and r.manifest["kge_versions"]
    assert s["report"]["ranking"]["roc_auc"] > 0.55
    user = int(ws.dataset().impressions(days[-1], ["user_id"]).column("user_id")[0].as_py())
    doc = query(ws, user, ServeConfig(k=5, candidates=50), None, "cpu")
    want = open_version(fam, days[-2]).version
    assert doc["versions"]["kge"] == want and len(doc["results"]) == 5
    # rollback moves the KGE store family, the KGE model and the graph back with everything else
    from adgraph.graph import graph_dir
    from adgraph.snapshot import kge_dir as _kdir
    from workflow.rollback import rollback

    with ws.lock():
        rollback(ws, days[-3])
    for parent in (fam, _kdir(ws, ModelKind.TRANSRA), graph_dir(ws)):
        assert ws.published_days(parent)[-1] == days[-3], parent


def test_neighbours_newest_first_one_per_tail_and_empty_relations() -> None:
    import pyarrow as pa

    from adgraph.graph import EDGE_SCHEMA
    from ranking.kge import Neighbours

    rows = [  # head user 1: ad 10 clicked at 5 and converted at 9, ad 11 at 7; user 2: ad 12 at 1
        ("user", 1, "user_clicked_ad", "ad", 10, 1, 5),
        ("user", 1, "user_converted_ad", "ad", 10, 1, 9),
        ("user", 1, "user_clicked_ad", "ad", 11, 1, 7),
        ("user", 2, "user_clicked_ad", "ad", 12, 1, 1),
    ]
    t = pa.Table.from_pylist([dict(zip(EDGE_SCHEMA.names, r, strict=True)) for r in rows], schema=EDGE_SCHEMA)

    class G:
        def edges(self) -> pa.Table:
            return t

    nb = Neighbours(G(), ("user_clicked_ad", "user_converted_ad"))  # type: ignore[arg-type]
    np.testing.assert_array_equal(
        nb.matrix(np.array([1, 2, 3]), 3), [[10, 11, -1], [12, -1, -1], [-1, -1, -1]]
    )
    np.testing.assert_array_equal(nb.matrix(np.array([1]), 1), [[10]])
    empty = Neighbours(G(), ("user_converted_offsite_advertiser",))  # type: ignore[arg-type]
    np.testing.assert_array_equal(empty.matrix(np.array([1, 2]), 2), -np.ones((2, 2)))


def test_cycle_config_kge_keys_round_trip_and_are_validated(data: Path, tmp_path: Path) -> None:
    from workflow.cycle import CycleConfig, load_cycle_config, save_cycle_config, set_cycle_config

    ws = Workspace.create(tmp_path / "work", data)
    save_cycle_config(ws, CycleConfig(device="cpu"))
    with pytest.raises(ConfigError, match="needs kge.enabled"):
        set_cycle_config(ws, {"ranker.kge_family": "kge-transra"})
    assert not load_cycle_config(ws).kge.enabled  # nothing written
    cfg = set_cycle_config(
        ws,
        {
            "kge.enabled": "true",
            "kge.model.model": "transr",
            "kge.model.dim": "16",
            "ranker.kge_family": "kge-transr",
            "ranker.kge_finetune": "true",
        },
    )
    again = load_cycle_config(ws)
    assert again == cfg and again.kge.family == "kge-transr" and again.kge.model.dim == 16
    assert again.ranker.kge_finetune and not again.ranker.kge_attention
    # a cycle.json written before the option loads with the KGE stage off
    old = CycleConfig.to_json(CycleConfig(device="cpu"))
    old.pop("kge")
    assert not CycleConfig.from_json(old).kge.enabled


def test_run_config_kge_section(tmp_path: Path) -> None:
    from workflow.run_config import parse_run_config

    raw = {
        "kge": {"enabled": True, "model": "transr", "dim": 16, "window_days": 7},
        "ranker": {"kge_family": "kge-transr", "kge_finetune": True, "kge_attention": True},
    }
    rc = parse_run_config(raw, tmp_path / "c.toml")
    k = rc.cycle.kge
    assert k.enabled and k.family == "kge-transr" and k.model.dim == 16 and k.graph.window_days == 7
    assert rc.to_json()["kge"]["model"] == "transr" and rc.cycle.ranker.kge_attention
    with pytest.raises(DataError, match="unknown key 'kge.margin'"):
        parse_run_config({"kge": {"margin": 2.0}}, tmp_path / "c.toml")
    with pytest.raises(DataError, match="needs kge.enabled"):
        parse_run_config({"ranker": {"kge_family": "kge-transra"}}, tmp_path / "c.toml")


def test_kge_score_features_are_the_scores_of_the_model_behind_the_store_version(
    kws: Workspace, tmp_path: Path
) -> None:
    """Rows of day d read f_r(user, candidate) of KGE model version d - 1, the one store version d - 1 was
    published from (tail: the ad, or its advertiser for the offsite relation); a KGE model version other than
    the store version's is refused."""
    from adgraph.graph import Relation
    from adslog.sequences import AdvertiserMap

    ds = kws.dataset()
    rels = ("user_converted_offsite_advertiser", "user_converted_ad", "user_clicked_ad")
    lk = KGELookup(kws, ds, FAMILY, ("user",), scores=rels)
    inputs = Inputs(ds, _spec(kws), ActivityLog.from_dataset(ds, DAY0 + 3), 5)
    a = inputs.impressions([DAY0 + 2, DAY0 + 3])
    f = lk.score_features(a)
    adv = AdvertiserMap.from_dataset(ds)(a.ad_id)
    for d in (DAY0 + 2, DAY0 + 3):
        model = open_kge(kws, ModelKind.TRANSRA, d - 1).model
        rows = np.flatnonzero(a.day == d)
        for r in rels:
            tail = adv if r == "user_converted_offsite_advertiser" else a.ad_id
            want, found = model.relation_scores(Relation(r), a.user_id[rows], tail[rows])
            np.testing.assert_array_equal(f[f"kge_score_{r}"][rows], want)
            np.testing.assert_array_equal(f[f"kge_score_{r}_found"][rows], found.astype(np.float32))
            assert found.mean() > 0.3 and np.abs(want[found]).min() > 0
    # a KGE model version retrained under the published store version is not the one behind it
    import shutil

    ws2 = Workspace.create(tmp_path / "w2", kws.dataset().root)
    for sub in ("graph", "kge", "embeddings"):
        shutil.copytree(kws.root / sub, ws2.root / sub)
    train_kge(ws2, DAY0 + 1, KCFG, overwrite=True)
    with pytest.raises(VersionMismatchError, match="is not the one store version"):
        KGELookup(ws2, ds, FAMILY, ("user",), scores=rels).score_features(inputs.impressions([DAY0 + 2]))


def test_ranker_fits_kge_scores_in_its_wide_part(kws: Workspace) -> None:
    """With a wide part, the KGE relation scores are dense columns fitted with it (weights recorded, logits =
    table + scores . weights + intercept before the deep part trains); a fine-tune refits them; a wide part
    fitted with other dense columns cannot start the ranker."""
    from ranking.model import KGE_SCORES, Ranker
    from ranking.train import FittedWide, RankerRows, fitted_wide, new_snapshot, start_ranker
    from ranking.wide import wide_keys

    cfg = replace(TINY_RANKER, wide_buckets=1 << 12)
    assert cfg.wide_dense == KGE_SCORES
    ds = kws.dataset()
    days = [DAY0 + 1, DAY0 + 2]
    m = train_ranker(kws, ds, days, cfg, overwrite=True)
    w = m["wide_fit"]
    assert len(w["ctr_dense_weights"]) == len(w["cvr_dense_weights"]) == 2 * len(KGE_SCORES)
    assert max(abs(x) for x in w["ctr_dense_weights"]) > 1e-3
    snap = load_ranker(ranker_dir(kws) / version_name(DAY0 + 2))
    assert snap.ranker.wide is not None and snap.ranker.wide.dense is not None
    np.testing.assert_allclose(
        snap.ranker.wide.dense[:, 1].numpy(), np.array(w["cvr_dense_weights"], np.float32), rtol=1e-6
    )
    # before the deep part trains the ranker is the fitted regression, dense columns included
    spec = ranker_spec(ds, days, cfg)  # with the one-hot fields the default wide part reads
    fresh = new_snapshot(spec, cfg, 0, torch.device("cpu"), 8)
    inputs = Inputs(ds, spec, ActivityLog.from_dataset(ds, DAY0 + 3), cfg.seq_len)
    cutoff = (days[-1] + 1) * 86400
    a = inputs.impressions(days, label_cutoff_ts=cutoff)
    lk = KGELookup(kws, ds, FAMILY, cfg.kge_inputs, 0, scores=cfg.kge_scores)
    rows = RankerRows(inputs, a, lk.features(a, 8))
    rec = start_ranker(fresh, inputs, rows, days, cutoff, kge=lk)
    assert rec is not None and len(rec["cvr_dense_weights"]) == 6
    r: Ranker = fresh.ranker
    assert r.wide is not None and r.wide.dense is not None and r.wide.intercept is not None
    idx = np.arange(0, len(a), 5)[:300]
    b = rows.batch(idx)
    dense = torch.stack(
        [b[f"kge_score_{x}{s}"] for x in KGE_SCORES for s in ("", "_found")], dim=1
    )  # the column order the weights were fitted in
    with torch.no_grad():
        want = r.wide.table.weight[wide_keys(inputs, a.take(idx), r.wide.keys)].sum(1)
        want = want + dense @ r.wide.dense + r.wide.intercept
        torch.testing.assert_close(r(b), want, atol=1e-5, rtol=0)
        # a copy of the fitted part starts another ranker identically; other dense columns are refused
        f = fitted_wide(fresh, rec, cutoff)
        assert isinstance(f, FittedWide)
        other = new_snapshot(spec, replace(cfg, seed=5), 0, torch.device("cpu"), 8)
        start_ranker(other, inputs, rows, days, cutoff, f)
        torch.testing.assert_close(other.ranker(b), want, atol=1e-5, rtol=0)
    fewer = new_snapshot(spec, replace(cfg, kge_scores=("user_clicked_ad",)), 0, torch.device("cpu"), 8)
    with pytest.raises(ConfigError, match="dense columns"):
        start_ranker(fewer, inputs, rows, days, cutoff, f)
    # a daily fine-tune refits the dense weights with the table, warm-started
    m2 = train_ranker(kws, ds, [DAY0 + 3], cfg, ranker_dir(kws) / version_name(DAY0 + 2), overwrite=True)
    assert len(m2["wide_fit"]["cvr_dense_weights"]) == 6
    assert m2["wide_fit"]["cvr_dense_weights"] != w["cvr_dense_weights"]


def test_kge_scores_config() -> None:
    with pytest.raises(ConfigError, match="kge_scores"):
        RankerConfig(kge_family=FAMILY, kge_scores=("ad_in_category",))
    assert RankerConfig(kge_family=FAMILY, wide_buckets=0).wide_dense == ()
    assert RankerConfig().wide_dense == ()  # no family: no scores
    c = RankerConfig(kge_family=FAMILY, kge_scores=("user_clicked_ad",))
    assert RankerConfig.from_json(json.loads(json.dumps(c.to_json()))) == c
    old = c.to_json()
    del old["kge_scores"]  # a ranker written before the scores read none
    assert RankerConfig.from_json(old).kge_scores == ()
