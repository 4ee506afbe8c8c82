"""Coarser time buckets: a copy of a dataset where every `n` days become one "day" (e.g. weekly buckets for
MovieLens-100K, whose ~7 months are too sparse per calendar day).

Days *and* timestamps are rescaled together, so the dataset stays self-consistent: a bucket b covers
[b * 86400, (b + 1) * 86400) seconds exactly as a day does, and every rule that works on `(day + 1) * 86400`
(conversion labels known at the end of a training day, users embedded at the end of a day, point-in-time
sequences) means "the end of the bucket". Rescaling is monotone, so the order of events, and therefore every
point-in-time guarantee, is unchanged. (Replacing only the `day` column would leave timestamps on the old scale:
a label cutoff of `(last_bucket + 1) * 86400` would then fall weeks before most events and silently zero their
labels.)

Mapping, with f = the first day: day d -> f + (d - f) // n; time t (seconds) -> f * 86400 + (t - f * 86400) // n;
negative timestamps (the -1 "no conversion" marker) are kept. Columns of kind `time` named `day` or ending in
`_day` are days; every other `time` column is seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from adslog.dataset import Dataset, DatasetWriter
from adslog.periods import dataset_period
from adslog.schema import ColumnKind, ColumnSpec
from dermcore.errors import DermError

DAY = 86400


def _is_day(name: str) -> bool:
    return name == "day" or name.endswith("_day")


def _rescale(table: pa.Table, cols: dict[str, ColumnSpec], first: int, n: int) -> pa.Table:
    for name, spec in cols.items():
        if spec.kind is not ColumnKind.TIME or name not in table.column_names:
            continue
        v = table.column(name).to_numpy().astype(np.int64)
        if _is_day(name):
            new = first + np.floor_divide(v - first, n)
        else:
            base = first * DAY
            new = np.where(v < 0, v, base + np.floor_divide(v - base, n))
        i = table.column_names.index(name)
        table = table.set_column(i, name, pa.array(new, type=table.schema.field(name).type))
    return table


def _period(manifest: dict, n: int, first: int) -> dict:
    """The `period` of the rebucketed dataset: n periods of the source's period (`adslog.periods`)."""
    days = int(dataset_period(manifest)["days"]) * n
    return {"name": {1: "day", 7: "week"}.get(days, f"{days}d"), "days": days, "origin_day": int(first)}


def rebucket(src: str | Path, out: str | Path, days_per_bucket: int, overwrite: bool = False) -> Path:
    """Write `src` with every `days_per_bucket` days merged into one day to `out` (published atomically);
    returns `out`. The manifest records the source and the factor."""
    if days_per_bucket < 1:
        raise DermError(f"days_per_bucket must be >= 1, got {days_per_bucket}")
    ds = Dataset.open(src)
    if ds.period["days"] == 0:
        raise DermError(
            f"{ds.root}: periods cut at explicit points cannot be rebucketed: import with other cuts"
        )
    out = Path(out)
    n, first = int(days_per_bucket), ds.first_day
    imp_cols = ds.columns["impressions"]
    with DatasetWriter(
        out, f"{ds.manifest.get('name', 'dataset')}_by_{n}_days", list(imp_cols.values()), overwrite=overwrite
    ) as w:
        for b in range(first, first + (ds.last_day - first) // n + 1):
            days = [d for d in ds.days() if first + (d - first) // n == b]
            if not days:
                continue
            t = _rescale(ds.impressions(days), imp_cols, first, n)
            order = np.argsort(t.column("ts").to_numpy(), kind="stable")
            w.write_day(b, t.take(pa.array(order)))
        for table in ("users", "ads", "offsite_conversions"):
            if ds.has_table(table):
                cols = ds.columns[table]
                w.write_table(table, _rescale(ds.table(table), cols, first, n), list(cols.values()))
        w.finish(
            first_day=first,
            last_day=first + (ds.last_day - first) // n,
            source={"rebucketed_from": str(Path(src).resolve()), "days_per_bucket": n},
            period=_period(ds.manifest, n, first),
        )
    return out
