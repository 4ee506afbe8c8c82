"""`derm data inspect`: what a dataset holds per period, before anything is trained on it.

Per period (one `day` of the dataset: a calendar day, a week or N days, `adslog.periods`): impressions (`rows`),
distinct users and items shown, clicks, conversions, CTR, and items live by schedule (`live_items`: ads whose
first_day <= period <= last_day). A period is *empty* without rows and *sparse* when it has rows but fewer than
`sparse_fraction` x the median rows of the non-empty periods, or fewer than `min_clicks` clicks: a figure
evaluated on it rests on too little to mean much.

Suggested split (what `derm run` uses when `--train-periods` is not given): the test period is the last period
that is neither empty nor sparse; the training window starts at the first period and ends at the first period
where the rows so far reach `train_share` of the rows up to the test period, but never later than the evaluable
period before the test period, so at least one daily cycle or evaluation follows it. No suggestion (None, with a
reason) when fewer than two periods are evaluable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from adslog.dataset import Dataset
from adslog.periods import period_start
from dermcore.errors import ConfigError
from dermcore.progress import Progress, no_progress


@dataclass(frozen=True)
class InspectConfig:
    sparse_fraction: float = 0.1  # a period with fewer rows than this share of the median period is sparse
    min_clicks: int = 20  # ... and so is one with fewer clicks than this
    train_share: float = 0.6  # share of the rows (up to the test period) the suggested training window holds

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparse_fraction < 1.0:
            raise ConfigError(f"sparse_fraction must be in [0, 1), got {self.sparse_fraction}")
        if self.min_clicks < 0:
            raise ConfigError(f"min_clicks must be >= 0, got {self.min_clicks}")
        if not 0.0 < self.train_share < 1.0:
            raise ConfigError(f"train_share must be in (0, 1), got {self.train_share}")


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 6) if b else None


def inspect_dataset(
    ds: Dataset, cfg: InspectConfig | None = None, progress: Progress = no_progress
) -> dict[str, Any]:
    """The inspection document of `ds` (see the module docstring); every count is an int."""
    cfg = cfg or InspectConfig()
    has_conv = "conversion" in ds.columns["impressions"]
    cols = ["user_id", "ad_id", "click"] + (["conversion"] if has_conv else [])
    ads = ds.ads([c for c in ("ad_id", "first_day", "last_day") if c in ds.columns["ads"]])
    has_sched = "first_day" in ads.column_names and "last_day" in ads.column_names
    first_d = ads.column("first_day").to_numpy() if has_sched else None
    last_d = ads.column("last_day").to_numpy() if has_sched else None
    users_all: list[np.ndarray] = []
    items_all: list[np.ndarray] = []
    periods: list[dict[str, Any]] = []
    days = ds.days()
    period = ds.period
    for i, d in enumerate(days):
        t = ds.impressions(d, cols)
        u = np.unique(t.column("user_id").to_numpy())
        a = np.unique(t.column("ad_id").to_numpy())
        users_all.append(u)
        items_all.append(a)
        n_click = int(t.column("click").to_numpy().astype(np.int64).sum())
        row: dict[str, Any] = {
            "day": d,
            "start": period_start(d, period),
            "rows": t.num_rows,
            "users": len(u),
            "items": len(a),
            "clicks": n_click,
            "conversions": int(t.column("conversion").to_numpy().astype(np.int64).sum())
            if has_conv
            else None,
            "ctr": _ratio(n_click, t.num_rows),
            "live_items": int(((first_d <= d) & (last_d >= d)).sum())
            if first_d is not None and last_d is not None
            else ads.num_rows,
        }
        periods.append(row)
        progress("inspect", i + 1, len(days))
    rows = np.array([p["rows"] for p in periods], np.int64)
    clicks = np.array([p["clicks"] for p in periods], np.int64)
    nonempty = rows > 0
    median = float(np.median(rows[nonempty])) if nonempty.any() else 0.0
    sparse = nonempty & ((rows < cfg.sparse_fraction * median) | (clicks < cfg.min_clicks))
    for p, s in zip(periods, sparse, strict=True):
        p["sparse"] = bool(s)
    empty_days = [d for d, ne in zip(days, nonempty, strict=True) if not ne]
    sparse_days = [d for d, s in zip(days, sparse, strict=True) if s]
    n_rows, n_clicks = int(rows.sum()), int(clicks.sum())
    n_conv = int(sum(p["conversions"] for p in periods)) if has_conv else None
    return {
        "path": str(ds.root),
        "name": ds.name,
        "period": period,
        "first_day": ds.first_day,
        "last_day": ds.last_day,
        "n_periods": len(days),
        "rows": n_rows,
        "users": int(len(np.unique(np.concatenate(users_all)))) if users_all else 0,
        "items": int(len(np.unique(np.concatenate(items_all)))) if items_all else 0,
        "users_table": ds.users(["user_id"]).num_rows,
        "items_table": ads.num_rows,
        "clicks": n_clicks,
        "conversions": n_conv,
        "ctr": _ratio(n_clicks, n_rows),
        "conversion_rate": _ratio(n_conv, n_rows) if n_conv is not None else None,
        "median_rows_per_period": median,
        "empty_periods": empty_days,
        "sparse_periods": sparse_days,
        "thresholds": {
            "sparse_rows_below": cfg.sparse_fraction * median,
            "sparse_clicks_below": cfg.min_clicks,
            "train_share": cfg.train_share,
        },
        "suggested": suggest_split(days, rows, nonempty & ~sparse, cfg.train_share),
        "periods": periods,
    }


def suggest_split(
    days: list[int], rows: np.ndarray, evaluable: np.ndarray, train_share: float
) -> dict[str, Any]:
    """{"train_periods", "train_days": [first, last], "test_day", "reason"} (see the module docstring)."""
    ev = np.flatnonzero(evaluable)
    if len(ev) < 2:
        return {
            "train_periods": None,
            "train_days": None,
            "test_day": None,
            "reason": f"{len(ev)} period(s) are neither empty nor sparse: need 2 (one to train, one to test)",
        }
    test = int(ev[-1])
    cum = np.cumsum(rows[: test + 1])
    # the first period whose running total reaches the share
    end = int(np.searchsorted(cum, train_share * cum[-1]))
    end = min(end, int(ev[-2]))
    return {
        "train_periods": end + 1,
        "train_days": [days[0], days[end]],
        "test_day": days[test],
        "reason": f"train until {train_share:.0%} of the rows up to the last evaluable period, test on it",
    }


def _ranges(days: list[int]) -> str:
    """'3..5, 9' for [3, 4, 5, 9]."""
    spans: list[list[int]] = []
    for d in days:
        if spans and d == spans[-1][1] + 1:
            spans[-1][1] = d
        else:
            spans.append([d, d])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in spans) or "none"


def inspect_text(doc: dict[str, Any], max_rows: int = 60) -> str:
    """The human-readable inspection (the per-period table only up to `max_rows` periods)."""
    p = doc["period"]
    s = doc["suggested"]
    lines = [
        f"{doc['name']}: {doc['path']}",
        f"period: {p['name']} ({p['days']} day(s)); periods {doc['first_day']}..{doc['last_day']} "
        f"({doc['n_periods']})",
        f"rows {doc['rows']:,}, users {doc['users']:,} (table {doc['users_table']:,}), items {doc['items']:,} "
        f"(table {doc['items_table']:,}), clicks {doc['clicks']:,}, CTR {doc['ctr']}"
        + (f", conversions {doc['conversions']:,}" if doc["conversions"] is not None else ""),
        f"empty periods ({len(doc['empty_periods'])}): {_ranges(doc['empty_periods'])}",
        f"sparse periods ({len(doc['sparse_periods'])}, under {doc['thresholds']['sparse_rows_below']:.0f} rows "
        f"or {doc['thresholds']['sparse_clicks_below']} clicks): {_ranges(doc['sparse_periods'])}",
    ]
    if s["train_periods"] is None:
        lines.append(f"suggested split: none ({s['reason']})")
    else:
        lines.append(
            f"suggested split: train on periods {s['train_days'][0]}..{s['train_days'][1]} "
            f"(--train-periods {s['train_periods']}), test period {s['test_day']} "
            f"(starts {period_start(s['test_day'], p)})"
        )
    if doc["n_periods"] <= max_rows:
        lines += [
            "",
            f"{'period':>8} {'starts':>10} {'rows':>9} {'users':>7} {'items':>7} {'live':>7} {'clicks':>7} {'CTR':>7}",
        ]
        for r in doc["periods"]:
            ctr = "-" if r["ctr"] is None else f"{r['ctr']:.4f}"
            flag = " sparse" if r["sparse"] else (" empty" if not r["rows"] else "")
            lines.append(
                f"{r['day']:>8} {r['start']:>10} {r['rows']:>9} {r['users']:>7} {r['items']:>7} {r['live_items']:>7} "
                f"{r['clicks']:>7} {ctr:>7}{flag}"
            )
    else:
        lines.append(f"({doc['n_periods']} periods: the per-period table is in --json)")
    return "\n".join(lines)
