"""Daily inference: embed the day's active users and ads with a snapshot's towers.

A user's daily embedding is its state at the end of the day (features + the activity sequence of all events
before the next day starts): the last embedding of the day. Ads are embedded from static features only (the Pin
tower sees no engagement), so every ad impressed today or live tomorrow by schedule is embedded with today's
snapshot: ads going live tomorrow get their *launch* embedding today, tomorrow's index serves them from their
first hour, and every served ad vector lives in the same model version's space as the users'.

The functions take `towers.export.Towers`: a published snapshot's towers from `load_towers` (only those
needed: users need the user tower, ads the Pin tower), or `Snapshot.towers` of a snapshot at hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from adslog.dataset import Dataset
from adslog.sequences import ActivityLog
from dermfeatures.batches import Inputs, to_device
from towers.export import Towers


@dataclass
class DailyEmbeddings:
    """user_ids int64[n_u], user_vecs float32[n_u, dim], ad_ids int64[n_a], ad_vecs float32[n_a, dim]."""

    day: int
    model_version: str
    user_ids: np.ndarray
    user_vecs: np.ndarray
    ad_ids: np.ndarray
    ad_vecs: np.ndarray
    n_launch_ads: int = 0


@torch.no_grad()
def embed_users(
    towers: Towers, inputs: Inputs, user_ids: np.ndarray, ts: np.ndarray, batch: int = 8192
) -> np.ndarray:
    """float32[n, dim] user embeddings (the user tower) with sequences strictly before `ts`."""
    tower = towers.tower("user")
    dev = next(tower.parameters()).device
    tower.eval()
    out = np.zeros((len(user_ids), towers.config.dim), np.float32)
    for s in range(0, len(user_ids), batch):
        b = to_device(inputs.user_batch(user_ids[s : s + batch], ts[s : s + batch]), dev)
        out[s : s + batch] = tower(b, "user").float().cpu().numpy()
    return out


@torch.no_grad()
def embed_ads(towers: Towers, inputs: Inputs, ad_ids: np.ndarray, batch: int = 8192) -> np.ndarray:
    """float32[n, dim] Pin-tower embeddings of ads (static features only)."""
    tower = towers.tower("ad")
    dev = next(tower.parameters()).device
    tower.eval()
    out = np.zeros((len(ad_ids), towers.config.dim), np.float32)
    for s in range(0, len(ad_ids), batch):
        b = to_device(inputs.ad_batch(ad_ids[s : s + batch]), dev)
        out[s : s + batch] = tower(b, "ad").float().cpu().numpy()
    return out


@dataclass
class DayEntities:
    """What a day embeds: `users` int64[n_u] (active on the day), `ads` int64[n_a] (impressed on the day or
    live on day + 1), `n_launch_ads` (those of `ads` not known before). Every engine embeds these ids."""

    users: np.ndarray
    ads: np.ndarray
    n_launch_ads: int


def day_entities(ds: Dataset, day: int, known_ad_ids: np.ndarray | None = None) -> DayEntities:
    """Day `day`'s active users, and the ads impressed on `day` or live on day + 1; `n_launch_ads` counts
    those not in `known_ad_ids` (int64, the ads already in the pool)."""
    ds.check_day(day)
    imp = ds.impressions(day, ["user_id", "ad_id"])
    users = np.unique(imp.column("user_id").to_numpy()).astype(np.int64)
    ads = np.unique(imp.column("ad_id").to_numpy()).astype(np.int64)
    tomorrow = ds.live_ads(day + 1) if day < ds.last_day else ds.live_ads(day)
    known = np.union1d(ads, known_ad_ids if known_ad_ids is not None else np.zeros(0, np.int64))
    launch = np.setdiff1d(tomorrow, known)
    return DayEntities(users, np.union1d(ads, tomorrow).astype(np.int64), len(launch))


def end_of_day(day: int) -> int:
    """The timestamp a daily user embedding is taken at: sequences hold every event strictly before it."""
    return (int(day) + 1) * 86400


def embed_day(
    ds: Dataset,
    towers: Towers,
    day: int,
    known_ad_ids: np.ndarray | None = None,
    activity: ActivityLog | None = None,
) -> DailyEmbeddings:
    """Embeddings of day `day`'s entities (`day_entities`) in this process: the single-process engine. `towers`
    needs both towers (`load_towers(dir, ("user", "ad"))`)."""
    ents = day_entities(ds, day, known_ad_ids)
    if activity is None:
        activity = ActivityLog.from_dataset(ds, day)
    inputs = Inputs(ds, towers.spec, activity, towers.config.seq_len)
    ts = np.full(len(ents.users), end_of_day(day), np.int64)
    return DailyEmbeddings(
        day=day,
        model_version=towers.model_version,
        user_ids=ents.users,
        user_vecs=embed_users(towers, inputs, ents.users, ts),
        ad_ids=ents.ads,
        ad_vecs=embed_ads(towers, inputs, ents.ads),
        n_launch_ads=ents.n_launch_ads,
    )
