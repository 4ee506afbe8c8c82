"""Model inputs built from the dataset's feature spec (the manifest's column kinds), for any dataset.

* id columns (user_id, ad_id, advertiser_id, campaign_id) are **hashed** into a fixed number of buckets. We hash
  rather than grow tables because the id set changes every day: an id first seen today gets a bucket at once,
  incremental training needs no resizing of weights or optimiser state, and memory is bounded. Collisions cost
  a little accuracy at demo sizes and are the standard trade-off (TorchRec's and Monolith's default too).
  Bucket 0 is padding (missing ids, padded sequence slots).
* categorical columns map value v to v + 1 (0 = unknown / out of range), so a table has cardinality + 1 rows.
* numeric columns are standardised with mean / std measured on the entities active in the training days only,
  and the statistics are stored in the model artifact (`FeatureSpec.to_json`).
* dense_vector columns (pretrained representations) enter as float32 vectors and are projected by the model.
* context: categorical columns of the impressions table (surface, position) feed only the interaction tower.
* oracle, label, time and meta columns are never features: `Dataset.feature_columns` refuses oracle columns and
  `build_feature_spec` asserts none slipped through.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from adslog.dataset import Dataset
from adslog.schema import REQUIRED_IMPRESSION_COLUMNS, ColumnKind
from dermcore.errors import DataError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)


def hash_ids(ids: np.ndarray, buckets: int, salt: int = 0) -> np.ndarray:
    """Hash int64 ids into 1..buckets-1 (splitmix64 finaliser); negative ids (padding) map to 0. int64[...]"""
    ids = np.asarray(ids, np.int64)
    with np.errstate(over="ignore"):
        x = ids.astype(np.uint64) + np.uint64(salt) * _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _MIX
        x = (x ^ (x >> np.uint64(27))) * _GOLDEN
        x = x ^ (x >> np.uint64(31))
    h = (x % np.uint64(buckets - 1)).astype(np.int64) + 1
    return np.where(ids < 0, 0, h)


@dataclass(frozen=True)
class Field:
    """One model input: `size` is the embedding-table rows (id / categorical) or the vector width (dense)."""

    name: str
    kind: str  # "id" | "categorical" | "numeric" | "dense_vector"
    size: int
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class FeatureSpec:
    """Every input of the user tower, the Pin (ad) tower and the context, with numeric statistics.

    `user` / `ad` fields are in a fixed order: categorical-like fields (ids, categoricals) first, then numerics,
    then dense vectors, matching the columns of `EntityTable` arrays.
    """

    user: tuple[Field, ...]
    ad: tuple[Field, ...]
    context: tuple[Field, ...]
    id_buckets: int
    ad_category: str | None  # ad column used as the category token of sequence events
    seq_ad_buckets: int = 2
    seq_adv_buckets: int = 2
    #: the one-hot fields and crosses (`dermfeatures.onehot`) whose keys `Inputs` adds to every impression batch
    #: (`onehot`, int64 (B, len(onehot))) for the ranker's wide part; () = none (towers, rankers before them)
    onehot: tuple[tuple[str, ...], ...] = ()

    def cats(self, entity: str) -> list[Field]:
        return [f for f in getattr(self, entity) if f.kind in ("id", "categorical")]

    def nums(self, entity: str) -> list[Field]:
        return [f for f in getattr(self, entity) if f.kind == "numeric"]

    def denses(self, entity: str) -> list[Field]:
        return [f for f in getattr(self, entity) if f.kind == "dense_vector"]

    def to_json(self) -> dict[str, Any]:
        return {
            "user": [asdict(f) for f in self.user],
            "ad": [asdict(f) for f in self.ad],
            "context": [asdict(f) for f in self.context],
            "id_buckets": self.id_buckets,
            "ad_category": self.ad_category,
            "seq_ad_buckets": self.seq_ad_buckets,
            "seq_adv_buckets": self.seq_adv_buckets,
            **({"onehot": [list(f) for f in self.onehot]} if self.onehot else {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(
            user=tuple(Field(**f) for f in d["user"]),
            ad=tuple(Field(**f) for f in d["ad"]),
            context=tuple(Field(**f) for f in d["context"]),
            id_buckets=int(d["id_buckets"]),
            ad_category=d.get("ad_category"),
            seq_ad_buckets=int(d["seq_ad_buckets"]),
            seq_adv_buckets=int(d["seq_adv_buckets"]),
            onehot=tuple(tuple(str(c) for c in f) for f in d.get("onehot", [])),
        )


def _vector_column(col: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return np.asarray(arr.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(arr), dim)


def id_bucket_count(n_distinct: int, cap: int, factor: int = 2) -> int:
    """Buckets for an id column with `n_distinct` known values: the next power of two >= `factor` x that (so new
    ids still mostly land in free buckets), at least 1,024, at most `cap`. With factor 2 about 1 - e^(-1/2) =
    39 % of ids share their bucket with another; factor 8 about 12 %."""
    return int(min(cap, max(1024, 1 << int(np.ceil(np.log2(max(factor * n_distinct, 2)))))))


def _distinct(ds: Dataset, table: str, column: str) -> int:
    import pyarrow.compute as pc

    return int(pc.count_distinct(ds.table(table, [column]).column(column)).as_py())


def _entity_fields(
    ds: Dataset, table: str, active_ids: np.ndarray, id_buckets: int, factor: int = 2
) -> tuple[Field, ...]:
    key = "user_id" if table == "users" else "ad_id"
    cols = ds.feature_columns(table)
    if any(c.kind is ColumnKind.ORACLE for c in cols):  # defence in depth: the loader already refuses them
        raise DataError(ds.root / "manifest.json", f"oracle column reached the {table} features")
    t = ds.table(table, [key] + [c.name for c in cols if c.kind is ColumnKind.NUMERIC and c.name != key])
    ids = t.column(key).to_numpy()
    active = np.isin(ids, active_ids) if len(active_ids) else np.ones(len(ids), bool)
    if not active.any():
        active = np.ones(len(ids), bool)
    fields: list[Field] = []
    for c in cols:
        if c.kind is ColumnKind.ID:
            fields.append(
                Field(c.name, "id", id_bucket_count(_distinct(ds, table, c.name), id_buckets, factor))
            )
        elif c.kind is ColumnKind.CATEGORICAL:
            assert c.cardinality is not None
            fields.append(Field(c.name, "categorical", c.cardinality + 1))
    if not any(f.name == key for f in fields):
        fields.insert(0, Field(key, "id", id_bucket_count(len(ids), id_buckets, factor)))
    for c in cols:
        if c.kind is ColumnKind.NUMERIC:
            x = t.column(c.name).to_numpy(zero_copy_only=False).astype(np.float64)[active]
            x = x[np.isfinite(x)]
            mean = float(x.mean()) if len(x) else 0.0
            std = float(x.std()) if len(x) else 1.0
            fields.append(Field(c.name, "numeric", 1, mean, std if std > 1e-8 else 1.0))
    for c in cols:
        if c.kind is ColumnKind.DENSE_VECTOR:
            assert c.dim is not None
            fields.append(Field(c.name, "dense_vector", c.dim))
    return tuple(fields)


def build_feature_spec(
    ds: Dataset, train_days: list[int], id_buckets: int, bucket_factor: int = 2
) -> FeatureSpec:
    """The spec for `ds`, with numeric statistics from entities active in `train_days` only; id tables get
    `id_bucket_count(n, id_buckets, bucket_factor)` buckets."""
    imp = ds.impressions(train_days, ["user_id", "ad_id"])
    users = np.unique(imp.column("user_id").to_numpy())
    ads = np.unique(imp.column("ad_id").to_numpy())
    required = {c.name for c in REQUIRED_IMPRESSION_COLUMNS}
    context = tuple(
        Field(c.name, "categorical", int(c.cardinality or 0) + 1)
        for c in ds.feature_columns("impressions", [ColumnKind.CATEGORICAL])
        if c.name not in required
    )
    ad_cols = ds.columns["ads"]
    cat_col = (
        "category" if "category" in ad_cols and ad_cols["category"].kind is ColumnKind.CATEGORICAL else None
    )
    n_adv = (
        _distinct(ds, "ads", "advertiser_id") if "advertiser_id" in ad_cols else _distinct(ds, "ads", "ad_id")
    )
    return FeatureSpec(
        user=_entity_fields(ds, "users", users, id_buckets, bucket_factor),
        ad=_entity_fields(ds, "ads", ads, id_buckets, bucket_factor),
        context=context,
        id_buckets=id_buckets,
        ad_category=cat_col,
        seq_ad_buckets=id_bucket_count(_distinct(ds, "ads", "ad_id"), id_buckets, bucket_factor),
        seq_adv_buckets=id_bucket_count(n_adv, id_buckets, bucket_factor),
    )


class EntityTable:
    """The feature rows of one entity kind (users or ads), addressed by int64 id, vectorised.

    `rows(ids)` returns cat int64[n, F_cat] (table indices, 0 = unknown), num float32[n, F_num] (standardised)
    and dense float32[n, sum of dims]. An id missing from the table still gets its own hashed id bucket, so a
    brand-new user or ad is embedded from whatever is known about it.
    """

    def __init__(self, ds: Dataset, spec: FeatureSpec, entity: str) -> None:
        table = "users" if entity == "user" else "ads"
        key = "user_id" if entity == "user" else "ad_id"
        self.key = key
        self.spec = spec
        self.entity = entity
        self.cat_fields = spec.cats(entity)
        self.num_fields = spec.nums(entity)
        self.dense_fields = spec.denses(entity)
        present = set(ds.columns[table])
        names = [key] + [
            f.name for f in (*self.cat_fields, *self.num_fields, *self.dense_fields) if f.name != key
        ]
        t = ds.table(table, [n for n in names if n in present])
        ids = t.column(key).to_numpy().astype(np.int64)
        order = np.argsort(ids)
        self.ids = ids[order]
        n = len(ids)
        cat = np.zeros((n, len(self.cat_fields)), np.int64)
        for j, f in enumerate(self.cat_fields):
            if f.name not in present:
                continue
            v = t.column(f.name).to_numpy(zero_copy_only=False).astype(np.int64)
            cat[:, j] = hash_ids(v, f.size, salt=j) if f.kind == "id" else _cat_index(v, f.size)
        num = np.zeros((n, len(self.num_fields)), np.float32)
        for j, f in enumerate(self.num_fields):
            x = t.column(f.name).to_numpy(zero_copy_only=False).astype(np.float64)
            num[:, j] = np.nan_to_num((x - f.mean) / f.std, nan=0.0, posinf=0.0, neginf=0.0)
        dense = np.zeros((n, sum(f.size for f in self.dense_fields)), np.float32)
        o = 0
        for f in self.dense_fields:
            dense[:, o : o + f.size] = np.nan_to_num(_vector_column(t.column(f.name), f.size))
            o += f.size
        self.cat, self.num, self.dense = cat[order], num[order], dense[order]
        self._key_pos = next(j for j, f in enumerate(self.cat_fields) if f.name == key)
        self._extra: dict[str, np.ndarray] = {}
        if entity == "ad":
            for extra in ("advertiser_id", "category", "bid", "objective", "first_day", "last_day"):
                if extra in present:
                    col = ds.ads(["ad_id", extra]).column(extra).to_numpy(zero_copy_only=False)
                    self._extra[extra] = col[order]

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row positions int64[n], found bool[n]) of ids in this table."""
        ids = np.asarray(ids, np.int64)
        if len(self.ids) == 0:
            return np.zeros(ids.shape, np.int64), np.zeros(ids.shape, bool)
        pos = np.clip(np.searchsorted(self.ids, ids), 0, len(self.ids) - 1)
        return pos, self.ids[pos] == ids

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids = np.asarray(ids, np.int64)
        pos, found = self.lookup(ids)
        cat = np.where(found[:, None], self.cat[pos], 0)
        cat[:, self._key_pos] = hash_ids(ids, self.cat_fields[self._key_pos].size, salt=self._key_pos)
        num = np.where(found[:, None], self.num[pos], 0.0).astype(np.float32)
        dense = np.where(found[:, None], self.dense[pos], 0.0).astype(np.float32)
        return cat, num, dense

    def attribute(self, name: str, ids: np.ndarray, default: float = -1) -> np.ndarray:
        """A raw ad attribute (advertiser_id, category, bid, objective, first_day, last_day) by id."""
        pos, found = self.lookup(ids)
        if name not in self._extra:
            return np.full(len(pos), default)
        return np.where(found, self._extra[name][pos], default)


def _cat_index(v: np.ndarray, size: int) -> np.ndarray:
    return np.where((v >= 0) & (v < size - 1), v + 1, 0)


def context_rows(spec: FeatureSpec, table: pa.Table, reference: bool = False) -> np.ndarray:
    """Context indices int64[n, F_ctx] for impressions. With `reference`, position is fixed to slot 0 (the
    serving-time reference value: we score an ad as if shown in the top slot, removing position bias)."""
    n = table.num_rows
    out = np.zeros((n, len(spec.context)), np.int64)
    for j, f in enumerate(spec.context):
        if reference and f.name == "position":
            out[:, j] = 1  # value 0 -> index 1
        elif f.name in table.column_names:
            out[:, j] = _cat_index(table.column(f.name).to_numpy().astype(np.int64), f.size)
    return out


def reference_context(spec: FeatureSpec, n: int) -> np.ndarray:
    """The serving-time reference context int64[n, F_ctx]: every context value 0 (surface 0, the top slot)."""
    return np.ones((n, len(spec.context)), np.int64)  # value 0 -> index 1
