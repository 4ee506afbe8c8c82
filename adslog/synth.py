"""The built-in synthetic ads log: a seeded world with planted structure, streamed to disk day by day.

The world: advertisers run campaigns of ads, each with a bid, a schedule (campaigns start and end, ~10 % of
live ads are new each day), a category, a price and an objective; users arrive over time. Each day the
logging policy serves `impressions_per_day` impressions: an active user (activity-skewed) opens a surface
and slot, a candidate set is sampled from the live ads by popularity, and the policy shows the candidate
with the best noisy score (popularity, a stale and noisy estimate of the user's interest, bid). Clicks are
Bernoulli draws from the true `p_click` (see `adslog.oracle`), conversions follow some clicks after an
exponential delay, and users also convert on advertisers' own sites (offsite conversions): a user shown an
ad of an advertiser may later convert on that advertiser's site, more likely the higher their latent
conversion affinity for the advertiser (the same latent that sets their onsite P(conversion | click) on its
ads, and plays no part in clicks), so offsite history says who converts where, which clicks do not.

Latent factors never reach a Parquet table; they are written under `DATA/oracle/` for evaluation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from adslog.dataset import DatasetWriter
from adslog.oracle import ORACLE_DIR, REFERENCE_POSITION, REFERENCE_SURFACE, Oracle, Truth, _sigmoid, roc_auc
from adslog.schema import ColumnKind, ColumnSpec
from dermcore.errors import DermError
from dermcore.progress import Progress, no_progress

__all__ = [
    "REFERENCE_POSITION",
    "REFERENCE_SURFACE",
    "Oracle",
    "SynthConfig",
    "generate",
    "build_world",
    "roc_auc",
]

log = logging.getLogger(__name__)

SURFACES = ("home_feed", "search", "related")
N_POSITIONS = 8
SURFACE_SHARE = np.array([0.55, 0.25, 0.20])
# Deeper slots are served less often (fewer users scroll that far).
POSITION_SHARE = 0.85 ** np.arange(N_POSITIONS)
# Impressions per hour of day (UTC): quiet nights, an evening peak.
HOURLY = np.array([3, 2, 1.5, 1, 1, 1.5, 3, 5, 6, 6, 6, 6.5, 7, 6.5, 6, 6, 6.5, 7, 8, 9, 9.5, 8.5, 6.5, 4.5])
CONVERSION_DELAY_MEAN_S = 6 * 3600
CONVERSION_DELAY_CAP_S = 3 * 86400
#: an ad's conversion factor is AD_CONV_ADVERTISER_SHARE * its advertiser's plus independent noise (variance 1 -
#: share^2): the part of the user x ad conversion term that the user's offsite history (one advertiser) can tell
AD_CONV_ADVERTISER_SHARE = 0.6
# Work per block of impressions: n_candidates x latent_dim float32 per row.
_BLOCK = 16_384


@dataclass(frozen=True)
class SynthConfig:
    """Size and difficulty of the synthetic log. Defaults: 14 days x 100k impressions, >= 2,000 live ads a day.

    n_ads counts every ad live at some point of the period; with the defaults (campaigns of 3-17 days, a
    stationary launch rate) about 10/23 of them are live on any one day.
    """

    n_users: int = 10_000
    n_ads: int = 6_000
    n_days: int = 14
    impressions_per_day: int = 100_000
    seed: int = 0
    start_day: int = 20_000
    n_advertisers: int = 400
    n_categories: int = 24
    n_regions: int = 10
    latent_dim: int = 16
    conversion_latent_dim: int = 8
    content_dim: int = 16
    min_campaign_days: int = 3
    max_campaign_days: int = 17
    #: share of users already present on the first day; the rest arrive uniformly over the later days
    initial_user_share: float = 0.6
    #: candidates the logging policy samples per impression (by popularity) before picking one
    n_candidates: int = 32
    #: weight of the user-ad latent affinity in the click logit (personalisation strength)
    affinity_strength: float = 0.8
    #: mean rotation of a user's drifting interests, radians per day
    drift_per_day: float = 0.08
    #: share of the interest vector's variance that drifts
    drift_share: float = 0.5
    #: lognormal sigma of ad popularity (candidate sampling weights)
    popularity_sigma: float = 1.3
    #: offsite conversions per impression served (view-through: on the shown ad's advertiser's site)
    offsite_per_impression: float = 0.05
    #: how strongly the user x advertiser conversion affinity <user_conv, advertiser_conv> / sqrt(C) (~N(0, 1),
    #: the advertiser part of onsite P(conversion | click)) tilts which impressions lead to an offsite
    #: conversion: P ~ exp(offsite_conv_strength * affinity). 0 = offsite carries no conversion signal
    offsite_conv_strength: float = 1.5

    def __post_init__(self) -> None:
        positive = (
            "n_users n_ads n_days impressions_per_day n_advertisers n_categories n_regions latent_dim "
            "conversion_latent_dim content_dim min_campaign_days n_candidates"
        ).split()
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DermError(f"SynthConfig.{name} must be a positive integer, got {v!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise DermError(f"SynthConfig.seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.start_day, int) or self.start_day < 0:
            raise DermError(f"SynthConfig.start_day must be a non-negative integer, got {self.start_day!r}")
        if self.max_campaign_days < self.min_campaign_days:
            raise DermError("SynthConfig.max_campaign_days must be >= min_campaign_days")
        if self.n_advertisers > self.n_ads:
            raise DermError("SynthConfig.n_advertisers must be <= n_ads")
        if self.n_categories > 32_767:
            raise DermError("SynthConfig.n_categories must fit int16")
        for name in ("initial_user_share", "drift_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise DermError(f"SynthConfig.{name} must be in [0, 1], got {v!r}")
        if self.initial_user_share == 0.0:
            raise DermError("SynthConfig.initial_user_share must be > 0 (someone must see the first day)")
        for name in (
            "affinity_strength",
            "drift_per_day",
            "popularity_sigma",
            "offsite_per_impression",
            "offsite_conv_strength",
        ):
            if getattr(self, name) < 0:
                raise DermError(f"SynthConfig.{name} must be >= 0")

    @property
    def last_day(self) -> int:
        return self.start_day + self.n_days - 1


def _impression_columns() -> list[ColumnSpec]:
    K = ColumnKind
    return [
        ColumnSpec("ts", "int64", K.TIME, doc="impression time, unix seconds UTC"),
        ColumnSpec("day", "int32", K.TIME, doc="days since 1970-01-01 UTC"),
        ColumnSpec("user_id", "int64", K.ID),
        ColumnSpec("ad_id", "int64", K.ID),
        ColumnSpec("click", "int8", K.LABEL, doc="1 if the impression was clicked"),
        ColumnSpec("conversion", "int8", K.LABEL, doc="1 if the click led to a conversion (any later time)"),
        ColumnSpec("conversion_ts", "int64", K.TIME, doc="conversion time, unix seconds; -1 when none"),
        ColumnSpec("surface", "int8", K.CATEGORICAL, cardinality=len(SURFACES), doc=", ".join(SURFACES)),
        ColumnSpec("position", "int8", K.CATEGORICAL, cardinality=N_POSITIONS, doc="slot, 0 = top"),
        ColumnSpec("p_click", "float32", K.ORACLE, doc="true P(click) of the simulator"),
        ColumnSpec("p_conversion", "float32", K.ORACLE, doc="true P(conversion | click) of the simulator"),
    ]


def _cum(weights: np.ndarray) -> np.ndarray:
    c = np.cumsum(weights, dtype=np.float64)
    return c / c[-1]


@dataclass
class World:
    """A sampled world: the truth plus what the logging policy and the observable tables need.

    user_first_day int32[U]; user_activity float64[U] (sampling weight); policy_user float32[U, D] (the
    policy's stale, noisy estimate of user interests); policy_rel_weight float32[surfaces];
    policy_region_category float32[regions, categories]; ad_first_day / ad_last_day int32[A];
    ad_popularity float64[A] (candidate sampling weight); ad_bid float32[A].
    """

    truth: Truth
    user_first_day: np.ndarray
    user_activity: np.ndarray
    policy_user: np.ndarray
    policy_rel_weight: np.ndarray
    policy_region_category: np.ndarray
    ad_first_day: np.ndarray
    ad_last_day: np.ndarray
    ad_popularity: np.ndarray
    ad_bid: np.ndarray
    n_campaigns: int
    users_table: pa.Table
    ads_table: pa.Table
    user_columns: list[ColumnSpec]
    ad_columns: list[ColumnSpec]


def _distinct_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """int64[n]: distinct random ids in [1, 2^40), in random order: never equal to row positions."""
    ids = np.unique(rng.integers(1, 1 << 40, size=n + n // 8 + 16))
    while len(ids) < n:  # practically never: 2^40 is far larger than any n here
        ids = np.unique(np.r_[ids, rng.integers(1, 1 << 40, size=n)])
    return rng.permutation(ids)[:n].astype(np.int64)


def _zipf_probs(n: int, a: float) -> np.ndarray:
    p = 1.0 / (1.0 + np.arange(n)) ** a
    return p / p.sum()


def _schedule(cfg: SynthConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """int32[n] first and last day of campaigns launched at a constant daily rate, conditioned on overlapping
    the period (some launched before it), so every day sees the same share of new campaigns."""
    lo, hi = cfg.start_day - cfg.max_campaign_days + 1, cfg.last_day
    first, dur = np.zeros(0, np.int64), np.zeros(0, np.int64)
    while len(first) < n:
        f = rng.integers(lo, hi + 1, size=2 * n)
        d = rng.integers(cfg.min_campaign_days, cfg.max_campaign_days + 1, size=2 * n)
        keep = f + d - 1 >= cfg.start_day
        first, dur = np.r_[first, f[keep]], np.r_[dur, d[keep]]
    return first[:n].astype(np.int32), (first[:n] + dur[:n] - 1).astype(np.int32)


def build_world(cfg: SynthConfig, rng: np.random.Generator) -> World:
    """Sample users, advertisers, campaigns, ads, the truth and the observable tables."""
    K = ColumnKind
    U, A, V, D, C = cfg.n_users, cfg.n_ads, cfg.n_advertisers, cfg.latent_dim, cfg.conversion_latent_dim
    ncat, R = cfg.n_categories, cfg.n_regions
    f32 = np.float32
    # users
    region = rng.choice(R, size=U, p=_zipf_probs(R, 0.7))
    age = rng.choice(6, size=U, p=[0.1, 0.25, 0.25, 0.2, 0.12, 0.08])
    gender = rng.choice(3, size=U, p=[0.48, 0.48, 0.04])
    device = rng.choice(3, size=U, p=[0.5, 0.35, 0.15])
    late = rng.random(U) >= cfg.initial_user_share if cfg.n_days > 1 else np.zeros(U, bool)
    user_first = np.where(late, rng.integers(cfg.start_day + 1, cfg.last_day + 1, U), cfg.start_day)
    region_center = rng.normal(size=(R, D))
    static = (0.35 * region_center[region] + np.sqrt(1 - 0.35**2) * rng.normal(size=(U, D))).astype(f32)
    drift_a = rng.normal(size=(U, D)).astype(f32)
    drift_b = rng.normal(size=(U, D)).astype(f32)
    omega = (cfg.drift_per_day * rng.uniform(0.5, 1.5, U) * rng.choice([-1, 1], U)).astype(f32)
    ws, wd = np.sqrt(1 - cfg.drift_share), np.sqrt(cfg.drift_share)
    # the logging policy knows a stale (first-day) and noisy version of each user's interests
    policy_user = (0.8 * (ws * static + wd * drift_a) + 0.6 * rng.normal(size=(U, D))).astype(f32)
    # advertisers
    adv_category = rng.choice(ncat, size=V, p=_zipf_probs(ncat, 0.5))
    adv_factor = rng.normal(size=(V, D)).astype(f32)
    adv_conv = rng.normal(size=(V, C)).astype(f32)
    adv_conv_bias = rng.normal(0, 0.5, V).astype(f32)
    adv_size = rng.lognormal(0, 1.0, V)
    # campaigns: 1 + Poisson(3) ads each, every advertiser gets one before sizes decide the rest
    sizes = 1 + rng.poisson(3, size=A)
    n_c = int(np.searchsorted(np.cumsum(sizes), A)) + 1
    sizes = sizes[:n_c]
    sizes[-1] -= int(sizes.sum()) - A
    camp_adv = rng.choice(V, size=n_c, p=adv_size / adv_size.sum())
    camp_adv[: min(V, n_c)] = rng.permutation(V)[: min(V, n_c)]
    camp_obj = (rng.random(n_c) < 0.35).astype(np.int8)
    camp_bid = rng.lognormal(0, 0.5, n_c) * np.where(camp_obj == 1, 1.5, 1.0)
    camp_first, camp_last = _schedule(cfg, rng, n_c)
    # ads
    camp = np.repeat(np.arange(n_c), sizes)
    adv = camp_adv[camp]
    category = np.where(rng.random(A) < 0.8, adv_category[adv], rng.integers(0, ncat, A))
    cat_factor = rng.normal(size=(ncat, D))
    ad_factor = (
        0.5 * adv_factor[adv] + 0.4 * cat_factor[category] + np.sqrt(1 - 0.41) * rng.normal(size=(A, D))
    ).astype(f32)
    pop_z = rng.normal(size=A)
    popularity = np.exp(cfg.popularity_sigma * pop_z)
    ad_bias = (0.3 * pop_z + rng.normal(0, 0.3, A)).astype(f32)
    share = AD_CONV_ADVERTISER_SHARE
    ad_conv = (share * adv_conv[adv] + np.sqrt(1 - share**2) * rng.normal(size=(A, C))).astype(f32)
    log_price = rng.normal(3.0, 1.0, ncat)[category] + rng.normal(0, 0.5, A)
    price = np.exp(log_price).astype(f32)
    bid = (camp_bid[camp] * rng.lognormal(0, 0.15, A)).astype(f32)
    ad_conv_bias = (
        adv_conv_bias[adv]
        + 0.6 * camp_obj[camp]
        - 0.25 * (log_price - log_price.mean())
        + rng.normal(0, 0.2, A)
    ).astype(f32)
    proj = rng.normal(size=(D, cfg.content_dim)) / np.sqrt(D)
    cat_emb = rng.normal(0, 0.8, (ncat, cfg.content_dim))
    content = (ad_factor @ proj + cat_emb[category] + 0.7 * rng.normal(size=(A, cfg.content_dim))).astype(f32)
    region_category = rng.normal(0, 0.35, (R, ncat)).astype(f32)
    truth = Truth(
        user_ids=_distinct_ids(rng, U),
        user_static=static,
        user_drift_a=drift_a,
        user_drift_b=drift_b,
        user_omega=omega,
        user_bias=rng.normal(0, 0.25, U).astype(f32),
        user_conv=rng.normal(size=(U, C)).astype(f32),
        user_region=region.astype(np.int16),
        user_age=age.astype(np.int16),
        ad_ids=_distinct_ids(rng, A),
        ad_factor=ad_factor,
        ad_bias=ad_bias,
        ad_conv=ad_conv,
        ad_conv_bias=ad_conv_bias,
        ad_category=category.astype(np.int16),
        ad_advertiser=adv.astype(np.int32),
        advertiser_ids=_distinct_ids(rng, V),
        advertiser_factor=adv_factor,
        advertiser_conv=adv_conv,
        advertiser_conv_bias=adv_conv_bias,
        advertiser_category=adv_category.astype(np.int16),
        region_category=region_category,
        age_category=rng.normal(0, 0.3, (6, ncat)).astype(f32),
        surface_bias=np.array([0.0, 0.3, -0.2], f32),
        surface_affinity=(cfg.affinity_strength * np.array([1.0, 1.25, 0.8])).astype(f32),
        surface_conv_bias=np.array([0.0, 0.4, -0.2], f32),
        position_bias=np.log(1.0 / (1.0 + 0.25 * np.arange(N_POSITIONS))).astype(f32),
        params={
            "start_day": cfg.start_day,
            "static_weight": float(ws),
            "drift_weight": float(wd),
            "click_intercept": -5.4,
            "conv_intercept": -3.2,
            "conv_strength": 1.0,
            "conv_affinity": 0.3,
        },
    )
    campaign_ids = _distinct_ids(rng, n_c)
    users_table = pa.table(
        {
            "user_id": truth.user_ids,
            "age_bucket": age.astype(np.int8),
            "gender": gender.astype(np.int8),
            "region": region.astype(np.int16),
            "device": device.astype(np.int8),
            "first_day": user_first.astype(np.int32),
        }
    )
    user_columns = [
        ColumnSpec("user_id", "int64", K.ID),
        ColumnSpec("age_bucket", "int8", K.CATEGORICAL, cardinality=6),
        ColumnSpec("gender", "int8", K.CATEGORICAL, cardinality=3),
        ColumnSpec("region", "int16", K.CATEGORICAL, cardinality=R),
        ColumnSpec("device", "int8", K.CATEGORICAL, cardinality=3, doc="ios, android, web"),
        ColumnSpec("first_day", "int32", K.TIME, doc="arrival day: no impressions before it"),
    ]
    ads_table = pa.table(
        {
            "ad_id": truth.ad_ids,
            "advertiser_id": truth.advertiser_ids[adv],
            "campaign_id": campaign_ids[camp],
            "category": category.astype(np.int16),
            "objective": camp_obj[camp],
            "price": price,
            "bid": bid,
            "first_day": camp_first[camp],
            "last_day": camp_last[camp],
            "content": pa.FixedSizeListArray.from_arrays(pa.array(content.ravel()), cfg.content_dim),
        }
    )
    ad_columns = [
        ColumnSpec("ad_id", "int64", K.ID),
        ColumnSpec("advertiser_id", "int64", K.ID),
        ColumnSpec("campaign_id", "int64", K.ID),
        ColumnSpec("category", "int16", K.CATEGORICAL, cardinality=ncat),
        ColumnSpec("objective", "int8", K.CATEGORICAL, cardinality=2, doc="0 = clicks, 1 = conversions"),
        ColumnSpec("price", "float32", K.NUMERIC),
        ColumnSpec("bid", "float32", K.NUMERIC),
        ColumnSpec("first_day", "int32", K.TIME, doc="first live day (may precede the log)"),
        ColumnSpec("last_day", "int32", K.TIME, doc="last live day, inclusive"),
        ColumnSpec(
            "content", "float32", K.DENSE_VECTOR, dim=cfg.content_dim, doc="pretrained content embedding"
        ),
    ]
    return World(
        truth=truth,
        user_first_day=user_first.astype(np.int32),
        user_activity=rng.lognormal(0, 1.0, U),
        policy_user=policy_user,
        policy_rel_weight=np.array([1.0, 1.4, 0.8], f32),
        policy_region_category=(region_category + rng.normal(0, 0.3, (R, ncat))).astype(f32),
        ad_first_day=camp_first[camp],
        ad_last_day=camp_last[camp],
        ad_popularity=popularity,
        ad_bid=bid,
        n_campaigns=n_c,
        users_table=users_table,
        ads_table=ads_table,
        user_columns=user_columns,
        ad_columns=ad_columns,
    )


def _serve(world: World, cfg: SynthConfig, day: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One day of the logging policy: who saw which ad where, with true probabilities and outcomes."""
    t = world.truth
    n = cfg.impressions_per_day
    live = np.flatnonzero((world.ad_first_day <= day) & (world.ad_last_day >= day))
    arrived = np.flatnonzero(world.user_first_day <= day)
    if len(live) == 0:
        raise DermError(f"no live ads on day {day}: raise n_ads or campaign lengths")
    urow = arrived[np.searchsorted(_cum(world.user_activity[arrived]), rng.random(n), side="right")]
    surface = np.searchsorted(_cum(SURFACE_SHARE), rng.random(n), side="right").astype(np.int64)
    position = np.searchsorted(_cum(POSITION_SHARE), rng.random(n), side="right").astype(np.int64)
    cum_pop = _cum(world.ad_popularity[live])
    log_pop = np.log(world.ad_popularity).astype(np.float32)
    log_bid = np.log(world.ad_bid).astype(np.float32)
    arow = np.empty(n, dtype=np.int64)
    k = cfg.n_candidates
    scale = np.float32(1.0 / np.sqrt(t.dim))
    for lo in range(0, n, _BLOCK):
        hi = min(n, lo + _BLOCK)
        cand = live[np.searchsorted(cum_pop, rng.random((hi - lo, k)), side="right")]
        u = world.policy_user[urow[lo:hi]]
        rel = np.einsum("nkd,nd->nk", t.ad_factor[cand], u) * scale
        score = (
            0.5 * log_pop[cand]
            + world.policy_rel_weight[surface[lo:hi], None] * rel
            + world.policy_region_category[t.user_region[urow[lo:hi], None], t.ad_category[cand]]
            + 0.3 * log_bid[cand]
            + rng.gumbel(size=(hi - lo, k)).astype(np.float32)
        )
        arow[lo:hi] = cand[np.arange(hi - lo), np.argmax(score, axis=1)]
    p_click = _sigmoid(t.click_logit(urow, arow, day, surface, position))
    p_np = _sigmoid(t.click_logit(urow, arow, day, surface, position, personal=False))
    p_conv = _sigmoid(t.conversion_logit(urow, arow, day, surface))
    click = rng.random(n, dtype=np.float32) < p_click
    conversion = click & (rng.random(n, dtype=np.float32) < p_conv)
    hour = np.searchsorted(_cum(HOURLY), rng.random(n), side="right")
    ts = np.int64(day) * 86400 + hour * 3600 + rng.integers(0, 3600, n)
    delay = (
        np.minimum(rng.exponential(CONVERSION_DELAY_MEAN_S, n), CONVERSION_DELAY_CAP_S).astype(np.int64) + 1
    )
    conversion_ts = np.where(conversion, ts + delay, -1)
    order = np.argsort(ts, kind="stable")
    return {
        "ts": ts[order],
        "urow": urow[order],
        "arow": arow[order],
        "click": click[order].astype(np.int8),
        "conversion": conversion[order].astype(np.int8),
        "conversion_ts": conversion_ts[order],
        "surface": surface[order].astype(np.int8),
        "position": position[order].astype(np.int8),
        "p_click": p_click[order],
        "p_conversion": p_conv[order],
        "p_click_nonpersonal": p_np[order],
        "live": live,
    }


def _offsite(
    world: World, cfg: SynthConfig, d: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Offsite conversions of one day (view-through): each impression `d` served leads to a conversion on its
    ad's advertiser's own site, with no onsite click, with probability

        offsite_per_impression * exp(s * a) / mean over the day's impressions of exp(s * a)   (capped at 1)

    where a = <user_conv, advertiser_conv> / sqrt(C) is the user's latent conversion affinity for the
    advertiser (~N(0, 1); every ad of the advertiser carries 0.6 advertiser_conv in its ad_conv, so `a` moves
    onsite P(conversion | click) on its ads, never P(click)) and s = `offsite_conv_strength`. The conversion
    lands an exponential delay (mean 6 h, capped at 3 days) after the impression. `rng` is the offsite
    stream, apart from the impression stream, so the offsite model never moves an impression or a click."""
    t = world.truth
    urow, vrow = d["urow"], t.ad_advertiser[d["arow"]].astype(np.int64)
    n = len(urow)
    if n == 0 or cfg.offsite_per_impression == 0:
        return {"urow": np.zeros(0, np.int64), "vrow": np.zeros(0, np.int64), "ts": np.zeros(0, np.int64)}
    c = t.user_conv.shape[1]
    a = np.einsum("nc,nc->n", t.user_conv[urow], t.advertiser_conv[vrow]) / np.sqrt(c)
    w = np.exp(cfg.offsite_conv_strength * (a - a.max()))  # shifted: no overflow; the ratio is unchanged
    p = np.minimum(1.0, cfg.offsite_per_impression * w / w.mean())
    hit = rng.random(n) < p
    delay = (
        np.minimum(rng.exponential(CONVERSION_DELAY_MEAN_S, n), CONVERSION_DELAY_CAP_S).astype(np.int64) + 1
    )
    ts = (d["ts"] + delay)[hit]
    order = np.argsort(ts, kind="stable")
    return {"urow": urow[hit][order], "vrow": vrow[hit][order], "ts": ts[order]}


def generate(
    config: SynthConfig, out: str | Path, progress: Progress = no_progress, overwrite: bool = False
) -> dict[str, Any]:
    """Write the synthetic dataset to `out` (published atomically through `DatasetWriter`).

    Returns the summary statistics, also stored in the manifest under "stats": ctr, conversions_per_click,
    top1pct_ad_impression_share, oracle_roc_auc, nonpersonal_oracle_roc_auc, n_impressions, n_clicks,
    n_conversions, n_offsite_conversions, min_live_ads_per_day, new_ads_share_per_day (mean over days).
    Memory: one day of impressions plus two float32 score columns per impression for the ROC statistics.
    """
    cfg = config
    t0 = time.perf_counter()
    root = np.random.SeedSequence([cfg.seed, 0x5EED])
    world = build_world(cfg, np.random.default_rng(root.spawn(1)[0]))
    truth: Truth = world.truth
    day_seeds = root.spawn(cfg.n_days + 1)[1:]
    # the offsite model draws from its own stream: changing it never moves an impression or a click
    offsite_seeds = np.random.SeedSequence([cfg.seed, 0x0FF5]).spawn(cfg.n_days)
    scores: list[np.ndarray] = []
    scores_np: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    ad_counts = np.zeros(cfg.n_ads, dtype=np.int64)
    n_clicks = n_conv = 0
    live_counts: list[int] = []
    off_parts: list[dict[str, np.ndarray]] = []
    with DatasetWriter(
        out, name="synthetic", impression_columns=_impression_columns(), overwrite=overwrite
    ) as w:
        for i in range(cfg.n_days):
            day = cfg.start_day + i
            rng = np.random.default_rng(day_seeds[i])
            d = _serve(world, cfg, day, rng)
            table = pa.table(
                {
                    "ts": d["ts"],
                    "day": np.full(len(d["ts"]), day, dtype=np.int32),
                    "user_id": truth.user_ids[d["urow"]],
                    "ad_id": truth.ad_ids[d["arow"]],
                    "click": d["click"],
                    "conversion": d["conversion"],
                    "conversion_ts": d["conversion_ts"],
                    "surface": d["surface"],
                    "position": d["position"],
                    "p_click": d["p_click"],
                    "p_conversion": d["p_conversion"],
                }
            )
            w.write_day(day, table)
            scores.append(d["p_click"])
            scores_np.append(d["p_click_nonpersonal"])
            labels.append(d["click"])
            ad_counts += np.bincount(d["arow"], minlength=cfg.n_ads)
            n_clicks += int(d["click"].sum())
            n_conv += int(d["conversion"].sum())
            live_counts.append(len(d["live"]))
            off_parts.append(_offsite(world, cfg, d, np.random.default_rng(offsite_seeds[i])))
            log.debug("day %d: %d impressions, %d live ads", day, len(d["ts"]), live_counts[-1])
            progress("synth", i + 1, cfg.n_days)
        off = {k: np.concatenate([p[k] for p in off_parts]) for k in ("urow", "vrow", "ts")}
        order = np.argsort(off["ts"], kind="stable")  # delays carry some past their day's end
        off = {k: v[order] for k, v in off.items()}
        w.write_table(
            "offsite_conversions",
            pa.table(
                {
                    "user_id": truth.user_ids[off["urow"]],
                    "advertiser_id": truth.advertiser_ids[off["vrow"]],
                    "ts": off["ts"],
                }
            ),
            [
                ColumnSpec("user_id", "int64", ColumnKind.ID),
                ColumnSpec("advertiser_id", "int64", ColumnKind.ID),
                ColumnSpec("ts", "int64", ColumnKind.TIME, doc="conversion on the advertiser's site, unix s"),
            ],
        )
        w.write_table("users", world.users_table, world.user_columns)
        w.write_table("ads", world.ads_table, world.ad_columns)
        oracle_desc = truth.save(w.extra_dir / ORACLE_DIR)
        y = np.concatenate(labels)
        n_imp = len(y)
        top = max(1, int(np.ceil(0.01 * cfg.n_ads)))
        days = np.arange(cfg.start_day, cfg.last_day + 1)
        new = np.array([np.sum(world.ad_first_day == d) for d in days])
        stats: dict[str, Any] = {
            "n_impressions": n_imp,
            "n_clicks": n_clicks,
            "n_conversions": n_conv,
            "n_offsite_conversions": len(off["ts"]),
            "offsite_share_of_conversions": len(off["ts"]) / max(1, len(off["ts"]) + n_conv),
            "ctr": n_clicks / n_imp,
            "conversions_per_click": n_conv / max(1, n_clicks),
            "top1pct_ad_impression_share": float(np.sort(ad_counts)[::-1][:top].sum() / n_imp),
            "oracle_roc_auc": roc_auc(np.concatenate(scores), y),
            "nonpersonal_oracle_roc_auc": roc_auc(np.concatenate(scores_np), y),
            "min_live_ads_per_day": min(live_counts),
            "new_ads_share_per_day": float(np.mean(new / np.array(live_counts))),
            "n_users": cfg.n_users,
            "n_ads": cfg.n_ads,
            "n_advertisers": cfg.n_advertisers,
            "n_campaigns": world.n_campaigns,
        }
        del scores, scores_np, labels, y
        w.finish(
            first_day=cfg.start_day,
            last_day=cfg.last_day,
            source={"generator": "derm.synth", "config": asdict(cfg)},
            stats=stats,
            oracle=oracle_desc,
        )
    log.info(
        "synthetic log: %d impressions in %.1f s -> %s", stats["n_impressions"], time.perf_counter() - t0, out
    )
    return stats
