"""Reading and writing datasets on disk (Parquet via pyarrow, described by a manifest).

`Dataset.open` validates the manifest and every table's columns before anything is used; every problem is a
`DataError` naming the file. `DatasetWriter` streams a dataset day by day into a temporary directory and
publishes it atomically, so a killed import or generation leaves nothing half written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from adslog.schema import (
    DATASET_KIND,
    DATASET_SCHEMA_VERSION,
    FEATURE_KINDS,
    REQUIRED,
    TABLE_FILES,
    TABLE_KEYS,
    ColumnKind,
    ColumnSpec,
    table_schema,
)
from dermcore.artifact import make_manifest, publishing, read_manifest, write_json_atomic
from dermcore.errors import DataError

log = logging.getLogger(__name__)


def _partition_dir(root: Path, day: int) -> Path:
    return root / TABLE_FILES["impressions"] / f"day={int(day)}"


def _check_columns(path: Path, schema: pa.Schema, columns: dict[str, ColumnSpec]) -> None:
    """Every declared column present with its declared type; required columns declared."""
    for spec in columns.values():
        idx = schema.get_field_index(spec.name)
        if idx < 0:
            raise DataError(path, f"missing column {spec.name!r}")
        got = schema.field(idx).type
        if got != spec.arrow_type():
            raise DataError(path, f"column {spec.name!r} has type {got}, expected {spec.arrow_type()}")


def _read_parquet(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
        raise DataError(path, f"unreadable Parquet file ({str(e).splitlines()[0]})") from None


class Dataset:
    """An opened, validated dataset. Tables are read lazily; ids are int64 throughout."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.columns: dict[str, dict[str, ColumnSpec]] = {}
        for table, tdesc in manifest["tables"].items():
            self.columns[table] = {n: ColumnSpec.from_json(n, d) for n, d in tdesc["columns"].items()}
        self.first_day = int(manifest["first_day"])
        self.last_day = int(manifest["last_day"])

    # -- opening ------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, check_files: bool = True) -> Dataset:
        root = Path(path).resolve()
        # sizes only: hashing a multi-GB log on every command would cost more than it protects
        m = read_manifest(root, DATASET_KIND, DATASET_SCHEMA_VERSION, verify="size")
        mpath = root / "manifest.json"
        tables = m.get("tables")
        if not isinstance(tables, dict):
            raise DataError(mpath, "manifest has no 'tables' object")
        for t in ("impressions", "users", "ads"):
            if t not in tables:
                raise DataError(mpath, f"manifest declares no {t!r} table")
        for key in ("first_day", "last_day"):
            if not isinstance(m.get(key), int):
                raise DataError(mpath, f"manifest has no integer {key!r}")
        try:
            ds = cls(root, m)
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise DataError(mpath, f"invalid column declaration ({e})") from None
        for table, cols in ds.columns.items():
            for req in REQUIRED.get(table, ()):
                got = cols.get(req.name)
                if got is None:
                    raise DataError(mpath, f"table {table!r} does not declare required column {req.name!r}")
                if got.dtype != req.dtype:
                    raise DataError(
                        mpath,
                        f"table {table!r} column {req.name!r} declared {got.dtype}, must be {req.dtype}",
                    )
        if check_files:
            ds.validate_files()
        return ds

    def validate_files(self) -> None:
        """Check each file's schema against the manifest (cheap: reads Parquet footers only)."""
        for table in self.columns:
            if table == "impressions":
                for f in self.partition_files():
                    self._check_file(f, table)
            else:
                f = self.root / TABLE_FILES[table]
                self._check_file(f, table)
                key = TABLE_KEYS.get(table)
                if key:
                    ids = _read_parquet(f, [key]).column(key)
                    if pc.count_distinct(ids).as_py() != len(ids):
                        raise DataError(f, f"duplicate {key} values")

    def _check_file(self, f: Path, table: str) -> None:
        try:
            schema = pq.read_schema(f)
        except FileNotFoundError:
            raise DataError(f, "file not found") from None
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
            raise DataError(f, f"unreadable Parquet file ({str(e).splitlines()[0]})") from None
        _check_columns(f, schema, self.columns[table])

    # -- metadata -----------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.root.name))

    @property
    def has_oracle(self) -> bool:
        return "p_click" in self.columns["impressions"]

    @property
    def period(self) -> dict[str, Any]:
        """What one `day` of this dataset is: {"name": day | week | <N>d, "days", "origin_day"}
        (`adslog.periods`; datasets without a recorded period count calendar days)."""
        from adslog.periods import dataset_period

        return dataset_period(self.manifest)

    def has_table(self, table: str) -> bool:
        return table in self.columns

    def days(self) -> list[int]:
        return list(range(self.first_day, self.last_day + 1))

    def check_day(self, day: int) -> int:
        if not self.first_day <= int(day) <= self.last_day:
            raise DataError(
                self.root, f"day {day} is outside the data's range {self.first_day}..{self.last_day}"
            )
        return int(day)

    def feature_columns(self, table: str, kinds: Iterable[ColumnKind] = FEATURE_KINDS) -> list[ColumnSpec]:
        """Columns of `table` usable as model input (never oracle, label, time or meta columns)."""
        ks = set(kinds)
        if ColumnKind.ORACLE in ks:
            raise DataError(self.root / "manifest.json", "oracle columns are never model features")
        return [c for c in self.columns.get(table, {}).values() if c.kind in ks]

    # -- reading ------------------------------------------------------------------------------------------
    def partition_files(self, day: int | None = None) -> list[Path]:
        base = self.root / TABLE_FILES["impressions"]
        if day is not None:
            d = _partition_dir(self.root, day)
            return sorted(d.glob("*.parquet")) if d.is_dir() else []
        return sorted(base.glob("day=*/*.parquet"))

    def impressions(self, days: int | Iterable[int], columns: Sequence[str] | None = None) -> pa.Table:
        """Impressions of one day or several, sorted by (day, ts) as written. Empty days give 0 rows."""
        ds = [int(days)] if isinstance(days, int | np.integer) else [int(d) for d in days]
        cols = self.columns["impressions"]
        names = list(columns) if columns is not None else list(cols)
        for n in names:
            if n not in cols:
                raise DataError(self.root / "manifest.json", f"impressions has no column {n!r}")
        schema = table_schema({n: cols[n] for n in names})
        parts: list[pa.Table] = []
        for d in ds:
            self.check_day(d)
            for f in self.partition_files(d):
                t = _read_parquet(f, names)
                _check_columns(f, t.schema, {n: cols[n] for n in names})
                parts.append(t.select(names))
        if not parts:
            return schema.empty_table()
        return pa.concat_tables(parts)

    def table(self, table: str, columns: Sequence[str] | None = None) -> pa.Table:
        if table not in self.columns:
            raise DataError(self.root / "manifest.json", f"dataset has no {table!r} table")
        f = self.root / TABLE_FILES[table]
        t = _read_parquet(f, columns)
        _check_columns(f, t.schema, {n: self.columns[table][n] for n in t.column_names})
        return t

    def users(self, columns: Sequence[str] | None = None) -> pa.Table:
        return self.table("users", columns)

    def ads(self, columns: Sequence[str] | None = None) -> pa.Table:
        return self.table("ads", columns)

    def live_ads(self, day: int) -> np.ndarray:
        """int64 ids of ads live on `day` by schedule (first_day <= day <= last_day), sorted."""
        cols = self.columns["ads"]
        if "first_day" in cols and "last_day" in cols:
            t = self.ads(["ad_id", "first_day", "last_day"])
            first = t.column("first_day").to_numpy()
            last = t.column("last_day").to_numpy()
            ids = t.column("ad_id").to_numpy()
            return np.sort(ids[(first <= day) & (last >= day)]).astype(np.int64)
        return np.sort(self.ads(["ad_id"]).column("ad_id").to_numpy()).astype(np.int64)


class DatasetWriter:
    """Writes a dataset into a temporary directory, then publishes it atomically with its manifest.

    Usage::

        with DatasetWriter(out, name="synthetic", impression_columns=[...]) as w:
            for day in days: w.write_day(day, table)
            w.write_table("users", users_table, user_columns)
            w.write_table("ads", ads_table, ad_columns)
            w.finish(first_day=.., last_day=.., source={...}, stats={...})
    """

    def __init__(
        self, out: str | Path, name: str, impression_columns: Sequence[ColumnSpec], overwrite: bool = False
    ) -> None:
        self.out = Path(out).resolve()
        self.name = name
        self.columns: dict[str, dict[str, ColumnSpec]] = {
            "impressions": {c.name: c for c in impression_columns}
        }
        self._ctx = publishing(self.out, overwrite=overwrite)
        self.tmp: Path | None = None
        self._finished = False
        self.n_impressions = 0

    def __enter__(self) -> DatasetWriter:
        self.tmp = self._ctx.__enter__()
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        if et is None and not self._finished:
            err = RuntimeError("DatasetWriter closed without finish(): nothing published")
            self._ctx.__exit__(RuntimeError, err, None)
            raise err
        self._ctx.__exit__(et, ev, tb)

    def _conform(self, table: pa.Table, cols: dict[str, ColumnSpec], where: str) -> pa.Table:
        missing = [c for c in cols if c not in table.column_names]
        if missing:
            raise DataError(where, f"missing columns {missing}")
        return table.select(list(cols)).cast(table_schema(cols))

    def write_day(self, day: int, table: pa.Table, part: int = 0) -> None:
        assert self.tmp is not None, "use DatasetWriter as a context manager"
        t = self._conform(table, self.columns["impressions"], f"impressions day {day}")
        d = _partition_dir(self.tmp, day)
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, d / f"part-{part}.parquet", compression="zstd")
        self.n_impressions += t.num_rows

    def write_table(self, table: str, data: pa.Table, columns: Sequence[ColumnSpec]) -> None:
        assert self.tmp is not None, "use DatasetWriter as a context manager"
        cols = {c.name: c for c in columns}
        self.columns[table] = cols
        pq.write_table(self._conform(data, cols, table), self.tmp / TABLE_FILES[table], compression="zstd")

    @property
    def extra_dir(self) -> Path:
        """A directory inside the dataset for non-table files (oracle factors, vocabularies)."""
        assert self.tmp is not None
        return self.tmp

    def finish(self, first_day: int, last_day: int, **fields: Any) -> None:
        assert self.tmp is not None
        (self.tmp / TABLE_FILES["impressions"]).mkdir(exist_ok=True)
        tables = {
            t: {"path": TABLE_FILES[t], "columns": {n: c.to_json() for n, c in cols.items()}}
            for t, cols in self.columns.items()
        }
        tables["impressions"]["partitioned_by"] = "day"
        m = make_manifest(
            DATASET_KIND,
            DATASET_SCHEMA_VERSION,
            name=self.name,
            first_day=int(first_day),
            last_day=int(last_day),
            n_impressions=self.n_impressions,
            tables=tables,
            **fields,
        )
        write_json_atomic(self.tmp / "manifest.json", m)
        self._finished = True
