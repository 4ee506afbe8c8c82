"""adslog.sequences: point-in-time user activity sequences, on hand-built logs and against a brute force over
a tiny synthetic dataset."""

from __future__ import annotations

import numpy as np
import pytest

from adslog.dataset import Dataset
from adslog.sequences import CLICK, CONVERSION, OFFSITE, PAD, ActivityLog, Sequences
from adslog.synth import SynthConfig, generate

U1, U2, U3 = 10**9 + 1, 10**9 + 7, 10**12 + 3  # user ids, not positions
T0 = 1_700_000_000


def _log() -> ActivityLog:
    """U1: click ad 501 (adv 51) at T0, conversion of ad 501 at T0+50, offsite adv 77 at T0+20, click ad 502
    (adv 52) at T0+100. U2: click ad 900 (adv 90) at T0+10. Rows deliberately out of (user, time) order."""
    rows = [
        # user, ts, kind, ad_id, advertiser_id
        (U1, T0 + 100, CLICK, 502, 52),
        (U2, T0 + 10, CLICK, 900, 90),
        (U1, T0 + 50, CONVERSION, 501, 51),
        (U1, T0, CLICK, 501, 51),
        (U1, T0 + 20, OFFSITE, -1, 77),
    ]
    u, t, k, a, v = (np.array(c) for c in zip(*rows, strict=True))
    return ActivityLog(u.astype(np.int64), t.astype(np.int64), k.astype(np.int8), a, v)


def _row(s: Sequences, i: int) -> list[tuple[int, int, int]]:
    return list(zip(s.kind[i].tolist(), s.ad_id[i].tolist(), s.advertiser_id[i].tolist(), strict=True))


def test_shapes_and_dtypes() -> None:
    s = _log().sequences(np.array([U1, U2]), np.array([T0 + 1000, T0 + 1000]), 6)
    assert s.ad_id.shape == s.advertiser_id.shape == s.kind.shape == (2, 6)
    assert s.ad_id.dtype == np.int64 and s.advertiser_id.dtype == np.int64
    assert s.kind.dtype == np.int8 and s.length.dtype == np.int32
    assert s.length.tolist() == [4, 1]
    assert len(_log()) == 5


def test_most_recent_first_with_padding() -> None:
    s = _log().sequences(np.array([U1]), np.array([T0 + 1000]), 6)
    assert _row(s, 0) == [
        (CLICK, 502, 52),
        (CONVERSION, 501, 51),
        (OFFSITE, -1, 77),
        (CLICK, 501, 51),
        (PAD, -1, -1),
        (PAD, -1, -1),
    ]


def test_event_exactly_at_ts_is_excluded_and_one_second_later_included() -> None:
    log = _log()
    # the click at T0+100 is the impression's own click when queried at T0+100
    at = log.sequences(np.array([U1]), np.array([T0 + 100]), 6)
    after = log.sequences(np.array([U1]), np.array([T0 + 101]), 6)
    assert at.length.tolist() == [3]
    assert _row(at, 0)[0] == (CONVERSION, 501, 51)
    assert after.length.tolist() == [4]
    assert _row(after, 0)[0] == (CLICK, 502, 52)
    # the first event of the user: nothing before T0, the click from T0+1 on
    assert log.sequences(np.array([U1]), np.array([T0]), 3).length.tolist() == [0]
    assert _row(log.sequences(np.array([U1]), np.array([T0 + 1]), 3), 0) == [
        (CLICK, 501, 51),
        (PAD, -1, -1),
        (PAD, -1, -1),
    ]


def test_conversion_visible_only_from_its_conversion_ts() -> None:
    log = _log()
    s = log.sequences(np.array([U1, U1, U1]), np.array([T0 + 30, T0 + 50, T0 + 51]), 4)
    assert s.length.tolist() == [2, 2, 3]
    assert CONVERSION not in s.kind[0].tolist()
    assert CONVERSION not in s.kind[1].tolist()
    assert _row(s, 2)[0] == (CONVERSION, 501, 51)


def test_offsite_events_carry_advertiser_and_no_ad() -> None:
    s = _log().sequences(np.array([U1]), np.array([T0 + 21]), 4)
    assert _row(s, 0)[:2] == [(OFFSITE, -1, 77), (CLICK, 501, 51)]


def test_length_cap_keeps_the_most_recent() -> None:
    s = _log().sequences(np.array([U1]), np.array([T0 + 1000]), 2)
    assert s.length.tolist() == [2]
    assert _row(s, 0) == [(CLICK, 502, 52), (CONVERSION, 501, 51)]
    z = _log().sequences(np.array([U1]), np.array([T0 + 1000]), 0)
    assert z.kind.shape == (1, 0) and z.length.tolist() == [0]


def test_users_without_events_and_unknown_users_get_only_padding() -> None:
    log = _log()
    # U3 sorts after every known user; 5 sorts before; 10**9+4 sorts between U1 and U2; U2 at a time before
    # its only event
    users = np.array([U3, 5, 10**9 + 4, U2, U2])
    ts = np.array([T0 + 1000, T0 + 1000, T0 + 1000, T0 + 10, T0 + 11])
    s = log.sequences(users, ts, 3)
    assert s.length.tolist() == [0, 0, 0, 0, 1]
    for i in range(4):
        assert _row(s, i) == [(PAD, -1, -1)] * 3
    assert _row(s, 4)[0] == (CLICK, 900, 90)
    # queries are independent of each other's order
    one = log.sequences(np.array([U2]), np.array([T0 + 11]), 3)
    assert _row(one, 0) == _row(s, 4)


def test_empty_log_and_empty_query() -> None:
    empty = ActivityLog(*(np.zeros(0, np.int64) for _ in range(5)))
    s = empty.sequences(np.array([U1]), np.array([T0]), 3)
    assert s.length.tolist() == [0] and _row(s, 0) == [(PAD, -1, -1)] * 3
    s = _log().sequences(np.zeros(0, np.int64), np.zeros(0, np.int64), 3)
    assert s.ad_id.shape == (0, 3)


def test_event_times_out_of_range_are_rejected() -> None:
    with pytest.raises(ValueError):
        ActivityLog(np.array([U1]), np.array([-1]), np.array([CLICK]), np.array([1]), np.array([1]))
    with pytest.raises(ValueError):
        ActivityLog(np.array([U1]), np.array([2**32]), np.array([CLICK]), np.array([1]), np.array([1]))


# --- end to end on a tiny synthetic dataset ------------------------------------------------------------------

SYNTH = SynthConfig(n_users=300, n_ads=200, n_advertisers=30, n_days=3, impressions_per_day=3000, seed=1)
L = 4


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out = tmp_path_factory.mktemp("seq") / "d"
    generate(SYNTH, out)
    return Dataset.open(out)


def _raw_events(ds: Dataset) -> dict[int, list[tuple[int, int, int, int]]]:
    """Brute force: user -> [(time, kind, ad_id, advertiser_id)] straight from the raw tables."""
    ads = ds.ads(["ad_id", "advertiser_id"])
    adv_of = dict(zip(ads.column("ad_id").to_pylist(), ads.column("advertiser_id").to_pylist(), strict=True))
    imps = ds.impressions(ds.days(), ["ts", "user_id", "ad_id", "click", "conversion", "conversion_ts"])
    events: dict[int, list[tuple[int, int, int, int]]] = {}
    for ts, u, a, click, conv, conv_ts in zip(
        *(imps.column(c).to_pylist() for c in imps.column_names), strict=True
    ):
        if click == 1:
            events.setdefault(u, []).append((ts, CLICK, a, adv_of[a]))
        if conv == 1:
            events.setdefault(u, []).append((conv_ts, CONVERSION, a, adv_of[a]))
    off = ds.table("offsite_conversions", ["user_id", "advertiser_id", "ts"])
    for u, v, ts in zip(
        *(off.column(c).to_pylist() for c in ("user_id", "advertiser_id", "ts")), strict=True
    ):
        events.setdefault(u, []).append((ts, OFFSITE, -1, v))
    return events


@pytest.mark.parametrize("last_offset", [1, 2])
def test_point_in_time_sequences_match_brute_force(tiny_ds: Dataset, last_offset: int) -> None:
    ds = tiny_ds
    last_day = ds.first_day + last_offset
    events = _raw_events(ds)
    # precondition of an exact comparison: no two events of a user share a time (ties have no defined order)
    for evs in events.values():
        assert len({e[0] for e in evs}) == len(evs)
    kinds_total = {k for evs in events.values() for _, k, _, _ in evs}
    assert kinds_total == {CLICK, CONVERSION, OFFSITE}

    log = ActivityLog.from_dataset(ds, last_day)
    imps = ds.impressions(range(ds.first_day, last_day + 1), ["ts", "user_id"])
    users = imps.column("user_id").to_numpy()
    ts = imps.column("ts").to_numpy()
    seqs = log.sequences(users, ts, L)

    n_nonempty = n_full = n_conv = n_off = 0
    for i in range(len(users)):
        before = sorted((e for e in events.get(int(users[i]), []) if e[0] < ts[i]), reverse=True)
        want = [(k, a, v) for _, k, a, v in before[:L]]
        want += [(PAD, -1, -1)] * (L - len(want))
        assert _row(seqs, i) == want, (i, int(users[i]), int(ts[i]))
        assert seqs.length[i] == min(len(before), L)
        n_nonempty += bool(before)
        n_full += len(before) >= L
        n_conv += any(k == CONVERSION for k, _, _ in want)
        n_off += any(k == OFFSITE for k, _, _ in want)
    # the comparison is not vacuous: many non-empty sequences, some capped, conversions and offsite seen
    assert n_nonempty > 300
    assert n_full > 0 and n_conv > 0 and n_off > 0


def test_own_click_never_in_own_sequence(tiny_ds: Dataset) -> None:
    ds = tiny_ds
    log = ActivityLog.from_dataset(ds, ds.days()[-1])
    imps = ds.impressions(ds.days(), ["ts", "user_id", "ad_id", "click"])
    click = imps.column("click").to_numpy() == 1
    users = imps.column("user_id").to_numpy()[click]
    ts = imps.column("ts").to_numpy()[click]
    ads = imps.column("ad_id").to_numpy()[click]
    at = log.sequences(users, ts, L)
    after = log.sequences(users, ts + 1, L)
    assert len(users) > 50
    # one second after the click it is the most recent event; at the click's own time it is not visible
    assert (after.kind[:, 0] == CLICK).all() and (after.ad_id[:, 0] == ads).all()
    assert (after.length == np.minimum(at.length + 1, L)).all()
