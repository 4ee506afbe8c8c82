"""The synthetic ads log: determinism, schema, the oracle, and the planted structure's statistics."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import adslog.oracle as oracle_mod
from adslog.dataset import Dataset, DatasetWriter
from adslog.schema import REQUIRED_IMPRESSION_COLUMNS, ColumnKind
from adslog.synth import (
    REFERENCE_POSITION,
    REFERENCE_SURFACE,
    Oracle,
    SynthConfig,
    build_world,
    generate,
    roc_auc,
)
from dermcore.errors import DataError, DermError

TINY = SynthConfig(n_users=300, n_ads=400, n_advertisers=30, n_days=3, impressions_per_day=3_000, seed=7)
# small but not tiny: enough clicks for stable statistics, ~1.5 s to generate
SMALL = SynthConfig(n_users=2_000, n_days=5, impressions_per_day=30_000, seed=1)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "small"
    stats = generate(SMALL, out)
    return out, stats


@pytest.fixture(scope="module")
def small_imps(small: tuple[Path, dict]):
    ds = Dataset.open(small[0])
    return ds.impressions(ds.days())


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".parquet", ".npy")
    }


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    sa, sb = generate(TINY, a), generate(TINY, b)
    fa, fb = _files(a), _files(b)
    assert len([f for f in fa if f.endswith(".parquet")]) == TINY.n_days + 3
    assert fa.keys() == fb.keys()
    for name in fa:
        assert fa[name] == fb[name], name
    assert sa == sb
    c = tmp_path / "c"
    generate(SynthConfig(**{**TINY.__dict__, "seed": 8}), c)
    assert _files(c)["impressions/day=20000/part-0.parquet"] != fa["impressions/day=20000/part-0.parquet"]


def test_manifest_kinds_and_no_latent_in_tables(small: tuple[Path, dict]) -> None:
    root, stats = small
    ds = Dataset.open(root)
    assert ds.has_oracle and ds.first_day == SMALL.start_day and ds.last_day == SMALL.last_day
    imp = ds.columns["impressions"]
    for req in REQUIRED_IMPRESSION_COLUMNS:
        assert imp[req.name].dtype == req.dtype and imp[req.name].kind == req.kind
    assert imp["p_click"].kind is ColumnKind.ORACLE and imp["p_conversion"].kind is ColumnKind.ORACLE
    assert imp["conversion"].kind is ColumnKind.LABEL and imp["conversion_ts"].kind is ColumnKind.TIME
    assert imp["surface"].cardinality >= 3 and imp["position"].cardinality >= 3
    ads = ds.columns["ads"]
    assert ads["content"].kind is ColumnKind.DENSE_VECTOR and ads["content"].dim == 16
    assert ads["objective"].cardinality == 2 and ads["category"].dtype == "int16"
    assert {c.name for c in ds.feature_columns("users")} >= {"user_id", "region", "age_bucket"}
    m = ds.manifest
    assert m["source"]["generator"] == "derm.synth" and m["source"]["config"]["seed"] == SMALL.seed
    assert m["stats"] == stats
    assert m["oracle"]["kind"] == "oracle" and (root / m["oracle"]["path"] / "user_static.npy").is_file()
    for table in ("users", "ads", "offsite_conversions"):
        assert all(c.kind is not ColumnKind.ORACLE for c in ds.columns[table].values())
    # only impressions join users to ads; no latent array reaches any Parquet file
    latent_names = set(m["oracle"]["arrays"])
    for f in root.rglob("*.parquet"):
        names = set(pq.read_schema(f).names)
        assert not (names & latent_names), f
        if "impressions" not in f.parts:
            assert not {"user_id", "ad_id"} <= names, f
    # ids are explicit, not row positions
    uid = ds.users(["user_id"]).column("user_id").to_numpy()
    aid = ds.ads(["ad_id"]).column("ad_id").to_numpy()
    assert not np.array_equal(uid, np.arange(len(uid))) and uid.min() > len(uid)
    assert not np.array_equal(aid, np.arange(len(aid))) and len(np.intersect1d(uid, aid)) == 0


def test_oracle_reproduces_logged_probabilities(small: tuple[Path, dict], small_imps) -> None:
    oracle = Oracle.load(small[0])
    t = small_imps.slice(0, 50_000)
    day = t.column("day").to_numpy()
    assert len(np.unique(day)) >= 2
    args = [t.column(c).to_numpy() for c in ("user_id", "ad_id")]
    ctx = [t.column(c).to_numpy() for c in ("surface", "position")]
    for d in np.unique(day):
        sel = day == d
        u, a, s, p = args[0][sel], args[1][sel], ctx[0][sel], ctx[1][sel]
        pc = oracle.p_click(u, a, int(d), s, p)
        assert pc.dtype == np.float32 and pc.shape == u.shape
        np.testing.assert_allclose(pc, t.column("p_click").to_numpy()[sel], rtol=1e-5, atol=1e-7)
        pv = oracle.p_conversion(u, a, int(d), s, p)
        np.testing.assert_allclose(pv, t.column("p_conversion").to_numpy()[sel], rtol=1e-5, atol=1e-7)


def test_oracle_broadcasts_users_by_ads_in_blocks(small: tuple[Path, dict], monkeypatch) -> None:
    ds = Dataset.open(small[0])
    oracle = Oracle.load(small[0])
    day = SMALL.start_day + 2
    users = ds.users(["user_id"]).column("user_id").to_numpy()[:37]
    ads = ds.live_ads(day)[:53]
    full = oracle.p_click(users[:, None], ads[None, :], day)
    assert full.shape == (37, 53) and full.dtype == np.float32
    pairs = oracle.p_click(
        np.repeat(users, 53), np.tile(ads, 37), day, REFERENCE_SURFACE, REFERENCE_POSITION
    ).reshape(37, 53)
    np.testing.assert_allclose(full, pairs, rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(oracle_mod, "_CHUNK", 100)  # force the block loop
    np.testing.assert_allclose(oracle.p_click(users[:, None], ads[None, :], day), full, rtol=1e-5, atol=1e-7)
    conv = oracle.p_conversion(users[:, None], ads[None, :], day, surface=np.array([[1]]))
    assert conv.shape == (37, 53) and np.all((conv > 0) & (conv < 1))
    # position bias: a lower slot never raises the click probability
    by_slot = oracle.p_click(users[:5, None], ads[None, :5], day, position=np.arange(8)[:, None, None])
    assert by_slot.shape == (8, 5, 5) and np.all(np.diff(by_slot, axis=0) < 0)
    with pytest.raises(DermError, match="unknown user"):
        oracle.p_click(np.array([-5]), ads[:1], day)
    with pytest.raises(DermError, match="surface"):
        oracle.p_click(users[:1], ads[:1], day, surface=9)


def test_oracle_load_refuses_dataset_without_oracle(tmp_path: Path) -> None:
    import pyarrow as pa

    from adslog.schema import REQUIRED_AD_COLUMNS, REQUIRED_USER_COLUMNS

    out = tmp_path / "plain"
    with DatasetWriter(out, name="plain", impression_columns=REQUIRED_IMPRESSION_COLUMNS) as w:
        w.write_table("users", pa.table({"user_id": np.array([5], np.int64)}), REQUIRED_USER_COLUMNS)
        w.write_table("ads", pa.table({"ad_id": np.array([9], np.int64)}), REQUIRED_AD_COLUMNS)
        w.finish(first_day=1, last_day=1)
    with pytest.raises(DataError, match="no oracle"):
        Oracle.load(out)


def test_stats_in_plausible_ranges_and_match_the_data(small: tuple[Path, dict], small_imps) -> None:
    _, s = small
    assert 0.01 <= s["ctr"] <= 0.05
    assert 0.70 <= s["oracle_roc_auc"] <= 0.85
    assert s["oracle_roc_auc"] - s["nonpersonal_oracle_roc_auc"] >= 0.05
    assert s["top1pct_ad_impression_share"] >= 0.20
    assert 0.05 <= s["new_ads_share_per_day"] <= 0.20
    assert 0.02 <= s["conversions_per_click"] <= 0.30 and s["n_offsite_conversions"] > 0
    t = small_imps
    click = t.column("click").to_numpy()
    assert s["n_impressions"] == len(click) == SMALL.n_days * SMALL.impressions_per_day
    assert s["n_clicks"] == int(click.sum())
    p = t.column("p_click").to_numpy()
    assert roc_auc(p, click) == pytest.approx(s["oracle_roc_auc"])
    assert p.mean() == pytest.approx(s["ctr"], rel=0.1)  # clicks are Bernoulli draws of p_click
    assert len(np.unique(t.column("surface").to_numpy())) >= 3
    assert len(np.unique(t.column("position").to_numpy())) == 8


def test_conversions_follow_clicks_later(small_imps) -> None:
    t = small_imps
    click, conv = t.column("click").to_numpy(), t.column("conversion").to_numpy()
    ts, cts = t.column("ts").to_numpy(), t.column("conversion_ts").to_numpy()
    assert conv.sum() > 0 and np.all(click[conv == 1] == 1)
    assert np.all(cts[conv == 0] == -1) and np.all(cts[conv == 1] > ts[conv == 1])
    assert np.all(cts[conv == 1] - ts[conv == 1] <= 3 * 86400 + 1)
    assert np.any(cts[conv == 1] // 86400 > ts[conv == 1] // 86400)  # some land on a later day
    # a conversion-only factor: P(conversion | click) is not a function of P(click)
    pc, pv = t.column("p_click").to_numpy(), t.column("p_conversion").to_numpy()
    assert abs(np.corrcoef(np.log(pc), np.log(pv))[0, 1]) < 0.6


def test_time_users_and_ads_are_consistent(small: tuple[Path, dict], small_imps) -> None:
    ds = Dataset.open(small[0])
    t = small_imps
    ts, day = t.column("ts").to_numpy(), t.column("day").to_numpy()
    assert np.all(ts // 86400 == day) and np.all(np.diff(ts)[np.diff(day) == 0] >= 0)
    users = ds.users(["user_id", "first_day"])
    first = dict(zip(users.column("user_id").to_numpy(), users.column("first_day").to_numpy(), strict=True))
    uid = t.column("user_id").to_numpy()
    assert np.all(np.vectorize(first.__getitem__)(uid) <= day)
    assert np.mean(users.column("first_day").to_numpy() > SMALL.start_day) > 0.2  # users keep arriving
    ads = ds.ads(["ad_id", "first_day", "last_day"])
    order = np.argsort(ads.column("ad_id").to_numpy())
    aid_sorted = ads.column("ad_id").to_numpy()[order]
    pos = order[np.searchsorted(aid_sorted, t.column("ad_id").to_numpy())]
    assert np.all(ads.column("first_day").to_numpy()[pos] <= day)
    assert np.all(ads.column("last_day").to_numpy()[pos] >= day)
    off = ds.table("offsite_conversions")
    assert off.num_rows > 0 and np.all(np.diff(off.column("ts").to_numpy()) >= 0)


def test_defaults_keep_2000_live_ads_every_day() -> None:
    cfg = SynthConfig()
    for seed in range(3):
        w = build_world(cfg, np.random.default_rng(seed))
        live = [
            np.sum((w.ad_first_day <= d) & (w.ad_last_day >= d))
            for d in range(cfg.start_day, cfg.last_day + 1)
        ]
        assert min(live) >= 2_000


def test_content_is_a_noisy_view_of_the_latent_factor() -> None:
    w = build_world(SynthConfig(n_users=100, n_ads=3_000), np.random.default_rng(0))
    content = w.ads_table.column("content").combine_chunks().values.to_numpy().reshape(3_000, 16)
    x = np.c_[content, np.ones(3_000)]
    coef, *_ = np.linalg.lstsq(x, w.truth.ad_factor, rcond=None)
    r2 = (
        1
        - ((x @ coef - w.truth.ad_factor) ** 2).sum()
        / ((w.truth.ad_factor - w.truth.ad_factor.mean(0)) ** 2).sum()
    )
    assert 0.2 < r2 < 0.9


def test_user_interests_drift_slowly() -> None:
    w = build_world(SynthConfig(n_users=2_000, n_ads=100, n_advertisers=10), np.random.default_rng(0))
    rows = np.arange(2_000)
    u0, u1, u13 = (w.truth.user_factor(rows, 20_000 + d) for d in (0, 1, 13))

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))

    assert cos(u0, u1) > 0.99 and cos(u0, u13) < 0.9


def test_roc_auc_matches_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 200).astype(np.float32)
    y = rng.random(200) < 0.3
    pos, neg = s[y], s[~y]
    brute = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg)])
    assert roc_auc(s, y) == pytest.approx(brute)
    assert roc_auc(np.arange(4), np.array([0, 0, 1, 1])) == 1.0
    assert np.isnan(roc_auc(np.arange(3), np.zeros(3)))


def test_progress_overwrite_and_validation(tmp_path: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    out = tmp_path / "d"
    generate(TINY, out, progress=lambda *a: calls.append(a))
    assert calls == [("synth", i + 1, TINY.n_days) for i in range(TINY.n_days)]
    with pytest.raises(DataError, match="already exists"):
        generate(TINY, out)
    stats = generate(TINY, out, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["stats"] == stats
    for bad in ({"n_users": 0}, {"n_days": -1}, {"drift_share": 1.5}, {"max_campaign_days": 1}, {"seed": -1}):
        with pytest.raises(DermError):
            SynthConfig(**bad)


# sha256 over the ts, user_id, ad_id, click, surface, position columns of TINY's impressions, written by the
# generator before the offsite model drew from its own stream (commit 7dd59db): the offsite change must not move
# an impression or a click
TINY_IMPRESSIONS_SHA256 = "fc853f9f10a232b41d3e224532a9a0e5ed5ffcc9b4d077ff2048f908f5d08bec"


def test_offsite_model_leaves_impressions_and_clicks_unchanged(tmp_path: Path) -> None:
    import hashlib
    from dataclasses import replace

    hashes, offsite = [], []
    for strength, rate in ((1.5, 0.05), (0.0, 0.003)):
        out = tmp_path / f"s{strength}"
        s = generate(replace(TINY, offsite_conv_strength=strength, offsite_per_impression=rate), out)
        t = Dataset.open(out).impressions(Dataset.open(out).days())
        h = hashlib.sha256()
        for c in ("ts", "user_id", "ad_id", "click", "surface", "position"):
            h.update(np.ascontiguousarray(t.column(c).to_numpy()).tobytes())
        hashes.append(h.hexdigest())
        offsite.append(s["n_offsite_conversions"])
        assert (s["n_clicks"], s["n_conversions"]) == (144, 23)  # the pre-change generator's figures
    assert hashes == [TINY_IMPRESSIONS_SHA256] * 2
    assert offsite[0] > 5 * offsite[1] > 0  # the offsite model itself did change


def test_offsite_conversions_carry_conversion_signal_clicks_do_not(tmp_path: Path) -> None:
    """Offsite history on (user, advertiser) now marks users whose *conversion-specific* logit term (the one
    onsite clicks cannot reveal) is higher, and the oracle-weighted ROC-AUC of the offsite count alone over the
    last 2 days' clicks is clearly above 0.5. With the tilt off (offsite_conv_strength 0) offsite history still
    tracks exposure (view-through), but not the conversion-specific term."""
    from dataclasses import replace

    from adgraph.offsite import offsite_signal

    cfg = SynthConfig(
        n_users=1500, n_ads=1200, n_advertisers=80, n_days=6, impressions_per_day=30_000, seed=2
    )
    gap, auc = {}, {}
    for strength in (1.5, 0.0):
        out = tmp_path / f"s{strength}"
        generate(replace(cfg, offsite_conv_strength=strength), out)
        sig = offsite_signal(Dataset.open(out), cfg.start_day + cfg.n_days - 2)
        term = sig["with_vs_without_offsite"]["conversion_specific_logit_term"]
        gap[strength] = term["with"] - term["without"]
        auc[strength] = sig["oracle_roc_auc"]["offsite"]
    assert auc[1.5] > 0.53
    assert gap[1.5] > 0.1 and gap[0.0] < 0.05


def test_conversion_terms_decompose_the_oracle_conversion_logit(tmp_path: Path) -> None:
    """`adgraph.offsite.conversion_terms` reproduces the logged P(conversion | click), and its ceiling adds
    exactly conv_strength x AD_CONV_ADVERTISER_SHARE x a to the logit without the conversion-specific term."""
    import pyarrow.compute as pc

    from adgraph.offsite import conversion_terms
    from adslog.oracle import Oracle
    from adslog.synth import AD_CONV_ADVERTISER_SHARE

    cfg = SynthConfig(n_users=300, n_ads=200, n_days=2, impressions_per_day=4000, n_advertisers=20, seed=4)
    generate(cfg, tmp_path / "d")
    ds = Dataset.open(tmp_path / "d")
    t = ds.impressions([cfg.start_day + 1], ["user_id", "ad_id", "day", "surface", "click", "p_conversion"])
    t = t.filter(pc.equal(t.column("click"), 1))
    col = {k: t.column(k).to_numpy() for k in t.column_names}
    out = conversion_terms(ds, col["user_id"], col["ad_id"], col["day"], col["surface"])
    np.testing.assert_allclose(out["p_conv"], col["p_conversion"], rtol=1e-5)
    truth = Oracle.load(ds.root).truth
    gap = out["logit_with_offsite"] - out["logit_without"]
    strength = float(truth.params["conv_strength"])
    np.testing.assert_allclose(
        gap, strength * AD_CONV_ADVERTISER_SHARE * out["affinity"], rtol=1e-6, atol=1e-9
    )
    urow = Oracle.load(ds.root).user_rows(col["user_id"][:1])
    arow = Oracle.load(ds.root).ad_rows(col["ad_id"][:1])
    v = truth.ad_advertiser[arow]
    a0 = float(truth.user_conv[urow[0]] @ truth.advertiser_conv[v[0]]) / np.sqrt(truth.user_conv.shape[1])
    assert out["affinity"][0] == pytest.approx(a0, rel=1e-5)
    # the conversion-specific term moves the logit: p_conv is not a function of logit_without alone
    assert np.abs(np.log(out["p_conv"] / (1 - out["p_conv"])) - out["logit_without"]).max() > 0.1
