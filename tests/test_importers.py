"""Importers: MovieLens-100K and Gowalla from /work/shared/data (read in place, skipped when absent), and the
generic CSV/Parquet importer on tiny files written in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adslog.dataset import Dataset
from adslog.importers import (
    GenericImportConfig,
    import_generic,
    import_gowalla,
    import_movielens_100k,
    within_day_order,
)
from adslog.schema import ColumnKind
from dermcore.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ML = SHARED_DATA / "movielens_100k"
GOWALLA = SHARED_DATA / "gowalla_lightgcn"


def _need(d: Path, *files: str) -> None:
    if not all((d / f).is_file() for f in files):
        pytest.skip(f"{d} not available")


# -- MovieLens-100K ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def movielens(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Dataset]:
    _need(ML, "ml-100k.inter", "ml-100k.user", "ml-100k.item")
    out = tmp_path_factory.mktemp("ml") / "ds"
    calls: list[tuple[str, int, int]] = []
    summary = import_movielens_100k(ML, out, progress=lambda s, d, t: calls.append((s, d, t)))
    assert calls[-1] == ("write days", 213, 213)
    return summary, Dataset.open(out)


def test_movielens_counts_and_rates(movielens: tuple[dict, Dataset]) -> None:
    summary, ds = movielens
    assert summary["rows"] == 100_000
    assert summary["users"] == 943 and summary["ads"] == 1682
    assert abs(summary["click_rate"] - 0.554) < 0.001
    assert abs(summary["conversion_rate"] - 0.212) < 0.001
    imp = ds.impressions(ds.days())
    assert imp.num_rows == 100_000 == ds.manifest["n_impressions"]
    assert imp.column("click").type == pa.int8() and imp.column("user_id").type == pa.int64()
    click = imp.column("click").to_numpy()
    conv = imp.column("conversion").to_numpy()
    assert click.sum() == 34_174 + 21_201 and conv.sum() == 21_201
    assert not (conv & (1 - click)).any()  # a conversion is always a click
    cts, ts = imp.column("conversion_ts").to_numpy(), imp.column("ts").to_numpy()
    np.testing.assert_array_equal(cts, np.where(conv == 1, ts, -1))
    assert set(imp.column("surface").to_numpy()) == {0} and set(imp.column("position").to_numpy()) == {0}
    assert ds.users().num_rows == 943 and ds.ads().num_rows == 1682
    assert set(np.unique(imp.column("user_id").to_numpy())) <= set(ds.users(["user_id"]).column(0).to_numpy())


def test_movielens_days_partitioned(movielens: tuple[dict, Dataset]) -> None:
    summary, ds = movielens
    # 1997-09-20 .. 1998-04-22 UTC: 215 calendar days, 213 with ratings.
    assert (ds.first_day, ds.last_day) == (10_124, 10_338)
    assert summary["days"] == 215 and summary["days_with_rows"] == 213
    assert len(ds.partition_files()) == 213
    n = 0
    for day in ds.days():
        t = ds.impressions(day, ["ts", "day"])
        ts = t.column("ts").to_numpy()
        assert (t.column("day").to_numpy() == day).all()
        assert (ts // 86400 == day).all() and (np.diff(ts) >= 0).all()
        n += t.num_rows
    assert n == 100_000


def test_movielens_features_and_stand_ins(movielens: tuple[dict, Dataset]) -> None:
    _, ds = movielens
    cols = ds.columns
    assert cols["ads"]["content"].kind is ColumnKind.DENSE_VECTOR and cols["ads"]["content"].dim == 19
    assert cols["ads"]["category"].cardinality == 19
    assert cols["users"]["zip_prefix"].cardinality == 11 and cols["users"]["gender"].cardinality == 2
    assert cols["users"]["occupation"].cardinality == 21
    assert cols["impressions"]["surface"].cardinality == 1
    ads = ds.ads()
    np.testing.assert_array_equal(ads.column("advertiser_id"), ads.column("ad_id"))
    content = np.stack(ads.column("content").to_numpy(zero_copy_only=False))
    assert content.sum(axis=1).min() >= 1  # every movie has a genre
    cat = ads.column("category").to_numpy()
    assert (content[np.arange(len(cat)), cat] == 1).all()
    year = ads.column("release_year").to_numpy()
    assert np.isfinite(year).all() and 1900 <= year.min() and year.max() <= 1998
    assert len(ds.live_ads(ds.first_day)) == len(ds.live_ads(ds.last_day)) == 1682
    src = ds.manifest["source"]
    assert {"click", "conversion", "surface", "position", "advertiser_id", "content"} <= set(src["stand_ins"])
    assert src["vocabularies"]["genre"][0] == "Action" and len(src["files"]) == 3


def test_movielens_refuses_existing_output(movielens: tuple[dict, Dataset]) -> None:
    _, ds = movielens
    with pytest.raises(DataError) as e:
        import_movielens_100k(ML, ds.root)
    assert str(e.value) == f"{ds.root}: already exists (pass overwrite to replace it)"


# -- Gowalla ----------------------------------------------------------------------------------------------
def test_gowalla(tmp_path: Path) -> None:
    _need(GOWALLA, "train.txt", "test.txt")
    summary = import_gowalla(GOWALLA, tmp_path / "gw")
    assert summary["rows"] == 810_128 + 217_242
    assert (summary["train_rows"], summary["test_rows"]) == (810_128, 217_242)
    assert summary["users"] == 29_858 and summary["ads"] == 40_981
    ds = Dataset.open(tmp_path / "gw")
    assert (ds.first_day, ds.last_day) == (0, 1)
    assert ds.columns["impressions"]["split"].kind is ColumnKind.META
    assert "conversion" not in ds.columns["impressions"]
    assert "split" not in [c.name for c in ds.feature_columns("impressions")]
    train = ds.impressions(0)
    test = ds.impressions(1)
    assert train.num_rows == 810_128 and test.num_rows == 217_242
    assert set(train.column("split").to_numpy()) == {0} and set(test.column("split").to_numpy()) == {1}
    assert set(test.column("ts").to_numpy()) == {86_400} and set(train.column("click").to_numpy()) == {1}
    # the first line of train.txt, parsed by hand
    first = (GOWALLA / "train.txt").open().readline().split()
    u = int(first[0])
    mine = train.filter(pa.compute.equal(train.column("user_id"), u)).column("ad_id").to_numpy()
    np.testing.assert_array_equal(mine, np.array(first[1:], dtype=np.int64))
    users = ds.users().column("user_id").to_numpy()
    np.testing.assert_array_equal(users, np.arange(29_858))
    assert ds.ads().num_rows == 40_981


def test_gowalla_bad_token(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.txt").write_text("0 1 2\n1 3 x4\n")
    (src / "test.txt").write_text("0 5\n")
    with pytest.raises(DataError) as e:
        import_gowalla(src, tmp_path / "gw")
    assert str(e.value) == f"{src / 'train.txt'}: non-integer token 'x4' on non-empty line 2"
    assert not (tmp_path / "gw").exists()


def test_gowalla_order_seed_spreads_train_pairs_over_day_0(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.txt").write_text("0 10 11 12 13\n1 11\n2 14 10\n")
    (src / "test.txt").write_text("0 14\n2 11\n")
    import_gowalla(src, tmp_path / "a", order_seed=3)
    import_gowalla(src, tmp_path / "b", order_seed=3)
    import_gowalla(src, tmp_path / "plain")
    train = Dataset.open(tmp_path / "a").impressions(0, ["user_id", "ad_id", "ts"])
    again = Dataset.open(tmp_path / "b").impressions(0, ["user_id", "ad_id", "ts"])
    assert train.equals(again)  # seeded
    u, a, ts = (train.column(c).to_numpy() for c in ("user_id", "ad_id", "ts"))
    for user, n in ((0, 4), (1, 1), (2, 2)):
        assert sorted(ts[u == user].tolist()) == list(range(n))  # distinct seconds 0..n-1 of day 0
    assert sorted(a[u == 0].tolist()) == [10, 11, 12, 13]
    test = Dataset.open(tmp_path / "a").impressions(1, ["ts"]).column("ts").to_numpy()
    assert set(test.tolist()) == {86_400}
    plain = Dataset.open(tmp_path / "plain").impressions(0, ["ts"]).column("ts").to_numpy()
    assert set(plain.tolist()) == {0}


def test_gowalla_order_seed_refuses_a_user_too_long_for_one_day(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.txt").write_text("0 " + " ".join(map(str, range(86_401))) + "\n")
    (src / "test.txt").write_text("0 5\n")
    import_gowalla(src, tmp_path / "plain")  # without order_seed every pair sits at ts 0: fine
    with pytest.raises(DataError) as e:
        import_gowalla(src, tmp_path / "gw", order_seed=0)
    assert str(e.value).startswith(f"{src / 'train.txt'}: a user has more than 86,400 train pairs")
    assert not (tmp_path / "gw").exists()


def test_within_day_order_is_a_per_user_random_rank() -> None:
    users = np.array([5, 3, 5, 5, 3, 9], np.int64)
    orders = {tuple(within_day_order(users, seed).tolist()) for seed in range(20)}
    for o in orders:
        arr = np.array(o)
        assert sorted(arr[users == 5].tolist()) == [0, 1, 2]
        assert sorted(arr[users == 3].tolist()) == [0, 1] and arr[users == 9].tolist() == [0]
    assert len(orders) > 1  # the order depends on the seed


# -- Generic ----------------------------------------------------------------------------------------------
def _cfg(imp: Path, **kw: object) -> GenericImportConfig:
    return GenericImportConfig(imp, user_col="uid", item_col="item", ts_col="t", click_col="clk", **kw)  # type: ignore[arg-type]


def test_generic_csv_string_ids_get_vocabulary(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text(
        "uid,item,t,clk,cv,note\n"
        "alice,007,86400,1,0,a\n"
        "bob,7,100,0,0,b\n"
        "alice,x9,172800.7,1,1,c\n"
        "carol,007,90000,0,0,d\n"
    )
    summary = import_generic(_cfg(log, conversion_col="cv"), tmp_path / "ds")
    assert summary["rows"] == 4 and summary["users"] == 3 and summary["ads"] == 3
    assert (summary["first_day"], summary["last_day"]) == (0, 2)
    ds = Dataset.open(tmp_path / "ds")
    assert set(ds.manifest["vocabularies"]) == {"user_id", "ad_id"}
    uv = pq.read_table(tmp_path / "ds" / "vocab" / "user_id.parquet")
    av = pq.read_table(tmp_path / "ds" / ds.manifest["vocabularies"]["ad_id"]["path"])
    assert uv.column("id").type == pa.int64()
    assert uv.to_pydict() == {"raw": ["alice", "bob", "carol"], "id": [0, 1, 2]}  # order of first appearance
    assert av.to_pydict() == {"raw": ["007", "7", "x9"], "id": [0, 1, 2]}  # "007" and "7" stay apart
    imp = ds.impressions(ds.days())
    assert imp.column("user_id").type == pa.int64() and imp.column("ad_id").type == pa.int64()
    # rows sorted by ts; float seconds floored
    assert imp.column("ts").to_pylist() == [100, 86400, 90000, 172800]
    assert imp.column("user_id").to_pylist() == [1, 0, 2, 0]
    assert imp.column("ad_id").to_pylist() == [1, 0, 0, 2]
    assert imp.column("conversion_ts").to_pylist() == [-1, -1, -1, 172800]
    assert ds.impressions(1).num_rows == 2
    assert ds.ads().column("advertiser_id").to_pylist() == ds.ads().column("ad_id").to_pylist()


def test_generic_parquet_integer_ids_and_side_tables(tmp_path: Path) -> None:
    pq.write_table(
        pa.table(
            {
                "uid": pa.array([10, 20, 10, 30], pa.int32()),
                "item": [5, 5, 6, 7],
                "t": [3 * 86400 + 5, 3 * 86400 + 1, 5 * 86400, 4 * 86400],
                "clk": [True, False, False, True],
            }
        ),
        tmp_path / "log.parquet",
    )
    pq.write_table(
        pa.table(
            {"uid": [30, 20, 10], "age": [3, 0, 7], "score": [0.5, None, 2.0], "country": ["FR", "DE", "FR"]}
        ),
        tmp_path / "users.parquet",
    )
    (tmp_path / "items.csv").write_text("item,price,brand\n5,1.5,x\n6,2.5,y\n7,3,x\n8,4,z\n")
    cfg = _cfg(tmp_path / "log.parquet", users=tmp_path / "users.parquet", items=tmp_path / "items.csv")
    summary = import_generic(cfg, tmp_path / "ds")
    assert summary["rows"] == 4 and summary["users"] == 3 and summary["ads"] == 4
    ds = Dataset.open(tmp_path / "ds")
    assert "user_id" not in ds.manifest["vocabularies"] and "ad_id" not in ds.manifest["vocabularies"]
    imp = ds.impressions(ds.days())
    assert imp.column("user_id").to_pylist() == [20, 10, 30, 10]  # ids kept, rows sorted by ts
    assert imp.column("click").to_pylist() == [0, 1, 1, 0]
    assert ds.impressions(4).num_rows == 1 and (ds.first_day, ds.last_day) == (3, 5)
    ucols, acols = ds.columns["users"], ds.columns["ads"]
    assert (ucols["age"].kind, ucols["age"].cardinality) == (ColumnKind.CATEGORICAL, 8)
    assert ucols["score"].kind is ColumnKind.NUMERIC and ucols["score"].dtype == "float32"
    assert (ucols["country"].kind, ucols["country"].cardinality) == (ColumnKind.CATEGORICAL, 2)
    assert acols["price"].kind is ColumnKind.NUMERIC and acols["brand"].cardinality == 3
    users = ds.users().to_pydict()
    assert users["user_id"] == [30, 20, 10] and users["country"] == [0, 1, 0]
    ads = ds.ads().to_pydict()
    assert ads["ad_id"] == [5, 6, 7, 8] and ads["first_day"] == [3] * 4 and ads["last_day"] == [5] * 4
    assert pq.read_table(tmp_path / "ds" / "vocab" / "ads.brand.parquet").column("raw").to_pylist() == [
        "x",
        "y",
        "z",
    ]


def test_generic_missing_column(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("uid,item,t\na,b,1\n")
    with pytest.raises(DataError) as e:
        import_generic(_cfg(log), tmp_path / "ds")
    assert str(e.value) == f"{log}: missing column 'clk'"
    users = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user": ["a"]}), users)
    log.write_text("uid,item,t,clk\na,b,1,0\n")
    with pytest.raises(DataError) as e:
        import_generic(_cfg(log, users=users), tmp_path / "ds")
    assert str(e.value) == f"{users}: missing column 'uid'"
    assert not (tmp_path / "ds").exists()


def test_generic_bad_values(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("uid,item,t,clk\na,b,1,0\na,c,2,2\n")
    with pytest.raises(DataError) as e:
        import_generic(_cfg(log), tmp_path / "ds")
    assert str(e.value) == f"{log}: column 'clk' must hold 0/1 values, found 2"
    users = tmp_path / "users.csv"
    users.write_text("uid,age\nb,3\n")
    log.write_text("uid,item,t,clk\na,b,1,0\nb,c,2,1\n")
    with pytest.raises(DataError) as e:
        import_generic(_cfg(log, users=users), tmp_path / "ds")
    assert str(e.value) == (
        f"{log}: 1 rows name a uid missing from users.csv (e.g. 'a'); "
        "--missing-features unknown fills them with unknown values"
    )
    users.write_text("uid,age\na,3\nb,4\na,5\n")
    with pytest.raises(DataError) as e:
        import_generic(_cfg(log, users=users), tmp_path / "ds")
    assert str(e.value) == f"{users}: duplicate uid values"
    with pytest.raises(DataError) as e:
        import_generic(_cfg(tmp_path / "log.json"), tmp_path / "ds")
    assert str(e.value) == f"{tmp_path / 'log.json'}: file not found"
    (tmp_path / "log.json").write_text("{}")
    with pytest.raises(DataError) as e:
        import_generic(_cfg(tmp_path / "log.json"), tmp_path / "ds")
    assert str(e.value).startswith(f"{tmp_path / 'log.json'}: unsupported file type (expected one of .csv")
    (tmp_path / "log.json").unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "users.csv"]
