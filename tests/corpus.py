"""A generated corpus of bad inputs, shared by `tests/test_bad_inputs.py` and `benchmarks/robustness.py`.

`import_cases(d)`: broken files for `derm data import generic` (missing / mistyped / empty columns,
implausible or non-finite timestamps, empty, nested or float ids, non-0/1 labels, non-UTF-8 bytes, garbage and
truncated files, duplicate or unknown ids in side files, unsupported extensions, bad option values) beside a
few valid controls. `query_cases(work, user)`: out-of-range or malformed options of `derm query`, `eval`,
`daily`, `data synth` and `index build` against a workspace. Each case is (name, is_valid, CLI args).
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

GOOD = "uid,item,t,clk\nu1,a,86400,1\nu2,b,90000,0\nu1,b,172800,0\n"


def import_cases(d: Path) -> list[tuple[str, bool, list[str]]]:
    """(name, is_valid, CLI args) for `derm data import generic`; files are written into `d`."""
    cases: list[tuple[str, bool, list[str]]] = []

    def case(name: str, body: bytes | str, valid: bool = False, ext: str = ".csv", users: str | bytes | None = None,
             extra: tuple[str, ...] = ()) -> None:  # fmt: skip
        f = d / f"{name}{ext}"
        f.write_bytes(body.encode() if isinstance(body, str) else body)
        args = ["data", "import", "generic", str(d / f"out-{name}"), "--impressions", str(f)]
        args += ["--user-col", "uid", "--item-col", "item", "--ts-col", "t", "--click-col", "clk", *extra]
        if users is not None:
            u = d / f"{name}-users.csv"
            u.write_bytes(users.encode() if isinstance(users, str) else users)
            args += ["--users", str(u)]
        cases.append((name, valid, args))

    def parquet(name: str, table: pa.Table, valid: bool = False) -> None:
        f = d / f"{name}.parquet"
        pq.write_table(table, f)
        args = ["data", "import", "generic", str(d / f"out-{name}"), "--impressions", str(f)]
        args += ["--user-col", "uid", "--item-col", "item", "--ts-col", "t", "--click-col", "clk"]
        cases.append((name, valid, args))

    case("valid", GOOD, valid=True)
    case("valid_users", GOOD, valid=True, users="uid,age,city\nu1,3,x\nu2,5,y\n")
    case("valid_escaping_header", GOOD, valid=True, users="uid,../../../../x\nu1,p\nu2,q\n")
    case("valid_any_ts", GOOD.replace("86400", "-5"), valid=True, extra=("--any-ts",))
    parquet(
        "valid_int_ids", pa.table({"uid": [1, 2], "item": [3, 4], "t": [0, 5], "clk": [0, 1]}), valid=True
    )
    for col in ("uid", "item", "t", "clk"):
        header = "uid,item,t,clk".replace(col, "other")
        case(f"missing_{col}", GOOD.replace("uid,item,t,clk", header, 1))
    for name, t in [
        ("ts_9e18", "9000000000000000000"), ("ts_1e30", "1e30"), ("ts_negative", "-5"),
        ("ts_millis", "1700000000000"), ("ts_nan", "nan"), ("ts_inf", "inf"), ("ts_text", "yesterday"),
        ("ts_empty", ""), ("ts_date_text", "2024-01-01x"),
    ]:  # fmt: skip
        case(name, f"uid,item,t,clk\nu1,a,86400,1\nu2,b,{t},0\n")
    for name, v in [
        ("clk_2", "2"),
        ("clk_neg", "-1"),
        ("clk_half", "0.5"),
        ("clk_text", "yes"),
        ("clk_empty", ""),
    ]:
        case(name, f"uid,item,t,clk\nu1,a,86400,1\nu2,b,90000,{v}\n")
    case("uid_empty", "uid,item,t,clk\nu1,a,86400,1\n,b,90000,0\n")
    case("uid_blank", "uid,item,t,clk\nu1,a,86400,1\n   ,b,90000,0\n")
    case("item_empty", "uid,item,t,clk\nu1,a,86400,1\nu2,,90000,0\n")
    parquet("uid_list", pa.table({"uid": [[1], [2]], "item": [1, 2], "t": [1, 2], "clk": [0, 1]}))
    parquet("uid_struct", pa.table({"uid": [{"a": 1}, {"a": 2}], "item": [1, 2], "t": [1, 2], "clk": [0, 1]}))
    parquet("uid_float", pa.table({"uid": [1.5, 2.0], "item": [1, 2], "t": [1, 2], "clk": [0, 1]}))
    parquet("uid_null", pa.table({"uid": pa.array([1, None]), "item": [1, 2], "t": [1, 2], "clk": [0, 1]}))
    parquet("item_list", pa.table({"uid": [1, 2], "item": [[1], [2]], "t": [1, 2], "clk": [0, 1]}))
    parquet("ts_string_parquet", pa.table({"uid": [1, 2], "item": [1, 2], "t": ["a", "b"], "clk": [0, 1]}))
    parquet("clk_string_parquet", pa.table({"uid": [1, 2], "item": [1, 2], "t": [1, 2], "clk": ["0", "1"]}))
    parquet(
        "ts_uint_huge",
        pa.table({"uid": [1], "item": [1], "t": pa.array([2**63 + 5], pa.uint64()), "clk": [1]}),
    )
    parquet("empty_parquet", pa.table({"uid": pa.array([], pa.int64()), "item": pa.array([], pa.int64()),
                                       "t": pa.array([], pa.int64()), "clk": pa.array([], pa.int64())}))  # fmt: skip
    case("non_utf8_id", b"uid,item,t,clk\nu\xff\xfe,a,86400,1\n")
    case("non_utf8_header", b"u\xffid,item,t,clk\nu1,a,86400,1\n")
    case("non_utf8_users", GOOD, users=b"uid,city\nu1,caf\xe9\nu2,x\n")
    case("non_utf8_users_header", GOOD, users=b"uid,c\xffity\nu1,x\nu2,y\n")
    case("empty_file", "")
    case("header_only", "uid,item,t,clk\n")
    case("garbage_bytes", random.Random(1).randbytes(400))
    case("ragged_rows", "uid,item,t,clk\nu1,a,86400,1\nu2,b\n")
    case("extra_fields", "uid,item,t,clk\nu1,a,86400,1,9,9\n")
    case("semicolon_delimited", GOOD.replace(",", ";"))
    case("truncated_gzip", b"\x1f\x8b\x08\x00garbage", ext=".csv.gz")
    case("corrupt_parquet", b"PAR1 this is not parquet PAR1", ext=".parquet")
    case("unsupported_ext", GOOD, ext=".xlsx")
    case("json_file", '{"uid": 1}', ext=".json")
    case("users_duplicate", GOOD, users="uid,age\nu1,3\nu1,4\nu2,5\n")
    case("users_missing_some", GOOD, users="uid,age\nu1,3\n")
    case("users_no_key", GOOD, users="user,age\nu1,3\nu2,5\n")
    case("users_reserved_col", GOOD, users="uid,user_id\nu1,3\nu2,5\n")
    case("users_empty_id", GOOD, users="uid,age\nu1,3\nu2,5\n,7\n")
    case("users_garbage", GOOD, users="\x00\x01\x02")
    case("ts_range_inverted", GOOD, extra=("--ts-min", "100", "--ts-max", "5"))
    case("ts_min_overflow", GOOD, extra=("--ts-min", str(2**70)))
    case("missing_impressions", GOOD)
    (d / "missing_impressions.csv").unlink()
    out_exists = d / "out-exists"
    out_exists.mkdir()
    case("output_exists", GOOD)
    cases[-1][2][3] = str(out_exists)
    return cases


def query_cases(work: Path, user: int) -> list[tuple[str, bool, list[str]]]:
    w = ["--work", str(work)]
    q = ["query", *w]
    return [
        ("query_valid", True, [*q, "--user", str(user)]),
        ("query_user_overflow", False, [*q, "--user", "99999999999999999999"]),
        ("query_user_text", False, [*q, "--user", "abc"]),
        ("query_user_unknown", False, [*q, "--user", "123"]),
        ("query_day_far", False, [*q, "--user", str(user), "--day", "30000"]),
        ("query_day_negative", False, [*q, "--user", str(user), "--day", "-1"]),
        ("query_day_overflow", False, [*q, "--user", str(user), "--day", str(2**40)]),
        ("query_k_zero", False, [*q, "--user", str(user), "--k", "0"]),
        ("query_k_negative", False, [*q, "--user", str(user), "--k", "-3"]),
        ("query_k_huge", False, [*q, "--user", str(user), "--k", str(2**40)]),
        ("query_candidates_below_k", False, [*q, "--user", str(user), "--k", "10", "--candidates", "5"]),
        ("query_cap_negative", False, [*q, "--user", str(user), "--max-per-advertiser", "-1"]),
        ("query_missing_workspace", False, ["query", "--work", str(work.parent / "nope"), "--user", "1"]),
        ("eval_day_far", False, ["eval", *w, "--day", "30000"]),
        ("eval_k_text", False, ["eval", *w, "--k", "a,b"]),
        ("eval_k_zero", False, ["eval", *w, "--k", "0"]),
        ("daily_day_far", False, ["daily", *w, "--day", "30000"]),
        ("daily_range_inverted", False, ["daily", *w, "--from", "20006", "--to", "20001"]),
        ("synth_users_zero", False, ["data", "synth", str(work.parent / "synth-x"), "--users", "0"]),
        ("synth_days_overflow", False, ["data", "synth", str(work.parent / "synth-y"), "--days", str(2**40)]),
        (
            "index_build_bad_spec",
            False,
            ["index", "build", *w, "--spec", "NotAnIndex,Garbage", "--overwrite"],
        ),
        ("index_build_bad_nprobe", False, ["index", "build", *w, "--nprobe", "0"]),
    ]
