"""`Dataset.open` and reading refuse every kind of bad input with a `DataError` naming the file;
`DatasetWriter` / `publishing` never leave a half-written dataset behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adslog.dataset import Dataset, DatasetWriter
from adslog.schema import REQUIRED_IMPRESSION_COLUMNS, ColumnKind, ColumnSpec, table_schema
from dermcore import artifact
from dermcore.artifact import publishing
from dermcore.errors import DataError

IMP_COLS = [
    *REQUIRED_IMPRESSION_COLUMNS,
    ColumnSpec("surface", "int8", ColumnKind.CATEGORICAL, cardinality=3),
    ColumnSpec("p_click", "float32", ColumnKind.ORACLE, doc="true click probability"),
]
USER_COLS = [
    ColumnSpec("user_id", "int64", ColumnKind.ID),
    ColumnSpec("age", "float32", ColumnKind.NUMERIC),
    ColumnSpec("true_factor", "float32", ColumnKind.ORACLE),
]
AD_COLS = [
    ColumnSpec("ad_id", "int64", ColumnKind.ID),
    ColumnSpec("category", "int8", ColumnKind.CATEGORICAL, cardinality=4),
    ColumnSpec("content", "float32", ColumnKind.DENSE_VECTOR, dim=2),
]
FIRST, LAST = 100, 102  # day 101 has no impressions


def _day(day: int, n: int = 3) -> pa.Table:
    ts = day * 86400 + np.arange(n, dtype=np.int64) * 60
    return pa.table(
        {
            "ts": ts,
            "day": np.full(n, day, np.int32),
            "user_id": np.arange(n, dtype=np.int64),
            "ad_id": np.arange(n, dtype=np.int64) % 2 + 10,
            "click": np.arange(n, dtype=np.int8) % 2,
            "surface": np.zeros(n, np.int8),
            "p_click": np.full(n, 0.5, np.float32),
        }
    )


def _users(ids: list[int] | None = None) -> pa.Table:
    ids = ids if ids is not None else [0, 1, 2]
    n = len(ids)
    return pa.table(
        {"user_id": ids, "age": np.full(n, 30.0, np.float32), "true_factor": np.zeros(n, np.float32)}
    )


def _ads(ids: list[int] | None = None) -> pa.Table:
    ids = ids if ids is not None else [10, 11]
    content = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(2 * len(ids), np.float32)), 2)
    return pa.table({"ad_id": ids, "category": [1] * len(ids), "content": content})


def write_tiny(
    out: Path,
    users: pa.Table | None = None,
    ads: pa.Table | None = None,
    overwrite: bool = False,
    **fields: Any,
) -> Path:
    with DatasetWriter(out, "tiny", IMP_COLS, overwrite=overwrite) as w:
        for day in (FIRST, LAST):
            w.write_day(day, _day(day))
        w.write_table("users", users if users is not None else _users(), USER_COLS)
        w.write_table("ads", ads if ads is not None else _ads(), AD_COLS)
        w.finish(FIRST, LAST, **fields)
    return out.resolve()


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny(tmp_path / "ds")


def _open_err(path: Path, **kw: Any) -> str:
    with pytest.raises(DataError) as e:
        Dataset.open(path, **kw)
    return str(e.value)


def _edit_manifest(root: Path, edit: Any) -> Path:
    mpath = root / "manifest.json"
    m = json.loads(mpath.read_text())
    edit(m)
    mpath.write_text(json.dumps(m))
    return mpath


def _part(root: Path, day: int) -> Path:
    return root / "impressions" / f"day={day}" / "part-0.parquet"


# -- a valid dataset ---------------------------------------------------------------------------------------
def test_valid_dataset_round_trip(tiny: Path) -> None:
    ds = Dataset.open(tiny)
    assert (ds.first_day, ds.last_day, ds.days()) == (FIRST, LAST, [100, 101, 102])
    assert ds.manifest["n_impressions"] == 6 and ds.has_oracle
    t = ds.impressions([FIRST, LAST])
    assert t.num_rows == 6 and t.column("day").to_pylist() == [100] * 3 + [102] * 3
    assert t.schema == table_schema(ds.columns["impressions"])
    assert ds.ads().column("content").type == pa.list_(pa.float32(), 2)
    np.testing.assert_array_equal(ds.live_ads(FIRST), [10, 11])


def test_empty_day_inside_range(tiny: Path) -> None:
    ds = Dataset.open(tiny)
    assert ds.partition_files(101) == []
    t = ds.impressions(101)
    assert t.num_rows == 0
    assert t.schema == table_schema(ds.columns["impressions"])
    t = ds.impressions(101, ["user_id", "click"])
    assert t.num_rows == 0 and t.schema == pa.schema([("user_id", pa.int64()), ("click", pa.int8())])
    assert ds.impressions([100, 101]).num_rows == 3


def test_day_outside_range(tiny: Path) -> None:
    ds = Dataset.open(tiny)
    for bad in (99, 103):
        msg = f"{tiny}: day {bad} is outside the data's range 100..102"
        with pytest.raises(DataError) as e:
            ds.check_day(bad)
        assert str(e.value) == msg
        with pytest.raises(DataError) as e:
            ds.impressions(bad)
        assert str(e.value) == msg
    with pytest.raises(DataError) as e:
        ds.impressions([100, 103])
    assert str(e.value) == f"{tiny}: day 103 is outside the data's range 100..102"
    assert ds.check_day(np.int64(101)) == 101


def test_unknown_impression_column(tiny: Path) -> None:
    with pytest.raises(DataError) as e:
        Dataset.open(tiny).impressions(100, ["user_id", "price"])
    assert str(e.value) == f"{tiny / 'manifest.json'}: impressions has no column 'price'"


# -- manifest problems -------------------------------------------------------------------------------------
def test_manifest_missing(tiny: Path) -> None:
    (tiny / "manifest.json").unlink()
    assert _open_err(tiny) == f"{tiny / 'manifest.json'}: file not found"


def test_manifest_corrupt_json(tiny: Path) -> None:
    (tiny / "manifest.json").write_text('{"kind": "dataset", ')
    assert _open_err(tiny).startswith(f"{tiny / 'manifest.json'}: corrupt JSON (")
    (tiny / "manifest.json").write_bytes(b"\xff\xfe\x00garbage")
    assert _open_err(tiny).startswith(f"{tiny / 'manifest.json'}: corrupt JSON (")
    (tiny / "manifest.json").write_text("[1, 2]")
    assert _open_err(tiny) == f"{tiny / 'manifest.json'}: manifest is not a JSON object"


def test_no_such_directory(tmp_path: Path) -> None:
    missing = (tmp_path / "nope").resolve()
    assert _open_err(missing) == f"{missing}: no such dataset artifact directory"


def test_manifest_wrong_kind_and_version(tiny: Path) -> None:
    mpath = _edit_manifest(tiny, lambda m: m.update(kind="index"))
    assert _open_err(tiny) == f"{mpath}: expected an artifact of kind 'dataset', found 'index'"
    _edit_manifest(tiny, lambda m: m.update(kind="dataset", schema_version=99))
    assert (
        _open_err(tiny)
        == f"{mpath}: unsupported schema_version 99 (this build reads 1..1); written by a newer derm: upgrade derm to read it"
    )


def test_manifest_missing_table_or_day(tiny: Path) -> None:
    mpath = _edit_manifest(tiny, lambda m: m["tables"].pop("ads"))
    assert _open_err(tiny) == f"{mpath}: manifest declares no 'ads' table"
    write_tiny(tiny, overwrite=True)
    _edit_manifest(tiny, lambda m: m.update(last_day="102"))
    assert _open_err(tiny) == f"{mpath}: manifest has no integer 'last_day'"


def test_manifest_does_not_declare_required_column(tiny: Path) -> None:
    mpath = _edit_manifest(tiny, lambda m: m["tables"]["impressions"]["columns"].pop("click"))
    assert _open_err(tiny) == f"{mpath}: table 'impressions' does not declare required column 'click'"


def test_manifest_mistypes_required_column(tiny: Path) -> None:
    mpath = _edit_manifest(tiny, lambda m: m["tables"]["users"]["columns"]["user_id"].update(dtype="float64"))
    assert _open_err(tiny) == f"{mpath}: table 'users' column 'user_id' declared float64, must be int64"


def test_manifest_invalid_column_declaration(tiny: Path) -> None:
    mpath = _edit_manifest(tiny, lambda m: m["tables"]["ads"]["columns"]["category"].update(kind="colour"))
    assert _open_err(tiny).startswith(f"{mpath}: invalid column declaration (")
    write_tiny(tiny, overwrite=True)
    _edit_manifest(tiny, lambda m: m["tables"]["ads"]["columns"]["category"].pop("cardinality"))
    assert _open_err(tiny).startswith(f"{mpath}: invalid column declaration (")


def test_manifest_columns_not_an_object(tiny: Path) -> None:
    mpath = _edit_manifest(tiny, lambda m: m["tables"]["users"].update(columns=["user_id"]))
    assert _open_err(tiny).startswith(f"{mpath}: invalid column declaration (")


# -- file problems -----------------------------------------------------------------------------------------
# The payload record (sizes and sha256 of every file, added at publish) catches any rewritten file first; the
# tests below drop it, as in a dataset written before the record existed, to reach the schema checks behind it.
def _no_payload(root: Path) -> None:
    _edit_manifest(root, lambda m: m.pop("payload"))


def test_payload_record_catches_rewritten_files(tiny: Path) -> None:
    part = _part(tiny, LAST)
    size = part.stat().st_size
    pq.write_table(_day(LAST).drop(["click"]), part)
    assert _open_err(tiny) == (
        f"{part}: size {part.stat().st_size} differs from the manifest's {size} (truncated or replaced)"
    )
    part.unlink()
    assert _open_err(tiny) == f"{part}: file listed in the manifest is missing"


def test_file_missing_required_column(tiny: Path) -> None:
    _no_payload(tiny)
    part = _part(tiny, LAST)
    pq.write_table(_day(LAST).drop(["click"]), part)
    assert _open_err(tiny) == f"{part}: missing column 'click'"
    # without the up-front check, the columns that are there still read; the missing one fails naming the file
    ds = Dataset.open(tiny, check_files=False)
    assert ds.impressions(LAST, ["ts", "user_id"]).num_rows == 3
    with pytest.raises(DataError) as e:
        ds.impressions(LAST)
    assert str(e.value).startswith(f"{part}: ")


def test_file_mistyped_required_column(tiny: Path) -> None:
    _no_payload(tiny)
    users = tiny / "users.parquet"
    pq.write_table(_users().set_column(0, "user_id", pa.array([0.0, 1.0, 2.0])), users)
    assert _open_err(tiny) == f"{users}: column 'user_id' has type double, expected int64"
    part = _part(tiny, FIRST)
    t = _day(FIRST)
    pq.write_table(
        t.set_column(t.schema.get_field_index("day"), "day", t.column("day").cast(pa.int64())), part
    )
    assert _open_err(tiny) == f"{part}: column 'day' has type int64, expected int32"
    with pytest.raises(DataError) as e:
        Dataset.open(tiny, check_files=False).impressions(FIRST)
    assert str(e.value) == f"{part}: column 'day' has type int64, expected int32"


def test_mistyped_feature_column(tiny: Path) -> None:
    _no_payload(tiny)
    ads = tiny / "ads.parquet"
    pq.write_table(_ads().set_column(1, "category", pa.array(["a", "b"])), ads)
    assert _open_err(tiny) == f"{ads}: column 'category' has type string, expected int8"


def test_corrupt_partition_file(tiny: Path) -> None:
    _no_payload(tiny)
    part = _part(tiny, LAST)
    part.write_bytes(b"this is not parquet" * 10)
    assert _open_err(tiny).startswith(f"{part}: unreadable Parquet file (")
    ds = Dataset.open(tiny, check_files=False)
    assert ds.impressions(FIRST).num_rows == 3  # the other days still read
    with pytest.raises(DataError) as e:
        ds.impressions(LAST)
    assert str(e.value).startswith(f"{part}: unreadable Parquet file (")


def test_corrupt_and_missing_table_file(tiny: Path) -> None:
    _no_payload(tiny)
    ads = tiny / "ads.parquet"
    ads.write_bytes(b"PAR1 garbage")
    assert _open_err(tiny).startswith(f"{ads}: unreadable Parquet file (")
    ads.unlink()
    assert _open_err(tiny) == f"{ads}: file not found"
    with pytest.raises(DataError) as e:
        Dataset.open(tiny, check_files=False).ads()
    assert str(e.value) == f"{ads}: file not found"


@pytest.mark.parametrize(("table", "key"), [("users", "user_id"), ("ads", "ad_id")])
def test_duplicate_ids(tmp_path: Path, table: str, key: str) -> None:
    kw = {"users": _users([0, 1, 1])} if table == "users" else {"ads": _ads([10, 11, 10])}
    root = write_tiny(tmp_path / "ds", **kw)  # the writer does not check: the reader must
    assert _open_err(root) == f"{root / (table + '.parquet')}: duplicate {key} values"


# -- features never include oracle columns ---------------------------------------------------------------
def test_feature_columns_exclude_oracle(tiny: Path) -> None:
    ds = Dataset.open(tiny)
    assert sorted(c.name for c in ds.feature_columns("impressions")) == ["ad_id", "surface", "user_id"]
    assert sorted(c.name for c in ds.feature_columns("users")) == ["age", "user_id"]
    assert sorted(c.name for c in ds.feature_columns("ads")) == ["ad_id", "category", "content"]
    assert ds.feature_columns("offsite_conversions") == []
    for table in ("impressions", "users"):
        for kinds in ([ColumnKind.ORACLE], list(ColumnKind)):
            with pytest.raises(DataError) as e:
                ds.feature_columns(table, kinds)
            assert str(e.value) == f"{tiny / 'manifest.json'}: oracle columns are never model features"


# -- atomic publishing -------------------------------------------------------------------------------------
def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(artifact.TMP_PREFIX))


def test_existing_output_refused(tiny: Path) -> None:
    with pytest.raises(DataError) as e:
        write_tiny(tiny)
    assert str(e.value) == f"{tiny}: already exists (pass overwrite to replace it)"
    assert _leftovers(tiny.parent) == []


def test_failed_writer_leaves_earlier_version(tiny: Path) -> None:
    before = Dataset.open(tiny).manifest["artifact_id"]
    with pytest.raises(ValueError, match="boom"):
        with DatasetWriter(tiny, "tiny", IMP_COLS, overwrite=True) as w:
            w.write_day(FIRST, _day(FIRST, n=7))
            w.write_table("users", _users(), USER_COLS)
            raise ValueError("boom")
    ds = Dataset.open(tiny)
    assert ds.manifest["artifact_id"] == before and ds.impressions(FIRST).num_rows == 3
    assert _leftovers(tiny.parent) == []


def test_writer_bad_table_leaves_earlier_version(tiny: Path) -> None:
    before = Dataset.open(tiny).manifest["artifact_id"]
    with pytest.raises(DataError) as e:
        with DatasetWriter(tiny, "tiny", IMP_COLS, overwrite=True) as w:
            w.write_day(FIRST, _day(FIRST).drop(["click"]))
    assert str(e.value) == f"impressions day {FIRST}: missing columns ['click']"
    assert Dataset.open(tiny).manifest["artifact_id"] == before
    assert _leftovers(tiny.parent) == []


def test_writer_without_finish_publishes_nothing(tmp_path: Path, tiny: Path) -> None:
    before = Dataset.open(tiny).manifest["artifact_id"]
    with pytest.raises(RuntimeError, match="without finish"):
        with DatasetWriter(tiny, "tiny", IMP_COLS, overwrite=True) as w:
            w.write_day(FIRST, _day(FIRST))
    assert Dataset.open(tiny).manifest["artifact_id"] == before
    with pytest.raises(RuntimeError, match="without finish"):
        with DatasetWriter(tmp_path / "new", "tiny", IMP_COLS):
            pass
    assert not (tmp_path / "new").exists()
    assert _leftovers(tmp_path) == []


def test_publishing_exception_keeps_target(tiny: Path) -> None:
    before = (tiny / "manifest.json").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with publishing(tiny, overwrite=True) as tmp:
            (tmp / "manifest.json").write_text("{}")
            raise KeyboardInterrupt
    assert (tiny / "manifest.json").read_bytes() == before
    Dataset.open(tiny)
    with pytest.raises(RuntimeError, match="has no manifest.json"):
        with publishing(tiny, overwrite=True) as tmp:
            (tmp / "data.bin").write_bytes(b"x")
    assert (tiny / "manifest.json").read_bytes() == before
    assert _leftovers(tiny.parent) == []


def test_overwrite_replaces_whole_version(tiny: Path) -> None:
    before = Dataset.open(tiny).manifest["artifact_id"]
    write_tiny(tiny, users=_users([0, 1, 2, 3]), overwrite=True, note="v2")
    ds = Dataset.open(tiny)
    assert ds.manifest["artifact_id"] != before and ds.manifest["note"] == "v2"
    assert ds.users().num_rows == 4
    assert _leftovers(tiny.parent) == []


def test_publishing_failed_swap_restores_old_version(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = (tiny / "manifest.json").read_bytes()
    real = os.replace

    def replace(src: Any, dst: Any) -> None:
        if Path(src).name.startswith(f"{artifact.TMP_PREFIX}{tiny.name}."):
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(artifact.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        write_tiny(tiny, overwrite=True)
    monkeypatch.undo()
    assert (tiny / "manifest.json").read_bytes() == before
    assert _leftovers(tiny.parent) == []
