"""Time periods: the unit a dataset's `day` column counts (a calendar day, a week, or N days).

Every stage of derm counts time in the dataset's `day` column and turns it into seconds as `day * 86400` (the
end-of-day label cutoff, users embedded at the end of a day, point-in-time sequences). A coarser period keeps
that arithmetic exact by rescaling days *and* timestamps together (`adslog.rebucket` explains why both): with
`origin` the log's first calendar day and n days per period,

    day d (calendar)  -> origin + (d - origin) // n
    ts t (seconds)    -> origin * 86400 + (t - origin * 86400) // n      (negative markers such as -1 kept)

so period p covers rescaled seconds [p * 86400, (p + 1) * 86400) and the order of events is unchanged.

Explicit cut points (`Period.from_cuts`: a log dense at first and sparse later wants short periods early and
long ones late) make periods of unequal length: with bounds b_0 = the first calendar day's midnight, the cuts,
b_k = the midnight after the last row, period p covers [b_p, b_{p+1}) and maps linearly onto day origin + p:
t -> (origin + p) * 86400 + (t - b_p) * 86400 // (b_{p+1} - b_p). The manifest's period then has `days` 0 and
`starts` (unix seconds of each period's start). The
dataset manifest records the period (`period`: {"name", "days", "origin_day"}); every window derm states in
"days" (training window, popularity window, TTL) then counts periods. Weeks start on the log's first day, not on
a fixed weekday. Datasets written before periods existed have no `period` key: a calendar day, or the
`days_per_bucket` of `adslog.rebucket`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from dermcore.errors import ConfigError

DAY_SECONDS = 86400
_NAMED = {"day": 1, "week": 7}
_PATTERN = re.compile(r"^([1-9][0-9]{0,4})d$")


@dataclass(frozen=True)
class Period:
    """`days` calendar days per period (1 = a calendar day); `name` as the user wrote it (day, week, 14d)."""

    name: str = "day"
    days: int = 1
    cuts: tuple[int, ...] = ()  # unix seconds where a new period starts (days is then 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cuts", tuple(int(c) for c in self.cuts))
        if self.cuts:
            if self.days != 0 or any(b <= a for a, b in zip(self.cuts, self.cuts[1:], strict=False)):
                raise ConfigError("--cuts: give strictly increasing cut points")
        elif not 1 <= self.days <= 36_500:
            raise ConfigError(f"period: days must be in 1..36500, got {self.days}")

    @classmethod
    def from_cuts(cls, text: str) -> Period:
        """Comma-separated cut points, each an ISO date (UTC midnight) or unix seconds."""
        import datetime as dt

        cuts: list[int] = []
        for part in (x.strip() for x in str(text).split(",")):
            if re.fullmatch(r"-?[0-9]+", part):
                cuts.append(int(part))
                continue
            try:
                d = dt.date.fromisoformat(part)
            except ValueError:
                raise ConfigError(
                    f"--cuts: {part!r} is neither an ISO date (2019-03-01) nor unix seconds"
                ) from None
            cuts.append((d - dt.date(1970, 1, 1)).days * DAY_SECONDS)
        return cls("cuts", 0, tuple(cuts))

    @classmethod
    def parse(cls, text: str) -> Period:
        """`day`, `week` or `<N>d` (N >= 1 calendar days); anything else is a ConfigError naming the value."""
        t = str(text).strip().lower()
        if t in _NAMED:
            return cls(t, _NAMED[t])
        m = _PATTERN.match(t)
        if not m:
            raise ConfigError(f"--period: expected day, week or <N>d (e.g. 14d), got {text!r}")
        n = int(m.group(1))
        return cls({1: "day", 7: "week"}.get(n, t), n)

    def to_json(self, origin_day: int) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "days": self.days, "origin_day": int(origin_day)}
        if self.cuts:
            out["starts"] = [int(origin_day) * DAY_SECONDS, *self.cuts]
        return out

    def rescale(self, ts: np.ndarray) -> tuple[np.ndarray, int]:
        """(rescaled seconds int64[n], origin day) of impression times `ts` in unix seconds (module docstring;
        every value is a time, so unlike `bucket_seconds` negative values are rescaled too). Cut points must
        lie strictly inside the log's span (ConfigError naming the first that does not)."""
        t = np.asarray(ts, np.int64)
        origin = int(t.min() // DAY_SECONDS)
        if not self.cuts:
            base = origin * DAY_SECONDS
            return (t if self.days == 1 else base + np.floor_divide(t - base, self.days)), origin
        start, end = origin * DAY_SECONDS, (int(t.max() // DAY_SECONDS) + 1) * DAY_SECONDS
        for c in self.cuts:
            if not start < c < end:
                raise ConfigError(f"--cuts: cut point {c} lies outside the log's span {start}..{end}")
        bounds = np.array([start, *self.cuts, end], np.int64)
        p = np.clip(np.searchsorted(bounds, t, side="right") - 1, 0, len(bounds) - 2)
        lo, width = bounds[p], bounds[p + 1] - bounds[p]
        return (origin + p) * DAY_SECONDS + (t - lo) * DAY_SECONDS // width, origin


def bucket_days(day: np.ndarray, origin: int, n: int) -> np.ndarray:
    """Calendar days -> period index (int64[n]); identity when n == 1."""
    d = np.asarray(day, np.int64)
    return d if n == 1 else origin + np.floor_divide(d - origin, n)


def bucket_seconds(ts: np.ndarray, origin: int, n: int) -> np.ndarray:
    """Unix seconds -> rescaled seconds (int64[n]); negative values (the -1 "none" marker) are kept."""
    t = np.asarray(ts, np.int64)
    if n == 1:
        return t
    base = origin * DAY_SECONDS
    return np.where(t < 0, t, base + np.floor_divide(t - base, n))


def dataset_period(manifest: dict[str, Any]) -> dict[str, Any]:
    """The period a dataset manifest records: {"name", "days", "origin_day"}; old manifests have none (a
    calendar day), or a rebucketed source's `days_per_bucket`."""
    p = manifest.get("period")
    if isinstance(p, dict) and isinstance(p.get("days"), int):
        out = {
            "name": str(p.get("name", "day")),
            "days": p["days"],
            "origin_day": int(p.get("origin_day", manifest.get("first_day", 0))),
        }
        if isinstance(p.get("starts"), list):
            out["starts"] = [int(x) for x in p["starts"]]
        return out
    src = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    n = src.get("days_per_bucket") if isinstance(src, dict) else None
    if isinstance(n, int) and n > 1:
        return {"name": {7: "week"}.get(n, f"{n}d"), "days": n, "origin_day": int(manifest["first_day"])}
    return {"name": "day", "days": 1, "origin_day": int(manifest.get("first_day", 0))}


def period_start(day: int, period: dict[str, Any]) -> str:
    """ISO date of the first calendar day of period `day` of a dataset with `period` (`dataset_period`)."""
    import datetime as dt

    origin, n = int(period["origin_day"]), int(period["days"])
    starts = period.get("starts")
    if n == 0 and isinstance(starts, list) and 0 <= int(day) - origin < len(starts):
        first = int(starts[int(day) - origin]) // DAY_SECONDS
    else:
        first = origin + (int(day) - origin) * max(n, 1)
    return (dt.date(1970, 1, 1) + dt.timedelta(days=first)).isoformat()
