"""adslog.rebucket: n days -> one, with timestamps rescaled so day-based cutoffs stay consistent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adslog.dataset import Dataset
from adslog.rebucket import rebucket
from adslog.synth import SynthConfig, generate
from dermcore.errors import DermError


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rb") / "data"
    generate(
        SynthConfig(n_users=300, n_ads=200, n_advertisers=40, n_days=9, impressions_per_day=2000, seed=3), out
    )
    return out


def test_weekly_buckets_keep_every_row_and_every_time_inside_its_bucket(small: Path, tmp_path: Path) -> None:
    src = Dataset.open(small)
    out = Dataset.open(rebucket(small, tmp_path / "weekly", 7))
    assert (out.first_day, out.last_day) == (src.first_day, src.first_day + 1)  # 9 days -> weeks 0 and 1
    a = src.impressions(src.days(), ["ts", "day", "conversion_ts", "user_id", "ad_id"])
    b = out.impressions(out.days(), ["ts", "day", "conversion_ts", "user_id", "ad_id"])
    assert a.num_rows == b.num_rows
    day, ts = b.column("day").to_numpy(), b.column("ts").to_numpy()
    # every event lies inside its bucket's [day * 86400, (day + 1) * 86400)
    assert np.all(ts >= day.astype(np.int64) * 86400) and np.all(ts < (day.astype(np.int64) + 1) * 86400)
    # the first 7 days -> bucket 0, days 8-9 -> bucket 1
    assert np.array_equal(day, src.first_day + (a.column("day").to_numpy() - src.first_day) // 7)
    # order of events per user is unchanged (point-in-time rules still hold)
    assert np.array_equal(np.argsort(a.column("ts").to_numpy(), kind="stable"), np.argsort(ts, kind="stable"))
    conv_a, conv_b = a.column("conversion_ts").to_numpy(), b.column("conversion_ts").to_numpy()
    assert np.array_equal(conv_a < 0, conv_b < 0)  # the -1 "none" marker survives
    has = conv_b >= 0
    assert np.all(conv_b[has] >= ts[has])  # a conversion still follows its impression
    ads = out.ads(["first_day", "last_day"])
    assert np.all(ads.column("first_day").to_numpy() <= ads.column("last_day").to_numpy())


def test_bad_factor_is_an_error(small: Path, tmp_path: Path) -> None:
    with pytest.raises(DermError, match="days_per_bucket"):
        rebucket(small, tmp_path / "x", 0)
