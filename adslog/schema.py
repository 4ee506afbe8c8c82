"""The dataset manifest: tables, columns and the kind of every column.

A dataset is a directory:

    DATA/manifest.json                       kind "dataset", this schema
    DATA/impressions/day=<D>/part-<n>.parquet the log, one partition per day (days since 1970-01-01 UTC)
    DATA/users.parquet                       user_id + user features
    DATA/ads.parquet                         ad_id + ad features (advertiser, campaign, category, price, bid,
                                             first_day, last_day, a dense content vector)
    DATA/offsite_conversions.parquet         optional: user_id, advertiser_id, ts
    DATA/oracle/                             optional, synthetic only: true latent factors (never model input)

Every column carries a *kind* so that towers and the ranker build their encoders from the manifest alone:

    id           an entity key (int64 >= 0): user_id, ad_id, advertiser_id, campaign_id
    time         ts / conversion_ts (int64 unix seconds), day (int32), first_day / last_day
    categorical  small-vocabulary integer feature; `cardinality` bounds its values (0 .. cardinality-1)
    numeric      float feature, normalised by the consumer with training-day statistics
    dense_vector fixed-size float32 list (`dim`): a pretrained representation
    label        click / conversion (0/1)
    oracle       true probabilities or factors of a simulator: for evaluation only, refused by the feature loader
    meta         bookkeeping (e.g. `split` of an imported benchmark): never a feature
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pyarrow as pa

DATASET_KIND = "dataset"
DATASET_SCHEMA_VERSION = 1


class ColumnKind(StrEnum):
    ID = "id"
    TIME = "time"
    CATEGORICAL = "categorical"
    NUMERIC = "numeric"
    DENSE_VECTOR = "dense_vector"
    LABEL = "label"
    ORACLE = "oracle"
    META = "meta"


FEATURE_KINDS = (ColumnKind.ID, ColumnKind.CATEGORICAL, ColumnKind.NUMERIC, ColumnKind.DENSE_VECTOR)

_DTYPES: dict[str, pa.DataType] = {
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
}


@dataclass(frozen=True)
class ColumnSpec:
    """One column: its name, dtype (`int64`, `float32`, ...; dense vectors are float32 lists of `dim`), kind."""

    name: str
    dtype: str
    kind: ColumnKind
    cardinality: int | None = None
    dim: int | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if self.kind is ColumnKind.DENSE_VECTOR:
            if self.dtype != "float32" or not self.dim or self.dim < 1:
                raise ValueError(f"dense_vector column {self.name!r} needs dtype float32 and dim >= 1")
        elif self.dtype not in _DTYPES:
            raise ValueError(f"column {self.name!r}: unknown dtype {self.dtype!r}")
        if self.kind is ColumnKind.CATEGORICAL and (self.cardinality is None or self.cardinality < 1):
            raise ValueError(f"categorical column {self.name!r} needs cardinality >= 1")

    def arrow_type(self) -> pa.DataType:
        if self.kind is ColumnKind.DENSE_VECTOR:
            assert self.dim is not None
            return pa.list_(pa.float32(), self.dim)
        return _DTYPES[self.dtype]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dtype": self.dtype, "kind": self.kind.value}
        if self.cardinality is not None:
            d["cardinality"] = self.cardinality
        if self.dim is not None:
            d["dim"] = self.dim
        if self.doc:
            d["doc"] = self.doc
        return d

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> ColumnSpec:
        return cls(
            name=name,
            dtype=str(d["dtype"]),
            kind=ColumnKind(d["kind"]),
            cardinality=d.get("cardinality"),
            dim=d.get("dim"),
            doc=d.get("doc", ""),
        )


# Columns every impressions table has, with their exact types.
REQUIRED_IMPRESSION_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("ts", "int64", ColumnKind.TIME, doc="impression time, unix seconds UTC"),
    ColumnSpec("day", "int32", ColumnKind.TIME, doc="days since 1970-01-01 UTC"),
    ColumnSpec("user_id", "int64", ColumnKind.ID),
    ColumnSpec("ad_id", "int64", ColumnKind.ID),
    ColumnSpec("click", "int8", ColumnKind.LABEL, doc="1 if the impression was clicked"),
)
REQUIRED_USER_COLUMNS = (ColumnSpec("user_id", "int64", ColumnKind.ID),)
REQUIRED_AD_COLUMNS = (ColumnSpec("ad_id", "int64", ColumnKind.ID),)
REQUIRED_OFFSITE_COLUMNS = (
    ColumnSpec("user_id", "int64", ColumnKind.ID),
    ColumnSpec("advertiser_id", "int64", ColumnKind.ID),
    ColumnSpec("ts", "int64", ColumnKind.TIME),
)
REQUIRED = {
    "impressions": REQUIRED_IMPRESSION_COLUMNS,
    "users": REQUIRED_USER_COLUMNS,
    "ads": REQUIRED_AD_COLUMNS,
    "offsite_conversions": REQUIRED_OFFSITE_COLUMNS,
}
TABLE_KEYS = {"users": "user_id", "ads": "ad_id"}
TABLE_FILES = {
    "impressions": "impressions",
    "users": "users.parquet",
    "ads": "ads.parquet",
    "offsite_conversions": "offsite_conversions.parquet",
}


def table_schema(columns: dict[str, ColumnSpec]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow_type()) for c in columns.values()])


def day_of(ts: Any) -> Any:
    """Days since 1970-01-01 UTC of unix seconds (works on ints and numpy arrays)."""
    return ts // 86400
