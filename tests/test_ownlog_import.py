"""Issue 17, items 1-2: the generic importer keeps context columns, fills ids missing from side files when asked,
buckets time by period; `derm data inspect` figures against hand-counted ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from ownlog import START, WEEK, write_ownlog

from adslog.dataset import Dataset
from adslog.importers import GenericImportConfig, import_generic
from adslog.inspect import InspectConfig, inspect_dataset
from adslog.periods import Period, bucket_days, bucket_seconds, dataset_period
from adslog.rebucket import rebucket
from adslog.schema import ColumnKind
from cli import main
from dermcore.errors import ConfigError, DataError, DermError


def _own(tmp_path: Path, **kw: object) -> tuple[dict[str, Path], GenericImportConfig]:
    p = write_ownlog(tmp_path / "src")
    cfg = GenericImportConfig(
        p["log"], "uid", "item", "when", "clicked", users=p["users"], items=p["items"], **kw
    )  # type: ignore[arg-type]
    return p, cfg


def test_period_parse() -> None:
    assert Period.parse("day") == Period("day", 1)
    assert Period.parse("week") == Period("week", 7) == Period.parse("7d")
    assert Period.parse("14d") == Period("14d", 14)
    for bad in ("0d", "fortnight", "-3d", "1.5d", ""):
        with pytest.raises(ConfigError, match="--period"):
            Period.parse(bad)
    # the mapping of adslog.rebucket: day d -> origin + (d - origin) // n, seconds rescaled the same way
    d = np.array([10, 16, 17, 23, 24])
    np.testing.assert_array_equal(bucket_days(d, 10, 7), [10, 10, 11, 11, 12])
    t = d * 86400 + 5
    assert (bucket_seconds(t, 10, 7) // 86400).tolist() == bucket_days(d, 10, 7).tolist()
    np.testing.assert_array_equal(bucket_seconds(np.array([-1]), 10, 7), [-1])


def test_old_manifests_have_a_period() -> None:
    assert dataset_period({"first_day": 5}) == {"name": "day", "days": 1, "origin_day": 5}
    m = {"first_day": 5, "source": {"days_per_bucket": 7}}
    assert dataset_period(m) == {"name": "week", "days": 7, "origin_day": 5}


def test_own_log_context_missing_features_weekly(tmp_path: Path) -> None:
    p, cfg = _own(
        tmp_path, context_cols=("pos=position", "surface"), missing_features="unknown", period="week"
    )
    summary = import_generic(cfg, tmp_path / "ds")
    raw = p["log"].read_text().splitlines()[1:]
    assert summary["rows"] == len(raw) == 6 * 700 + 3 * 3
    assert summary["users_missing_features"] == 5 and summary["ads_missing_features"] == 4
    assert summary["context_columns"] == {"position": "pos", "surface": "surface"}
    ds = Dataset.open(tmp_path / "ds")
    origin = START // 86400
    assert ds.period == {"name": "week", "days": 7, "origin_day": origin}
    # two years of weeks: one partition per week with rows, 6 dense + 3 sparse
    assert (ds.first_day, ds.last_day) == (origin, origin + 100)
    assert len(list((tmp_path / "ds" / "impressions").iterdir())) == 9
    imp = ds.impressions(ds.days())
    week = (np.array([int(r.split(",")[2]) for r in raw]) - START) // WEEK
    assert sorted(imp.column("day").to_numpy() - origin) == sorted(week)
    assert (imp.column("ts").to_numpy() // 86400 == imp.column("day").to_numpy()).all()
    # context kept: 1-based slots stored as position - 1, surfaces by frequency (feed most common = 0)
    pos = np.array([int(r.split(",")[4]) for r in raw])
    assert sorted(imp.column("position").to_numpy() + 1) == sorted(pos)
    icols = ds.columns["impressions"]
    assert (icols["position"].kind, icols["position"].cardinality) == (ColumnKind.CATEGORICAL, 5)
    assert icols["surface"].cardinality == 3
    vocab = pq.read_table(tmp_path / "ds" / "vocab" / "context.surface.parquet").column("raw").to_pylist()
    assert vocab == ["feed", "search", "related"]
    surf = [r.split(",")[5] for r in raw]
    counts = np.bincount(imp.column("surface").to_numpy(), minlength=3)
    assert counts.tolist() == [surf.count(s) for s in vocab]
    assert "surface" not in ds.manifest["source"]["stand_ins"]
    # the five users missing from users.csv: explicit unknown codes and the features_missing flag
    users = ds.users().to_pydict()
    uv = pq.read_table(tmp_path / "ds" / "vocab" / "user_id.parquet").to_pydict()
    raw_of = dict(zip(uv["id"], uv["raw"], strict=True))
    flagged = {raw_of[u] for u, f in zip(users["user_id"], users["features_missing"], strict=True) if f}
    assert flagged == {f"u{x:03d}" for x in range(5)}
    ucols = ds.columns["users"]
    assert ucols["country"].cardinality == 4  # FR, DE, US + unknown
    unknown_rows = [i for i, f in enumerate(users["features_missing"]) if f]
    assert {users["country"][i] for i in unknown_rows} == {3}
    assert {users["age"][i] for i in unknown_rows} == {ucols["age"].cardinality - 1}
    ads = ds.ads().to_pydict()
    prices = [pr for pr, f in zip(ads["price"], ads["features_missing"], strict=True) if not f]
    fills = {pr for pr, f in zip(ads["price"], ads["features_missing"], strict=True) if f}
    assert fills == {float(np.median(prices))}
    assert len(ads["ad_id"]) == 60 and len(users["user_id"]) == 80


def test_missing_features_default_refuses_and_names_the_flag(tmp_path: Path) -> None:
    _, cfg = _own(tmp_path)
    with pytest.raises(DataError, match="--missing-features unknown fills them"):
        import_generic(cfg, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_context_col_errors(tmp_path: Path) -> None:
    _, cfg = _own(tmp_path, context_cols=("nope",), missing_features="unknown")
    with pytest.raises(DataError) as e:
        import_generic(cfg, tmp_path / "ds")
    assert str(e.value) == f"{cfg.impressions}: missing column 'nope'"
    for cols, msg in (
        (("clicked",), "already the user, item, ts or label column"),
        (("pos=click",), "clashes with a column the importer writes"),
        (("pos=position", "surface=position"), "'position' is given twice"),
    ):
        _, cfg = _own(tmp_path, context_cols=cols, missing_features="unknown")
        with pytest.raises(ConfigError, match=msg):
            import_generic(cfg, tmp_path / "ds")
    with pytest.raises(ConfigError, match="--missing-features"):
        _own(tmp_path, missing_features="zero")


def test_rebucket_records_its_period(tmp_path: Path) -> None:
    _, cfg = _own(tmp_path, missing_features="unknown")
    import_generic(cfg, tmp_path / "daily")
    assert Dataset.open(tmp_path / "daily").period["days"] == 1
    rebucket(tmp_path / "daily", tmp_path / "weekly", 7)
    assert Dataset.open(tmp_path / "weekly").period["name"] == "week"
    rebucket(tmp_path / "weekly", tmp_path / "4w", 4)
    assert Dataset.open(tmp_path / "4w").period["days"] == 28


def _tiny(tmp_path: Path) -> Dataset:
    """Periods of 2 days from day 0: p0 = 3 rows (users a b, items x y, 2 clicks, 1 conversion), p1 empty,
    p2 = 1 row without a click, p3 = 2 rows (users a d, items x z, 2 clicks)."""
    log = tmp_path / "log.csv"
    log.write_text(
        "u,i,t,c,v\n"
        f"a,x,10,1,1\nb,x,20,0,0\na,y,{86400 + 5},1,0\n"
        f"c,z,{4 * 86400},0,0\n"
        f"d,x,{6 * 86400},1,0\na,z,{7 * 86400 + 1},1,0\n"
    )
    cfg = GenericImportConfig(log, "u", "i", "t", "c", conversion_col="v", period="2d")
    import_generic(cfg, tmp_path / "ds")
    return Dataset.open(tmp_path / "ds")


def test_inspect_hand_counted(tmp_path: Path) -> None:
    ds = _tiny(tmp_path)
    doc = inspect_dataset(ds, InspectConfig(min_clicks=1))
    assert (doc["first_day"], doc["last_day"], doc["n_periods"]) == (0, 3, 4)
    assert doc["period"] == {"name": "2d", "days": 2, "origin_day": 0}
    assert (doc["rows"], doc["users"], doc["items"], doc["clicks"], doc["conversions"]) == (6, 4, 3, 4, 1)
    assert doc["ctr"] == round(4 / 6, 6)
    rows = [(p["rows"], p["users"], p["items"], p["clicks"], p["conversions"]) for p in doc["periods"]]
    assert rows == [(3, 2, 2, 2, 1), (0, 0, 0, 0, 0), (1, 1, 1, 0, 0), (2, 2, 2, 2, 0)]
    assert [p["live_items"] for p in doc["periods"]] == [3, 3, 3, 3]
    assert [p["start"] for p in doc["periods"]] == ["1970-01-01", "1970-01-03", "1970-01-05", "1970-01-07"]
    assert doc["empty_periods"] == [1] and doc["sparse_periods"] == [2]  # 0 clicks < min_clicks 1
    # rows up to the test period 3: 3, 3, 4, 6; 60 % of 6 is first reached at period 2, capped at period 0
    # (the evaluable period before the test period)
    assert doc["suggested"]["test_day"] == 3
    assert doc["suggested"]["train_days"] == [0, 0] and doc["suggested"]["train_periods"] == 1
    # the default min_clicks (20) leaves no evaluable period: no split, and why
    none = inspect_dataset(ds)["suggested"]
    assert none["train_periods"] is None and "0 period(s)" in none["reason"]


def test_inspect_cli(tmp_path: Path) -> None:
    _tiny(tmp_path)
    r = CliRunner().invoke(main, ["data", "inspect", str(tmp_path / "ds"), "--min-clicks", "1", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["rows"] == 6 and doc["sparse_periods"] == [2]
    r = CliRunner().invoke(main, ["data", "inspect", str(tmp_path / "ds"), "--min-clicks", "1"])
    assert r.exit_code == 0
    assert "empty periods (1): 1" in r.stdout
    assert "suggested split: train on periods 0..0 (--train-periods 1), test period 3" in r.stdout
    r = CliRunner().invoke(main, ["data", "inspect", str(tmp_path / "nope")])
    assert r.exit_code == 1 and r.stderr.startswith("Error: ")


def test_import_cli_flags(tmp_path: Path) -> None:
    p = write_ownlog(tmp_path / "src", dense_weeks=2, rows_per_week=50)
    base = ["data", "import", "generic", str(tmp_path / "ds"), "--impressions", str(p["log"])]
    base += ["--user-col", "uid", "--item-col", "item", "--ts-col", "when", "--click-col", "clicked"]
    base += ["--users", str(p["users"]), "--items", str(p["items"])]
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 1
    assert "missing from users.csv" in r.stderr and "--missing-features unknown" in r.stderr
    r = CliRunner().invoke(main, [*base, "--period", "fortnight"])
    assert r.exit_code == 1
    assert r.stderr.strip() == "Error: --period: expected day, week or <N>d (e.g. 14d), got 'fortnight'"
    r = CliRunner().invoke(main, [*base, "--period", "week", "--cuts", "2019-01-08"])
    assert r.exit_code == 1 and r.stderr.strip() == "Error: --cuts and --period: give one of them"
    args = [*base, "--missing-features", "unknown", "--period", "week", "--context-col", "pos=position"]
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    logged = {r.split(",")[0] for r in p["log"].read_text().splitlines()[1:]}
    assert out["period"] == "week"
    assert out["users_missing_features"] == len(logged & {f"u{x:03d}" for x in range(5)}) > 0
    assert r.stderr == ""
    ds = Dataset.open(tmp_path / "ds")
    assert "position" in ds.columns["impressions"] and "surface" in ds.manifest["source"]["stand_ins"]
    # without --json, the dropped surface column and the filled ids are said on stderr
    r = CliRunner().invoke(main, [*args, "--overwrite"])
    assert r.exit_code == 0
    assert "columns not imported: ['surface']" in r.stderr and "missing from users.csv" in r.stderr


def test_movielens_weekly_import_equals_rebucket(tmp_path: Path) -> None:
    ml = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "movielens_100k"
    if not (ml / "ml-100k.inter").is_file():
        pytest.skip(f"{ml} not available")
    from adslog.importers import import_movielens_100k

    s = import_movielens_100k(ml, tmp_path / "weekly", period=Period.parse("week"))
    assert s["period"] == "week" and (s["first_day"], s["last_day"]) == (10124, 10154)
    import_movielens_100k(ml, tmp_path / "daily")
    rebucket(tmp_path / "daily", tmp_path / "rb", 7)
    a, b = Dataset.open(tmp_path / "weekly"), Dataset.open(tmp_path / "rb")
    assert a.period == b.period == {"name": "week", "days": 7, "origin_day": 10124}
    key = [("ts", "ascending"), ("user_id", "ascending"), ("ad_id", "ascending")]
    # the same rows (ties of the rescaled seconds may be written in another order)
    assert a.impressions(a.days()).sort_by(key).equals(b.impressions(b.days()).sort_by(key))
    assert a.ads().equals(b.ads()) and a.users().equals(b.users())


def _id_to_raw(f: Path) -> dict[int, str]:
    t = pq.read_table(f).to_pydict()
    return dict(zip(t["id"], t["raw"], strict=True))


def test_entity_features_from_the_log(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("u,i,t,c,plan,cat\na,x,30,1,gold,3\nb,x,10,0,free,3\na,y,20,0,free,5\nc,z,40,1,gold,7\n")
    (tmp_path / "items.csv").write_text("i,price\nx,1.0\ny,2.0\nw,4.0\n")
    cfg = GenericImportConfig(
        log,
        "u",
        "i",
        "t",
        "c",
        items=tmp_path / "items.csv",
        user_feature_cols=("plan",),
        item_feature_cols=("cat",),
        missing_features="unknown",
    )
    s = import_generic(cfg, tmp_path / "ds")
    assert s["ads_missing_features"] == 1  # z is not in items.csv
    ds = Dataset.open(tmp_path / "ds")
    uv = _id_to_raw(tmp_path / "ds" / "vocab" / "user_id.parquet")
    users = ds.users().to_pydict()
    plan_vocab = pq.read_table(tmp_path / "ds" / "vocab" / "users.plan.parquet").column("raw").to_pylist()
    # a's first row in time (t=20) says free, not its first row in the file (t=30, gold)
    plans = {uv[i]: plan_vocab[p] for i, p in zip(users["user_id"], users["plan"], strict=True)}
    assert plans == {"a": "free", "b": "free", "c": "gold"}
    av = _id_to_raw(tmp_path / "ds" / "vocab" / "ad_id.parquet")
    ads = ds.ads().to_pydict()
    cats = {av[i]: c for i, c in zip(ads["ad_id"], ads["cat"], strict=True)}
    assert cats == {"x": 3, "y": 5, "z": 7, "w": 8}  # w is only in items.csv: the unknown code
    assert ds.columns["ads"]["cat"].cardinality == 9 and ds.columns["users"]["plan"].cardinality == 2
    (tmp_path / "items.csv").write_text("i,cat\nx,1\n")
    with pytest.raises(DataError, match="'cat' is also named as a feature column"):
        import_generic(cfg, tmp_path / "ds2")
    with pytest.raises(ConfigError, match="--item-feature-col 'u'"):
        GenericImportConfig(log, "u", "i", "t", "c", item_feature_cols=("u",))


def test_explicit_cut_points(tmp_path: Path) -> None:
    # dense January 2019 in weekly periods, then one period for the rest of the log
    p = write_ownlog(tmp_path / "src", dense_weeks=4, rows_per_week=40, sparse_weeks=(20, 60))
    cuts = "2019-01-08,2019-01-15,2019-01-22,2019-01-29"
    cfg = GenericImportConfig(p["log"], "uid", "item", "when", "clicked", period=Period.from_cuts(cuts))
    import_generic(cfg, tmp_path / "ds")
    ds = Dataset.open(tmp_path / "ds")
    origin = START // 86400
    assert ds.period["days"] == 0 and ds.period["starts"][0] == origin * 86400
    assert (ds.first_day, ds.last_day) == (origin, origin + 4)
    raw = [int(r.split(",")[2]) for r in p["log"].read_text().splitlines()[1:]]
    want = np.bincount(np.searchsorted(np.array(ds.period["starts"]), raw, side="right") - 1, minlength=5)
    assert [ds.impressions(d).num_rows for d in ds.days()] == want.tolist() == [40, 40, 40, 40, 6]
    imp = ds.impressions(ds.days())
    assert (imp.column("ts").to_numpy() // 86400 == imp.column("day").to_numpy()).all()
    assert np.all(np.diff(imp.column("ts").to_numpy()) >= 0)  # order kept
    doc = inspect_dataset(ds)
    assert [x["start"] for x in doc["periods"]] == [
        "2019-01-01",
        "2019-01-08",
        "2019-01-15",
        "2019-01-22",
        "2019-01-29",
    ]
    with pytest.raises(ConfigError, match="outside the log's span"):
        cfg2 = GenericImportConfig(
            p["log"], "uid", "item", "when", "clicked", period=Period.from_cuts("2030-01-01")
        )
        import_generic(cfg2, tmp_path / "ds2")
    with pytest.raises(ConfigError, match="strictly increasing"):
        Period.from_cuts("2019-02-01,2019-01-01")
    with pytest.raises(ConfigError, match="neither an ISO date"):
        Period.from_cuts("soon")
    with pytest.raises(DermError, match="cannot be rebucketed"):
        rebucket(tmp_path / "ds", tmp_path / "rb", 2)
