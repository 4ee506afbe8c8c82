"""The one-hot features and crosses of a log: one definition for the regression baseline
(`eval.baselines.logistic_regression`) and the ranker's wide part (`ranking.model.WidePart`).

A *field* is a tuple of column names: one column is a one-hot feature per value, several a cross (one feature
per combination of values). `field_keys` turns a field's columns into one int64 key per row; the regression
looks the keys up in the vocabulary it saw in training, the wide part hashes (field, key) into its table's
rows. The columns of impressions come from `ColumnJoin`: the impressions' own columns, else the users table
joined on user_id, else the ads table joined on ad_id, the raw values as logged.

`dataset_fields` chooses a log's fields: on the built-in synthetic ads log the ones an ads engineer fits there
(`ADS_FIELDS`), on any other log every id / categorical column of the users, the ads and the impressions, plus
each user / context categorical x the ad category column (the crosses `ADS_FIELDS` and MovieLens' fields make).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from adslog.dataset import Dataset
from adslog.oracle import IdMap
from adslog.schema import ColumnKind

Field = tuple[str, ...]
Fields = tuple[Field, ...]

#: the synthetic ads log's one-hot fields and crosses (`benchmarks/synthetic_ceiling.py`): the ids, the ad's
#: category, the context, and region / age x category, surface x category
ADS_FIELDS: Fields = (
    ("ad_id",),
    ("user_id",),
    ("advertiser_id",),
    ("category",),
    ("surface",),
    ("position",),
    ("region", "category"),
    ("age_bucket", "category"),
    ("surface", "category"),
)
#: `Dataset.manifest["source"]["generator"]` of the built-in synthetic log (`adslog.synth.generate`)
SYNTH_GENERATOR = "derm.synth"
#: the multiplier that combines a cross's columns into one key (a prime above every categorical's cardinality)
CROSS_BASE = 1_000_003


def field_keys(cols: Mapping[str, np.ndarray], field: Sequence[str]) -> np.ndarray:
    """int64[n]: one key per row for the field's value; a cross combines its columns' integer values as
    k = k * CROSS_BASE + v (int64 arithmetic, wrapping)."""
    k = np.zeros(len(cols[field[0]]), np.int64)
    with np.errstate(over="ignore"):
        for name in field:
            k = k * CROSS_BASE + np.asarray(cols[name]).astype(np.int64)
    return k


def fields_keys(cols: Mapping[str, np.ndarray], fields: Fields) -> np.ndarray:
    """int64[n, len(fields)]: `field_keys` of every field."""
    n = len(next(iter(cols.values()))) if cols else 0
    if not fields:
        return np.zeros((n, 0), np.int64)
    return np.stack([field_keys(cols, f) for f in fields], 1)


def field_columns(fields: Fields) -> list[str]:
    """The distinct column names `fields` read, sorted."""
    return sorted({c for f in fields for c in f})


def dataset_fields(ds: Dataset) -> Fields:
    """The one-hot fields and crosses of `ds` (see the module docstring)."""
    source = ds.manifest.get("source") or {}
    if isinstance(source, dict) and source.get("generator") == SYNTH_GENERATOR:
        return ADS_FIELDS
    kinds = (ColumnKind.ID, ColumnKind.CATEGORICAL)
    user = [c.name for c in ds.feature_columns("users", kinds)]
    ad = [c.name for c in ds.feature_columns("ads", kinds)]
    required = {"user_id", "ad_id"}
    ctx = [
        c.name for c in ds.feature_columns("impressions", [ColumnKind.CATEGORICAL]) if c.name not in required
    ]
    singles = ["user_id", "ad_id"] + [c for c in (*user, *ad, *ctx) if c not in required]
    out: list[Field] = [(c,) for c in dict.fromkeys(singles)]
    ad_cols = ds.columns.get("ads", {})
    if "category" in ad_cols and ad_cols["category"].kind is ColumnKind.CATEGORICAL:
        user_cats = [c.name for c in ds.feature_columns("users", [ColumnKind.CATEGORICAL])]
        out += [(c, "category") for c in (*user_cats, *ctx)]
    return tuple(out)


class ColumnJoin:
    """Scalar columns of the users and ads tables, read once and joined to impressions by id.

    `columns`: the names to provide beyond the impressions' own; each is looked up in the users table, else the
    ads table (ValueError when in neither, or not a scalar column)."""

    def __init__(self, ds: Dataset, columns: Iterable[str]) -> None:
        self.tables: dict[str, tuple[str, IdMap, np.ndarray]] = {}
        users, ads = ds.columns.get("users", {}), ds.columns.get("ads", {})
        maps: dict[str, IdMap] = {}
        for c in sorted(set(columns)):
            if c in users:
                key, read = "user_id", ds.users
            elif c in ads:
                key, read = "ad_id", ds.ads
            else:
                raise ValueError(f"column {c!r} is in neither the rows, the users table nor the ads table")
            t = read([key, c])
            if key not in maps:
                maps[key] = IdMap(t.column(key).to_numpy().astype(np.int64), key)
            values = np.asarray(t.column(c).to_numpy(zero_copy_only=False))
            if values.ndim != 1 or values.dtype == object:
                raise ValueError(f"column {c!r} is not a scalar column: it cannot be one-hot encoded")
            self.tables[c] = (key, maps[key], values)

    def join(self, rows: Mapping[str, np.ndarray], strict: bool = True) -> dict[str, np.ndarray]:
        """`rows` (at least user_id / ad_id for the joined columns, each [n]) plus every joined column [n].
        `strict`: an id missing from its table is an error (DermError); otherwise its values are -1."""
        out = {c: np.asarray(v) for c, v in rows.items()}
        found: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # key -> (table rows, found) of the rows' ids
        for c, (key, ids, values) in self.tables.items():
            if c in out:
                continue
            if key not in found:
                q = np.asarray(out[key], np.int64)
                if strict:
                    found[key] = (ids.rows(q), np.ones(len(q), bool))
                elif len(ids.sorted) == 0:
                    found[key] = (np.zeros(len(q), np.int64), np.zeros(len(q), bool))
                else:
                    pos = np.searchsorted(ids.sorted, q).clip(0, len(ids.sorted) - 1)
                    found[key] = (ids.order[pos], ids.sorted[pos] == q)
            pos, hit = found[key]
            out[c] = values[pos] if strict else np.where(hit, values[pos].astype(np.int64), -1)
        return out
